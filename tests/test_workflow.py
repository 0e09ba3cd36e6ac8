"""End-to-end runs of the real workflow (Snakemake, no mocks) on a tiny synthetic plate."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from jump_n2v.plumbing.ngff import open_channel_array
from jump_n2v.qc import read_noise_model, read_site_noise_models

from conftest import TINY_CONFIG, TINY_PLATES, run_snakemake
from workflow_copy import REPO, copy_workflow

CHANNELS = ["DNA", "Mito"]

pytestmark = pytest.mark.workflow


def snakemake(workdir, *args, check=True):
    result = run_snakemake("--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), *args)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(result.args)} failed ({result.returncode}):\n{result.stdout[-5000:]}\n{result.stderr[-8000:]}")
    return result


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tiny")
    copy_workflow(workdir, [TINY_PLATES])  # the tiny config's plate sheet, where it names it
    snakemake(workdir, "--configfile", str(TINY_CONFIG), "--cores", "2")
    return workdir / "results" / "tiny"


def test_every_stage_writes_its_documented_outputs(tiny_run):
    plate = tiny_run / "TinyPlate"
    index = pd.read_csv(plate / "index.csv")
    assert list(index[["well", "site"]].itertuples(index=False, name=None)) == [("B02", 1), ("B02", 2), ("C03", 1), ("C03", 2)]
    for channel in CHANNELS:
        raw = open_channel_array(plate / "raw" / f"{channel}.zarr", mode="r")
        clean = open_channel_array(plate / "clean" / f"{channel}.zarr", mode="r")
        denoised = open_channel_array(plate / "denoised" / f"{channel}.zarr", mode="r")
        assert raw.shape == clean.shape == denoised.shape == (4, 64, 64)
        assert raw.dtype == np.uint16 and denoised.dtype == np.float32
        assert raw.attrs["channel"] == channel and list(raw.attrs["image_ids"]) == [0, 1, 2, 3]
        assert np.isfinite(denoised[:]).all()
        model = tiny_run / "models" / "TinyPlate" / channel
        for name in ("model.pt", "model.json", "training_log.csv", "training_curve.png"):
            assert (model / name).stat().st_size > 0
        assert not (model / "checkpoint.pt").exists()
        for name in ("metrics.csv", "metrics.parquet", "noise_model.json", "panels.png", "plate_map.png"):
            assert (plate / "qc" / channel / name).stat().st_size > 0
        check = json.loads((plate / "denoised" / f"{channel}.training_check.json").read_text())
        assert (check["plate"], check["channel"]) == ("TinyPlate", channel) and isinstance(check["moved"], list)
    assert (tiny_run / "report" / "report.html").stat().st_size > 0
    summary = pd.read_csv(tiny_run / "report" / "summary.csv")
    assert sorted(summary["channel"]) == CHANNELS


def test_export_writes_denoised_tiffs_and_a_loaddata_csv_pointing_at_them(tiny_run):
    load_data = pd.read_csv(tiny_run / "TinyPlate" / "denoised_tiff" / "load_data.csv")
    assert len(load_data) == 4
    denoised = open_channel_array(tiny_run / "TinyPlate" / "denoised" / "DNA.zarr", mode="r")
    for row, (folder, name) in enumerate(zip(load_data["PathName_OrigDNA"], load_data["FileName_OrigDNA"])):
        # export_dtype: source (the default): the uint16 source's dtype, rounded and clipped.
        exported = tifffile.imread(Path(folder) / name)
        assert exported.dtype == np.uint16
        assert np.array_equal(exported, np.clip(np.rint(denoised[row]), 0, 65535))
    assert load_data["FileName_OrigMito"].str.contains("Mito").all()
    # The pixels the export clipped into uint16 are counted in the QC summary, exported channel by channel.
    summary = pd.read_csv(tiny_run / "report" / "summary.csv").set_index("channel")
    for channel in CHANNELS:
        clipping = pd.read_csv(tiny_run / "TinyPlate" / "denoised_tiff" / channel / "clipping.csv")
        clipped = int(clipping["clipped_low"].sum() + clipping["clipped_high"].sum())
        assert summary.loc[channel, "export_clipped_fraction"] == clipped / clipping["pixels"].sum()


def test_ome_zarr_export_opens_with_the_standard_reader_as_an_hcs_plate(tiny_run):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    plate_path = tiny_run / "TinyPlate" / "denoised_plate.ome.zarr"
    plate = next(iter(Reader(parse_url(str(plate_path)))()))
    assert sorted(well["path"] for well in plate.metadata["metadata"]["plate"]["wells"]) == ["B/2", "C/3"]
    index = pd.read_csv(tiny_run / "TinyPlate" / "index.csv")
    denoised = {c: open_channel_array(tiny_run / "TinyPlate" / "denoised" / f"{c}.zarr", mode="r") for c in CHANNELS}
    for row in index.itertuples():
        field = next(iter(Reader(parse_url(str(plate_path / row.well[0] / str(int(row.well[1:])) / str(row.site - 1))))()))
        assert field.metadata["channel_names"] == CHANNELS
        pixels = np.asarray(field.data[0])
        for c, channel in enumerate(CHANNELS):
            np.testing.assert_array_equal(pixels[c], denoised[channel][row.image])


def test_channel_stores_open_with_the_standard_reader_at_the_plates_pixel_size(tiny_run):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    for kind in ("raw", "clean", "denoised"):
        for channel in CHANNELS:
            path = tiny_run / "TinyPlate" / kind / f"{channel}.zarr"
            node = next(iter(Reader(parse_url(str(path)))()))
            assert [(axis["name"], axis.get("unit")) for axis in node.metadata["axes"]] == [
                ("image", None), ("y", "micrometer"), ("x", "micrometer")]
            assert node.metadata["coordinateTransformations"][0][0]["scale"] == pytest.approx([1.0, 0.6, 0.6])  # the demo's pixels
            assert node.metadata["channel_names"] == [channel]
            np.testing.assert_array_equal(np.asarray(node.data[0]), open_channel_array(path)[:])


def test_bmz_rule_packages_a_model_that_passes_bioimageio_test(tiny_run):
    """Asked for as a target (not a default output); its 64-pixel test image is padded to the package's minimum."""
    import zipfile

    snakemake(tiny_run.parents[1], "--configfile", str(TINY_CONFIG), "--cores", "2", "results/tiny/models/TinyPlate/DNA/model.bmz.zip")
    package = tiny_run / "models" / "TinyPlate" / "DNA" / "model.bmz.zip"
    with zipfile.ZipFile(package) as archive:
        assert {"rdf.yaml", "weights_torchscript.pt", "weights_state_dict.pt", "model.json"} <= set(archive.namelist())
    log = (tiny_run / "logs" / "export_bmz" / "TinyPlate" / "DNA.log").read_text()
    assert "test passed" in log


