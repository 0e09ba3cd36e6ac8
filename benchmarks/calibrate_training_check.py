"""Calibration data for the ``unlike_training_data`` check: its statistics on synthetic plates.

A small N2V model is trained on one demo stain at one exposure (independent noise); then seeded samples
of other demo images are compared with its training-data record (jump_n2v.n2v.similarity):

* ``same``: new sites of the same stain and acquisition (must not flag);
* ``quarter_light``: the same stain with a quarter of the photons (background and signal);
* ``box2x2``: the same exposure with the noise mixed by a 2 x 2 box (real Phenix exports);
* ``stain <name>``: another stain, same camera.

For each it prints each statistic's change (jump_n2v.n2v.similarity's module docstring defines them);
with ``--seeds`` several sample seeds and training seeds. Run from the repository root:

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/calibrate_training_check.py --seeds 0 1 2

Prints a CSV table (and writes benchmarks/out/calibrate_training_check.csv). Not a test.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import zarr
from scipy import ndimage

from jump_n2v.settings import resolve_section
from jump_n2v.demo import DEMO_CHANNELS, DemoSpec, render_site
from jump_n2v.n2v.similarity import STATISTICS, TOLERANCE_SETTINGS, compare_with_training
from jump_n2v.n2v.trained import load_trained
from jump_n2v.n2v.training import N2VSettings, train_channel

SMALL = dict(patch_size=32, batch_size=8, base_filters=8, epochs=4, steps_per_epoch=25, validation_patches=256,
             device="cpu", learning_rate=0.004, masked_fraction=0.02)


def demo_images(spec: DemoSpec, sites: int, channel: str, *, light: float = 1.0, box: bool = False, seed: int = 0) -> list[np.ndarray]:
    """Raw uint16 images of one demo stain; ``light`` scales the photons, ``box`` mixes the noise 2 x 2."""
    rng = np.random.default_rng(seed)
    raws = []
    for _ in range(sites):
        photons = light * render_site(spec, rng)[channel]
        noisy = spec.gain * rng.poisson(photons) + spec.offset + rng.normal(0, spec.read_noise, photons.shape)
        if box:
            noisy = ndimage.uniform_filter(noisy, 2, mode="reflect")
        raws.append(np.clip(np.rint(noisy), 0, 65535).astype(np.uint16))
    return raws


def train(raws: list[np.ndarray], folder: Path, seed: int):
    array = zarr.create_array(store=str(folder / "raw.zarr"), shape=(len(raws),) + raws[0].shape,
                              chunks=(1,) + raws[0].shape, dtype="uint16")
    array[:] = np.stack(raws)
    settings = N2VSettings.from_dict({**SMALL, "train_images": len(raws), "seed": seed})
    train_channel([str(folder / "raw.zarr")], settings, folder / "model", log=logging.getLogger("calibrate"))
    return load_trained(folder / "model")


def cases(spec: DemoSpec, channel: str, sites: int, seed: int) -> dict[str, list[np.ndarray]]:
    data_seed = 1000 + seed  # never the training images' seed
    found = {
        "same": demo_images(spec, sites, channel, seed=data_seed),
        "quarter_light": demo_images(dataclasses.replace(spec, peak_photons={k: v / 4 for k, v in spec.peak_photons.items()},
                                                         background_photons=spec.background_photons / 4),
                                     sites, channel, seed=data_seed),
        "box2x2": demo_images(spec, sites, channel, box=True, seed=data_seed),
    }
    for other in DEMO_CHANNELS:
        if other != channel:
            found[f"stain {other}"] = demo_images(spec, sites, other, seed=data_seed)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--channel", default="DNA")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--cells", type=int, default=4)
    parser.add_argument("--train-sites", type=int, default=4)
    parser.add_argument("--sample-sites", type=int, default=4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = DemoSpec(size=args.size, cells_per_site=args.cells)
    predict = resolve_section("predict")
    tolerances = {name: predict[key] for name, key in TOLERANCE_SETTINGS.items()}
    rows = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as folder:
            trained = train(demo_images(spec, args.train_sites, args.channel, seed=seed), Path(folder), seed)
        for case, images in cases(spec, args.channel, args.sample_sites, seed).items():
            comparison = compare_with_training(trained, images, tolerances, patches=predict["training_check_patches"], seed=seed)
            row = {"seed": seed, "case": case, "moved": ";".join(comparison["moved"])}
            row.update({name: comparison["statistics"][name]["change"] for name in STATISTICS})
            rows.append(row)
            print(row, flush=True)
    table = pd.DataFrame(rows)
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    table.to_csv(out / "calibrate_training_check.csv", index=False)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.round(3).to_string(index=False))


if __name__ == "__main__":
    main()
