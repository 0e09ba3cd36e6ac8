"""Size of the experiment's HTML report as plates, sites and channels grow, without training.

Writes QC inputs the way the workflow's outputs look (raw uint16 Zarr arrays of demo-plate renderings
with Poisson-Gaussian noise, a "denoised" array that is the clean rendering plus a little noise, an
index with wells and sites, a model folder with model.json and training_curve.png per (plate,
channel), a rejects table), runs the real QC (``run_channel_qc``) and report
(``write_experiment_report``), and prints the report's size and what its embedded images weigh.

    .venv/bin/python benchmarks/bench_report.py --plates 1 --wells 3 --sites 2 --size 256      # the demo's shape
    .venv/bin/python benchmarks/bench_report.py --plates 1 --wells 48 --sites 9 --size 128 --rejects 300   # bench_plate --wells 48
    .venv/bin/python benchmarks/bench_report.py --plates 8 --wells 2 --sites 2 --size 128      # many plates

With ``--keep DIR`` the QC outputs stay in DIR and a second run with the same DIR only rebuilds the
report (to compare report versions on the same inputs).

Not a test.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import string
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import zarr

from jump_n2v.settings import resolve_section
from jump_n2v.demo import DemoSpec, render_site
from jump_n2v.qc import run_channel_qc, write_experiment_report
from jump_n2v.training_log import loss_curves

CHANNELS = ["DNA", "ER", "RNA", "AGP", "Mito"]


def write_inputs(root: Path, plates: int, wells: int, sites: int, size: int, rejects: int, seed: int = 0):
    spec = DemoSpec(size=size, cells_per_site=4, seed=seed)
    rng = np.random.default_rng(seed)
    well_names = [f"{row}{column:02d}" for row in string.ascii_uppercase[:16] for column in range(1, 25)][:wells]
    templates = [render_site(spec, rng) for _ in range(4)]
    metrics, model_dirs, rejects_csvs = [], {}, []
    for plate_number in range(plates):
        plate = f"Plate{plate_number + 1:03d}"
        index = pd.DataFrame(
            [{"image": i, "plate": plate, "well": well, "site": site} for i, (well, site) in enumerate((w, s) for w in well_names for s in range(1, sites + 1))]
        )
        index.to_csv(root / f"{plate}-index.csv", index=False)
        for channel in CHANNELS:
            clean = np.stack([templates[rng.integers(len(templates))][channel] for _ in range(len(index))])
            raw = spec.gain * rng.poisson(clean) + spec.offset + rng.normal(0, spec.read_noise, clean.shape)
            denoised = spec.gain * clean + spec.offset + rng.normal(0, 0.2 * spec.read_noise, clean.shape)
            for name, data, dtype in (("raw", np.clip(np.rint(raw), 0, 65535), "uint16"), ("denoised", denoised, "float32")):
                array = zarr.create_array(store=str(root / plate / name / f"{channel}.zarr"), shape=data.shape, chunks=(1, size, size), dtype=dtype)
                array[:] = data.astype(dtype)
                array.attrs.update(image_ids=index["image"].tolist(), plate=plate, channel=channel, experiment="bench", dtype_range=[0, 65535])
            qc_dir = root / plate / "qc" / channel
            run_channel_qc(root / plate / "raw" / f"{channel}.zarr", root / plate / "denoised" / f"{channel}.zarr", qc_dir, index=root / f"{plate}-index.csv")
            metrics.append(qc_dir / "metrics.csv")
            model_dir = root / "models" / plate / channel
            model_dir.mkdir(parents=True)
            epochs = np.arange(1, 21)
            pd.DataFrame({"epoch": epochs, "step": epochs * 100, "train_loss": 1 / epochs, "val_loss": 1.1 / epochs, "learning_rate": 1e-3, "seconds": epochs}).to_csv(model_dir / "training_log.csv", index=False)
            loss_curves(model_dir / "training_log.csv", model_dir / "training_curve.png")
            training = {"best_val_loss": 0.05, "best_epoch": 20, "epochs_run": 20, "steps": 2000, "seconds": 60.0, "stopped_early": False}
            (model_dir / "model.json").write_text(json.dumps({"normalization": {"mean": 500.0, "std": 100.0}, "training": training, "seed": 42, "versions": {}}))
            model_dirs[(plate, channel)] = model_dir
            rejects_csv = root / plate / "rejects" / f"{channel}.csv"
            rejects_csv.parent.mkdir(parents=True, exist_ok=True)
            pd.DataFrame({"file": [f"/data/{plate}/{channel}/site_{i:05d}.tif" for i in range(rejects)], "problem": "truncated TIFF"}).to_csv(rejects_csv, index=False)
            rejects_csvs.append(rejects_csv)
    return metrics, model_dirs, rejects_csvs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plates", type=int, default=1)
    parser.add_argument("--wells", type=int, default=3)
    parser.add_argument("--sites", type=int, default=2)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rejects", type=int, default=0, help="rejected images listed per (plate, channel)")
    parser.add_argument("--keep", type=Path, help="write here (and keep) instead of a temporary folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        root = args.keep or Path(temporary)
        root.mkdir(parents=True, exist_ok=True)
        inputs = root / "inputs.json"  # with --keep, a second run reuses the QC outputs (compare report versions)
        if inputs.exists():
            saved = json.loads(inputs.read_text())
            metrics, rejects = saved["metrics"], saved["rejects"]
            model_dirs = {(plate, channel): path for plate, channel, path in saved["model_dirs"]}
        else:
            metrics, model_dirs, rejects = write_inputs(root, args.plates, args.wells, args.sites, args.size, args.rejects)
            inputs.write_text(json.dumps({"metrics": [str(path) for path in metrics], "rejects": [str(path) for path in rejects],
                                          "model_dirs": [[plate, channel, str(path)] for (plate, channel), path in model_dirs.items()]}))
        settings = {channel: {"qc": resolve_section("qc")} for channel in CHANNELS}
        out = root / "report" / "report.html"
        write_experiment_report("bench", metrics, model_dirs, settings, rejects, root / "report" / "summary.csv", root / "report" / "summary.parquet", out, versions={"jump-n2v": "bench"})
        text = out.read_text(encoding="utf-8")
        images = re.findall(r'src="data:image/([a-z]+);base64,([^"]+)"', text)
        embedded = sum(len(base64.b64decode(data)) for _, data in images)
        result = {
            "plates": args.plates, "sites_per_plate": args.wells * args.sites, "channels": len(CHANNELS), "size": args.size, "rejects_per_channel": args.rejects,
            "report_mb": round(out.stat().st_size / 1e6, 3), "embedded_images": len(images),
            "image_formats": sorted({kind for kind, _ in images}), "embedded_image_mb_decoded": round(embedded / 1e6, 3),
        }
        print(json.dumps(result))


if __name__ == "__main__":
    main()
