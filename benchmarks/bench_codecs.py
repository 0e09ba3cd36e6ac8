"""Zarr chunk codecs for the channel stores: size and single-thread encode / decode speed on 1080 x 1080 fields.

Fields: the real Opera Phenix 1080 x 1080 sites of the pe2loaddata 0.2.0 sdist (tests/.cache, Version5:
6 channels, one confluent site; `make test` fetches them) and bench_predict's synthetic site. Each
is coded as

* ``raw uint16``: the field as acquired (what split writes);
* ``denoised float32``: a stand-in for the network's output, the field smoothed with a Gaussian of
  sigma 1.5 px in float32 (smooth, every mantissa bit in use, as a real prediction: an identity
  network's output would be integers in float32, which compress unrealistically well);
* ``denoised uint16``: the same rounded to uint16 (``predict.output_dtype: input``).

Codecs are numcodecs' Zstd and Blosc, the implementations zarr's ZstdCodec and BloscCodec call, run
single-threaded (zarr encodes chunks on its own worker threads, and prediction's dask threads run
several chunks at once). ``zstd level 0`` is zarr 3's default codec (zstd maps level 0 to its
default, 3). MB/s count uncompressed bytes; times are the best of ``--repeats`` runs (the machine may
be loaded: the best run is the one least disturbed), summed over the fields of a kind.

    .venv/bin/python benchmarks/bench_codecs.py --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numcodecs
import numpy as np
import tifffile
from numcodecs import blosc
from scipy.ndimage import gaussian_filter

REPO = Path(__file__).resolve().parents[1]
REAL_FIELDS = REPO / "tests" / ".cache" / "pe2loaddata-0.2.0" / "tests" / "data" / "Version5" / "images"
sys.path.insert(0, str(Path(__file__).parent))

CODECS = {
    "zstd level 0 (zarr default)": numcodecs.Zstd(level=0),
    "zstd level 1": numcodecs.Zstd(level=1),
    "blosc lz4 5 byteshuffle": numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE),
    "blosc lz4 5 bitshuffle": numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.BITSHUFFLE),
    "blosc lz4 1 byteshuffle": numcodecs.Blosc(cname="lz4", clevel=1, shuffle=numcodecs.Blosc.SHUFFLE),
    "blosc zstd 1 byteshuffle": numcodecs.Blosc(cname="zstd", clevel=1, shuffle=numcodecs.Blosc.SHUFFLE),
}


def fields() -> dict[str, list[np.ndarray]]:
    """Field kind -> the 1080 x 1080 fields of that kind (real ones first, then the synthetic one)."""
    from bench_predict import synthetic_image

    raw = [tifffile.imread(path) for path in sorted(REAL_FIELDS.glob("*.tiff"))]
    if not raw:
        print(f"note: no real fields in {REAL_FIELDS} (run tests/fetch_real_fields.sh); synthetic only")
    raw.append(np.clip(synthetic_image(1080), 0, 65535).astype(np.uint16))
    smooth = [gaussian_filter(field.astype(np.float32), sigma=1.5) for field in raw]
    return {
        "raw uint16": raw,
        "denoised float32": smooth,
        "denoised uint16": [np.clip(np.rint(field), 0, 65535).astype(np.uint16) for field in smooth],
    }


def best_seconds(function, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def measure(codec, images: list[np.ndarray], repeats: int) -> dict:
    total = sum(image.nbytes for image in images)
    encoded = [codec.encode(image) for image in images]
    for image, frame in zip(images, encoded):  # lossless, or the speed means nothing
        np.testing.assert_array_equal(np.frombuffer(codec.decode(frame), dtype=image.dtype).reshape(image.shape), image)
    encode = best_seconds(lambda: [codec.encode(image) for image in images], repeats)
    decode = best_seconds(lambda: [codec.decode(frame) for frame in encoded], repeats)
    return {
        "ratio": total / sum(len(frame) for frame in encoded),
        "encode_mb_s": total / encode / 1e6,
        "decode_mb_s": total / decode / 1e6,
        "encode_ms_per_field": 1e3 * encode / len(images),
        "decode_ms_per_field": 1e3 * decode / len(images),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    blosc.use_threads = False  # one core per chunk, as inside zarr's and dask's thread pools
    kinds = fields()
    results = {"load_average_1min": os.getloadavg()[0], "fields_per_kind": len(kinds["raw uint16"]), "kinds": {}}
    print(f"{len(kinds['raw uint16'])} fields of 1080 x 1080 per kind; load average {os.getloadavg()[0]:.2f}")
    print("| field | codec | ratio | encode MB/s | decode MB/s | encode ms/field | decode ms/field |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for kind, images in kinds.items():
        results["kinds"][kind] = {}
        for name, codec in CODECS.items():
            row = measure(codec, images, args.repeats)
            results["kinds"][kind][name] = row
            print(f"| {kind} | {name} | {row['ratio']:.2f} | {row['encode_mb_s']:.0f} | {row['decode_mb_s']:.0f} | "
                  f"{row['encode_ms_per_field']:.1f} | {row['decode_ms_per_field']:.1f} |")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
