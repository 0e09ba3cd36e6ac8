"""The effect of denoising downstream: nuclei segmented on raw, jump-n2v and BM3D images of a synthetic
DNA stain, scored against the true nuclei the demo renderer drew (issue 21).

Data: ``bench_noise.make_datasets`` (demo sites, DNA stain; ``independent`` and ``box2x2`` pixel-mixed
camera noise), with each site's true nucleus labels rendered from the same seed
(``jump_n2v.demo.render_site_with_labels`` draws the same random numbers as ``render_site``).

Methods: ``raw``; ``jump-n2v``: the defaults (``blind_spot: auto``, ``posterior: auto``) trained on the
noisy sites with the budget given by the arguments (``bench_noise.train_ours``: depth 2, 32 filters);
``bm3d``: generalised Anscombe transform with the true noise parameters, BM3D with the stabilised
noise's PSD (``bench_noise.run_bm3d``); ``clean``: the noise-free image (the method's ceiling).

Scores (``jump_n2v.qc.downstream``, the same code the workflow's downstream rule runs): F1 at IoU 0.5,
count error (found / true - 1) and the Pearson r, over matched nuclei, of each per-nucleus feature
(mean intensity, area, GLCM contrast) with its value on the clean image within the true nucleus.

    OMP_NUM_THREADS=1 .venv-bench/bin/python benchmarks/bench_downstream.py --sites 8 --steps 400 --batch-size 16

Prints a markdown table and writes benchmarks/out/bench_downstream.json. Not a test.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from jump_n2v.demo import DemoSpec, render_site_with_labels
from jump_n2v.qc.downstream import FEATURES, evaluate_site, plate_scores

from bench_noise import KINDS, make_datasets, predict_ours, run_bm3d, train_ours
from bench_training import psnr

METHODS = ("raw", "jump-n2v", "bm3d", "clean")


def true_labels(sites: int, size: int, seed: int) -> list[np.ndarray]:
    """The true nuclei of make_datasets(sites, size, seed)'s sites (same spec, same random stream)."""
    spec, rng = DemoSpec(size=size, seed=seed), np.random.default_rng(seed)
    return [render_site_with_labels(spec, rng)[1] for _ in range(sites)]


def denoise(kind: str, dataset: dict, args, work: Path) -> tuple[dict[str, np.ndarray], dict]:
    """Per method, the stack of images to segment; and what each cost."""
    noisy = dataset["noisy"]
    model = train_ours(dataset, "auto", args, work)
    n2v, n2v_seconds = predict_ours(model["trained"], noisy, posterior=True, tta=False, device=args.device)
    bm3d, bm3d_seconds = run_bm3d(noisy, dataset["truth"])
    notes = {"jump-n2v": {"train_seconds": model["train_seconds"], "predict_seconds": n2v_seconds,
                          "steps": model["steps"], "blind_spot": model["blind_spot"]},
             "bm3d": {"seconds": bm3d_seconds}}
    return {"raw": noisy.astype(np.float64), "jump-n2v": n2v, "bm3d": bm3d, "clean": dataset["clean"]}, notes


def score(kind: str, stacks: dict[str, np.ndarray], labels: list[np.ndarray]) -> pd.DataFrame:
    images, objects = [], []
    for site, truth in enumerate(labels):
        rows, matched, _ = evaluate_site({method: stacks[method][site] for method in METHODS}, truth)
        where = {"plate": kind, "channel": "DNA", "image": str(site)}
        images += [{**where, **row} for row in rows]
        objects += [{**where, **row} for row in matched]
    return plate_scores(pd.DataFrame(images), pd.DataFrame(objects))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=400, help="optimiser steps of the N2V model")
    parser.add_argument("--steps-per-epoch", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--patch-size", type=int, default=64)
    parser.add_argument("--validation-patches", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    datasets = make_datasets(args.sites, args.size, args.seed)
    labels = true_labels(args.sites, args.size, args.seed)
    results = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "platform": platform.platform(),
               "arguments": {k: str(v) for k, v in vars(args).items()}, "rows": [], "notes": {}}
    with tempfile.TemporaryDirectory(prefix="bench-downstream-") as temporary:
        for kind in args.kinds.split(","):
            dataset = datasets[(kind, "DNA")]
            work = Path(temporary) / kind
            work.mkdir()
            stacks, results["notes"][kind] = denoise(kind, dataset, args, work)
            scores = score(kind, stacks, labels)
            for record in scores.to_dict("records"):
                record["psnr_db"] = psnr(dataset["clean"], stacks[record["source"]], dataset["data_range"]) if record["source"] != "clean" else None
                results["rows"].append(record)
                print(kind, record, flush=True)
    results["total_seconds"] = time.perf_counter() - started
    lines = ["| noise | method | PSNR (dB) | nuclei found / true | count error | F1 (IoU 0.5) | "
             + " | ".join(f"r {name.replace('_', ' ')}" for name in FEATURES) + " |",
             "|---|---|---:|---:|---:|---:|" + "---:|" * len(FEATURES)]
    for row in results["rows"]:
        psnr_text = f"{row['psnr_db']:.2f}" if row["psnr_db"] is not None else "-"
        lines.append(f"| {row['plate']} | {row['source']} | {psnr_text} | {row['found_nuclei']} / {row['true_nuclei']} | "
                     f"{row['count_error_relative']:+.3f} | {row['f1']:.3f} | "
                     + " | ".join(f"{row[f'r_{name}']:.3f}" for name in FEATURES) + " |")
    results["table"] = "\n".join(lines)
    print("\n" + results["table"])
    print(f"\n{args.sites} sites of {args.size} px per noise kind, N2V {args.steps} steps of batch {args.batch_size}, "
          f"patch {args.patch_size}, {args.threads} torch thread(s); {results['total_seconds']:.0f} s in all")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_downstream.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
