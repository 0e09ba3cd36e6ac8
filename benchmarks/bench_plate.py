"""A whole plate's shape through the real SLURM cluster: 384 wells x 9 sites x 5 channels (17,280 files).

Generates a LoadData plate of small single-channel uint16 TIFFs (``--size`` px, default 128; Poisson-
Gaussian noise over a few demo-plate renderings reused across sites), then runs the workflow with
``snakemake --profile`` on the single-node SLURM cluster of tests/slurm/cluster.sh (the test copy of
slurm/config.yaml: no conda, squeue status) with tiny n2v settings and TIFF export on. Reports:

* dry-run time of the whole plan (before the run) and of the finished plate (nothing to do);
* wall time per stage and peak RSS per job (Snakemake's benchmark TSVs), jobs submitted to SLURM;
* files written under results/, the report's size and its load time in headless Chromium.

Run it at two sizes to see whether memory stays flat in the number of sites:

    .venv/bin/python benchmarks/bench_plate.py                    # the full plate shape
    .venv/bin/python benchmarks/bench_plate.py --wells 48         # an eighth of it

Needs root (the cluster's daemons) and Chromium for the load time. Writes benchmarks/out/bench_plate*.json.
Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from test_slurm import CLUSTER_SH, CLUSTER_STATE, WORKFLOW_PATHS, make_test_profile, rule_of, scontrol_jobs  # noqa: E402
from workflow_copy import copy_workflow  # noqa: E402

from jump_n2v.config import write_plate_sheet  # noqa: E402
from jump_n2v.demo import DemoSpec, render_site  # noqa: E402

CHANNELS = ["DNA", "ER", "RNA", "AGP", "Mito"]
PLATE = "BenchPlate"
TEMPLATES = 8  # distinct clean sites; every file gets its own noise


def plate_wells(count: int) -> list[str]:
    wells = [f"{row}{column:02d}" for row in string.ascii_uppercase[:16] for column in range(1, 25)]
    return wells[:count]


def make_plate(root: Path, wells: int, sites: int, size: int, seed: int) -> tuple[Path, int]:
    """Single-channel TIFFs and a LoadData CSV naming them; returns the CSV and the file count."""
    spec = DemoSpec(size=size, cells_per_site=4, seed=seed)
    rng = np.random.default_rng(seed)
    templates = [render_site(spec, rng) for _ in range(TEMPLATES)]
    images = root / "images"
    images.mkdir(parents=True)
    rows, files = [], 0
    for well in plate_wells(wells):
        for site in range(1, sites + 1):
            clean = templates[rng.integers(TEMPLATES)]
            row = {"Metadata_Plate": PLATE, "Metadata_Well": well, "Metadata_Site": site}
            for number, channel in enumerate(CHANNELS, start=1):
                raw = spec.gain * rng.poisson(clean[channel]) + spec.offset + rng.normal(0, spec.read_noise, (size, size))
                name = f"{PLATE}_{well}_s{site}_w{number}.tif"
                tifffile.imwrite(images / name, np.clip(np.rint(raw), 0, 65535).astype(np.uint16))
                row[f"FileName_Orig{channel}"], row[f"PathName_Orig{channel}"] = name, str(images)
                files += 1
            rows.append(row)
    csv = root / "load_data.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return csv, files


def workflow_config(results: Path, load_data: Path, sheet: Path) -> dict:
    """The benchmark's config; writes its plate sheet (the one plate) at ``sheet``."""
    write_plate_sheet(sheet, [{"experiment": "bench", "plate": PLATE, "format": "loaddata", "load_data": str(load_data)}])
    return {
        "results": str(results),
        "plates": str(sheet),
        "experiments": {"bench": {
            "channels": CHANNELS,
            "settings": {
                "n2v": {"base_filters": 8, "batch_size": 8, "patch_size": 32, "epochs": 2, "steps_per_epoch": 10,
                        "validation_patches": 16, "train_images": 16},
                "predict": {"tile_size": 256}, "export": {"export_tiff": True},
            },
        }},
    }


def timed(command: list[str], cwd: Path, env: dict) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    return time.perf_counter() - started, result


