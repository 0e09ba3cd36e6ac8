"""Does split_channel keep up with simply reading the TIFFs?

Generates a JUMP-like plate channel: N single-channel 1080x1080 uint16 LZW TIFFs with smooth cells
plus Poisson and read noise (so LZW compresses them as it does real images) and a LoadData CSV. Then,
alternating, (a) reads every file with tifffile.imread in a pool of T threads and (b) runs
split_channel on the same files with T threads into a Zarr array. The first round warms the page
cache; the reported figures are medians of the later rounds. On a shared machine the wall-clock
ratio is noisy: the per-round ratio (read and split back to back) and the CPU-time ratio are steadier.
Target: split throughput / read throughput >= 0.8.

    .venv/bin/python benchmarks/bench_split.py --images 200 --threads 2 --rounds 3
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from scipy import ndimage

from jump_n2v.ingest import discover_plate, split_channel
from jump_n2v.ingest import split as split_module
from zarr.codecs import BloscCodec, ZstdCodec

CODECS = {
    "blosc-lz4": BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),
    "blosc-zstd1": BloscCodec(cname="zstd", clevel=1, shuffle="shuffle"),
    "zstd1": ZstdCodec(level=1),
}


def cell_image(rng: np.random.Generator, side: int, cells: int = 60) -> np.ndarray:
    """Blurred bright nuclei on a flat background with shot and read noise, as uint16."""
    centres = np.zeros((side, side), np.float32)
    rows, columns = rng.integers(0, side, (2, cells))
    centres[rows, columns] = rng.uniform(3e5, 8e5, cells)
    clean = 300.0 + ndimage.gaussian_filter(centres, 12)
    noisy = rng.poisson(clean).astype(np.float32) + rng.normal(0.0, 8.0, clean.shape)
    return np.clip(noisy, 0, 65535).astype(np.uint16)


def make_plate(folder: Path, images: int, side: int) -> Path:
    """Write the TIFFs (in a folder with a space, like real plate folders) and their LoadData CSV."""
    image_folder = folder / "BR00000001 images"
    image_folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for number in range(images):
        well = f"{'ABCDEFGHIJKLMNOP'[number // 9 // 24 % 16]}{number // 9 % 24 + 1:02d}"
        site = number % 9 + 1
        name = f"r{number:04d}-ch1.tiff"
        tifffile.imwrite(image_folder / name, cell_image(rng, side), compression="lzw")
        rows.append({"Metadata_Plate": "BR00000001", "Metadata_Well": well, "Metadata_Site": site,
                     "FileName_OrigDNA": name, "PathName_OrigDNA": image_folder.name})
    csv = folder / "load_data.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return csv


def reusable(csv: Path, images: int, side: int) -> bool:
    """A plate left in --workdir by an earlier run with the same size is measured again, not regenerated."""
    if not csv.is_file():
        return False
    table = pd.read_csv(csv)
    if len(table) != images:
        return False
    first = csv.parent / table.PathName_OrigDNA[0] / table.FileName_OrigDNA[0]
    return first.is_file() and tifffile.TiffFile(first).pages.first.shape == (side, side)


def time_plain_read(paths: list[str], threads: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of all threads) to decode every file."""
    started, cpu = time.perf_counter(), time.process_time()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(lambda path: tifffile.imread(path, maxworkers=1), paths):
            pass
    return time.perf_counter() - started, time.process_time() - cpu


def time_split(index: pd.DataFrame, out: Path, threads: int) -> tuple[float, float]:
    if out.exists():
        shutil.rmtree(out)
    started, cpu = time.perf_counter(), time.process_time()
    split_channel(index, "DNA", experiment="bench", plate="BR00000001", plate_cfg={"format": "loaddata"},
                  channel_order=None, ingest={}, out_zarr=out / "DNA.zarr", rejects_csv=out / "DNA.csv",
                  threads=threads, log=lambda message: None)
    return time.perf_counter() - started, time.process_time() - cpu


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--side", type=int, default=1080)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of (read, split); the first warms the cache")
    parser.add_argument("--codecs", nargs="+", default=["blosc-lz4"], choices=sorted(CODECS),
                        help="Zarr compressors to measure the split with (blosc-lz4 is the one split uses)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where to write the plate (kept, and reused by a later run); default: a temp dir, removed")
    arguments = parser.parse_args()

    workdir = arguments.workdir or Path(tempfile.mkdtemp(prefix="bench-split-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        csv = workdir / "load_data.csv"
        if not reusable(csv, arguments.images, arguments.side):
            started = time.perf_counter()
            csv = make_plate(workdir, arguments.images, arguments.side)
            print(f"generated {arguments.images} images in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        index = discover_plate("BR00000001", {"format": "loaddata", "load_data": str(csv)}, ["DNA"])
        paths = index["source_DNA"].tolist()
        decoded_mb = arguments.images * arguments.side**2 * 2 / 1e6
        file_mb = sum(os.path.getsize(path) for path in paths) / 1e6
        reads, splits = [], {name: [] for name in arguments.codecs}
        zarr_mb = {}
        for _ in range(arguments.rounds):
            reads.append(time_plain_read(paths, arguments.threads))
            for name in arguments.codecs:
                split_module.COMPRESSOR = CODECS[name]
                splits[name].append(time_split(index, workdir / f"zarr-{name}", arguments.threads))
                zarr_mb[name] = folder_bytes(workdir / f"zarr-{name}" / "DNA.zarr") / 1e6
        warm = slice(1, None) if arguments.rounds > 1 else slice(None)
        read_wall = [wall for wall, _ in reads]
        read_seconds = statistics.median(read_wall[warm])
        read_cpu = statistics.median([cpu for _, cpu in reads][warm])
        report = {
            "images": arguments.images,
            "side": arguments.side,
            "threads": arguments.threads,
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
            "decoded_mb": round(decoded_mb, 1),
            "tiff_lzw_mb": round(file_mb, 1),
            "read": {"seconds": [round(s, 3) for s in read_wall], "mb_per_s": round(decoded_mb / read_seconds, 1),
                     "images_per_s": round(arguments.images / read_seconds, 1),
                     "cpu_ms_per_image": round(read_cpu / arguments.images * 1e3, 2)},
        }
        for name in arguments.codecs:
            split_wall = [wall for wall, _ in splits[name]]
            split_seconds = statistics.median(split_wall[warm])
            split_cpu = statistics.median([cpu for _, cpu in splits[name]][warm])
            # Read and split of one round ran back to back, under the same load from other processes.
            paired = [read / split for read, split in zip(read_wall, split_wall)][warm]
            report[f"split[{name}]"] = {
                "seconds": [round(s, 3) for s in split_wall],
                "mb_per_s": round(decoded_mb / split_seconds, 1),
                "images_per_s": round(arguments.images / split_seconds, 1),
                "cpu_ms_per_image": round(split_cpu / arguments.images * 1e3, 2),
                "zarr_mb": round(zarr_mb[name], 1),
                "ratio_to_read": round(read_seconds / split_seconds, 3),
                "ratio_to_read_per_round_median": round(statistics.median(paired), 3),
                "cpu_ratio_read_to_split": round(read_cpu / split_cpu, 3),
            }
        print(json.dumps(report, indent=2))
    finally:
        if arguments.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
