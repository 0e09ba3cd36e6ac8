"""The noise model on the real Opera Phenix sites of the pe2loaddata 0.2.0 sdist (issue 18), before and after.

Table 1, every real image of Version1/5/7 (19 fluorescence and brightfield images, plus Version5's DPC):
fitted gain, read variance, lag-1 / lag-2 correlation and the blind region ``auto`` picks (neighbours
masked), from ``estimate_noise_model`` as it was at ``--baseline`` (per image) and from today's
``estimate_site_noise_models`` (one mixing per site, measured on background bins); "channel only" is the
blind region of today's training path, which sees one channel's images.

Table 2, real texture with known noise (tests/real_texture.py): the Version7 binning-1 fields averaged 2 x 2,
given camera noise of gain ``--camera-gain`` and read sd ``--read-sd`` (ADU), independent and 2 x 2-mixed;
errors of gain, read variance (at the model's dark level), lag-1 and lag-2 correlation, and whether the
blind region stays within the truth's. Version1 and Version5 are binning 2: their 2 x 2 means would be
540 px fields at twice the pixel size, not the same texture; they are left out.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/bench_noise_real.py [--baseline 7e20fe8]

Needs the sdist (tests/fetch_real_fields.sh; ``make test`` fetches it) and git for the baseline.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from jump_n2v.n2v.blind_spot import decide_blind_spot  # noqa: E402
from jump_n2v.n2v.training import N2VSettings  # noqa: E402
from jump_n2v.noise import estimate_site_noise_models  # noqa: E402
from real_fields import VERSIONS, site_channels  # noqa: E402
from real_texture import clean_base, estimator_errors, known_noise_image  # noqa: E402

STAINS_V7 = ("Actin", "ER", "RNA", "AGP", "Mito", "Brightfield", "DNA")


def baseline_module(commit: str):
    """``jump_n2v.noise`` as it was at ``commit`` (it imports nothing from the package)."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:src/jump_n2v/noise.py"], check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "noise_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("noise_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["noise_baseline"] = module
    spec.loader.exec_module(module)
    return module


def region_size(model, before: bool = False) -> int:
    """Neighbours ``auto`` masks: today's policy, or the baseline's (every offset above the threshold)."""
    settings = N2VSettings.from_dict({})
    if before:
        return len(model.correlated_offsets(settings.blind_spot_correlation))
    region, _ = decide_blind_spot(settings, model)
    return 0 if region is None else len(region.offsets)


def describe(model, before: bool = False) -> str:
    lag2 = max(abs(model.lag(0, 2)), abs(model.lag(2, 0)))
    return f"{model.gain:.3g} | {model.read_variance:.3g} | {model.lag(0, 1):.2f} / {lag2:.2f} | {region_size(model, before)}"


def real_table(baseline) -> list[str]:
    lines = ["| site | image | mean (ADU) | before: gain / read var / lag-1 / lag-2 / region | after (site): gain / read var / lag-1 / lag-2 / region | channel only: region |",
             "|---|---|---:|---|---|---:|"]
    for version in VERSIONS:
        images = {name: tifffile.imread(path) for name, path in site_channels(version).items()}
        site = estimate_site_noise_models(images)
        alone = {name: estimate_site_noise_models({name: image}).models[name] for name, image in images.items()}
        for name, image in images.items():
            before = baseline.estimate_noise_model(image)
            lines.append(f"| {version} | {name} | {image.mean():.0f} | {describe(before, before=True).replace(' | ', ' / ')} | "
                         f"{describe(site.models[name]).replace(' | ', ' / ')} | {region_size(alone[name])} |")
        lines.append(f"| {version} | site mixing | | | {'; '.join(site.notes)} | |")
    return lines


def known_table(baseline, camera_gain: float, read_sd: float) -> list[str]:
    lines = [f"| mixing | stain | residual share | before: gain / read / lag-1 / lag-2 err, region | after: gain / read / lag-1 / lag-2 err, region | after within bounds |",
             "|---|---|---:|---|---|---|"]
    for mixed in (False, True):
        made = {stain: known_noise_image(clean_base("Version7", stain), camera_gain=camera_gain, read_sd=read_sd,
                                         mixed=mixed, seed=index) for index, stain in enumerate(STAINS_V7)}
        site = estimate_site_noise_models({stain: image for stain, (image, _) in made.items()})
        for stain, (image, truth) in made.items():
            cells = []
            for when, model in (("before", baseline.estimate_noise_model(image)), ("after", site.models[stain])):
                if when == "before":
                    offsets = set(model.correlated_offsets(N2VSettings.from_dict({}).blind_spot_correlation))
                else:
                    region, _ = decide_blind_spot(N2VSettings.from_dict({}), model)
                    offsets = set() if region is None else set(region.offsets)
                errors = estimator_errors(model, truth, offsets)
                cells.append((errors, f"{errors['gain_error']:+.1%} / {errors['read_error']:+.1%} / {errors['lag1_error']:.2f} / "
                                      f"{errors['lag2_error']:.2f}, {errors['region']}{'' if errors['region_within_truth'] else ' (wider)'}"))
            after = cells[1][0]
            ok = (abs(after["gain_error"]) <= 0.1 and abs(after["read_error"]) <= 0.1 and after["lag1_error"] <= 0.05
                  and after["lag2_error"] <= 0.05 and after["region_within_truth"])
            lines.append(f"| {'2x2' if mixed else 'independent'} | {stain} | {truth.residual_share:.1%} | {cells[0][1]} | {cells[1][1]} | {'yes' if ok else 'no'} |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", default="7e20fe8", help="commit whose estimate_noise_model is 'before'")
    parser.add_argument("--camera-gain", type=float, default=16.0, help="ADU per electron of the known noise")
    parser.add_argument("--read-sd", type=float, default=8.0, help="read noise sd (ADU) of the known noise")
    args = parser.parse_args(argv)
    baseline = baseline_module(args.baseline)
    print("\n".join(real_table(baseline)))
    print()
    print(f"Known noise: camera gain {args.camera_gain:g} ADU/e-, read sd {args.read_sd:g} ADU, black level 100")
    print("\n".join(known_table(baseline, args.camera_gain, args.read_sd)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
