"""What Snakemake reruns after each kind of change: exactly the affected jobs, nothing else.

A tiny LoadData plate (2 channels x 4 sites, single-channel TIFFs) is run through the real workflow
once, in a temporary copy of the workflow (so a script can be edited). Each test then makes one
change, reads the job list of `snakemake --dry-run` and undoes the change.
"""

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

from jump_n2v.config import write_plate_sheet
from conftest import job_blocks, run_snakemake, tiny_experiment
from workflow_copy import copy_workflow

WORKFLOW_PATHS = ["Snakefile", "workflow", "src", "envs"]
EXPERIMENT = "rerun"
CHANNELS = ["DNA", "Mito"]
SITES = [("B02", 1), ("B02", 2), ("C03", 1), ("C03", 2)]

pytestmark = pytest.mark.workflow


def write_loaddata_plate(root: Path, plate: str, seed: int) -> Path:
    """Noisy single-channel uint16 TIFFs and the LoadData CSV naming them (relative paths)."""
    rng = np.random.default_rng(seed)
    images = root / plate
    images.mkdir(parents=True)
    header = ["Metadata_Plate", "Metadata_Well", "Metadata_Site"]
    for channel in CHANNELS:
        header += [f"FileName_Orig{channel}", f"PathName_Orig{channel}"]
    rows = [",".join(header)]
    for well, site in SITES:
        row = [plate, well, str(site)]
        for channel in CHANNELS:
            name = f"{well}_s{site}_{channel}.tif"
            tifffile.imwrite(images / name, rng.poisson(200, size=(64, 64)).astype(np.uint16))
            row += [name, plate]
        rows.append(",".join(row))
    csv = root / f"{plate}.csv"
    csv.write_text("\n".join(rows) + "\n")
    return csv


def base_config(workdir: Path) -> dict:
    csv = write_loaddata_plate(workdir / "plates", "P1", seed=1)
    (workdir / "config").mkdir(exist_ok=True)
    write_plate_sheet(workdir / "config" / "plates.tsv", [sheet_row("P1", csv.relative_to(workdir))])
    return {
        "results": "results",
        "plates": "config/plates.tsv",
        "experiments": {
            EXPERIMENT: {
                "channels": CHANNELS,
                "settings": tiny_experiment()["settings"],
            }
        },
    }


def sheet_row(plate: str, load_data: Path) -> dict:
    return {"experiment": EXPERIMENT, "plate": plate, "format": "loaddata", "load_data": str(load_data)}


def snakemake(workdir: Path, *args: str) -> str:
    result = run_snakemake("--cores", "2", *args, cwd=workdir)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(result.args)} failed ({result.returncode}):\n{result.stdout[-5000:]}\n{result.stderr[-8000:]}")
    return result.stdout + result.stderr


def planned_jobs(workdir: Path, *args: str) -> set[tuple]:
    """(rule, (wildcard, value)...) for each job a dry run would run; the target rule `all` left out."""
    output = snakemake(workdir, "--dry-run", *args)
    jobs = {(rule, *job_wildcards(fields)) for rule, fields in job_blocks(output) if rule != "all"}
    if not jobs:
        assert "Nothing to be done" in output, output[-3000:]
    return jobs


def job_wildcards(fields: dict) -> tuple:
    """((wildcard, value), ...) of a job block's wildcards line; () for a job without one."""
    if "wildcards" not in fields:
        return ()
    return tuple(tuple(item.split("=", 1)) for item in fields["wildcards"].split(", "))


def job(rule, **wildcards):
    return (rule, *((key, value) for key, value in wildcards.items()))


def channel_chain(plate, channel, group=None):
    """The jobs downstream of one channel's raw array: its model, prediction, QC and TIFF export
    (the tiny settings export), plus the plate's LoadData CSV of the exported TIFFs and its OME-Zarr plate."""
    return {
        job("train", experiment=EXPERIMENT, group=group or plate, channel=channel),
        job("predict", experiment=EXPERIMENT, plate=plate, channel=channel),
        job("qc", experiment=EXPERIMENT, plate=plate, channel=channel),
        job("export_tiff", experiment=EXPERIMENT, plate=plate, channel=channel),
        job("export_load_data", experiment=EXPERIMENT, plate=plate),
        job("export_ome_zarr", experiment=EXPERIMENT, plate=plate),
    }


REPORT = job("report", experiment=EXPERIMENT)


