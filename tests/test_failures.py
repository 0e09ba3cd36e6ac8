"""The workflow under failure: what a failed job shows, what a retried job asks for, recovery.

Each test runs the real workflow (a private copy, so locks and metadata stay in a temporary folder).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from jump_n2v.config import write_plate_sheet
from conftest import job_blocks, run_snakemake, tiny_config, tiny_workflow
from workflow_copy import copy_workflow

WORKFLOW_PATHS = ["Snakefile", "workflow", "src", "envs", "profiles"]

pytestmark = pytest.mark.workflow


def workflow_copy(workdir: Path, config: dict | None = None, plates: list[dict] | None = None) -> Path:
    """The workflow in ``workdir`` with ``config`` (default: the tiny config) and its plate sheet ``plates``
    (rows) as config/plates.tsv."""
    if config is None:
        return tiny_workflow(workdir, WORKFLOW_PATHS)
    copy_workflow(workdir, WORKFLOW_PATHS)
    (workdir / "config").mkdir()
    write_plate_sheet(workdir / "config" / "plates.tsv", plates)
    config = {**config, "plates": "config/plates.tsv"}
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return workdir


def snakemake(workdir: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return run_snakemake(*args, cwd=workdir, timeout=timeout)


def resources(block: dict) -> dict[str, str]:
    return dict(item.split("=", 1) for item in block.get("resources", "").split(", ") if "=" in item)


# Threads, memory (MB) and runtime (minutes) each rule asks for on its first attempt.
RULE_DEFAULTS = {
    "demo_plate": (1, 2000, 15), "plate_index": (1, 2000, 15), "split_raw": (2, 8000, 120),
    "split_ground_truth": (2, 8000, 120), "train": (4, 32000, 720), "predict": (4, 16000, 240),
    "export_tiff": (2, 4000, 120), "export_load_data": (1, 2000, 15), "qc": (2, 8000, 60), "report": (1, 4000, 30),
    "export_ome_zarr": (1, 4000, 120), "downstream": (1, 4000, 30), "plate_noise_models": (1, 8000, 60),
}


def test_every_rule_carries_threads_memory_and_runtime(tmp_path):
    # The profile used to define them (set-threads, set-resources), so a plain or --workflow-profile
    # none run asked for nothing and a retry asked for the same again.
    workdir = workflow_copy(tmp_path)
    result = snakemake(workdir, "--dry-run", "--cores", "8")
    assert result.returncode == 0, result.stderr[-3000:]
    seen = {}
    for rule, block in job_blocks(result.stdout + result.stderr):
        if rule == "all":
            continue
        asked = resources(block)
        seen[rule] = (int(block.get("threads", 1)), int(asked["mem_mb"]), int(asked["runtime"]))
    assert seen == RULE_DEFAULTS


def test_a_failed_job_shows_its_error_and_a_retry_asks_for_more(tmp_path):
    # A plate whose pattern matches no file: plate_index fails at once, twice with --retries 1.
    config = tiny_config()
    config["experiments"]["tiny"].pop("demo")
    plates = [{"experiment": "tiny", "plate": "TinyPlate", "format": "hyperstack", "pattern": "nowhere/{well}_s{site}.tif"}]
    workdir = workflow_copy(tmp_path, config, plates)
    result = snakemake(workdir, "--retries", "1")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    # The job's own error (from its log file), not only "check log file(s) for error details".
    assert "DiscoveryError: plate TinyPlate: pattern 'nowhere/{well}_s{site}.tif'" in output, output[-4000:]
    attempts = [resources(block) for rule, block in job_blocks(output) if rule == "plate_index" and "resources" in block]
    asked = sorted({(int(r["mem_mb"]), int(r["runtime"])) for r in attempts})
    assert asked == [(2000, 15), (4000, 30)], output[-4000:]


def write_hyperstack_site(path: Path, seed: int) -> None:
    import numpy as np
    import tifffile

    planes = np.random.default_rng(seed).poisson(200, size=(2, 32, 32)).astype(np.uint16)
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, planes, imagej=True, metadata={"axes": "CYX", "Labels": ["DNA", "Mito"]})


def test_a_site_file_added_to_a_hyperstack_plate_reruns_only_that_plates_index_and_splits(tmp_path):
    # plate_index had no inputs for hyperstack and Phenix plates: a new site file was never seen.
    plates = []
    for number, plate in enumerate(["P1", "P2"]):
        for site in (1, 2):
            write_hyperstack_site(tmp_path / "images" / plate / f"B02_s{site}.tif", seed=10 * number + site)
        plates.append({"experiment": "files", "plate": plate, "format": "hyperstack",
                       "pattern": f"images/{plate}/{{well}}_s{{site}}.tif"})
    config = {"results": "results", "experiments": {"files": {
        "channels": ["DNA", "Mito"], "settings": {"n2v": {"patch_size": 32}}}}}
    workdir = workflow_copy(tmp_path, config, plates)
    targets = [f"results/files/{plate}/raw/{channel}.zarr" for plate in ("P1", "P2") for channel in ("DNA", "Mito")]
    first = snakemake(workdir, "--cores", "2", *targets)
    assert first.returncode == 0, first.stderr[-3000:]
    again = snakemake(workdir, "--dry-run", *targets)
    assert "Nothing to be done" in again.stdout + again.stderr
    write_hyperstack_site(tmp_path / "images" / "P1" / "C03_s1.tif", seed=99)
    planned = snakemake(workdir, "--dry-run", *targets)
    assert planned.returncode == 0, planned.stderr[-3000:]
    jobs = {(rule, block.get("wildcards")) for rule, block in job_blocks(planned.stdout + planned.stderr)}
    assert jobs == {
        ("plate_index", "experiment=files, plate=P1"),
        ("split_raw", "experiment=files, plate=P1, channel=DNA"),
        ("split_raw", "experiment=files, plate=P1, channel=Mito"),
    }, planned.stdout[-3000:]
    rerun = snakemake(workdir, "--cores", "2", *targets)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "C03" in (workdir / "results" / "files" / "P1" / "index.csv").read_text()


def test_images_smaller_than_the_patch_size_stop_the_run_before_any_split_or_training(tmp_path):
    for site in (1, 2):
        write_hyperstack_site(tmp_path / "images" / f"B02_s{site}.tif", seed=site)  # 32 x 32 pixels
    config = {"results": "results", "experiments": {"small": {"channels": ["DNA", "Mito"], "settings": {"n2v": {"patch_size": 64}}}}}
    plates = [{"experiment": "small", "plate": "P1", "format": "hyperstack", "pattern": "images/{well}_s{site}.tif"}]
    workdir = workflow_copy(tmp_path, config, plates)
    result = snakemake(workdir, "--cores", "2")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "images are 32x32 pixels" in output and "smaller than the n2v patch_size 64" in output, output[-3000:]
    assert (workdir / "results" / "small" / "P1" / "index.csv").exists()
    assert not (workdir / "results" / "small" / "P1" / "raw").exists()
    assert not (workdir / "results" / "small" / "logs" / "train").exists()


@pytest.mark.slow
def test_after_kill_9_mid_run_the_readmes_recovery_finishes_the_run(tmp_path):
    # README, "Logs, failures, preemption": if snakemake itself was killed, run
    # `snakemake --unlock` and then the same command again.
    import signal
    import time

    workdir = workflow_copy(tmp_path)
    command = [sys.executable, "-m", "snakemake", "--cores", "2"]
    run = subprocess.Popen(command, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    # Kill inside the multi-output train rule: model.pt written, model.json (its last output) not yet,
    # so Snakemake finds an incomplete job's outputs on the rerun.
    models = workdir / "results" / "tiny" / "models"
    deadline = time.monotonic() + 600
    while not (models.exists() and any(models.rglob("model.pt"))):
        assert run.poll() is None, "the run ended before training wrote a model"
        assert time.monotonic() < deadline, "training did not write a model"
        time.sleep(0.01)
    os.killpg(run.pid, signal.SIGKILL)  # snakemake and its running job, as when the session dies
    run.wait()
    written = next(models.rglob("model.pt")).parent
    assert not (written / "model.json").exists(), "killed after the job finished: no incomplete outputs"

    again = snakemake(workdir, "--cores", "2")
    assert again.returncode != 0 and "cannot be locked" in again.stdout + again.stderr  # why --unlock is needed
    unlock = snakemake(workdir, "--unlock")
    assert unlock.returncode == 0, unlock.stderr[-3000:]
    recovered = snakemake(workdir, "--cores", "2")
    assert recovered.returncode == 0, (recovered.stdout + recovered.stderr)[-6000:]
    results = workdir / "results" / "tiny"
    assert (results / "report" / "report.html").exists()
    leftovers = [str(path) for path in results.rglob("*") if path.name.startswith((".tmp-", ".old-"))]
    assert leftovers == []
    assert "Nothing to be done" in (snakemake(workdir, "--dry-run").stdout)


def write_rgba_site(path: Path, seed: int, shape=(64, 48), labels: bool = True) -> None:
    """An 8-bit RGBA site, samples last (YXS), with or without ImageJ channel labels."""
    import numpy as np
    import tifffile

    data = np.random.default_rng(seed).integers(0, 250, (*shape, 4)).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"imagej": True, "metadata": {"axes": "YXS", "Labels": ["DNA", "ER", "RNA", "AGP"]}} if labels else {}
    tifffile.imwrite(path, data, photometric="rgb", extrasamples=["unassalpha"], **metadata)


@pytest.fixture(scope="module")
def unplannable_plates(tmp_path_factory, s3_endpoint):
    """One run (-k) over five plates of one experiment, four of which cannot be planned or split:
    RGBA (good: RGBA hyperstacks), Small (images smaller than the patches), Rejects (2 of 3 images
    broken, past max_rejected_fraction), NoBucket (its table in a bucket that does not exist) and
    SameNames (two sources a flat export would write to one file)."""
    tmp_path = tmp_path_factory.mktemp("unplannable")
    images = tmp_path / "images"
    for site in (1, 2, 3):
        write_rgba_site(images / "RGBA" / f"B02_s{site}.tif", seed=site, labels=site != 2)
        write_rgba_site(images / "Small" / f"B02_s{site}.tif", seed=site, shape=(16, 16))
        write_rgba_site(images / "Rejects" / f"B02_s{site}.tif", seed=site)
    for site in (2, 3):
        (images / "Rejects" / f"B02_s{site}.tif").write_bytes(b"broken")
    for folder, well in (("a", "B02"), ("b", "B03")):
        write_rgba_site(images / "same" / folder / "site.tif", seed=7)
    same_names = tmp_path / "same_names.csv"
    same_names.write_text(
        "Metadata_Plate,Metadata_Well,Metadata_Site,FileName_OrigDNA,PathName_OrigDNA,FileName_OrigER,PathName_OrigER\n"
        "SameNames,B02,1,site.tif,images/same/a,site.tif,images/same/a\n"
        "SameNames,B03,1,site.tif,images/same/b,site.tif,images/same/b\n"
    )
    config = {"results": "results", "experiments": {"planned": {
        "channels": ["DNA", "ER"], "channel_order": ["DNA", "ER", "RNA", "AGP"],
        "storage": {"endpoint_url": s3_endpoint, "retries": 0, "connect_timeout": 5, "read_timeout": 30},
        "settings": {"n2v": {"patch_size": 32}, "ingest": {"on_bad_image": "skip", "max_rejected_fraction": 0.3},
                     "export": {"export_tiff": True}}}}}
    plates = [{"experiment": "planned", "plate": plate, "format": "hyperstack", "pattern": f"images/{plate}/{{well}}_s{{site}}.tif"}
              for plate in ("RGBA", "Small", "Rejects")]
    plates += [{"experiment": "planned", "plate": "NoBucket", "format": "loaddata", "load_data": "s3://no-such-bucket-jump/BR1/load_data.csv"},
               {"experiment": "planned", "plate": "SameNames", "format": "loaddata", "load_data": "same_names.csv",
                "base_folder": "."}]
    workdir = workflow_copy(tmp_path, config, plates)
    targets = [f"results/planned/{plate['plate']}/raw/{channel}.zarr" for plate in plates for channel in ("DNA", "ER")]
    result = snakemake(workdir, "--cores", "2", "--keep-going", *targets)
    return workdir / "results" / "planned", result.returncode, result.stdout + result.stderr


def test_rgba_hyperstacks_are_planned_and_split_while_other_plates_fail(unplannable_plates):
    # The size check read 64x4 (height x samples) and stopped every plate of the run, even with -k.
    import numpy as np

    from jump_n2v.plumbing.ngff import open_channel_array

    results, returncode, output = unplannable_plates
    assert returncode != 0
    for channel in ("DNA", "ER"):
        array = open_channel_array(results / "RGBA" / "raw" / f"{channel}.zarr", mode="r")
        assert (array.shape, array.dtype) == ((3, 64, 48), np.uint8), output[-4000:]
    assert "images are 64x4" not in output


def test_a_plate_with_images_smaller_than_the_patches_stops_only_its_own_jobs(unplannable_plates):
    results, _, output = unplannable_plates
    assert "experiment planned, plate Small: channel DNA: images are 16x16 pixels" in output, output[-4000:]
    assert "results/planned/Small/planning_problems/split_raw-DNA.txt" in output
    assert not (results / "Small" / "raw").exists()


def test_a_table_in_a_missing_bucket_names_the_table_and_the_bucket_and_stops_only_its_plate(unplannable_plates):
    results, _, output = unplannable_plates
    assert ("experiment planned, plate NoBucket: LoadData table s3://no-such-bucket-jump/BR1/load_data.csv cannot be "
            "read: bucket no-such-bucket-jump does not exist") in output, output[-4000:]
    assert not (results / "NoBucket" / "index.csv").exists()


def test_two_sources_of_one_flat_export_name_are_refused_at_planning(unplannable_plates):
    # They were refused by export_tiff, after the plate had been split, trained and predicted.
    results, _, output = unplannable_plates
    assert "experiment planned, plate SameNames: export layout flat: sources" in output, output[-4000:]
    assert "use export_layout: mirror" in output
    assert (results / "SameNames" / "index.csv").exists() and not (results / "SameNames" / "raw").exists()


def test_a_split_failing_past_max_rejected_fraction_keeps_its_rejects_table_where_the_error_points(unplannable_plates):
    # Snakemake deleted rejects/DNA.csv as an output of the failed job; the error pointed to it.
    import pandas as pd

    results, _, output = unplannable_plates
    kept = results / "logs" / "split_raw" / "Rejects" / "DNA.rejects.csv"
    assert f"they are listed in {kept.relative_to(results.parents[1])}" in output, output[-4000:]
    table = pd.read_csv(kept)
    assert table.file.tolist() == ["images/Rejects/B02_s2.tif", "images/Rejects/B02_s3.tif"]
    assert not (results / "Rejects" / "rejects" / "DNA.csv").exists()


HOLD_WRITER_LOCK = """
import sys, time
from pathlib import Path
from jump_n2v.plumbing.locks import model_folder_lock, output_lock
lock = model_folder_lock if sys.argv[1] == "model" else output_lock
with lock(sys.argv[2], log=sys.argv[3]):
    with open(sys.argv[3], "a") as log:
        log.write("the other run's job: still writing\\n")
    Path(sys.argv[4]).touch()
    time.sleep(600)
