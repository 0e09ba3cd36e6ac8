"""Denoising on independent and on pixel-mixed (correlated) camera noise: jump-n2v with and without the
noise model, CAREamics, and BM3D after a generalised Anscombe transform with true or estimated parameters.

Synthetic Cell Painting sites with ground truth (the demo plate's renderer, all five stains), one
clean photon field per site, two noise kinds drawn on it:

* ``independent``: ``raw = gain * Poisson(photons) + offset + N(0, read_noise)``, rounded to uint16;
* ``box2x2``: the same raw image with every pixel replaced by the mean of a 2 x 2 block
  (``jump_n2v.demo.mix_pixels``): noise lag-1 correlation 0.5 in x and y, 0.25 on the diagonals, 0 at
  lag 2, as real Opera Phenix exports show (0.42-0.50). The clean reference is mixed the same way.

Methods, per (noise kind, stain), same optimiser steps, batch and patch for every N2V model:

* ``raw``;
* ``n2v-pixel``: jump-n2v as it was: one-pixel blind spot (``blind_spot: pixel``), ``posterior: none``;
* ``n2v-pixel+posterior``: the same model with the posterior step (to show it does not make a one-pixel
  blind spot on correlated noise worse);
* ``n2v-auto``: ``blind_spot: auto`` (the default: the noise model estimated from the training images
  decides), ``posterior: none``;
* ``n2v-auto+posterior``: the defaults, ``blind_spot: auto`` and ``posterior: auto``;
* ``n2v-auto+tta``, ``n2v-auto+posterior+tta``: the same model predicted with 8-fold test-time
  augmentation (``predict.tta: true``), without and with the posterior step (its weights were fitted on
  predictions without TTA);
* ``careamics-n2v``: CAREamics 0.3.5 N2V (one-pixel blind spot), as in bench_training.py;
* ``bm3d-gat-true``: GAT with the true parameters of the stored image, BM3D with the PSD of the
  stabilised noise (white for independent noise, the 2 x 2 box's for box2x2), exact unbiased inverse;
* ``bm3d-gat-estimated``: the same with the noise model jump-n2v estimates (gain, intercept, 5 x 5
  correlation) from the noisy images alone.

When ``blind_spot: auto`` decides for a one-pixel blind spot, its training is identical to
``n2v-pixel`` and that model is reused (the JSON says so).

Run in the benchmark venv (``make bench-env``):

    .venv-bench/bin/python benchmarks/bench_noise.py --steps 100 --steps-per-epoch 50 --sites 2 --size 192 --threads 1

Prints markdown tables (PSNR per stain and noise kind; seconds per megapixel and the cost of one
3,456-site, 5-channel, 1080 x 1080 plate) and writes benchmarks/out/bench_noise.json. Not a test.
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

from jump_n2v.demo import DEMO_CHANNELS, DemoSpec, mix_pixels, render_site
from jump_n2v.n2v import N2VSettings, load_trained, train_channel
from jump_n2v.noise import NoiseModel, estimate_noise_model, generalized_anscombe, inverse_generalized_anscombe
from jump_n2v.predict.runner import denoise_image

from bench_training import psnr, run_careamics

KINDS = ("independent", "box2x2")
METHODS = (
    "n2v-pixel", "n2v-pixel+posterior", "n2v-auto", "n2v-auto+posterior", "n2v-auto+tta",
    "n2v-auto+posterior+tta", "careamics-n2v", "bm3d-gat-true", "bm3d-gat-estimated",
)
# One JUMP plate: 384 wells x 9 sites = 3,456 sites, 5 channels of 1080 x 1080.
PLATE_SITES, PLATE_CHANNELS, PLATE_SIDE = 3456, 5, 1080
PLATE_MEGAPIXELS = PLATE_SITES * PLATE_CHANNELS * PLATE_SIDE**2 / 1e6
# The default training budget (schema: 100 epochs x 100 steps x batch 32).
DEFAULT_PATCHES = 100 * 100 * 32


# -- data -------------------------------------------------------------------------------------------


def box_correlation() -> np.ndarray:
    """The 5 x 5 noise autocorrelation (lags -2..2) after 2 x 2 box mixing: the 3 x 3 tent."""
    kernel = np.zeros((5, 5))
    kernel[2:4, 2:4] = 0.25
    spectrum = np.abs(np.fft.fft2(kernel)) ** 2
    auto = np.fft.fftshift(np.real(np.fft.ifft2(spectrum)))
    return auto / auto[2, 2]


def make_datasets(sites: int, size: int, seed: int) -> dict:
    """Per noise kind and stain: clean (float64) and raw (uint16) stacks, and the true noise model."""
    spec = DemoSpec(size=size, seed=seed)
    rng = np.random.default_rng(seed)
    photons = [render_site(spec, rng) for _ in range(sites)]
    quantisation = 1.0 / 12.0  # rounding to integers adds a uniform error
    white = np.zeros((5, 5))
    white[2, 2] = 1.0
    datasets = {}
    for kind in KINDS:
        mixing = "box2x2" if kind == "box2x2" else "none"
        noise_rng = np.random.default_rng([seed, KINDS.index(kind)])
        # Per-pixel variance of what is stored: a 2 x 2 mean divides gain and read variance by 4.
        factor = 4.0 if mixing == "box2x2" else 1.0
        truth = NoiseModel(
            gain=spec.gain / factor, offset=spec.offset, read_variance=spec.read_noise**2 / factor + quantisation,
            correlation=tuple(map(tuple, box_correlation() if mixing == "box2x2" else white)),
            clipped_fraction=0.0, saturated_fraction=0.0, processed=False, notes=(),
        )
        for stain in DEMO_CHANNELS:
            clean = np.stack([mix_pixels(spec.gain * p[stain] + spec.offset, mixing) for p in photons])
            noisy = np.stack([
                mix_pixels(spec.gain * noise_rng.poisson(p[stain]) + spec.offset
                           + noise_rng.normal(0, spec.read_noise, p[stain].shape), mixing)
                for p in photons
            ])
            datasets[(kind, stain)] = {
                "clean": clean, "noisy": np.clip(np.rint(noisy), 0, 65535).astype(np.uint16),
                "data_range": float(clean.max() - clean.min()), "truth": truth,
                "peak_photons": spec.peak_photons[stain],
            }
    return datasets


# -- methods ----------------------------------------------------------------------------------------


def train_ours(dataset: dict, blind_spot: str, args, work: Path) -> dict:
    noisy = dataset["noisy"]
    store = work / "input.zarr"
    if not store.exists():
        array = zarr.create_array(store=str(store), shape=noisy.shape, chunks=(1, *noisy.shape[1:]), dtype=noisy.dtype)
        array[:] = noisy
    epochs = max(1, args.steps // args.steps_per_epoch)
    settings = N2VSettings.from_dict({
        "depth": 2, "base_filters": 32, "patch_size": args.patch_size, "batch_size": args.batch_size,
        "epochs": epochs, "steps_per_epoch": args.steps // epochs, "learning_rate": args.learning_rate,
        **({"masked_fraction": args.masked_fraction} if args.masked_fraction is not None else {}),
        "validation_patches": args.validation_patches, "device": args.device, "seed": args.seed,
        "early_stopping_patience": 1000, "blind_spot": blind_spot,
    })
    model_dir = work / f"model-{blind_spot}"
    started = time.perf_counter()
    metadata = train_channel([str(store)], settings, model_dir)
    seconds = time.perf_counter() - started
    return {"trained": load_trained(model_dir), "train_seconds": seconds, "steps": metadata["training"]["steps"],
            "blind_spot": metadata["blind_spot"], "posterior": metadata["posterior"]}


def predict_ours(trained, noisy: np.ndarray, posterior: bool, tta: bool, device: str) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    settings = {"device": device, "posterior": "auto" if posterior else "none", "tta": tta}
    denoised = np.stack([
        denoise_image(trained.net, image.astype(np.float32), trained.mean, trained.std, settings,
                      posterior=trained.posterior)
        for image in noisy
    ])
    return denoised, time.perf_counter() - started


def noise_psd(correlation: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """bm3d's PSD of unit-variance noise with this autocorrelation: |FFT kernel|^2 * M * N."""
    height, width = shape
    half = correlation.shape[0] // 2
    grid = np.zeros(shape)
    for dy in range(-half, half + 1):
        for dx in range(-half, half + 1):
            grid[dy % height, dx % width] += correlation[dy + half, dx + half]
    return np.clip(np.real(np.fft.fft2(grid)), 0.0, None) * height * width