def plate_qc(plate):
    """The plate's noise models (one pixel mixing measured across its channels' raw arrays) and so the QC
    of every channel: what a changed raw array of any channel reruns beyond its own chain. QC is cheap;
    training and prediction of the other channels must not rerun."""
    return {job("plate_noise_models", experiment=EXPERIMENT, plate=plate)} | {
        job("qc", experiment=EXPERIMENT, plate=plate, channel=channel) for channel in CHANNELS
    }


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A copy of the workflow that has run the tiny LoadData plate to the end."""
    workdir = tmp_path_factory.mktemp("rerun")
    copy_workflow(workdir, WORKFLOW_PATHS)
    # The config the copy's Snakefile loads (config/config.yaml); variants are full configs given with --configfile.
    config = base_config(workdir)  # writes config/plates.tsv
    with open(workdir / "config" / "config.yaml", "w") as handle:
        yaml.safe_dump(config, handle, sort_keys=False)
    snakemake(workdir)
    return workdir


def merged(base: dict, update: dict) -> dict:
    """``base`` with ``update`` merged in key by key (nested dicts merged, other values replaced)."""
    result = dict(base)
    for key, value in update.items():
        result[key] = merged(result[key], value) if isinstance(value, dict) and isinstance(result.get(key), dict) else value
    return result


def write_variant(workdir: Path, name: str, experiment_update: dict, sheet: str | None = None) -> str:
    """The run's config/config.yaml with ``experiment_update`` merged into the experiment (and its plate
    sheet replaced by ``sheet``), as a full config file for --configfile (which replaces config/config.yaml)."""
    with open(workdir / "config" / "config.yaml") as handle:
        base = yaml.safe_load(handle)
    update = {"experiments": {EXPERIMENT: experiment_update}, **({"plates": sheet} if sheet else {})}
    path = workdir / f"{name}.yaml"
    with open(path, "w") as handle:
        yaml.safe_dump(merged(base, update), handle, sort_keys=False)
    return str(path)


def test_nothing_reruns_when_nothing_changed(finished_run):
    assert planned_jobs(finished_run) == set()


def test_changing_one_channels_n2v_settings_reruns_only_that_channel_and_the_report(finished_run):
    variant = write_variant(finished_run, "dna_n2v", {"channel_settings": {"DNA": {"n2v": {"epochs": 3}}}})
    assert planned_jobs(finished_run, "--configfile", variant) == channel_chain("P1", "DNA") | {REPORT}


def test_changing_one_channels_qc_settings_reruns_only_its_qc_and_the_report(finished_run):
    variant = write_variant(finished_run, "mito_qc", {"channel_settings": {"Mito": {"qc": {"crop_size": 16}}}})
    assert planned_jobs(finished_run, "--configfile", variant) == {
        job("qc", experiment=EXPERIMENT, plate="P1", channel="Mito"), REPORT,
    }


def test_adding_a_plate_runs_only_that_plates_jobs_and_the_report(finished_run):
    plates = finished_run / "plates"
    csv = plates / "P2.csv" if (plates / "P2.csv").exists() else write_loaddata_plate(plates, "P2", seed=2)
    sheet = write_plate_sheet(finished_run / "add_plate.tsv", [sheet_row(name, plates.relative_to(finished_run) / f"{name}.csv")
                                                                for name in ("P1", "P2")])
    variant = write_variant(finished_run, "add_plate", {}, sheet=sheet.name)
    expected = {job("plate_index", experiment=EXPERIMENT, plate="P2"), job("plate_noise_models", experiment=EXPERIMENT, plate="P2"), REPORT}
    for channel in CHANNELS:
        expected.add(job("split_raw", experiment=EXPERIMENT, plate="P2", channel=channel))
        expected |= channel_chain("P2", channel)
    assert planned_jobs(finished_run, "--configfile", variant) == expected


def test_rewriting_one_channel_image_reruns_only_that_channels_split_and_downstream(finished_run):
    image = finished_run / "plates" / "P1" / "B02_s2_DNA.tif"
    original, before = image.read_bytes(), image.stat()
    try:
        # New pixels: Snakemake reruns on a newer input only if its content changed (it keeps
        # checksums of small inputs), so a bare touch would rightly plan nothing.
        tifffile.imwrite(image, np.random.default_rng(99).poisson(300, size=(64, 64)).astype(np.uint16))
        expected = {job("split_raw", experiment=EXPERIMENT, plate="P1", channel="DNA")}
        assert planned_jobs(finished_run) == expected | channel_chain("P1", "DNA") | plate_qc("P1") | {REPORT}
    finally:
        image.write_bytes(original)
        os.utime(image, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert planned_jobs(finished_run) == set()


def test_a_loaddata_table_edited_in_place_with_its_mtime_kept_reruns_the_index(finished_run):
    # cp -p and rsync -a keep the mtime: a row pointing at another image was accepted silently, and
    # the exported table pointed at images denoised from the old files.
    table = finished_run / "plates" / "P1.csv"
    original, before = table.read_text(), table.stat()
    try:
        edited = original.replace("B02_s1_DNA.tif", "B02_s2_DNA.tif", 1)
        assert edited != original and len(edited) == len(original)
        table.write_text(edited)
        os.utime(table, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert job("plate_index", experiment=EXPERIMENT, plate="P1") in planned_jobs(finished_run)
    finally:
        table.write_text(original)
        os.utime(table, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert planned_jobs(finished_run) == set()


def test_editing_the_report_script_reruns_only_the_report(finished_run):
    script = finished_run / "workflow" / "scripts" / "report.py"
    original, before = script.read_text(), script.stat()
    try:
        script.write_text(original + "\n# edited: the report's code changed\n")
        assert planned_jobs(finished_run) == {REPORT}
    finally:
        # Snakemake tells a script's edits by its mtime, so the restore includes the mtime.
        script.write_text(original)
        os.utime(script, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert planned_jobs(finished_run) == set()


def test_job_list_parser_reads_rules_and_wildcards(tmp_path):
    # The parser itself, on a two-job workflow: a wrong parse would make every test above vacuous.
    (tmp_path / "Snakefile").write_text(
        'rule all:\n    input: expand("out/{s}.txt", s=["a", "b"])\n'
        'rule make:\n    output: "out/{s}.txt"\n    shell: "touch {output}"\n'
    )
    assert planned_jobs(tmp_path) == {job("make", s="a"), job("make", s="b")}
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.txt").touch()
    (tmp_path / "out" / "b.txt").touch()
    assert planned_jobs(tmp_path) == set()
