"""Disagreement between the main model's and the control model's outputs, in units of the noise's sigma.

Two models trained alike on the same plate (the control: another seed, other images, see
:mod:`jump_n2v.n2v.control`) should give the same image up to the part of each output that depends on
its training draw. Per image QC measures

    d = (main - control) / sigma(s),   s = (main + control) / 2,

with ``sigma(s)`` the noise model's per-pixel standard deviation at that signal: |d| < 1 means the two
outputs differ by less than one raw pixel's noise. Per image: the mean of |d|, its 95th and 99th
percentiles, and its 99th percentile on *structure* and on *background*.

Structure is chosen blind to d, from the two outputs' mean s: pixels brighter than the image's
``BACKGROUND_PERCENTILE`` level by more than ``STRUCTURE_SIGMAS`` noise sigmas at that level (a
denoised background sits well within one sigma of its level, so these are objects); the rest is
background. The flag (``model_disagreement``) judges ``disagreement_check_p99``: the structure p99,
or the whole image's p99 where less than ``MIN_STRUCTURE_FRACTION`` of it is structure (a flat image,
whose only structure is what a model invents there).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd
import zarr

from jump_n2v.noise import NoiseModel
from jump_n2v.qc.channel import array_image_ids, open_zarr
from jump_n2v.qc.files import QCInputError

BACKGROUND_PERCENTILE = 10.0
STRUCTURE_SIGMAS = 3.0
MIN_STRUCTURE_FRACTION = 0.01

DISAGREEMENT_METRICS = (
    "disagreement_mean", "disagreement_p95", "disagreement_p99", "disagreement_structure_p99",
    "disagreement_background_p99", "disagreement_structure_fraction", "disagreement_check_p99",
)


def disagreement_map(main: np.ndarray, control: np.ndarray, model: NoiseModel) -> np.ndarray:
    """(main - control) / sigma at their mean signal, float64."""
    main, control = np.asarray(main, dtype=np.float64), np.asarray(control, dtype=np.float64)
    return (main - control) / np.sqrt(model.variance((main + control) / 2))


def structure_mask(signal: np.ndarray, model: NoiseModel) -> np.ndarray:
    """Pixels of ``signal`` more than STRUCTURE_SIGMAS noise sigmas above its BACKGROUND_PERCENTILE level."""
    level = float(np.percentile(signal, BACKGROUND_PERCENTILE))
    return signal > level + STRUCTURE_SIGMAS * float(np.sqrt(model.variance(np.asarray(level))))


def image_disagreement(main: np.ndarray, control: np.ndarray, model: NoiseModel) -> dict[str, float]:
    """The DISAGREEMENT_METRICS of one image (NaN for a region with no pixels)."""
    size = np.abs(disagreement_map(main, control, model))
    structure = structure_mask((np.asarray(main, np.float64) + np.asarray(control, np.float64)) / 2, model)

    def p99(values: np.ndarray) -> float:
        return float(np.percentile(values, 99)) if values.size else float("nan")

    fraction = float(structure.mean())
    whole = p99(size)
    on_structure = p99(size[structure])
    return {
        "disagreement_mean": float(size.mean()),
        "disagreement_p95": float(np.percentile(size, 95)),
        "disagreement_p99": whole,
        "disagreement_structure_p99": on_structure,
        "disagreement_background_p99": p99(size[~structure]),
        "disagreement_structure_fraction": fraction,
        "disagreement_check_p99": on_structure if fraction >= MIN_STRUCTURE_FRACTION else whole,
    }


def matched_rows(
    denoised: zarr.Array | str | os.PathLike, control: zarr.Array | str | os.PathLike
) -> tuple[zarr.Array, zarr.Array, list[tuple[str, int, int]]]:
    """Both arrays and (image id, main row, control row) for each control image; QCInputError naming the
    store when the control holds an image the main output lacks or has another image shape."""
    denoised, denoised_where = open_zarr(denoised, "denoised")
    control, control_where = open_zarr(control, "control")
    if control.shape[1:] != denoised.shape[1:]:
        raise QCInputError(f"{control_where}: image shape {control.shape[1:]} differs from the denoised {denoised.shape[1:]}")
    main_rows = {image: row for row, image in enumerate(array_image_ids(denoised, denoised_where))}
    pairs = []
    for row, image in enumerate(array_image_ids(control, control_where)):
        if image not in main_rows:
            raise QCInputError(f"{control_where}: image {image!r} is not in the denoised array {denoised_where}")
        pairs.append((image, main_rows[image], row))
    return denoised, control, pairs


def channel_disagreement(
    denoised: zarr.Array | str | os.PathLike, control: zarr.Array | str | os.PathLike, model: NoiseModel
) -> pd.DataFrame:
    """One row per control image: ``image``, the DISAGREEMENT_METRICS, and ``control_disjoint`` (the
    control store's record of whether its training images were disjoint from the main model's)."""
    denoised, control, pairs = matched_rows(denoised, control)
    disjoint = control.attrs.get("control_disjoint")
    rows = []
    for image, main_row, control_row in pairs:
        metrics: dict[str, Any] = image_disagreement(np.asarray(denoised[main_row]), np.asarray(control[control_row]), model)
        rows.append({"image": image, **metrics, "control_disjoint": disjoint})
    return pd.DataFrame.from_records(rows, columns=["image", *DISAGREEMENT_METRICS, "control_disjoint"])