"""


def other_run_writing(kind: str, output: Path, log: Path, ready: Path):
    """A process holding the writer lock of ``output`` as another run's job would (its log open)."""
    import time

    holder = subprocess.Popen([sys.executable, "-c", HOLD_WRITER_LOCK, kind, str(output), str(log), str(ready)])
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert holder.poll() is None and time.monotonic() < deadline, "the lock holder did not start"
        time.sleep(0.05)
    return holder


def test_a_run_refused_by_another_runs_writer_lock_leaves_that_runs_store_and_log_alone(tmp_path):
    # Two runs on one results folder both split the same channel (one replaced the other's raw
    # array), and a train job refused by the model folder's lock first emptied the holder's log.
    import signal

    for site in (1, 2):
        write_hyperstack_site(tmp_path / "images" / f"B02_s{site}.tif", seed=site)
    config = {"results": "results", "experiments": {"locks": {"channels": ["DNA", "Mito"], "settings": {
        "n2v": {"patch_size": 32, "base_filters": 4, "depth": 1, "batch_size": 2, "epochs": 1, "steps_per_epoch": 1,
                "validation_patches": 2}}}}}
    plates = [{"experiment": "locks", "plate": "P1", "format": "hyperstack", "pattern": "images/{well}_s{site}.tif"}]
    workdir = workflow_copy(tmp_path, config, plates)
    results = workdir / "results" / "locks"
    runs = {
        "split": ("output", results / "P1" / "raw" / "DNA.zarr", results / "logs" / "split_raw" / "P1" / "DNA.log"),
        "train": ("model", results / "models" / "P1" / "DNA", results / "logs" / "train" / "P1" / "DNA.log"),
    }
    for stage, (kind, output, log) in runs.items():
        target = str((output / "model.json" if kind == "model" else output).relative_to(workdir))
        holder = other_run_writing(kind, output, log, tmp_path / f"{stage}.ready")
        try:
            refused = snakemake(workdir, "--cores", "1", target)
        finally:
            holder.send_signal(signal.SIGKILL)
            holder.wait()
        output_text = refused.stdout + refused.stderr
        assert refused.returncode != 0, output_text[-3000:]
        assert "WriterLockedError" in output_text, output_text[-3000:]
        assert f"{output.relative_to(workdir)} is being written by another run: pid {holder.pid}" in output_text
        assert log.read_text() == "the other run's job: still writing\n", stage
        assert not (output.exists() if kind == "output" else (output / "model.pt").exists())
        if stage == "split":
            finished = snakemake(workdir, "--cores", "1", "results/locks/P1/raw/DNA.zarr", "results/locks/P1/raw/Mito.zarr")
            assert finished.returncode == 0, finished.stderr[-3000:]
