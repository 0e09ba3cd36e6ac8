"""Plates on S3: planning a full plate from s3://, and split throughput from S3 against local disk.

Both parts use moto's standalone S3 server on 127.0.0.1 (the one the tests use), so the figures
measure this code plus a loopback HTTP server written in Python, not a network.

1. Planning: 17,280 small objects (384 wells x 9 sites x 5 channels, Gallery layout, one Images/
   folder) and the plate's load_data_with_illum.csv.gz are put in the server. The plate index (a
   checkpoint) is built once, then ``snakemake --dry-run`` plans the whole workflow, with each split
   job's fingerprint of its channel's objects; the median of --repeats runs is reported, with the
   S3 requests one dry run sent (from the server's request log) and the time the same listing
   takes alone (so the server's share of a dry run is visible; moto answers a LIST page of a
   17,280-object bucket far more slowly than AWS does).
2. Split: --images JUMP-like 1080 x 1080 uint16 LZW TIFFs (bench_split.py's generator) are split
   into Zarr from local disk and from the server, alternating, --rounds times (the first warms
   caches); medians of the later rounds.

    .venv/bin/python benchmarks/bench_s3.py [--part plan|split|both] [--repeats 3] [--images 100] [--threads 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import gzip
import json
import re
import shutil
import statistics
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "benchmarks")]

from bench_split import make_plate  # noqa: E402
from s3_server import moto_server, public_bucket, s3_client  # noqa: E402

from jump_n2v.config import write_plate_sheet  # noqa: E402
from jump_n2v.ingest import discover_plate, split_channel  # noqa: E402
from jump_n2v.plumbing.storage import list_objects, storage_settings  # noqa: E402

BUCKET = "cellpainting-gallery"
CHANNELS = {"DNA": 5, "ER": 2, "RNA": 3, "AGP": 4, "Mito": 1}
FOLDER = "cpg0016-jump/source_4/images/2021_07_12_Batch8/images/BR00000001__2021-07-17T15_13_21-Measurement 1/Images"
TABLE_KEY = "cpg0016-jump/source_4/workspace/load_data_csv/2021_07_12_Batch8/BR00000001/load_data_with_illum.csv.gz"
REQUEST = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/1\.[01]"')


def put_many(client, items, workers=16) -> None:
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(lambda item: client.put_object(Bucket=BUCKET, Key=item[0], Body=item[1]), items):
            pass


def count_requests(log: Path, start: int) -> dict[str, int]:
    """Requests in the server log after byte ``start``: LIST, GET object, HEAD, other."""
    counts = collections.Counter()
    with open(log, "rb") as handle:
        handle.seek(start)
        for line in handle.read().decode(errors="replace").splitlines():
            match = REQUEST.search(line)
            if not match:
                continue
            method, path = match["method"], match["path"]
            kind = "LIST" if "list-type=2" in path else {"GET": "GET object", "HEAD": "HEAD"}.get(method, method)
            counts[kind] += 1
    return dict(counts)


def snakemake(workdir: Path, config: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
               "--configfile", str(config), "--cores", "1", *args]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def bench_plan(root: Path, repeats: int) -> dict:
    log = root / "moto-plan.log"
    with moto_server(log) as endpoint:
        client = s3_client(endpoint)
        public_bucket(client, BUCKET)
        rows, objects = [], []
        for row_letter in string.ascii_uppercase[:16]:
            for column in range(1, 25):
                for site in range(1, 10):
                    record = {"Metadata_Source": "source_4", "Metadata_Plate": "BR00000001",
                              "Metadata_Well": f"{row_letter}{column:02d}", "Metadata_Site": site}
                    r = ord(row_letter) - ord("A") + 1
                    for channel, number in CHANNELS.items():
                        name = f"r{r:02d}c{column:02d}f{site:02d}p01-ch{number}sk1fk1fl1.tiff"
                        record[f"FileName_Orig{channel}"] = name
                        record[f"PathName_Orig{channel}"] = f"s3://{BUCKET}/{FOLDER}"
                        objects.append((f"{FOLDER}/{name}", b"placeholder: the dry run never reads it"))
                    rows.append(record)
        started = time.perf_counter()
        put_many(client, objects)
        client.put_object(Bucket=BUCKET, Key=TABLE_KEY, Body=gzip.compress(pd.DataFrame(rows).to_csv(index=False).encode()))
        upload_s = time.perf_counter() - started
        storage = {"endpoint_url": endpoint}
        sheet = write_plate_sheet(root / "plates.tsv", [{"experiment": "bench", "plate": "BR00000001", "format": "loaddata",
                                                         "load_data": f"s3://{BUCKET}/{TABLE_KEY}"}])
        config = {"results": str(root / "results"), "plates": str(sheet),
                  "experiments": {"bench": {"channels": list(CHANNELS), "storage": storage}}}
        config_path = root / "config.yaml"
        config_path.write_text(json.dumps(config))
        started = time.perf_counter()
        snakemake(root, config_path, str(root / "results" / "bench" / "BR00000001" / "index.csv"))
        index_s = time.perf_counter() - started
        timings, requests = [], {}
        for _ in range(repeats):
            offset = log.stat().st_size
            started = time.perf_counter()
            output = snakemake(root, config_path, "--dry-run")
            timings.append(time.perf_counter() - started)
            time.sleep(0.5)  # let the server flush its log
            requests = count_requests(log, offset)
        # The listing alone, in this process: how much of a dry run is the server answering LISTs.
        index = pd.read_csv(root / "results" / "bench" / "BR00000001" / "index.csv", dtype=str)
        urls = [url for channel in CHANNELS for url in index[f"source_{channel}"]]
        started = time.perf_counter()
        listed = list_objects(urls, storage_settings({"storage": storage}))
        listing_s = time.perf_counter() - started
        assert len(listed) == len(objects) and "missing" not in listed.values()
        jobs = re.findall(r"^(split_raw|train|predict|qc|report)\s+(\d+)$", output.stdout + output.stderr, re.M)
    return {
        "part": "plan", "sites": len(rows), "objects": len(objects), "upload_s": round(upload_s, 1),
        "plate_index_run_s": round(index_s, 2), "dry_run_s": [round(t, 2) for t in timings],
        "dry_run_median_s": round(statistics.median(timings), 2), "requests_per_dry_run": requests,
        "listing_alone_s": round(listing_s, 2), "put_one_by_one_per_s": round(len(objects) / upload_s, 1),
        "jobs_planned": dict((rule, int(count)) for rule, count in jobs),
    }


def time_split(index, plate_cfg, out: Path, threads: int) -> float:
    if out.exists():
        shutil.rmtree(out)
    started = time.perf_counter()
    split_channel(index, "DNA", experiment="bench", plate="BR00000001", plate_cfg=plate_cfg, channel_order=None,
                  ingest={}, out_zarr=out / "DNA.zarr", rejects_csv=out / "DNA.csv", threads=threads,
                  log=lambda message: None)
    return time.perf_counter() - started


def bench_split(root: Path, images: int, side: int, threads: int, rounds: int) -> dict:
    csv = make_plate(root / "plate", images, side)
    table = pd.read_csv(csv)
    folder = csv.parent / table.PathName_OrigDNA[0]
    file_mb = sum(path.stat().st_size for path in folder.iterdir()) / 1e6
    decoded_mb = images * side * side * 2 / 1e6
    with moto_server() as endpoint:
        client = s3_client(endpoint)
        public_bucket(client, BUCKET)
        put_many(client, [(f"bench/{name}", (folder / name).read_bytes()) for name in table.FileName_OrigDNA], workers=4)
        s3_table = table.assign(PathName_OrigDNA=f"s3://{BUCKET}/bench")
        s3_table.to_csv(root / "s3.csv", index=False)
        disk_cfg = {"format": "loaddata", "load_data": str(csv)}
        s3_cfg = {"format": "loaddata", "load_data": str(root / "s3.csv"), "storage": {"endpoint_url": endpoint}}
        disk_index = discover_plate("BR00000001", disk_cfg, ["DNA"])
        s3_index = discover_plate("BR00000001", s3_cfg, ["DNA"])
        disk_s, s3_s = [], []
        for _ in range(rounds):
            disk_s.append(time_split(disk_index, disk_cfg, root / "out-disk", threads))
            s3_s.append(time_split(s3_index, s3_cfg, root / "out-s3", threads))
    disk, s3 = statistics.median(disk_s[1:] or disk_s), statistics.median(s3_s[1:] or s3_s)
    return {
        "part": "split", "images": images, "side": side, "threads": threads, "concurrency": 16,
        "file_mb": round(file_mb, 1), "decoded_mb": round(decoded_mb, 1),
        "disk_s": [round(t, 2) for t in disk_s], "s3_s": [round(t, 2) for t in s3_s],
        "disk_images_per_s": round(images / disk, 1), "disk_mb_per_s": round(decoded_mb / disk, 1),
        "s3_images_per_s": round(images / s3, 1), "s3_mb_per_s": round(decoded_mb / s3, 1),
        "s3_file_mb_per_s": round(file_mb / s3, 1), "ratio_s3_over_disk": round(disk / s3, 2),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["plan", "split", "both"], default="both")
    parser.add_argument("--repeats", type=int, default=3, help="dry runs (median reported)")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--side", type=int, default=1080)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="(disk, s3) split rounds; the first warms caches")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="bench_s3_"))
    try:
        if args.part in ("plan", "both"):
            (root / "plan").mkdir()
            print(json.dumps(bench_plan(root / "plan", args.repeats)), flush=True)
        if args.part in ("split", "both"):
            (root / "split").mkdir()
            print(json.dumps(bench_split(root / "split", args.images, args.side, args.threads, args.rounds)), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
