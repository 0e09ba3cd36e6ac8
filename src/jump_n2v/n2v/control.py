"""A control model per (model group, channel): the same n2v settings, another seed, other images.

QC compares the main model's output with the control's on a seeded sample of images
(:mod:`jump_n2v.qc.disagreement`): where two models trained alike on the same plate disagree by more
than the noise allows, the output depends on the training draw, not only on the data.

The control trains on images the main model neither trained nor validated on (model.json ``data``),
when the group has at least as many of them as the main model used: its data are then *disjoint*.
A small plate (the demo's 6 sites, all of which the main model uses) has too few; the control then
trains on one half of a seeded split of all the group's images, which shares images with the main
model's, and ``control.json`` says so (``disjoint: false`` and why); the report shows it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from jump_n2v.model_record import ModelRecord
from jump_n2v.n2v.training import N2VSettings, open_arrays, train_channel
from jump_n2v.plumbing.atomic import write_text_atomic

# The control's seed is the main model's plus this (recorded in control.json): another draw of
# images, patches, masks and initial weights from otherwise identical settings.
CONTROL_SEED_OFFSET = 1000
CONTROL_JSON = "control.json"
# Seeds the half split of all images when the plate has too few images the main model did not use.
_HALF_SPLIT_STREAM = 21


@dataclasses.dataclass(frozen=True)
class ControlPlan:
    """Which images the control must not train on, and whether that makes its data disjoint from the main's."""

    excluded_images: list[tuple[int, int]]
    disjoint: bool
    note: str


def main_model_images(record: ModelRecord, source: str) -> list[tuple[int, int]]:
    """The (array index, image) pairs the main model trained and validated on (model.json ``data``)."""
    data = record.data or {}
    if "train_images" not in data or "validation_images" not in data:
        raise ValueError(f"{source}: model.json records no data split (train_images, validation_images); retrain the main model")
    return sorted({(int(a), int(i)) for a, i in data["train_images"] + data["validation_images"]})


def plan_control(main_images: Sequence[tuple[int, int]], image_counts: Sequence[int], seed: int) -> ControlPlan:
    """Exclude the main model's images when at least as many others remain; else a seeded half of all images."""
    used = set(main_images)
    total = sum(image_counts)
    others = total - len(used)
    if others >= len(used):
        return ControlPlan(sorted(used), True, f"trained on images the main model did not use ({others} of {total})")
    everything = [(array, image) for array, count in enumerate(image_counts) for image in range(count)]
    rng = np.random.default_rng([seed, _HALF_SPLIT_STREAM])
    order = rng.permutation(len(everything))
    kept = {everything[row] for row in order[: max(1, (len(everything) + 1) // 2)]}
    shared = len(kept & used)
    return ControlPlan(
        sorted(set(everything) - kept),
        False,
        f"only {others} of {total} images were not used by the main model (it used {len(used)}): the control "
        f"trained on a seeded half of all images ({len(kept)}), {shared} of them also the main model's",
    )


def control_settings(settings: N2VSettings) -> N2VSettings:
    """The main model's settings with the control's seed."""
    return dataclasses.replace(settings, seed=settings.seed + CONTROL_SEED_OFFSET)


def train_control(
    arrays: Sequence[Any],
    settings: N2VSettings,
    main_model_json: str | Path,
    control_dir: str | Path,
    *,
    log: logging.Logger | None = None,
) -> dict[str, Any]:
    """Train the control model of ``main_model_json`` into ``control_dir`` (model.pt, model.json, training
    log and curve, like any model) and write ``control.json`` (seed, offset, disjoint, note); return it."""
    log = log or logging.getLogger(__name__)
    opened, _ = open_arrays(arrays)  # for the image counts; training opens them itself
    record = ModelRecord.read(main_model_json)
    plan = plan_control(main_model_images(record, str(main_model_json)), [a.shape[0] for a in opened], settings.seed)
    log.info("control model: %s", plan.note)
    control = control_settings(settings)
    train_channel(arrays, control, control_dir, log=log, exclude_images=plan.excluded_images)
    content = {
        "main_model": str(main_model_json),
        "seed": control.seed,
        "seed_offset": CONTROL_SEED_OFFSET,
        "disjoint": plan.disjoint,
        "note": plan.note,
        "excluded_images": [list(image) for image in plan.excluded_images],
    }
    write_text_atomic(Path(control_dir) / CONTROL_JSON, json.dumps(content, indent=2) + "\n")
    return content


def read_control(control_dir: str | Path) -> dict[str, Any]:
    """A control folder's control.json; ValueError naming the file when it is missing or unusable."""
    path = Path(control_dir) / CONTROL_JSON
    try:
        content = json.loads(path.read_text())
    except OSError as error:
        raise ValueError(f"cannot read the control record {path}: {error}") from error
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    missing = {"disjoint", "note", "seed"} - set(content)
    if missing:
        raise ValueError(f"{path}: not a control record, missing {sorted(missing)}")
    return content
