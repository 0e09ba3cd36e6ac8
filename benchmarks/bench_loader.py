"""Training-patch loader throughput, without a network: how fast PatchSampler delivers batches.

Wall-clock rates depend on what else runs on the machine, so the CPU-time rate (patches per second
of CPU used by all loader threads) is reported beside them, with the load average at the start.

Builds ``--images`` synthetic uint16 images of ``--size`` x ``--size`` in a Zarr array written the way
the split writes it (one Blosc-lz4 chunk per image), then times whole epochs of ``batches()`` (the
iterator training consumes: read, augment, normalise) for each loader mode. Reports patches/s.

    .venv/bin/python benchmarks/bench_loader.py                 # 32 images of 1080x1080, 64x64 patches

Prints a markdown table and writes benchmarks/out/bench_loader.json. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

from jump_n2v.ingest.split import COMPRESSOR, chunk_shape
from jump_n2v.n2v.sampling import PatchSampler


def make_array(path: Path, images: int, size: int, seed: int) -> zarr.Array:
    rng = np.random.default_rng(seed)
    array = zarr.create_array(
        str(path), shape=(images, size, size), chunks=chunk_shape(size, size), dtype="uint16", compressors=COMPRESSOR
    )
    for image in range(images):
        background = rng.poisson(200, (size, size)).astype(np.uint16)
        array[image] = background
    return array


def time_loader(array, args, memory_mb: int) -> dict:
    started = time.perf_counter()
    sampler = PatchSampler(
        [array], patch_size=args.patch_size, train_images=args.images, validation_fraction=0.1,
        validation_patches=256, augment=True, seed=0, memory_mb=memory_mb,
    )
    setup = time.perf_counter() - started
    rates, cpu_rates = [], []
    for epoch in range(args.epochs):
        plan = sampler.epoch_plan(epoch, args.steps, args.batch_size)
        started, cpu_started = time.perf_counter(), time.process_time()
        count = sum(len(batch) for batch in sampler.batches(plan))
        rates.append(count / (time.perf_counter() - started))
        cpu_rates.append(count / (time.process_time() - cpu_started))
    return {"mode": "in memory" if sampler.in_memory else "lazy (Zarr reads)", "setup_s": round(setup, 2),
            "patches_per_s": round(float(np.median(rates))),
            "patches_per_cpu_s": round(float(np.median(cpu_rates)))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--size", type=int, default=1080)
    parser.add_argument("--patch-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        array = make_array(Path(folder) / "bench.zarr", args.images, args.size, seed=0)
        results = [time_loader(array, args, memory_mb=0), time_loader(array, args, memory_mb=4096)]
    print(f"{args.images} images of {args.size}x{args.size} uint16, {args.patch_size}x{args.patch_size} patches, "
          f"batch {args.batch_size}, {os.cpu_count()} CPU(s), load average {load:.1f}\n")
    print("| loader | setup (s) | patches/s (wall) | patches per CPU-second |\n|---|---|---|---|")
    for row in results:
        print(f"| {row['mode']} | {row['setup_s']} | {row['patches_per_s']:,} | {row['patches_per_cpu_s']:,} |")
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "bench_loader.json").write_text(json.dumps({"args": vars(args), "load_average": load, "results": results}, indent=2))


if __name__ == "__main__":
    main()
