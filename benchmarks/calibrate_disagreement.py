"""Calibration data for the ``model_disagreement`` check: main vs control model disagreement on synthetic plates.

For each training seed a small N2V model (the main one) is trained on demo sites of one stain, and
controls like it with the control's seed offset (jump_n2v.n2v.control):

* ``agree``: a control trained alike on other sites of the same stain (must not flag);
* ``undertrained``: a control trained on those sites for 1 epoch of 3 steps;
* ``other_stain``: a control trained alike on sites of another stain (--other);
* ``pure_noise``: the main model and the agreeing control applied to a flat image plus the demo
  camera's Poisson-Gaussian noise (no structure: what they output there is invented);
  ``pure_noise_undertrained``: the same with the under-trained control.

Each pair denoises a seeded sample of new sites (or the flat images) and the disagreement is measured in
units of the noise model's sigma fitted to those raw images (jump_n2v.qc.disagreement). Run from the
repository root:

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/calibrate_disagreement.py --seeds 0 1 2

Prints a CSV table (and writes benchmarks/out/calibrate_disagreement.csv). Not a test.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import zarr

from jump_n2v.demo import DemoSpec, render_site
from jump_n2v.n2v.control import CONTROL_SEED_OFFSET
from jump_n2v.n2v.trained import load_trained
from jump_n2v.n2v.training import N2VSettings, train_channel
from jump_n2v.noise import estimate_noise_model
from jump_n2v.predict.runner import denoise_image
from jump_n2v.qc.disagreement import DISAGREEMENT_METRICS, image_disagreement

SMALL = dict(patch_size=32, batch_size=8, base_filters=8, epochs=10, steps_per_epoch=50, validation_patches=256,
             device="cpu", learning_rate=0.004, masked_fraction=0.02)
UNDERTRAINED = dict(epochs=1, steps_per_epoch=3)


def camera(spec: DemoSpec, photons: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    noisy = spec.gain * rng.poisson(photons) + spec.offset + rng.normal(0, spec.read_noise, photons.shape)
    return np.clip(np.rint(noisy), 0, 65535).astype(np.uint16)


def demo_images(spec: DemoSpec, sites: int, channel: str, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [camera(spec, render_site(spec, rng)[channel], rng) for _ in range(sites)]


def flat_images(spec: DemoSpec, sites: int, seed: int) -> list[np.ndarray]:
    """The background level everywhere, through the demo camera: nothing to find but noise."""
    rng = np.random.default_rng(seed)
    return [camera(spec, np.full((spec.size, spec.size), spec.background_photons), rng) for _ in range(sites)]


def train(raws: list[np.ndarray], folder: Path, seed: int, **changes):
    folder.mkdir(parents=True)
    array = zarr.create_array(store=str(folder / "raw.zarr"), shape=(len(raws),) + raws[0].shape,
                              chunks=(1,) + raws[0].shape, dtype="uint16")
    array[:] = np.stack(raws)
    settings = N2VSettings.from_dict({**SMALL, "train_images": len(raws), "seed": seed, **changes})
    started = time.perf_counter()
    train_channel([str(folder / "raw.zarr")], settings, folder / "model", log=logging.getLogger("calibrate"))
    return load_trained(folder / "model"), time.perf_counter() - started


def measure(main, control, raws: list[np.ndarray]) -> dict[str, float]:
    """Median over the images of each disagreement metric (as QC's summary takes them)."""
    model = estimate_noise_model(raws, seed=0)
    rows = [
        image_disagreement(denoise_image(main.net, raw, main.mean, main.std, posterior=main.posterior),
                           denoise_image(control.net, raw, control.mean, control.std, posterior=control.posterior), model)
        for raw in raws
    ]
    return pd.DataFrame(rows).median().to_dict()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--channel", default="DNA")
    parser.add_argument("--other", default="Mito")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--cells", type=int, default=4)
    parser.add_argument("--train-sites", type=int, default=4)
    parser.add_argument("--sample-sites", type=int, default=4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = DemoSpec(size=args.size, cells_per_site=args.cells)
    rows = []
    for seed in args.seeds:
        control_seed = seed + CONTROL_SEED_OFFSET
        with tempfile.TemporaryDirectory() as folder:
            folder = Path(folder)
            main_model, seconds = train(demo_images(spec, args.train_sites, args.channel, seed), folder / "main", seed)
            other_sites = demo_images(spec, args.train_sites, args.channel, seed + 500)  # images the main model never saw
            controls = {
                "agree": train(other_sites, folder / "agree", control_seed)[0],
                "undertrained": train(other_sites, folder / "under", control_seed, **UNDERTRAINED)[0],
                "other_stain": train(demo_images(spec, args.train_sites, args.other, seed + 500), folder / "other", control_seed)[0],
            }
        sites = demo_images(spec, args.sample_sites, args.channel, seed + 2000)
        cases = [(name, control, sites) for name, control in controls.items()]
        flat = flat_images(spec, args.sample_sites, seed + 3000)
        cases += [("pure_noise", controls["agree"], flat), ("pure_noise_undertrained", controls["undertrained"], flat)]
        for name, control, raws in cases:
            row = {"seed": seed, "case": name, "train_seconds": round(seconds, 1), **measure(main_model, control, raws)}
            rows.append(row)
            print(row, flush=True)
    table = pd.DataFrame(rows, columns=["seed", "case", "train_seconds", *DISAGREEMENT_METRICS])
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    table.to_csv(out / "calibrate_disagreement.csv", index=False)
    with pd.option_context("display.width", 220, "display.max_columns", 20):
        print(table.round(3).to_string(index=False))


if __name__ == "__main__":
    main()
