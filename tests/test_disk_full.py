"""A full disk, for real: each stage writes onto a small tmpfs filled to the last byte.

Every stage (index, split, train, predict, QC, TIFF export, report, LoadData table) must fail with
ENOSPC naming the output it was writing, and leave nothing at that path
(and no temporary) that looks finished. torch's checkpoint writer used to say only "unexpected pos".
Mounting a tmpfs needs root (CI runs the tests as root); the tests skip otherwise.
"""

import errno
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr

from jump_n2v.plumbing.atomic import atomic_output
from jump_n2v.settings import resolve_section
from jump_n2v.export.loaddata import write_loaddata_csv
from jump_n2v.export.tiff import export_tiffs
from jump_n2v.ingest import discover_plate, read_index, split_channel, write_index
from jump_n2v.n2v import N2VSettings, train_channel, load_trained
from jump_n2v.predict.arrays import predict_array
from jump_n2v.qc import run_channel_qc, write_experiment_report

torch.set_num_threads(1)
CHANNELS = ["DNA"]
N2V = {"depth": 1, "base_filters": 4, "patch_size": 16, "batch_size": 2, "epochs": 1, "steps_per_epoch": 1,
       "validation_patches": 2, "device": "cpu"}


@pytest.fixture
def full_disk(tmp_path):
    """A 2 MiB tmpfs with every byte taken by a filler file."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "full"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        with open(mount / "filler", "wb", buffering=0) as filler:
            try:
                while True:
                    filler.write(b"\0" * 4096)
            except OSError as error:
                assert error.errno == errno.ENOSPC
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    """Inputs of every stage on a disk with room: index, raw array, model, denoised array, QC, TIFFs."""
    root = tmp_path_factory.mktemp("plate")
    rng = np.random.default_rng(0)
    for well in ("B02", "B03", "C02"):
        tifffile.imwrite(root / f"{well}_s1.tif", rng.poisson(300, (1, 64, 64)).astype(np.uint16), imagej=True,
                         metadata={"axes": "CYX", "Labels": CHANNELS})
    plate_cfg = {"format": "hyperstack", "pattern": str(root / "{well}_s{site}.tif")}
    index = discover_plate("P1", plate_cfg, CHANNELS)
    write_index(index, root / "index.csv")
    split_channel(index, "DNA", experiment="e", plate="P1", plate_cfg=plate_cfg, channel_order=None, ingest={},
                  out_zarr=root / "raw.zarr", rejects_csv=root / "rejects.csv", threads=1)
    train_channel([root / "raw.zarr"], N2VSettings.from_dict(N2V), root / "model")
    trained = load_trained(root / "model")
    predict_array(trained.net, trained.mean, trained.std, root / "raw.zarr", root / "denoised.zarr", {"device": "cpu"})
    run_channel_qc(root / "raw.zarr", root / "denoised.zarr", root / "qc", index=root / "index.csv")
    (root / "tiffs").mkdir()
    export_tiffs(root / "denoised.zarr", root / "index.csv", root / "tiffs")
    return {"root": root, "index": index, "plate_cfg": plate_cfg, "trained": trained}


def write_index_stage(plate, out):
    write_index(plate["index"], out / "index.csv")
    return out / "index.csv"


def split_stage(plate, out):
    split_channel(plate["index"], "DNA", experiment="e", plate="P1", plate_cfg=plate["plate_cfg"], channel_order=None,
                  ingest={}, out_zarr=out / "raw.zarr", rejects_csv=plate["root"] / f"rejects-{uuid.uuid4().hex}.csv", threads=1)
    return out / "raw.zarr"


def train_stage(plate, out):
    train_channel([plate["root"] / "raw.zarr"], N2VSettings.from_dict(N2V), out / "model")
    return out / "model" / "checkpoint.pt"  # the first file training writes


def predict_stage(plate, out):
    trained = plate["trained"]
    predict_array(trained.net, trained.mean, trained.std, plate["root"] / "raw.zarr", out / "denoised.zarr", {"device": "cpu"})
    return out / "denoised.zarr"


def qc_stage(plate, out):
    root = plate["root"]
    run_channel_qc(root / "raw.zarr", root / "denoised.zarr", out / "qc", index=root / "index.csv")
    return out / "qc" / "metrics.csv"


def export_stage(plate, out):
    with atomic_output(out / "tiffs") as folder:  # as workflow/scripts/export_tiff.py does
        folder.mkdir()
        export_tiffs(plate["root"] / "denoised.zarr", plate["root"] / "index.csv", folder)
    return out / "tiffs"


def report_stage(plate, out):
    root = plate["root"]
    report = out / "report"
    write_experiment_report(
        "e", [root / "qc" / "metrics.csv"], {("P1", "DNA"): root / "model"}, {"DNA": {"qc": resolve_section("qc")}},
        [root / "rejects.csv"], report / "summary.csv", report / "summary.parquet", report / "report.html",
        versions={"jump-n2v": "test"},
    )
    return report / "summary.csv"  # the first file the report writes


def export_load_data_stage(plate, out):
    root = plate["root"]
    write_loaddata_csv(root / "index.csv", {"DNA": root / "denoised.zarr"}, root / "tiffs", "flat",
                       out / "denoised_tiff" / "load_data.csv")
    return out / "denoised_tiff" / "load_data.csv"


STAGES = [write_index_stage, split_stage, train_stage, predict_stage, qc_stage, export_stage, report_stage,
          export_load_data_stage]


@pytest.mark.parametrize("stage", STAGES,
                         ids=lambda stage: stage.__name__.removesuffix("_stage"))
def test_a_full_disk_fails_the_stage_naming_the_output_and_leaves_nothing_finished(plate, full_disk, stage):
    with pytest.raises(OSError) as caught:
        stage(plate, full_disk)
    written = stage.__name__  # for the message below
    error = caught.value
    assert error.errno == errno.ENOSPC, f"{written}: {type(error).__name__}: {error}"
    message = str(error)
    assert "No space left on device while writing" in message and str(full_disk) in message, message
    final = Path(message.split("while writing ", 1)[1].split(" (", 1)[0])
    assert not final.exists(), message
    leftovers = [str(path) for path in full_disk.rglob("*") if path.name.startswith((".tmp-", ".old-"))]
    assert leftovers == [], leftovers


def test_a_log_file_that_cannot_be_written_falls_back_to_the_jobs_stderr(full_disk):
    # A job on a full disk left an empty log: its error was written nowhere.
    script = (
        "import sys\nfrom jump_n2v.plumbing.logs import rule_logger\n"
        f"log = rule_logger({str(full_disk / 'job.log')!r})\nlog.info('started')\n"
        "raise OSError(28, 'No space left on device while writing results/x.zarr')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode != 0
    assert f"cannot write the log file {full_disk / 'job.log'}" in result.stderr
    assert "started" in result.stderr and "No space left on device while writing results/x.zarr" in result.stderr
