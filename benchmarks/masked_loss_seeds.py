"""How the training-data check's masked loss moves between patch seeds on one image, capped and uncapped.

A model's own training image should read the same on every seed. Seed 0's errors give the cap (their 99th
percentile, as training takes it from its validation patches) and the reference; seeds 1.. are compared.
Run from the repository root, e.g. on the real sites' workflow outputs (benchmarks/real_sites/config.yaml):

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/masked_loss_seeds.py \\
        results-real-sites/version1/models/BR00121482/DNA/model.json results-real-sites/version1/BR00121482/raw/DNA.zarr/0
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import zarr

from jump_n2v.n2v import similarity
from jump_n2v.n2v.blind_spot import BlindSpotMasking
from jump_n2v.n2v.masking import network_masked_errors
from jump_n2v.n2v.trained import load_trained


def seed_errors(trained, image: np.ndarray, patches: int, seed: int) -> torch.Tensor:
    """Squared errors at the blind spots of ``patches`` seeded patches of ``image``, masked as the check masks."""
    size = trained.settings.patch_size
    rng = np.random.default_rng([seed, similarity._PATCH_STREAM])
    batch = np.empty((patches, 1, size, size), np.float32)
    for row in range(patches):
        y, x = (int(rng.integers(0, side - size + 1)) for side in image.shape)
        batch[row, 0] = image[y : y + size, x : x + size]
    targets = torch.from_numpy((batch - np.float32(trained.mean)) * np.float32(1.0 / trained.std))
    masking = BlindSpotMasking.from_settings(trained.settings, similarity._blind_region(trained.record))
    inputs, masks = masking.mask(targets, generator=torch.Generator().manual_seed(seed))
    return network_masked_errors(trained.net, inputs, targets, masks, trained.settings.batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_json")
    parser.add_argument("array", help="a Zarr array (images, Y, X); its first image is used")
    parser.add_argument("--patches", type=int, default=256)
    parser.add_argument("--seeds", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    trained = load_trained(args.model_json)
    image = zarr.open_array(args.array, mode="r")[0].astype(np.float32)
    reference = seed_errors(trained, image, args.patches, 0)
    cap = float(np.percentile(reference.double().numpy(), similarity.MASKED_LOSS_CAP_PERCENTILE))
    capped_reference = similarity.winsorised_mean(reference, cap)
    uncapped, ratios = [], []
    for seed in range(1, args.seeds):
        errors = seed_errors(trained, image, args.patches, seed)
        uncapped.append(float(errors.mean()))
        ratios.append(similarity.winsorised_mean(errors, cap) / capped_reference)
    print(f"{args.model_json}: uncapped loss {min(uncapped):.3g}-{max(uncapped):.3g} over seeds 1-{args.seeds - 1}; "
          f"capped, against seed 0's: {min(ratios):.2f}-{max(ratios):.2f}x")


if __name__ == "__main__":
    main()
