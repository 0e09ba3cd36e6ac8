"""Denoising quality and training throughput: jump-n2v (N2V, N2V2) against BM3D and CAREamics.

Two images with known ground truth:

* ``cells``: synthetic Cell Painting sites (the demo plate's renderer, ER channel) with Poisson shot
  noise and Gaussian read noise at Cell Painting light levels, in camera units (uint16);
* ``camera``: scikit-image's ``camera`` with additive Gaussian noise, sigma 25.

Every N2V model (ours and CAREamics 0.3.5) trains on the noisy images themselves with the same U-Net
(depth 2, 32 filters), patch size, batch size, number of optimiser steps, learning rate (1e-3),
0.2% masked pixels and an 11-pixel replacement window (CAREamics' defaults). BM3D gets the true noise level (for the cells,
after a generalised Anscombe transform with the true gain and read noise). Reported: PSNR against
the clean image, training wall-clock and training throughput (patches per second).

Run in the benchmark venv (see benchmarks/requirements-bench.txt):

    .venv-bench/bin/python benchmarks/bench_training.py --steps 400

Prints a markdown table and writes benchmarks/out/bench_training.json. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import zarr
from skimage import data as skimage_data
from skimage.metrics import peak_signal_noise_ratio

from jump_n2v.demo import DemoSpec, render_site
from jump_n2v.n2v import N2VSettings, load_trained, train_channel

from careamics_compat import stub_torchvision

METHODS = ("raw", "ours-n2v", "ours-n2v2", "bm3d", "careamics-n2v")
DATASETS = ("cells", "camera")


# -- data -------------------------------------------------------------------------------------------


def cells_dataset(sites: int, size: int, seed: int) -> dict:
    """Demo-plate ER images: raw = gain * Poisson(photons) + offset + N(0, read_noise), as uint16."""
    spec = DemoSpec(size=size, seed=seed)
    rng = np.random.default_rng(seed)
    photons = np.stack([render_site(spec, rng)["ER"] for _ in range(sites)])
    clean = spec.gain * photons + spec.offset
    raw = spec.gain * rng.poisson(photons) + spec.offset + rng.normal(0, spec.read_noise, photons.shape)
    raw = np.clip(np.round(raw), 0, 65535).astype(np.uint16)
    return {
        "clean": clean, "noisy": raw, "data_range": float(clean.max() - clean.min()),
        "noise": {"kind": "poisson-gaussian", "gain": spec.gain, "offset": spec.offset,
                  "read_noise": spec.read_noise, "peak_photons": spec.peak_photons["ER"],
                  "background_photons": spec.background_photons},
    }


def camera_dataset(sigma: float, seed: int) -> dict:
    clean = skimage_data.camera().astype(np.float64)[None]
    noisy = (clean + np.random.default_rng(seed).normal(0, sigma, clean.shape)).astype(np.float32)
    return {"clean": clean, "noisy": noisy, "data_range": 255.0, "noise": {"kind": "gaussian", "sigma": sigma}}


def psnr(clean: np.ndarray, estimate: np.ndarray, data_range: float) -> float:
    """Mean PSNR over the images of a stack."""
    return float(np.mean([
        peak_signal_noise_ratio(c, e.astype(np.float64), data_range=data_range) for c, e in zip(clean, estimate)
    ]))


# -- methods ----------------------------------------------------------------------------------------


def run_ours(dataset: dict, variant: str, args, work: Path) -> dict:
    store = work / f"{variant}-input.zarr"
    noisy = dataset["noisy"]
    array = zarr.create_array(store=str(store), shape=noisy.shape, chunks=(1, *noisy.shape[1:]), dtype=noisy.dtype)
    array[:] = noisy
    epochs = max(1, args.steps // args.steps_per_epoch)
    settings = N2VSettings.from_dict({
        "variant": variant, "depth": 2, "base_filters": 32, "patch_size": args.patch_size,
        "batch_size": args.batch_size, "epochs": epochs, "steps_per_epoch": args.steps // epochs,
        "learning_rate": 1e-3, "validation_patches": args.validation_patches, "device": args.device,
        "precision": args.precision,
        "seed": args.seed, "early_stopping_patience": 1000,
    })
    started = time.perf_counter()
    metadata = train_channel([str(store)], settings, work / f"{variant}-model")
    train_seconds = time.perf_counter() - started
    trained = load_trained(work / f"{variant}-model")
    with torch.inference_mode():
        normalised = (torch.from_numpy(noisy.astype(np.float32)) - trained.mean) / trained.std
        prediction = torch.cat([trained.net(image[None, None]) for image in normalised])[:, 0]
    denoised = prediction.numpy() * trained.std + trained.mean
    steps = metadata["training"]["steps"]
    return {
        "denoised": denoised, "train_seconds": train_seconds, "steps": steps,
        "patches_per_second": steps * args.batch_size / train_seconds,
        "loop_patches_per_second": metadata["training"]["patches_per_second"],
    }


def run_careamics(dataset: dict, args, work: Path) -> dict:
    stub_torchvision()
    from careamics import CAREamist
    from careamics.config import create_advanced_n2v_config

    noisy = dataset["noisy"].astype(np.float32)
    config = create_advanced_n2v_config(
        "bench", data_type="array", axes="SYX", patch_size=[args.patch_size, args.patch_size],
        batch_size=args.batch_size, num_epochs=100_000, trainer_params={"max_steps": args.steps},
        model_params={"depth": 2, "num_channels_init": 32}, optimizer_params={"lr": 1e-3},
        masked_pixel_percentage=0.2, roi_size=11, num_workers=0, seed=args.seed, logger="none",
    )
    careamist = CAREamist(config, work_dir=str(work / "careamics"), enable_progress_bar=False)
    # A small separate validation set (one patch per image) keeps CAREamics' per-epoch validation cheap.
    validation = noisy[:, : args.patch_size, : args.patch_size]
    started = time.perf_counter()
    careamist.train(train_data=noisy, val_data=validation)
    train_seconds = time.perf_counter() - started
    steps = int(careamist.trainer.global_step)
    predictions, _ = careamist.predict(noisy, data_type="array", axes="SYX")
    denoised = np.concatenate([np.asarray(p).reshape(-1, *noisy.shape[1:]) for p in predictions])
    return {
        "denoised": denoised, "train_seconds": train_seconds, "steps": steps,
        "patches_per_second": steps * args.batch_size / train_seconds,
    }


def run_bm3d(dataset: dict) -> dict:
    import bm3d

    noisy = dataset["noisy"].astype(np.float64)
    noise = dataset["noise"]
    started = time.perf_counter()
    if noise["kind"] == "gaussian":
        denoised = np.stack([bm3d.bm3d(image, sigma_psd=noise["sigma"]) for image in noisy])
    else:
        # Generalised Anscombe transform in photo-electrons (true gain and read noise), BM3D at sigma 1,
        # then the closed-form approximation of the exact unbiased inverse (Makitalo & Foi 2013).
        sigma = noise["read_noise"] / noise["gain"]
        electrons = (noisy - noise["offset"]) / noise["gain"]
        stabilised = 2.0 * np.sqrt(np.maximum(electrons + 3.0 / 8.0 + sigma**2, 0.0))
        smoothed = np.stack([bm3d.bm3d(image, sigma_psd=1.0) for image in stabilised])
        d = np.maximum(smoothed, 1e-3)
        root = np.sqrt(1.5)
        inverse = 0.25 * d**2 + 0.25 * root / d - 11.0 / 8.0 / d**2 + 0.625 * root / d**3 - 0.125 - sigma**2
        denoised = noise["gain"] * np.maximum(inverse, 0.0) + noise["offset"]
    return {"denoised": denoised, "seconds": time.perf_counter() - started}


# -- main -------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400, help="optimiser steps per N2V model")
    parser.add_argument("--steps-per-epoch", type=int, default=100, help="ours: steps between validations")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--patch-size", type=int, default=64)
    parser.add_argument("--validation-patches", type=int, default=16, help="ours: fixed validation patches")
    parser.add_argument("--cell-sites", type=int, default=2, help="synthetic Cell Painting sites")
    parser.add_argument("--cell-size", type=int, default=256, help="side of a synthetic site")
    parser.add_argument("--camera-sigma", type=float, default=25.0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="ours: cpu, cuda or auto")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"], help="ours, on CUDA")
    parser.add_argument("--seed", type=int, default=1, help="seeds noise and training (CAREamics needs > 0)")
    parser.add_argument("--datasets", default=",".join(DATASETS), help=f"comma-separated subset of {DATASETS}")
    parser.add_argument("--methods", default=",".join(METHODS[1:]), help=f"comma-separated subset of {METHODS[1:]}")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    args = parser.parse_args(argv)
    datasets = args.datasets.split(",")
    methods = args.methods.split(",")
    for name in datasets:
        if name not in DATASETS:
            parser.error(f"unknown dataset {name!r}; choose from {DATASETS}")
    for name in methods:
        if name not in METHODS[1:]:
            parser.error(f"unknown method {name!r}; choose from {METHODS[1:]}")

    torch.set_num_threads(args.threads)
    results = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": {
            "platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "load_average_start": os.getloadavg(),
        },
        "datasets": {},
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-training-") as temporary:
        work = Path(temporary)
        for name in datasets:
            dataset = cells_dataset(args.cell_sites, args.cell_size, args.seed) if name == "cells" \
                else camera_dataset(args.camera_sigma, args.seed)
            clean, data_range = dataset["clean"], dataset["data_range"]
            rows = {"raw": {"psnr": psnr(clean, dataset["noisy"], data_range)}}
            print(f"[{name}] raw PSNR {rows['raw']['psnr']:.2f} dB", flush=True)
            for method in methods:
                method_dir = work / name / method
                method_dir.mkdir(parents=True)
                if method == "bm3d":
                    outcome = run_bm3d(dataset)
                elif method == "careamics-n2v":
                    outcome = run_careamics(dataset, args, method_dir)
                else:
                    outcome = run_ours(dataset, method.removeprefix("ours-"), args, method_dir)
                denoised = outcome.pop("denoised")
                rows[method] = {"psnr": psnr(clean, denoised, data_range), **outcome}
                print(f"[{name}] {method}: {json.dumps(rows[method])}", flush=True)
            results["datasets"][name] = {
                "shape": list(dataset["noisy"].shape), "noise": dataset["noise"], "data_range": data_range,
                "results": rows,
            }
    results["machine"]["load_average_end"] = os.getloadavg()
    results["total_seconds"] = time.perf_counter() - started

    lines = [
        "| dataset | method | PSNR (dB) | train s | steps | patches/s |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, entry in results["datasets"].items():
        for method, row in entry["results"].items():
            seconds = row.get("train_seconds", row.get("seconds"))
            seconds_text = "" if seconds is None else f"{seconds:.1f}"
            rate = row.get("patches_per_second")
            rate_text = "" if rate is None else f"{rate:.1f}"
            lines.append(
                f"| {name} | {method} | {row['psnr']:.2f} | {seconds_text} | {row.get('steps', '')} | {rate_text} |"
            )
    table = "\n".join(lines)
    print()
    print(table)
    print(f"\nbatch {args.batch_size}, patch {args.patch_size}, {args.steps} steps, {torch.get_num_threads()} "
          f"torch threads; load average {results['machine']['load_average_start']} -> "
          f"{results['machine']['load_average_end']}; {results['total_seconds']:.0f} s in all")
    results["table"] = table
    args.out.mkdir(parents=True, exist_ok=True)
    out_file = args.out / "bench_training.json"
    out_file.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
