"""The real workflow on a Cell Painting Gallery-style plate served by a real S3-compatible server
(moto's, on 127.0.0.1): one experiment reads the published table and images straight from s3://,
another reads the same table through a path_map from a local mirror. Both must give identical raw
arrays, the s3 plate's exported LoadData table must be the published table with only the denoised
channels' file columns replaced, and a changed remote object must rerun only its channel."""

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml

import gallery_plate as gallery
from s3_server import public_bucket, s3_client
from jump_n2v.config import write_plate_sheet
from conftest import run_snakemake, tiny_experiment
from test_rerun import job, planned_jobs
from workflow_copy import copy_workflow

from jump_n2v.plumbing.ngff import open_channel_array

PLATE = "BR00000002"  # not the plate test_storage.py puts in the same session server
CHANNELS = ["DNA", "Mito"]
TINY_SETTINGS = tiny_experiment()["settings"]

pytestmark = pytest.mark.workflow


@pytest.fixture(scope="module")
def gallery_run(s3_endpoint, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("gallery_run")
    copy_workflow(workdir, ["Snakefile", "workflow", "src", "envs"])
    mirror = workdir / "mirror"  # what `aws s3 sync s3://cellpainting-gallery/ mirror/` leaves
    client = s3_client(s3_endpoint)
    public_bucket(client, gallery.BUCKET)
    keys = gallery.write_plate(mirror, PLATE, seed=3)
    table_key = gallery.table_key(PLATE, ".csv.gz")
    gallery.write_table(gallery.load_data_table(PLATE, f"s3://{gallery.BUCKET}/"), mirror / table_key)
    gallery.upload(client, mirror, [*keys, table_key])
    settings = {**TINY_SETTINGS, "export": {**TINY_SETTINGS["export"], "export_tiff": False}}
    exported = {**TINY_SETTINGS, "export": {**TINY_SETTINGS["export"], "export_tiff": True}}
    table_url = f"s3://{gallery.BUCKET}/{table_key}"
    storage = {"endpoint_url": s3_endpoint, "retries": 1, "connect_timeout": 5, "read_timeout": 30}
    config = {
        "results": "results",
        "plates": "config/plates.tsv",
        "experiments": {
            "gallery_s3": {"channels": CHANNELS, "settings": exported, "storage": storage},
            "gallery_mirror": {"channels": CHANNELS, "settings": settings, "path_map": {f"s3://{gallery.BUCKET}/": f"{mirror}/"}},
        },
    }
    (workdir / "config").mkdir()
    write_plate_sheet(workdir / "config" / "plates.tsv", [
        {"experiment": experiment, "plate": PLATE, "format": "loaddata", "load_data": table_url}
        for experiment in config["experiments"]
    ])
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    result = run_snakemake("--cores", "2", cwd=workdir)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-8000:]
    return {"workdir": workdir, "client": client, "keys": keys, "mirror": mirror, "table": mirror / table_key}


@pytest.mark.slow
def test_the_s3_plate_runs_end_to_end_and_equals_the_plate_read_from_disk(gallery_run):
    results = gallery_run["workdir"] / "results"
    s3_index = pd.read_csv(results / "gallery_s3" / PLATE / "index.csv")
    mirror_index = pd.read_csv(results / "gallery_mirror" / PLATE / "index.csv")
    assert s3_index["source_DNA"].str.startswith(f"s3://{gallery.BUCKET}/").all()
    assert mirror_index["source_DNA"].str.startswith(f"{gallery_run['mirror']}/").all()
    for channel in CHANNELS:
        from_s3 = open_channel_array(results / "gallery_s3" / PLATE / "raw" / f"{channel}.zarr", mode="r")
        from_disk = open_channel_array(results / "gallery_mirror" / PLATE / "raw" / f"{channel}.zarr", mode="r")
        assert from_s3.shape == (len(gallery.SITES), 64, 64)
        assert np.array_equal(from_s3[:], from_disk[:])
        assert {**from_s3.attrs, "experiment": None} == {**from_disk.attrs, "experiment": None}
        assert (results / "gallery_s3" / PLATE / "denoised" / f"{channel}.zarr").is_dir()
        assert len(pd.read_csv(results / "gallery_s3" / PLATE / "rejects" / f"{channel}.csv")) == 0
    assert (results / "gallery_s3" / "report" / "report.html").stat().st_size > 0


@pytest.mark.slow
def test_the_s3_plates_exported_table_is_the_published_table_with_new_denoised_file_columns(gallery_run):
    published = pd.read_csv(gallery_run["table"], dtype=str, keep_default_na=False)
    published = published[published["Metadata_Plate"] == PLATE].reset_index(drop=True)
    denoised_tiff = gallery_run["workdir"] / "results" / "gallery_s3" / PLATE / "denoised_tiff"
    exported = pd.read_csv(denoised_tiff / "load_data.csv", dtype=str, keep_default_na=False)
    assert list(exported.columns) == list(published.columns)
    assert len(exported) == len(published) == len(gallery.SITES)
    replaced = {column for column in published.columns
                if any(column in (f"FileName_Orig{c}", f"PathName_Orig{c}", f"URL_Orig{c}") for c in CHANNELS)}
    assert replaced and "FileName_OrigBrightfield" in published.columns
    kept = [column for column in published.columns if column not in replaced]
    assert exported[kept].equals(published[kept])  # metadata, illumination functions, Brightfield: as published
    for channel in CHANNELS:
        if f"FileName_Orig{channel}" in exported.columns:
            files = [Path(folder) / name for folder, name in
                     zip(exported[f"PathName_Orig{channel}"], exported[f"FileName_Orig{channel}"])]
            assert all(file.is_file() and file.is_relative_to(denoised_tiff / channel) for file in files), files


@pytest.mark.slow
def test_a_changed_remote_object_reruns_only_its_channel(gallery_run):
    workdir = gallery_run["workdir"]
    assert planned_jobs(workdir) == set()  # listing the bucket again changes nothing by itself
    dna_key = next(key for key in gallery_run["keys"] if key.endswith("r02c02f02p01-ch5sk1fk1fl1.tiff"))
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.random.default_rng(5).poisson(900, size=(64, 64)).astype(np.uint16))
    gallery_run["client"].put_object(Bucket=gallery.BUCKET, Key=dna_key, Body=buffer.getvalue())
    e = "gallery_s3"
    assert planned_jobs(workdir) == {
        job("split_raw", experiment=e, plate=PLATE, channel="DNA"),
        job("train", experiment=e, group=PLATE, channel="DNA"),
        job("predict", experiment=e, plate=PLATE, channel="DNA"),
        job("export_tiff", experiment=e, plate=PLATE, channel="DNA"),
        job("export_load_data", experiment=e, plate=PLATE),
        job("export_ome_zarr", experiment=e, plate=PLATE),  # the tiny settings export the OME-Zarr plate too
        job("report", experiment=e),
        # The plate's noise models share one pixel mixing measured across its channels' raw arrays, so
        # every channel's QC reruns (cheap); no other channel's training or prediction does.
        job("plate_noise_models", experiment=e, plate=PLATE),
        *(job("qc", experiment=e, plate=PLATE, channel=channel) for channel in CHANNELS),
    }