def stage_table(results: Path) -> pd.DataFrame:
    """One row per job benchmark TSV: rule, wall seconds, peak RSS (MB)."""
    rows = []
    for tsv in sorted((results / "bench" / "benchmarks").rglob("*.tsv")):
        frame = pd.read_csv(tsv, sep="\t")
        rule = tsv.relative_to(results / "bench" / "benchmarks").parts[0]
        rows.append({"rule": rule, "job": str(tsv.relative_to(results)), "s": float(frame["s"].iloc[-1]),
                     "max_rss_mb": float(frame["max_rss"].iloc[-1])})
    return pd.DataFrame(rows)


def chromium_load_seconds(report: Path) -> float | None:
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        return None
    with tempfile.TemporaryDirectory() as profile:
        started = time.perf_counter()
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={profile}", "--dump-dom", report.as_uri()],
                       capture_output=True, timeout=600, check=True)
        return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wells", type=int, default=384)
    parser.add_argument("--sites", type=int, default=9)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--keep", type=Path, help="work here and keep everything (default: a temporary folder)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_plate: the SLURM test cluster needs root")
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench_plate_"))
    workdir = root / "work"
    workdir.mkdir(parents=True, exist_ok=True)
    summary: dict = {"wells": args.wells, "sites": args.sites, "channels": len(CHANNELS), "size": args.size}
    started = time.perf_counter()
    load_data, summary["source_files"] = make_plate(root / "plate", args.wells, args.sites, args.size, seed=0)
    summary["generate_s"] = round(time.perf_counter() - started, 1)

    copy_workflow(workdir, WORKFLOW_PATHS)
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(workflow_config(workdir / "results", load_data, workdir / "config" / "plates.tsv")))
    profile = make_test_profile(workdir / "slurm-test")
    subprocess.run([str(CLUSTER_SH), "start", str(CLUSTER_STATE)], check=True, capture_output=True, timeout=900)
    env = {**os.environ, "SLURM_CONF": str(CLUSTER_STATE / "slurm.conf"), "PYTHONUNBUFFERED": "1"}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    snakemake = [sys.executable, "-m", "snakemake", "--profile", str(profile)]

    seconds, result = timed([*snakemake, "--dry-run"], workdir, env)
    summary["dry_run_before_s"] = round(seconds, 2)
    seconds, result = timed(snakemake, workdir, env)
    summary["run_s"] = round(seconds, 1)
    if result.returncode != 0:
        print(result.stdout[-4000:], result.stderr[-8000:], file=sys.stderr)
        raise SystemExit(f"snakemake --profile failed ({result.returncode}); kept {root}")
    seconds, result = timed([*snakemake, "--dry-run"], workdir, env)
    summary["dry_run_after_s"] = round(seconds, 2)
    summary["nothing_to_do_after"] = "Nothing to be done" in result.stdout + result.stderr

    jobs = [job for job in scontrol_jobs(env) if Path(job.get("WorkDir", "")) == workdir]
    summary["slurm_jobs"] = {}
    for job in jobs:
        summary["slurm_jobs"][rule_of(job)] = summary["slurm_jobs"].get(rule_of(job), 0) + 1
    # slurmctld forgets finished jobs after MinJobAge (1 h), so the per-rule counts above miss the
    # early jobs of a longer run; the job-completion log keeps every job (but not its rule).
    completions = (CLUSTER_STATE / "jobcomp.log").read_text().splitlines()
    summary["slurm_jobs_total"] = sum(1 for line in completions if f" WorkDir={workdir} " in line)
    stages = stage_table(workdir / "results")
    summary["stages"] = (
        stages.groupby("rule").agg(jobs=("s", "size"), wall_s_max=("s", "max"), wall_s_sum=("s", "sum"),
                                   max_rss_mb=("max_rss_mb", "max")).round(1).reset_index().to_dict("records")
    )
    results = workdir / "results"
    summary["files_written"] = sum(1 for path in results.rglob("*") if path.is_file())
    report = results / "bench" / "report" / "report.html"
    summary["report_mb"] = round(report.stat().st_size / 2**20, 2)
    load = chromium_load_seconds(report)
    summary["report_chromium_load_s"] = None if load is None else round(load, 2)

    out = REPO / "benchmarks" / "out"
    out.mkdir(exist_ok=True)
    (out / f"bench_plate_{args.wells}x{args.sites}.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
