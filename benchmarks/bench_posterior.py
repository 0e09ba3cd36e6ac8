"""What the posterior step gives back on a finished run with clean references (the demo plate): for each
channel's trained network, PSNR against the clean image of the network alone, of the posterior recorded in
its model.json (fitted when it was trained), and of a posterior fitted again with this checkout's code on
patches of the model's validation images; then the same with the noise model's gain deliberately misread
(0.7x and 1.4x), where the refitted posterior must not cost.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_posterior.py --results results/demo --plate DemoPlate

The networks are the run's own, so the comparison isolates the posterior step.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
import zarr

from jump_n2v.n2v import load_trained
from jump_n2v.n2v.posterior import fit_posterior
from jump_n2v.noise import NoiseModel
from jump_n2v.plumbing.ngff import open_channel_array
from jump_n2v.predict.runner import denoise_image


def psnr(estimate: np.ndarray, clean: np.ndarray) -> float:
    data_range = float(clean.max() - clean.min())
    return float(10 * np.log10(data_range**2 / np.mean((estimate.astype(np.float64) - clean) ** 2)))


def validation_patches(raw: zarr.Array, rows: list[int], mean: float, std: float, count: int, size: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    patches = []
    for index in range(count):
        image = np.asarray(raw[rows[index % len(rows)]], dtype=np.float32)
        y, x = rng.integers(0, image.shape[0] - size + 1), rng.integers(0, image.shape[1] - size + 1)
        patches.append((image[y : y + size, x : x + size] - mean) / std)
    return torch.from_numpy(np.stack(patches))[:, None]


def channel_rows(results: Path, plate: str, channel: str, gain_errors: list[float], seed: int) -> list[dict]:
    trained = load_trained(results / "models" / plate / channel / "model.json")
    raw = open_channel_array(results / plate / "raw" / f"{channel}.zarr")
    clean = open_channel_array(results / plate / "clean" / f"{channel}.zarr")
    record = json.loads((results / "models" / plate / channel / "model.json").read_text())
    settings = record["settings"]
    rows_val = [row for _, row in record["data"]["validation_images"]]
    patches = validation_patches(raw, rows_val, trained.mean, trained.std, settings["validation_patches"], settings["patch_size"], seed)
    noise_model = NoiseModel.from_dict(record["noise_model"])
    networks = [denoise_image(trained.net, np.asarray(raw[i]), trained.mean, trained.std, {"device": "cpu", "posterior": "none"}) for i in range(raw.shape[0])]
    raws = [np.asarray(raw[i], dtype=np.float32) for i in range(raw.shape[0])]
    cleans = [np.asarray(clean[i], dtype=np.float64) for i in range(raw.shape[0])]

    def mean_psnr(outputs):
        return float(np.mean([psnr(o, c) for o, c in zip(outputs, cleans)]))

    out = {"channel": channel, "raw": mean_psnr(raws), "network": mean_psnr(networks)}
    if trained.posterior is not None:
        out["recorded posterior"] = mean_psnr([trained.posterior.apply(r, n) for r, n in zip(raws, networks)])
    for gain_error in [1.0] + gain_errors:
        model = dataclasses.replace(noise_model, gain=noise_model.gain * gain_error)
        posterior, evidence = fit_posterior(trained.net, patches, trained.mean, trained.std, model, batch_size=16, seed=seed)
        label = "refit posterior" if gain_error == 1.0 else f"refit, gain x{gain_error}"
        out[label] = mean_psnr([posterior.apply(r, n) for r, n in zip(raws, networks)]) if posterior else out["network"]
        if gain_error == 1.0 and evidence.get("bins"):
            out["margins"] = "/".join(f"{row['variance_margin']:.2f}" for row in evidence["bins"])
            out["weights"] = "/".join(f"{row['weight']:.2f}" for row in evidence["bins"])
    return [out]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results/demo"))
    parser.add_argument("--plate", default="DemoPlate")
    parser.add_argument("--channels", nargs="+", default=["DNA", "ER", "RNA", "AGP", "Mito"])
    parser.add_argument("--gain-errors", nargs="*", type=float, default=[0.7, 1.4])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [row for channel in args.channels for row in channel_rows(args.results, args.plate, channel, args.gain_errors, args.seed)]
    columns = list(dict.fromkeys(key for row in rows for key in row))
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(f"{row[c]:.2f}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in columns) + " |")


if __name__ == "__main__":
    main()
