"""Which normalisation scale trains the network best at 400 steps (issue 18): one bench_noise row, one variant.

Variants of the patches' normalisation (the offset is the median in all but ``meanstd``):

* ``winsorised``: the training pixels' standard deviation winsorised at 1 % (the default since 2026-12-07);
* ``mad``: 1.4826 x their median absolute deviation (the default before);
* ``meanstd``: their mean and standard deviation (the default before that).

Prints one JSON line: PSNR (dB) of the raw image, the network alone and the default posterior step, on
``bench_noise.py``'s synthetic sites (2 of 192 x 192, seed 1), 400 steps of batch 8:

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/ablate_normalisation.py --variant mad --kind box2x2 --stain DNA
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_noise  # noqa: E402

from jump_n2v.n2v import sampling  # noqa: E402

VARIANTS = ("winsorised", "mad", "meanstd")


def use_variant(variant: str) -> None:
    """Patch the sampler's statistics to the ``variant``'s offset and scale (``winsorised`` is the code's own)."""
    if variant == "winsorised":
        return
    own = sampling.PatchSampler._training_statistics

    def statistics(self) -> sampling.Normalization:
        norm = own(self)
        if variant == "meanstd":
            return sampling.Normalization(norm.pixel_mean, norm.pixel_std, "mean_std", norm.pixel_mean, norm.pixel_std)
        pixels = np.concatenate([self.image(a, i).ravel() for a, i in self.train_images]).astype(np.float64)
        median = float(np.median(pixels))
        mad = 1.482602218505602 * float(np.median(np.abs(pixels - median)))
        return sampling.Normalization(median, mad, "median_mad", norm.pixel_mean, norm.pixel_std)

    sampling.PatchSampler._training_statistics = statistics


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", choices=VARIANTS, required=True)
    parser.add_argument("--kind", default="box2x2", choices=bench_noise.KINDS)
    parser.add_argument("--stain", default="DNA")
    parser.add_argument("--steps", type=int, default=400)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    use_variant(args.variant)
    dataset = bench_noise.make_datasets(2, 192, 1)[(args.kind, args.stain)]
    settings = argparse.Namespace(steps=args.steps, steps_per_epoch=100, patch_size=64, batch_size=8,
                                  validation_patches=32, device="cpu", seed=1)
    clean, noisy, data_range = dataset["clean"], dataset["noisy"], dataset["data_range"]
    row = {"variant": args.variant, "kind": args.kind, "stain": args.stain, "raw": bench_noise.psnr(clean, noisy, data_range)}
    with tempfile.TemporaryDirectory() as work:
        model = bench_noise.train_ours(dataset, "auto", settings, Path(work))
        for name, posterior in (("network", False), ("default", True)):
            denoised, _ = bench_noise.predict_ours(model["trained"], noisy, posterior, False, "cpu")
            row[name] = bench_noise.psnr(clean, denoised, data_range)
    row["scale"] = model["trained"].std
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
