"""Calibration data for the QC flags: each flag's statistic against the true PSNR loss, on synthetic
plates with ground truth (the data the thresholds in workflow/schemas/config.schema.yaml rest on).

For each demo stain and noise kind (``independent``; ``box2x2``, the 2 x 2 pixel mixing of real Opera
Phenix exports), the reference output is BM3D after a generalised Anscombe transform with the true
noise parameters and, for mixed noise, the true noise PSD (bench_noise.py's ``bm3d-gat-true``). Around
it, outputs that lose quality in the way each flag names:

* ``blur s``: the BM3D output blurred with a Gaussian of sigma ``s`` (signal removed: residual_structure);
* ``leak a``: ``bm3d + a (raw - bm3d)``, the raw pixel mixed back with weight ``a`` (noise handed back:
  noise_leak; what the posterior step does with a weight it chose, and a one-pixel blind spot on
  correlated noise without choosing);
* ``shrink a``: ``bm3d + a (clean - bm3d)`` for a < 0, i.e. the output pulled away from the truth
  along its own error, a control that loses PSNR without blurring or leaking.

For each output the script prints the QC statistics (with the noise model the QC stage fits to the raw
images) and ``loss_db`` = PSNR(BM3D) - PSNR(output) against the clean image; negative is better than
BM3D. Run in a venv with bm3d (benchmarks/requirements-bench.txt):

    PYTHONPATH=src python benchmarks/calibrate_qc.py --sites 2 --size 192

Prints a CSV table and writes benchmarks/out/calibrate_qc.csv. Not a test.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).parent))

from bench_noise import make_datasets, run_bm3d  # noqa: E402

from jump_n2v.noise import estimate_noise_model  # noqa: E402
from jump_n2v.qc.measures import image_metrics  # noqa: E402

STATISTICS = ("residual_curvature_corr", "noise_leak", "residual_autocorr_excess_x", "residual_autocorr_excess_y",
              "estimated_gain_db", "mean_shift_relative", "psnr_denoised_db")


def variants(raw: np.ndarray, clean: np.ndarray, bm3d: np.ndarray) -> dict[str, np.ndarray]:
    """The reference and the degraded outputs of one stack (images, Y, X)."""
    out = {"bm3d": bm3d}
    for sigma in (0.5, 0.7, 1.0, 1.5):
        out[f"blur {sigma}"] = np.stack([ndimage.gaussian_filter(image, sigma) for image in bm3d])
    for weight in (0.05, 0.1, 0.2, 0.3, 0.5):
        out[f"leak {weight}"] = bm3d + weight * (raw - bm3d)
    for weight in (-0.3, -1.0):
        out[f"shrink {weight}"] = bm3d + weight * (clean - bm3d)
    return out


def rows_for(kind: str, stain: str, dataset: dict) -> list[dict]:
    raw = dataset["noisy"].astype(np.float64)
    clean = dataset["clean"]
    model = estimate_noise_model(list(dataset["noisy"]))
    bm3d, _ = run_bm3d(dataset["noisy"], dataset["truth"])
    rows = []
    for name, output in variants(raw, clean, bm3d).items():
        metrics = [image_metrics(r, o, c, model) for r, o, c in zip(raw, output, clean)]
        row = {"kind": kind, "stain": stain, "output": name}
        for statistic in STATISTICS:
            row[statistic] = float(np.median([m[statistic] for m in metrics]))
        row["psnr_denoised_db"] = float(np.mean([m["psnr_denoised_db"] for m in metrics]))
        row["psnr_raw_db"] = float(np.mean([m["psnr_raw_db"] for m in metrics]))
        rows.append(row)
    reference = rows[0]["psnr_denoised_db"]
    for row in rows:
        row["loss_db"] = reference - row["psnr_denoised_db"]
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=2)
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default=str(Path(__file__).parent / "out" / "calibrate_qc.csv"))
    args = parser.parse_args(argv)
    if not hasattr(np, "trapz"):
        np.trapz = np.trapezoid
    datasets = make_datasets(args.sites, args.size, args.seed)
    rows = []
    for (kind, stain), dataset in datasets.items():
        rows.extend(rows_for(kind, stain, dataset))
        print(f"{kind} {stain} done", file=sys.stderr, flush=True)
    table = pd.DataFrame(rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    with pd.option_context("display.width", 200, "display.max_rows", 500):
        print(table.round(3).to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