def run_bm3d(noisy: np.ndarray, model: NoiseModel) -> tuple[np.ndarray, float]:
    import bm3d

    if not hasattr(np, "trapz"):  # bm4d 4.2 (behind bm3d's correlated-noise path) calls the removed np.trapz
        np.trapz = np.trapezoid

    started = time.perf_counter()
    correlation = np.asarray(model.correlation, dtype=np.float64)
    white = np.allclose(np.delete(correlation.ravel(), correlation.size // 2), 0.0)
    out = []
    for image in noisy.astype(np.float64):
        stabilised = generalized_anscombe(image, model)
        psd = 1.0 if white else noise_psd(correlation, image.shape)
        out.append(inverse_generalized_anscombe(bm3d.bm3d(stabilised, sigma_psd=psd), model))
    return np.stack(out), time.perf_counter() - started


# -- main -------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="optimiser steps per N2V model")
    parser.add_argument("--steps-per-epoch", type=int, default=100, help="ours: steps between validations")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--masked-fraction", type=float, default=None,
                        help="ours: fraction of pixels hidden per patch (default: the schema's n2v.masked_fraction)")
    parser.add_argument("--patch-size", type=int, default=64)
    parser.add_argument("--validation-patches", type=int, default=32, help="ours: fixed validation patches")
    parser.add_argument("--sites", type=int, default=4, help="synthetic sites per stain")
    parser.add_argument("--size", type=int, default=256, help="side of a synthetic site")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="jump-n2v's training and prediction device (cpu, cuda); CAREamics and BM3D are unaffected")
    parser.add_argument("--seed", type=int, default=1, help="seeds data and training (CAREamics needs > 0)")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--stains", default=",".join(DEMO_CHANNELS))
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {METHODS}")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    args = parser.parse_args(argv)
    kinds, stains, methods = args.kinds.split(","), args.stains.split(","), args.methods.split(",")
    for name in methods:
        if name not in METHODS:
            parser.error(f"unknown method {name!r}; choose from {METHODS}")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    results = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "load_average_start": os.getloadavg()},
        "rows": [],
    }
    datasets = make_datasets(args.sites, args.size, args.seed)
    cost = {name: {"train_seconds": [], "predict_seconds": [], "megapixels": []} for name in ("raw", *METHODS)}
    cost["noise-estimation"] = {"train_seconds": [], "predict_seconds": [], "megapixels": []}

    with tempfile.TemporaryDirectory(prefix="bench-noise-") as temporary:
        for kind in kinds:
            for stain in stains:
                dataset = datasets[(kind, stain)]
                clean, noisy, data_range = dataset["clean"], dataset["noisy"], dataset["data_range"]
                megapixels = noisy.size / 1e6
                work = Path(temporary) / kind / stain
                work.mkdir(parents=True)
                row = {"kind": kind, "stain": stain, "peak_photons": dataset["peak_photons"],
                       "psnr": {"raw": psnr(clean, noisy, data_range)}, "notes": {}}

                def record(method, denoised, train_seconds, predict_seconds):
                    row["psnr"][method] = psnr(clean, denoised, data_range)
                    cost[method]["train_seconds"].append(train_seconds)
                    cost[method]["predict_seconds"].append(predict_seconds)
                    cost[method]["megapixels"].append(megapixels)
                    print(f"[{kind} {stain}] {method}: {row['psnr'][method]:.2f} dB "
                          f"(train {train_seconds:.0f} s, apply {predict_seconds:.1f} s)", flush=True)

                estimate_started = time.perf_counter()
                estimated = estimate_noise_model(list(noisy), dtype_range=(0, 65535), seed=args.seed)
                estimate_seconds = time.perf_counter() - estimate_started
                cost["noise-estimation"]["train_seconds"].append(0.0)
                cost["noise-estimation"]["predict_seconds"].append(estimate_seconds)
                cost["noise-estimation"]["megapixels"].append(megapixels)
                truth = dataset["truth"]
                row["noise_model"] = {
                    "true": {"gain": truth.gain, "intercept": truth.intercept, "lag1_x": truth.lag(0, 1), "lag1_y": truth.lag(1, 0)},
                    "estimated": {"gain": estimated.gain, "intercept": estimated.intercept,
                                  "lag1_x": estimated.lag(0, 1), "lag1_y": estimated.lag(1, 0)},
                }

                models = {}
                if any(m.startswith("n2v-pixel") for m in methods) or any(m.startswith("n2v-auto") for m in methods):
                    models["pixel"] = train_ours(dataset, "pixel", args, work)
                if any(m.startswith("n2v-auto") for m in methods):
                    # auto on independent noise decides 'pixel': then the training is identical; reuse it.
                    from jump_n2v.n2v.blind_spot import decide_blind_spot

                    settings = N2VSettings.from_dict({"blind_spot": "auto"})
                    decision = decide_blind_spot(settings, estimated)[1]
                    if decision["mode"] == "pixel":
                        models["auto"] = {**models["pixel"], "reused": "n2v-pixel (auto chose a one-pixel blind spot)"}
                    else:
                        models["auto"] = train_ours(dataset, "auto", args, work)
                for name in ("pixel", "auto"):
                    if name in models:
                        model = models[name]
                        row["notes"][f"n2v-{name}"] = {
                            "blind_spot": model["blind_spot"], "reused": model.get("reused"),
                            "posterior": {k: v for k, v in model["posterior"].items() if k != "bins"},
                            "posterior_weights": model["posterior"].get("weight"),
                        }
                for method in methods:
                    if method.startswith("n2v-"):
                        name = "auto" if method.startswith("n2v-auto") else "pixel"
                        model = models[name]
                        denoised, seconds = predict_ours(model["trained"], noisy, "+posterior" in method, method.endswith("+tta"), args.device)
                        # A reused model is charged its training anyway: auto costs a training of its own.
                        record(method, denoised, model["train_seconds"], seconds)
                    elif method == "careamics-n2v":
                        method_dir = work / "careamics"
                        method_dir.mkdir()
                        careamics_started = time.perf_counter()
                        outcome = run_careamics({"noisy": noisy}, args, method_dir)
                        # run_careamics times the training; the rest (set-up and prediction) counts as applying.
                        rest = time.perf_counter() - careamics_started - outcome["train_seconds"]
                        record(method, outcome["denoised"], outcome["train_seconds"], rest)
                    elif method == "bm3d-gat-true":
                        denoised, seconds = run_bm3d(noisy, truth)
                        record(method, denoised, 0.0, seconds)
                    elif method == "bm3d-gat-estimated":
                        denoised, seconds = run_bm3d(noisy, estimated)
                        record(method, denoised, 0.0, seconds + estimate_seconds)
                results["rows"].append(row)
                Path(args.out).mkdir(parents=True, exist_ok=True)
                (Path(args.out) / "bench_noise.json").write_text(json.dumps(results, indent=2, default=str) + "\n")

    results["machine"]["load_average_end"] = os.getloadavg()
    results["total_seconds"] = time.perf_counter() - started
    columns = ["raw", *methods]
    lines = ["| noise | stain | " + " | ".join(columns) + " |", "|---|---|" + "---:|" * len(columns)]
    for row in results["rows"]:
        lines.append(f"| {row['kind']} | {row['stain']} | " + " | ".join(f"{row['psnr'][c]:.2f}" for c in columns) + " |")
    psnr_table = "\n".join(lines)

    lines = [
        "| method | train s per (plate, channel) here | apply s/Mpx here | one plate: apply h | one plate at the default training budget: train h |",
        "|---|---:|---:|---:|---:|",
    ]
    for method in ("noise-estimation", *methods):
        entry = cost[method]
        if not entry["megapixels"]:
            continue
        train = float(np.mean(entry["train_seconds"]))
        per_mpx = float(np.sum(entry["predict_seconds"]) / np.sum(entry["megapixels"]))
        apply_hours = per_mpx * PLATE_MEGAPIXELS / 3600
        if method.startswith("n2v") or method.startswith("careamics"):
            default_hours = train * DEFAULT_PATCHES / (args.steps * args.batch_size) * PLATE_CHANNELS / 3600
            default_text = f"{default_hours:.1f}"
        else:
            default_text = "-"
        lines.append(f"| {method} | {train:.0f} | {per_mpx:.2f} | {apply_hours:.1f} | {default_text} |")
    cost_table = "\n".join(lines)
    results["psnr_table"], results["cost_table"] = psnr_table, cost_table
    print()
    print(psnr_table)
    print()
    print(cost_table)
    print(f"\n{args.sites} sites of {args.size}x{args.size} per stain, batch {args.batch_size}, patch {args.patch_size}, "
          f"{args.steps} steps, {torch.get_num_threads()} torch threads; load average "
          f"{results['machine']['load_average_start']} -> {results['machine']['load_average_end']}; "
          f"{results['total_seconds']:.0f} s in all")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_noise.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"wrote {args.out / 'bench_noise.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
