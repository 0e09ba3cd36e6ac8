"""One image of your own, without a plate: train N2V on it, then look at what came out.

The plate pipeline's functions, wrapped for a single 2-D image (used by ``docs/single_image.ipynb``):

* :func:`train_on_image` stores the image as a one-image Zarr array in the model folder (so model.json
  records real data, and ``jump-n2v export-bmz`` finds its test image) and trains with
  :func:`jump_n2v.n2v.train_channel`; validation patches come from the same image;
* :func:`image_panels` draws raw | denoised | residual with a zoomed crop, as the QC panels do;
* :func:`image_qc` gives the per-image QC metrics (noise level before and after, the residual's
  structure, PSNR/SSIM when a clean reference is given) and the QC flags a plate would get.

Denoising itself is :func:`jump_n2v.predict.runner.denoise_image`, as in ``jump-n2v denoise``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import zarr

from jump_n2v.plumbing.atomic import atomic_output
from jump_n2v.n2v import N2VSettings, TrainedModel, load_trained, train_channel
from jump_n2v.plumbing.ngff import create_channel_array
from jump_n2v.qc.figures import channel_panels
from jump_n2v.qc.measures import image_metrics
from jump_n2v.qc.summary import FLAG_DESCRIPTIONS, summarize

IMAGE_ARRAY = "image.zarr"  # the training image, inside the model folder


def _check_image(image: np.ndarray, what: str) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"{what} must be one 2-D image (Y, X), got shape {image.shape}; pick a channel/plane first")
    if not np.isfinite(image).all():
        raise ValueError(f"{what} has NaN or infinite pixels")
    return image


def _one_image_array(image: np.ndarray, store: Any, channel: str) -> zarr.Array:
    attributes = {"channel": channel, "plate": "single-image", "image_ids": [0]}
    array = create_channel_array(store, shape=(1, *image.shape), chunks=(1, *image.shape), dtype=image.dtype, attributes=attributes)
    array[0] = image
    return array


def train_on_image(
    image: np.ndarray,
    model_dir: str | os.PathLike,
    settings: Mapping[str, Any] | None = None,
    *,
    channel: str = "image",
    log: logging.Logger | None = None,
) -> TrainedModel:
    """Train an N2V model on one 2-D image; ``settings`` are ``n2v`` settings (schema defaults for the rest).

    Writes the model folder as the workflow does (model.pt, model.json, training_log.csv,
    training_curve.png) plus the image as ``image.zarr``, and returns the loaded model.
    """
    image = _check_image(image, "the training image")
    n2v = N2VSettings.from_dict(settings)
    if min(image.shape) < n2v.patch_size:
        raise ValueError(f"the image {image.shape} is smaller than n2v patch_size {n2v.patch_size}; lower patch_size")
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    with atomic_output(model_dir / IMAGE_ARRAY) as temporary:
        _one_image_array(image, str(temporary), channel)
    train_channel([str(model_dir / IMAGE_ARRAY)], n2v, model_dir, log=log)
    return load_trained(model_dir)


def image_panels(raw: np.ndarray, denoised: np.ndarray, out_png: str | os.PathLike, *, crop_size: int = 128,
                 channel: str = "image") -> Path:
    """raw | denoised | residual (raw - denoised), full image and the busiest crop, as a PNG."""
    raw, denoised = _check_image(raw, "raw"), _check_image(denoised, "denoised")
    if raw.shape != denoised.shape:
        raise ValueError(f"raw {raw.shape} and denoised {denoised.shape} differ in shape")
    arrays = [_one_image_array(image, zarr.storage.MemoryStore(), channel) for image in (raw, denoised)]
    channel_panels(arrays[0], arrays[1], out_png, panel_sites=1, crop_size=crop_size)
    return Path(out_png)


def image_qc(raw: np.ndarray, denoised: np.ndarray, clean: np.ndarray | None = None,
             qc_settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """QC of one denoised image: ``metrics`` (a pandas Series of :func:`image_metrics`) and ``flags``
    (name -> what it means) judged with the ``qc`` settings' thresholds as for a plate."""
    raw, denoised = _check_image(raw, "raw"), _check_image(denoised, "denoised")
    metrics = image_metrics(raw, denoised, None if clean is None else _check_image(clean, "clean"))
    table = pd.DataFrame([{"experiment": "single-image", "plate": "single-image", "channel": "image", **metrics}])
    flags = summarize([table], qc_settings={"image": dict(qc_settings or {})})["flags"].iloc[0]
    return {"metrics": pd.Series(metrics), "flags": {flag: FLAG_DESCRIPTIONS[flag] for flag in flags}}