def test_channel_settings_reach_the_trained_models(tiny_run):
    variants = {c: json.loads((tiny_run / "models" / "TinyPlate" / c / "model.json").read_text())["settings"]["variant"] for c in CHANNELS}
    assert variants == {"DNA": "n2v", "Mito": "n2v2"}


def test_qc_reports_reference_psnr_because_the_plate_has_ground_truth(tiny_run):
    metrics = pd.read_csv(tiny_run / "TinyPlate" / "qc" / "DNA" / "metrics.csv")
    assert len(metrics) == 4
    assert {"psnr_raw_db", "psnr_denoised_db"} <= set(metrics.columns)


def test_downstream_rule_scores_the_demo_plates_nuclei_and_the_report_shows_them(tiny_run):
    table = pd.read_csv(tiny_run / "TinyPlate" / "qc" / "downstream.csv")
    assert sorted(table["source"].unique()) == ["clean", "denoised", "raw"] and len(table) == 4 * 3
    assert (table["channel"] == "DNA").all() and (table["true_nuclei"] > 0).all()
    assert (tiny_run / "TinyPlate" / "qc" / "downstream.png").stat().st_size > 0
    summary = pd.read_csv(tiny_run / "report" / "summary.csv").set_index("channel")
    assert summary.loc["DNA", "downstream_f1_raw"] >= 0 and pd.isna(summary.loc["Mito", "downstream_f1_raw"])
    html = (tiny_run / "report" / "report.html").read_text()
    assert 'id="downstream-section"' in html and 'id="downstream-TinyPlate"' in html


def test_every_rule_wrote_its_log_and_heavy_rules_their_benchmark(tiny_run):
    logs = tiny_run / "logs"
    for rule in ("demo_plate", "plate_index", "split_raw", "split_ground_truth", "train", "predict", "plate_noise_models", "qc", "downstream"):
        assert any(p.is_file() for p in (logs / rule).rglob("*.log")), rule
    assert (logs / "report.log").is_file()
    for rule in ("split_raw", "train", "predict", "plate_noise_models", "qc", "downstream"):
        assert list((tiny_run / "benchmarks" / rule).rglob("*.tsv")), rule


def test_standard_snakemake_report_embeds_the_qc_outputs(tiny_run):
    report = tiny_run.parents[1] / "snakemake_report.html"
    snakemake(tiny_run.parents[1], "--configfile", str(TINY_CONFIG), "--report", str(report))
    html = report.read_text()
    for name in ("panels.png", "plate_map.png", "training_curve.png", "summary.csv", "report.html"):
        assert name in html, name


def test_second_run_has_nothing_to_do(tiny_run):
    result = snakemake(tiny_run.parents[1], "--configfile", str(TINY_CONFIG), "--cores", "1", "--dry-run")
    assert "Nothing to be done" in result.stdout + result.stderr


def test_workflow_lints_clean(tmp_path):
    copy_workflow(tmp_path, [TINY_PLATES])
    result = snakemake(tmp_path, "--configfile", str(TINY_CONFIG), "--lint", check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Congratulations" in output, output


def test_workflow_is_snakefmt_clean():
    # The pinned snakefmt (and its black), with the line length set in pyproject.toml.
    result = subprocess.run([sys.executable, "-m", "snakefmt", "--check", "--diff", "Snakefile", "workflow/rules"],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-3000:]


@pytest.mark.slow
def test_demo_config_denoises_every_channel_above_raw_psnr(tmp_path):
    """The README's main job: the shipped demo config, run as is, must improve PSNR on every channel."""
    copy_workflow(tmp_path, ["config/plates.tsv"])
    snakemake(tmp_path, "--configfile", str(REPO / "config" / "config.yaml"), "--cores", "2")
    summary = pd.read_csv(tmp_path / "results" / "demo" / "report" / "summary.csv")
    assert sorted(summary["channel"]) == sorted(["DNA", "ER", "RNA", "AGP", "Mito"])
    gains = dict(zip(summary["channel"], summary["psnr_denoised_db_mean"] - summary["psnr_raw_db_mean"]))
    assert all(gain > 0 for gain in gains.values()), gains


def test_each_channels_qc_noise_model_is_the_plates_fit_with_one_mixing(tiny_run):
    site = read_site_noise_models(tiny_run / "TinyPlate" / "qc" / "noise_models.json")
    channels = sorted(p.parent.name for p in (tiny_run / "TinyPlate" / "qc").glob("*/noise_model.json"))
    assert channels and sorted(site.models) == channels
    for channel in channels:
        written = read_noise_model(tiny_run / "TinyPlate" / "qc" / channel / "noise_model.json")
        assert written == site.models[channel], channel
