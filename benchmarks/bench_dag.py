"""How long Snakemake takes to plan a full plate: `snakemake --dry-run` over 384 wells x 9 sites x 5 channels.

Placeholder (empty) image files stand in for the plate; the dry run never opens them. Two layouts:

* loaddata:   a LoadData CSV of 3,456 rows x 5 channels pointing at 17,280 single-channel files;
* hyperstack: 3,456 multi-channel files found by a {well}/{site} pattern.

For each, the plate index (a checkpoint, which only reads the CSV or globs the pattern) is built
once for real, then `snakemake --dry-run` plans the whole workflow: split, train, predict, QC and
report, with every split job depending on its channel's 3,456 source files. The time is the median
of several runs (the first also warms the OS file cache). Target: under 10 s.

    .venv/bin/python benchmarks/bench_dag.py [--repeats 5] [--layout loaddata|hyperstack|both] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from jump_n2v.config import write_plate_sheet

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "Snakefile" if (REPO / "Snakefile").exists() else REPO / "workflow" / "Snakefile"
CHANNELS = ["DNA", "ER", "RNA", "AGP", "Mito"]
ROWS = string.ascii_uppercase[:16]  # A..P
COLUMNS = range(1, 25)  # 1..24
SITES = range(1, 10)
TARGET_SECONDS = 10.0


def wells():
    return [f"{row}{column:02d}" for row in ROWS for column in COLUMNS]


def make_loaddata_plate(root: Path, plate: str) -> dict:
    """Empty per-channel TIFFs and the LoadData CSV naming them; returns its plate sheet cells."""
    images = root / "images"
    images.mkdir(parents=True)
    header = ["Metadata_Plate", "Metadata_Well", "Metadata_Site"]
    for channel in CHANNELS:
        header += [f"FileName_Orig{channel}", f"PathName_Orig{channel}"]
    lines = [",".join(header)]
    for well in wells():
        for site in SITES:
            row = [plate, well, str(site)]
            for index, channel in enumerate(CHANNELS, start=1):
                name = f"{plate}_{well}_s{site}_w{index}.tif"
                (images / name).touch()
                row += [name, str(images)]
            lines.append(",".join(row))
    csv = root / "load_data.csv"
    csv.write_text("\n".join(lines) + "\n")
    return {"format": "loaddata", "load_data": str(csv)}


def make_hyperstack_plate(root: Path, plate: str) -> dict:
    """Empty multi-channel TIFFs found by a {well}_s{site} pattern; returns its plate sheet cells."""
    images = root / "images"
    images.mkdir(parents=True)
    for well in wells():
        for site in SITES:
            (images / f"{well}_s{site}.tif").touch()
    return {"format": "hyperstack", "pattern": str(images / "{well}_s{site}.tif")}


def snakemake(workdir: Path, config: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE), "--directory", str(workdir),
               "--configfile", str(config), "--cores", "1", *args]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def count_jobs(dry_run_output: str) -> dict[str, int]:
    """Jobs per rule from the dry run's job stats table ('job  count' lines up to 'total')."""
    counts, in_table = {}, False
    for line in dry_run_output.splitlines():
        parts = line.split()
        if parts[:2] == ["job", "count"]:
            in_table = True
            continue
        if in_table and len(parts) == 2 and parts[1].isdigit():
            if parts[0] == "total":
                break
            counts[parts[0]] = int(parts[1])
    return counts


def bench_layout(layout: str, root: Path, repeats: int) -> dict:
    workdir = root / layout
    workdir.mkdir(parents=True)
    plate = "BenchPlate"
    started = time.perf_counter()
    plate_cfg = (make_loaddata_plate if layout == "loaddata" else make_hyperstack_plate)(workdir / "plate", plate)
    setup_seconds = time.perf_counter() - started
    sheet = write_plate_sheet(workdir / "plates.tsv", [{"experiment": "bench", "plate": plate, **plate_cfg}])
    config = {"results": str(workdir / "results"), "plates": str(sheet), "experiments": {"bench": {"channels": CHANNELS}}}
    config_path = workdir / "config.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    # Only the index (a checkpoint) is built for real; everything downstream is planned.
    index = workdir / "results" / "bench" / plate / "index.csv"
    started = time.perf_counter()
    snakemake(workdir, config_path, str(index))
    index_seconds = time.perf_counter() - started
    index_rows = sum(1 for _ in index.open()) - 1

    timings, counts = [], {}
    for _ in range(repeats):
        started = time.perf_counter()
        result = snakemake(workdir, config_path, "--dry-run")
        timings.append(time.perf_counter() - started)
        counts = count_jobs(result.stdout + result.stderr)
    return {
        "layout": layout,
        "images": index_rows,
        "source_files": index_rows * (len(CHANNELS) if layout == "loaddata" else 1),
        "placeholder_setup_s": round(setup_seconds, 2),
        "plate_index_run_s": round(index_seconds, 2),
        "dry_run_s": [round(t, 2) for t in timings],
        "dry_run_median_s": round(statistics.median(timings), 2),
        "jobs_planned": counts,
        "under_target": statistics.median(timings) < TARGET_SECONDS,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="dry runs per layout (median reported)")
    parser.add_argument("--layout", choices=["loaddata", "hyperstack", "both"], default="both")
    parser.add_argument("--keep", type=Path, help="build the placeholder plates here and keep them")
    args = parser.parse_args(argv)
    layouts = ["loaddata", "hyperstack"] if args.layout == "both" else [args.layout]
    # Snakemake's own start-up (imports) is paid by every run, whatever the plate size.
    startup = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "snakemake", "--version"], capture_output=True, check=True)
        startup.append(time.perf_counter() - started)
    print(json.dumps({"snakemake_startup_median_s": round(statistics.median(startup), 2)}))
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench_dag_"))
    try:
        results = [bench_layout(layout, root, args.repeats) for layout in layouts]
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    for result in results:
        print(json.dumps(result))
    return 0 if all(result["under_target"] for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
