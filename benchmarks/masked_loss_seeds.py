"""How the training-data check's masked loss moves between patch seeds on one image, capped and uncapped.

A model's own training image should read the same on every seed. Seed 0's errors give the cap (their 99th
percentile, as training takes it from its validation patches) and the reference; seeds 1.. are compared.
The patches and masks are the check's own (jump_n2v.n2v.similarity.masked_errors). Run from the
repository root, e.g. on the real sites' workflow outputs (benchmarks/real_sites/config.yaml):

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/masked_loss_seeds.py \\
        results-real-sites/version1/models/BR00121482/DNA/model.json results-real-sites/version1/BR00121482/raw/DNA.zarr/0
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import zarr

from jump_n2v.n2v.similarity import masked_errors, masked_loss_cap, winsorised_mean
from jump_n2v.n2v.trained import load_trained


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_json")
    parser.add_argument("array", help="a Zarr array (images, Y, X); its first image is used")
    parser.add_argument("--patches", type=int, default=256)
    parser.add_argument("--seeds", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    trained = load_trained(args.model_json)
    images = [zarr.open_array(args.array, mode="r")[0].astype(np.float32)]
    reference = masked_errors(trained, images, args.patches, 0)
    cap = masked_loss_cap(reference)
    capped_reference = winsorised_mean(reference, cap)
    uncapped, ratios = [], []
    for seed in range(1, args.seeds):
        errors = masked_errors(trained, images, args.patches, seed)
        uncapped.append(float(errors.mean()))
        ratios.append(winsorised_mean(errors, cap) / capped_reference)
    print(f"{args.model_json}: uncapped loss {min(uncapped):.3g}-{max(uncapped):.3g} over seeds 1-{args.seeds - 1}; "
          f"capped, against seed 0's: {min(ratios):.2f}-{max(ratios):.2f}x")


if __name__ == "__main__":
    main()
