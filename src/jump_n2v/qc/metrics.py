"""Per-image quality metrics of a denoised channel, and their per-(plate, channel) summary.

Two kinds of measure, kept apart on purpose:

* **Reference metrics** (need a clean ground-truth image): PSNR and SSIM of raw vs clean and of
  denoised vs clean. The data range of both is the *reference* image's ``max - min`` (see
  :func:`reference_data_range`). Without a reference these columns are absent, never approximated:
  PSNR of the denoised image against the raw one measures how much the image changed, not how good
  it is, so it is not computed.
* **No-reference measures** (always): the noise level of raw and denoised estimated from the finest
  diagonal (db2) wavelet band, the SNR gain it implies, and statistics of the residual ``raw - denoised``,
  which for a denoiser that only removes noise is zero-mean, uncorrelated with the signal and has the
  noise's own spatial correlation.
* **Noise-model measures** (with the channel's :class:`jump_n2v.noise.NoiseModel`, fitted to the raw
  images): the residual checked against the model (its variance per intensity bin, its correlation
  with the denoised image's curvature), how much of its own noise the output carries
  (:func:`jump_n2v.noise.noise_leak`), and from these an estimate of the MSE to the clean signal that a
  blur cannot fool (see :func:`estimated_mse`). The implied SNR gain, which any smoothing raises, is
  shown only beside it.

The denoised image must be in the raw image's intensity units (the predictor's float32 output,
de-normalised with the model's mean/std); every statistic is computed in float64.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd
import zarr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from scipy import ndimage

from jump_n2v.atomic import atomic_output
from jump_n2v.config import resolve_section
from jump_n2v.ingest.discover import read_index as read_image_index
from jump_n2v.ngff import open_channel_array
from jump_n2v.noise import NoiseModel, estimate_noise_model, noise_leak

# Median absolute deviation of a standard normal variable: median(|N(0, 1)|).
_MAD_TO_SIGMA = 0.6745

# Per-image columns that identify the image rather than measure it.
ID_COLUMNS = ("experiment", "plate", "channel", "image", "well", "site", "row")

REFERENCE_METRICS = ("data_range", "psnr_raw_db", "psnr_denoised_db", "psnr_gain_db", "ssim_raw", "ssim_denoised")
NO_REFERENCE_METRICS = (
    "noise_sigma_raw",
    "noise_sigma_denoised",
    "snr_gain_db",
    "residual_mean",
    "residual_std",
    "residual_to_noise_ratio",
    "bias_relative",
    "mean_shift_relative",
    "background_shift_relative",
    "bright_shift_relative",
    "residual_signal_corr",
    "residual_autocorr_x",
    "residual_autocorr_y",
)
INTENSITY_SHIFT_METRICS = ("mean_shift_relative", "background_shift_relative", "bright_shift_relative")
# Measures that need the channel's noise model (NaN without one).
NOISE_MODEL_METRICS = (
    "estimated_mse",
    "estimated_mse_resolution",
    "estimated_gain_db",
    "estimated_gain_is_bound",
    "noise_leak",
    "residual_variance_ratio",
    "residual_variance_ratio_max_bin",
    "residual_curvature_corr",
    "residual_autocorr_excess_x",
    "residual_autocorr_excess_y",
)
# Columns of the summary that describe the fitted noise model of a (plate, channel).
NOISE_MODEL_COLUMNS = (
    "noise_gain", "noise_offset", "noise_read_sd", "noise_camera_gain", "noise_corr_x", "noise_corr_y",
    "noise_corr_x2", "noise_corr_y2", "noise_processed", "noise_notes",
)
BLIND_SPOT_COLUMNS = ("blind_spot_mode", "blind_spot_offsets", "blind_spot_setting", "blind_spot_evidence")
# Columns of the summary from the predict step's comparison with the training data (training_check.json).
TRAINING_CHECK_COLUMNS = ("training_check_moved", "training_check_notes")

# What each flag means; the report prints these next to the thresholds used.
FLAG_DESCRIPTIONS = {
    "residual_structure": "median corr(residual, curvature of the denoised image), both in units of the "
    "noise model's standard deviation (without a noise model: median |corr(residual, denoised)|), exceeds "
    "qc.residual_structure_threshold: the residual is concentrated on structure, so the denoiser removed "
    "signal along with noise (a blur does). Every denoiser removes some (BM3D with the true noise "
    "parameters reads 0.09-0.25 on the synthetic plates); the default 0.25 is where blurs that cost 2 dB "
    "or more are all flagged (README 'QC calibration').",
    "residual_autocorrelation": "median lag-1 autocorrelation of the residual along x or y exceeds the "
    "noise model's own (0 without a model) by more than qc.residual_autocorrelation_threshold: the "
    "removed part has spatial structure that the noise does not have (signal, or row/column-correlated "
    "noise that structN2V's struct_mask is meant for).",
    "noise_leak": "median noise leak exceeds qc.noise_leak_threshold: the output carries part of each "
    "pixel's own noise (it used the noisy pixel, or neighbours sharing its noise: a blur, or a one-pixel "
    "blind spot on correlated noise), so noise was handed back and the estimated MSE is only corrected "
    "to first order. Some leak is no defect (BM3D carries 0.06-0.26, and the posterior step mixes the raw "
    "pixel in where that lowers the MSE); the default 0.3 is above every output at or above BM3D's PSNR on "
    "the synthetic plates (README 'QC calibration').",
    "no_estimated_gain": "median estimated gain over raw (from the noise model) is not above "
    "qc.min_estimated_gain_db: the output is estimated to be no closer to the clean signal than that.",
    "bias": "the median relative shift of the image mean, of the background mean or of the bright-object "
    "mean (denoised mean / raw mean - 1, see 'intensity shifts') exceeds qc.bias_threshold in size: "
    "downstream mean intensities (CellProfiler's MeasureImageIntensity, MeasureObjectIntensity) would read "
    "differently on the denoised image; a denoiser that removes only noise keeps every mean.",
    "psnr_drop": "mean PSNR of denoised vs clean is below that of raw vs clean: denoising made the image "
    "worse against the ground truth.",
    "no_snr_gain": "median implied SNR gain is not above 0 dB: the estimated noise level did not go down.",
    "unlike_training_data": "before denoising, a seeded sample of the plate's images (predict.training_check_images) "
    "was compared with the model's record of its training data, and a statistic moved beyond its tolerance "
    "(predict.training_check_*; see 'unlike training data'): the noise model's gain, read noise or lag-1 "
    "correlation, the normalised intensity quantiles, or the network's masked N2V loss. N2V should only denoise "
    "images acquired like its training images (a shared train_on: experiment model on a plate with another "
    "exposure, noise or stain); train a model on these images, or check the output. Models trained before "
    "the record existed are not compared.",
    "rejected_images": "ingest left images of this channel out (on_bad_image: skip): unreadable, or their "
    "shape or dtype differs from the plate's majority; the Rejects section lists each file and why.",
}


class QCInputError(ValueError):
    """An input of the QC stage is unusable; the message names the file and the problem."""


# --------------------------------------------------------------------------------------------------
# Single-image measures


def reference_data_range(reference: np.ndarray) -> float:
    """The data range used by PSNR and SSIM: ``max - min`` of the clean reference image."""
    reference = np.asarray(reference)
    return float(reference.max()) - float(reference.min())


def psnr_db(reference: np.ndarray, test: np.ndarray, data_range: float) -> float:
    """PSNR in dB of ``test`` against ``reference``: ``10 log10(data_range**2 / MSE)``.

    Identical images give ``inf``; a zero data range (a constant reference) gives ``nan``.
    """
    if data_range <= 0:
        return math.nan
    reference, test = np.asarray(reference, dtype=np.float64), np.asarray(test, dtype=np.float64)
    if np.array_equal(reference, test):
        return math.inf  # scikit-image would divide by zero
    return float(peak_signal_noise_ratio(reference, test, data_range=data_range))


def ssim(reference: np.ndarray, test: np.ndarray, data_range: float) -> float:
    """Mean SSIM (scikit-image, 7x7 uniform window) of ``test`` against ``reference``.

    ``nan`` when the reference is constant or the image is smaller than the 7x7 window.
    """
    reference = np.asarray(reference, dtype=np.float64)
    if data_range <= 0 or min(reference.shape) < 7:
        return math.nan
    return float(structural_similarity(reference, np.asarray(test, dtype=np.float64), data_range=data_range))


# Daubechies-2 decomposition high-pass filter (as PyWavelets' ``db2.dec_hi``): unit norm, so white noise
# keeps its variance, and two vanishing moments, so constant and linear signal give zero.
_DB2_HIGH_PASS = (-0.48296291314469025, 0.836516303737469, -0.22414386804185735, -0.12940952255092145)


def _high_pass_decimated(image: np.ndarray, axis: int) -> np.ndarray:
    """The db2 detail coefficients along ``axis`` (valid part only: no boundary padding)."""
    moved = np.moveaxis(image, axis, -1)
    taps = len(_DB2_HIGH_PASS)
    count = (moved.shape[-1] - taps) // 2 + 1
    detail = sum(weight * moved[..., k : k + 2 * count - 1 : 2] for k, weight in enumerate(_DB2_HIGH_PASS))
    return np.moveaxis(detail, -1, axis)


def noise_sigma(image: np.ndarray) -> float:
    """Gaussian noise standard deviation estimated from the finest diagonal wavelet band.

    ``sigma = median(|HH1|) / 0.6745`` (Donoho's MAD estimator), with HH1 the finest diagonal detail
    band of a db2 wavelet transform, as in scikit-image's ``estimate_sigma``. The band cancels signal
    that is at most linear along x or along y, so smooth image content barely enters it.
    """
    # Not skimage.restoration.estimate_sigma: it pads the image (pywt.dwtn's symmetric mode), so its
    # boundary coefficients mix padding into the band (measured 2.3 % higher sigma on 64 px, 1.6 % on
    # 256 px, 0.14 % on 1080 px images of the same Gaussian noise), and it needs PyWavelets.
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2 or min(image.shape) < len(_DB2_HIGH_PASS):
        raise ValueError(f"noise_sigma needs a 2-D image of at least 4x4 pixels, got shape {image.shape}")
    diagonal = _high_pass_decimated(_high_pass_decimated(image, 0), 1)
    return float(np.median(np.abs(diagonal)) / _MAD_TO_SIGMA)


def snr_gain_db(sigma_raw: float, sigma_denoised: float) -> float:
    """Implied SNR gain ``20 log10(sigma_raw / sigma_denoised)``, assuming the signal is unchanged."""
    if sigma_raw <= 0:
        return math.nan
    if sigma_denoised <= 0:
        return math.inf
    return 20.0 * math.log10(sigma_raw / sigma_denoised)


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    denominator = math.sqrt(float(np.sum(a * a)) * float(np.sum(b * b)))
    return float(np.sum(a * b)) / denominator if denominator > 0 else math.nan


def lag1_autocorrelation(image: np.ndarray, axis: int) -> float:
    """Correlation of each pixel with its neighbour one step along ``axis`` (1 = x, 0 = y).

    About 0 for pixel-independent noise; close to 1 for smooth (structured) content.
    """
    centred = np.asarray(image, dtype=np.float64)
    centred = centred - centred.mean()
    variance = float(np.mean(centred * centred))
    if variance == 0.0:
        return math.nan
    if axis == 1:
        product = centred[:, :-1] * centred[:, 1:]
    elif axis == 0:
        product = centred[:-1, :] * centred[1:, :]
    else:
        raise ValueError(f"axis must be 0 (y) or 1 (x), got {axis}")
    return float(np.mean(product)) / variance


def estimated_mse(residual: np.ndarray, noise_variance: np.ndarray, leak: float) -> float:
    """MSE of the output ``y`` to the clean signal ``s``, estimated without ``s``.

    For ``x = s + n``: ``|x - y|^2 = |s - y|^2 + |n|^2 + 2 <n, s - y>``, so
    ``E|s - y|^2 = E|x - y|^2 - E|n|^2 + 2 E<n, y>``. A blind-spot output on noise its blind spot
    covers does not depend on the pixel's own noise, ``E<n, y> = 0`` and the MSE is the residual power
    minus the model's noise variance (the idea of Noisier2Noise / blind-spot SURE). For an output that
    does depend on it (a blur; a one-pixel blind spot on correlated noise) the term is ``leak *
    E|n|^2`` with ``leak`` from :func:`jump_n2v.noise.noise_leak`, which makes this SURE for a linear
    filter. Assumes the noise model's variance is right and the leak is the same at every intensity; it
    fails for outputs whose dependence on the noisy pixel varies strongly with the content.
    """
    noise_power = float(np.mean(noise_variance))
    return float(np.mean(residual * residual)) - noise_power * (1.0 - 2.0 * leak)


def estimated_mse_resolution(residual: np.ndarray, noise_variance: np.ndarray, leak: float, block: int = 16) -> float:
    """Twice the standard error of :func:`estimated_mse`: below it an estimate cannot be told from 0.

    The estimate is the mean of the per-pixel terms ``residual^2 - variance (1 - 2 leak)``; their spread
    is measured over ``block`` x ``block`` block means, so neighbouring pixels that share noise (pixel
    mixing) are not counted as independent. NaN for an image smaller than two blocks.
    """
    terms = residual * residual - noise_variance * (1.0 - 2.0 * leak)
    rows, cols = terms.shape[0] // block, terms.shape[1] // block
    if rows * cols < 2:
        return math.nan
    means = terms[: rows * block, : cols * block].reshape(rows, block, cols, block).mean(axis=(1, 3))
    return 2.0 * float(means.std(ddof=1)) / math.sqrt(means.size)


def estimated_gain_db(noise_variance: np.ndarray, mse: float, resolution: float = 0.0) -> tuple[float, bool]:
    """``10 log10(E|n|^2 / estimated MSE)`` and whether that is only a lower bound.

    How much closer to the clean signal than the raw image (whose MSE is the noise power). When the
    estimated MSE is not above its ``resolution`` (:func:`estimated_mse_resolution`; an estimate at or
    below 0 means the noise model's variance is as large as the residual power, e.g. a gain read high
    on texture), the MSE is only known to be below the resolution, so the gain is the lower bound
    ``10 log10(E|n|^2 / resolution)`` and the flag is True; NaN when there is no estimate or no
    resolution to bound it by. Never infinite.
    """
    if not math.isfinite(mse):
        return math.nan, False
    if mse > resolution and mse > 0:
        return 10.0 * math.log10(float(np.mean(noise_variance)) / mse), False
    if not (math.isfinite(resolution) and resolution > 0):
        return math.nan, False
    return 10.0 * math.log10(float(np.mean(noise_variance)) / resolution), True


def model_metrics(raw: np.ndarray, denoised: np.ndarray, model: NoiseModel, bins: int = 8) -> dict[str, float]:
    """The noise-model measures of one image (see NOISE_MODEL_METRICS)."""
    raw = np.asarray(raw, dtype=np.float64)
    denoised = np.asarray(denoised, dtype=np.float64)
    residual = raw - denoised
    variance = model.variance(denoised)
    scale = np.sqrt(variance)
    normalised = residual / scale
    leak = noise_leak(raw, denoised, model) if min(raw.shape) >= 16 else math.nan
    charged_leak = leak if math.isfinite(leak) else 0.0
    mse = estimated_mse(residual, variance, charged_leak)
    resolution = estimated_mse_resolution(residual, variance, charged_leak)
    gain, is_bound = estimated_gain_db(variance, mse, resolution)
    # Residual power against the model per intensity bin (quantiles of the denoised image).
    edges = np.unique(np.quantile(denoised, np.linspace(0, 1, bins + 1)))
    labels = np.clip(np.searchsorted(edges, denoised, side="right") - 1, 0, max(len(edges) - 2, 0))
    ratios = [
        float(np.mean(residual[labels == label] ** 2) / np.mean(variance[labels == label]))
        for label in range(max(len(edges) - 1, 1))
        if np.any(labels == label)
    ]
    # Blurring leaves -(sigma^2 / 2) * Laplacian(signal) in the residual: it correlates with curvature.
    curvature = -ndimage.gaussian_laplace(denoised, 1.0) / scale
    return {
        "estimated_mse": mse,
        "estimated_mse_resolution": resolution,
        "estimated_gain_db": gain,
        "estimated_gain_is_bound": float(is_bound),
        "noise_leak": leak,
        "residual_variance_ratio": float(np.mean(residual**2) / np.mean(variance)),
        "residual_variance_ratio_max_bin": max(ratios),
        "residual_curvature_corr": _correlation(normalised, curvature),
        "residual_autocorr_excess_x": lag1_autocorrelation(residual, axis=1) - model.lag(0, 1),
        "residual_autocorr_excess_y": lag1_autocorrelation(residual, axis=0) - model.lag(1, 0),
    }


# The bright-object region of an image: the brightest 0.5 % of its pixels (the tail a debris object, an
# aggregate or a saturated cell fills), chosen on the raw image smoothed with a Gaussian of this sigma
# whose centre 3 x 3 is left out, so that whether a pixel is chosen never depends on its own noise nor
# on its 8 neighbours' (independent or nearest-neighbour-mixed noise). Choosing on the noisy values, or
# on a plain Gaussian smoothing, favours pixels with positive noise: on the demo's small Poisson-noisy
# cells the clean image then read 0.2-2.2 % below the raw one there, and a perfect denoiser was biased.
BRIGHT_FRACTION = 0.005
REGION_SMOOTHING_SIGMA = 2.0


def bright_region_selector(raw: np.ndarray) -> np.ndarray:
    """``raw`` smoothed with a Gaussian of ``REGION_SMOOTHING_SIGMA`` that leaves out each pixel's 3 x 3
    neighbourhood (weights renormalised), so the selector is blind to the noise it will be compared with."""
    impulse = np.zeros((3, 3))
    impulse[1, 1] = 1.0
    # The Gaussian's own weights at offsets -1..1, exactly as gaussian_filter applies them.
    centre = ndimage.gaussian_filter(np.pad(impulse, 8), REGION_SMOOTHING_SIGMA, mode="constant")[8:11, 8:11]
    smoothed = ndimage.gaussian_filter(raw, REGION_SMOOTHING_SIGMA)
    return (smoothed - ndimage.correlate(raw, centre, mode="reflect")) / (1.0 - centre.sum())


def intensity_shifts(raw: np.ndarray, denoised: np.ndarray) -> dict[str, float]:
    """Relative shift ``mean(denoised) / mean(raw) - 1`` of the whole image, of its background (all but
    the bright-object region) and of its bright-object region (``BRIGHT_FRACTION`` of the pixels).

    This is what a downstream mean intensity (CellProfiler's, say) reads differently on the denoised
    image; NaN where the raw mean of a region is not positive.
    """
    raw = np.asarray(raw, dtype=np.float64)
    denoised = np.asarray(denoised, dtype=np.float64)
    selector = bright_region_selector(raw)
    bright = selector >= np.quantile(selector, 1.0 - BRIGHT_FRACTION)
    regions = {"mean_shift_relative": np.ones(raw.shape, dtype=bool), "background_shift_relative": ~bright, "bright_shift_relative": bright}
    shifts = {}
    for name, region in regions.items():
        raw_mean = float(raw[region].mean()) if region.any() else math.nan
        shifts[name] = float(denoised[region].mean()) / raw_mean - 1.0 if raw_mean > 0 else math.nan
    return shifts


def image_metrics(
    raw: np.ndarray, denoised: np.ndarray, clean: np.ndarray | None = None, noise_model: NoiseModel | None = None
) -> dict[str, float]:
    """All metrics of one image (see the module docstring); reference metrics only when ``clean`` is
    given, noise-model measures only with ``noise_model`` (NaN otherwise)."""
    raw = np.asarray(raw, dtype=np.float64)
    denoised = np.asarray(denoised, dtype=np.float64)
    if raw.shape != denoised.shape:
        raise ValueError(f"raw shape {raw.shape} differs from denoised shape {denoised.shape}")
    residual = raw - denoised
    sigma_raw = noise_sigma(raw)
    sigma_denoised = noise_sigma(denoised)
    residual_std = float(residual.std())
    low, high = np.percentile(denoised, [0.5, 99.5])
    signal_range = float(high - low)
    residual_mean = float(residual.mean())
    values: dict[str, float] = {
        "noise_sigma_raw": sigma_raw,
        "noise_sigma_denoised": sigma_denoised,
        "snr_gain_db": snr_gain_db(sigma_raw, sigma_denoised),
        "residual_mean": residual_mean,
        "residual_std": residual_std,
        "residual_to_noise_ratio": residual_std / sigma_raw if sigma_raw > 0 else math.nan,
        "bias_relative": residual_mean / signal_range if signal_range > 0 else math.nan,
        **intensity_shifts(raw, denoised),
        "residual_signal_corr": _correlation(residual, denoised),
        "residual_autocorr_x": lag1_autocorrelation(residual, axis=1),
        "residual_autocorr_y": lag1_autocorrelation(residual, axis=0),
    }
    if noise_model is not None:
        values.update(model_metrics(raw, denoised, noise_model))
    else:
        values.update({name: math.nan for name in NOISE_MODEL_METRICS})
    if clean is not None:
        clean = np.asarray(clean, dtype=np.float64)
        if clean.shape != raw.shape:
            raise ValueError(f"clean shape {clean.shape} differs from raw shape {raw.shape}")
        data_range = reference_data_range(clean)
        psnr_raw = psnr_db(clean, raw, data_range)
        psnr_denoised = psnr_db(clean, denoised, data_range)
        values.update(
            data_range=data_range,
            psnr_raw_db=psnr_raw,
            psnr_denoised_db=psnr_denoised,
            psnr_gain_db=psnr_denoised - psnr_raw,
            ssim_raw=ssim(clean, raw, data_range),
            ssim_denoised=ssim(clean, denoised, data_range),
        )
    return values


# --------------------------------------------------------------------------------------------------
# One (plate, channel): streaming over the Zarr arrays


def open_zarr(array: zarr.Array | str | os.PathLike, role: str) -> tuple[zarr.Array, str]:
    """The array and a name for error messages (its path)."""
    if isinstance(array, zarr.Array):
        return array, f"{role} array {array.store_path}"
    try:
        return open_channel_array(array), str(array)
    except Exception as error:  # zarr raises several types for a missing/corrupt store
        raise QCInputError(f"cannot open {role} Zarr array {array}: {error}") from error


def array_image_ids(array: zarr.Array, where: str) -> list[str]:
    ids = array.attrs.get("image_ids")
    if ids is None:
        raise QCInputError(f"{where}: attribute 'image_ids' is missing")
    if len(ids) != array.shape[0]:
        raise QCInputError(f"{where}: 'image_ids' lists {len(ids)} images but the array has {array.shape[0]} rows")
    return [str(image) for image in ids]


def read_index(index: pd.DataFrame | str | os.PathLike | None) -> pd.DataFrame | None:
    if index is None:
        return None
    if isinstance(index, pd.DataFrame):
        table, where = index, "index table"
    else:
        where = str(index)
        try:
            table = read_image_index(index)
        except ValueError as error:
            raise QCInputError(str(error)) from error
    missing = {"image", "well", "site"} - set(table.columns)
    if missing:
        raise QCInputError(f"{where}: missing column(s) {sorted(missing)}")
    table = table.assign(image=table["image"].astype(str))
    if table["image"].duplicated().any():
        duplicated = table.loc[table["image"].duplicated(), "image"].iloc[0]
        raise QCInputError(f"{where}: image {duplicated!r} appears more than once")
    return table.set_index("image")


def channel_noise_model(raw: zarr.Array | str | os.PathLike, images: int = 16, seed: int = 0) -> NoiseModel:
    """The noise model of one (plate, channel), fitted to a seeded sample of at most ``images`` raw
    images (the array's ``dtype_range`` attribute marks clipped and saturated pixels)."""
    raw, where = open_zarr(raw, "raw")
    if raw.ndim != 3 or raw.shape[0] == 0:
        raise QCInputError(f"{where}: expected a non-empty (images, Y, X) array, got shape {raw.shape}")
    rows = np.random.default_rng(seed).choice(raw.shape[0], size=min(images, raw.shape[0]), replace=False)
    dtype_range = raw.attrs.get("dtype_range")
    try:
        return estimate_noise_model([np.asarray(raw[int(row)]) for row in sorted(rows)], dtype_range=tuple(dtype_range) if dtype_range else None, seed=seed)
    except ValueError as error:
        raise QCInputError(f"{where}: cannot fit a noise model: {error}") from error


def channel_metrics(
    raw: zarr.Array | str | os.PathLike,
    denoised: zarr.Array | str | os.PathLike,
    clean: zarr.Array | str | os.PathLike | None = None,
    index: pd.DataFrame | str | os.PathLike | None = None,
    noise_model: NoiseModel | None = None,
) -> pd.DataFrame:
    """Per-image metrics of one (plate, channel), one row per array row, read one image at a time.

    ``raw``, ``denoised`` and ``clean`` are Zarr arrays or their paths; rows are matched by the
    ``image_ids`` attribute (a clean image missing for a raw one leaves that row's reference metrics
    NaN). ``index`` (index.csv or its DataFrame) supplies ``well`` and ``site``. ``noise_model`` defaults
    to :func:`channel_noise_model` of ``raw``. Columns: ``ID_COLUMNS`` + ``NO_REFERENCE_METRICS`` +
    ``NOISE_MODEL_METRICS`` (+ ``REFERENCE_METRICS`` when ``clean`` is given).
    """
    raw, raw_where = open_zarr(raw, "raw")
    denoised, denoised_where = open_zarr(denoised, "denoised")
    if raw.ndim != 3:
        raise QCInputError(f"{raw_where}: expected (images, Y, X), got shape {raw.shape}")
    if raw.shape[0] == 0:
        raise QCInputError(f"{raw_where}: the array holds no images")
    if denoised.shape != raw.shape:
        raise QCInputError(f"{denoised_where}: shape {denoised.shape} differs from the raw array's {raw.shape}")
    raw_ids = array_image_ids(raw, raw_where)
    if array_image_ids(denoised, denoised_where) != raw_ids:
        raise QCInputError(f"{denoised_where}: 'image_ids' do not match the raw array's ({raw_where})")
    clean_rows: dict[str, int] = {}
    if clean is not None:
        clean, clean_where = open_zarr(clean, "clean")
        if clean.shape[1:] != raw.shape[1:]:
            raise QCInputError(f"{clean_where}: image shape {clean.shape[1:]} differs from the raw {raw.shape[1:]}")
        clean_rows = {image: row for row, image in enumerate(array_image_ids(clean, clean_where))}
    index_table = read_index(index)
    if noise_model is None:
        noise_model = channel_noise_model(raw)

    attrs = raw.attrs
    rows = []
    for row, image in enumerate(raw_ids):
        raw_image = np.asarray(raw[row])
        denoised_image = np.asarray(denoised[row])
        if not np.all(np.isfinite(denoised_image)):
            raise QCInputError(f"{denoised_where}: image {image!r} (row {row}) contains NaN or infinite values")
        clean_image = np.asarray(clean[clean_rows[image]]) if image in clean_rows else None
        record: dict[str, Any] = {
            "experiment": attrs.get("experiment"),
            "plate": attrs.get("plate"),
            "channel": attrs.get("channel"),
            "image": image,
            "well": None,
            "site": None,
            "row": row,
        }
        if index_table is not None:
            if image not in index_table.index:
                raise QCInputError(f"{raw_where}: image {image!r} is not in the index table")
            record["well"] = str(index_table.at[image, "well"])
            record["site"] = int(index_table.at[image, "site"])
        record.update(image_metrics(raw_image, denoised_image, clean_image, noise_model))
        if clean is not None and clean_image is None:
            record.update({name: math.nan for name in REFERENCE_METRICS})
        rows.append(record)
    columns = list(ID_COLUMNS) + list(NO_REFERENCE_METRICS) + list(NOISE_MODEL_METRICS) + (list(REFERENCE_METRICS) if clean is not None else [])
    table = pd.DataFrame.from_records(rows, columns=columns)
    return table.astype({"site": "Int64"})


# --------------------------------------------------------------------------------------------------
# Summary per (plate, channel)


def _read_json(path: Path, what: str) -> Any:
    """The JSON document at ``path``; QCInputError naming the file (``what`` says which kind) otherwise."""
    try:
        return json.loads(path.read_text())
    except OSError as error:
        raise QCInputError(f"cannot read {what}{path}: {error}") from error
    except json.JSONDecodeError as error:
        raise QCInputError(f"{path} is not valid JSON: {error}") from error


def load_model_info(model_dir: str | os.PathLike) -> dict[str, Any]:
    """``model.json`` of a model directory, with ``model_dir`` added; a clear error if unreadable."""
    path = Path(model_dir) / "model.json"
    info = _read_json(path, "")
    if not isinstance(info.get("training"), dict):
        raise QCInputError(f"{path}: no 'training' summary object")
    info["model_dir"] = str(model_dir)
    return info


def _above(value: Any, threshold: float) -> bool:
    """``value > threshold``, False for a missing (NaN) measure."""
    return value is not None and not pd.isna(value) and value > threshold


def _flags(row: Mapping[str, Any], qc: Mapping[str, Any]) -> list[str]:
    flags = []
    # With a noise model the residual is judged against it (curvature test in units of the model's
    # sigma); shot noise makes the raw residual correlate with the signal, so the plain correlation is
    # only the fallback without one.
    structure = row.get("residual_curvature_corr_median", math.nan)
    if pd.isna(structure):
        structure = abs(row["residual_signal_corr_median"])
    if _above(structure, qc["residual_structure_threshold"]):
        flags.append("residual_structure")
    # Against the noise model's own correlation when there is one (correlated camera noise is not structure).
    autocorr_x = row.get("residual_autocorr_excess_x_median", math.nan)
    autocorr_y = row.get("residual_autocorr_excess_y_median", math.nan)
    if pd.isna(autocorr_x) or pd.isna(autocorr_y):
        autocorr_x, autocorr_y = row["residual_autocorr_x_median"], row["residual_autocorr_y_median"]
    if max(autocorr_x, autocorr_y) > qc["residual_autocorrelation_threshold"]:
        flags.append("residual_autocorrelation")
    if _above(row.get("noise_leak_median", math.nan), qc["noise_leak_threshold"]):
        flags.append("noise_leak")
    shifts = [row.get(f"{name}_median", math.nan) for name in INTENSITY_SHIFT_METRICS]
    if any(_above(abs(shift), qc["bias_threshold"]) for shift in shifts):
        flags.append("bias")
    if "psnr_gain_db_mean" in row and row["psnr_gain_db_mean"] < 0:
        flags.append("psnr_drop")
    if not row["snr_gain_db_median"] > 0:  # also catches NaN
        flags.append("no_snr_gain")
    estimated_gain = row.get("estimated_gain_db_median", math.nan)
    if not pd.isna(estimated_gain) and not estimated_gain > qc["min_estimated_gain_db"]:
        flags.append("no_estimated_gain")
    return flags


def estimated_gain_note(bounds: int, images: int) -> str:
    """Why a summary's estimated gain is a lower bound (``bounds`` of ``images`` images gave only a bound)."""
    return (
        f"lower bound: on {bounds} of {images} image(s) the estimated MSE was not above its resolution (2 standard "
        "errors): the noise model's variance is about as large as the residual power (a noise level read high, "
        "e.g. texture read as noise), so the MSE is only known to be below the resolution and the gain to be at "
        "least the value shown"
    )


def noise_model_columns(model: NoiseModel | None) -> dict[str, Any]:
    """The summary's NOISE_MODEL_COLUMNS for one (plate, channel); NaN / None without a model."""
    if model is None:
        return {name: None if name in ("noise_processed", "noise_notes") else math.nan for name in NOISE_MODEL_COLUMNS}
    return {
        "noise_gain": model.gain,
        "noise_offset": model.offset,
        "noise_read_sd": math.sqrt(max(model.read_variance, 0.0)),
        "noise_camera_gain": model.camera_gain,
        "noise_corr_x": model.lag(0, 1),
        "noise_corr_y": model.lag(1, 0),
        "noise_corr_x2": model.lag(0, 2),
        "noise_corr_y2": model.lag(2, 0),
        "noise_processed": model.processed,
        "noise_notes": " | ".join(model.notes),
    }


def blind_spot_columns(info: Mapping[str, Any] | None) -> dict[str, Any]:
    """The summary's BLIND_SPOT_COLUMNS from model.json's ``blind_spot`` record ("not recorded" when absent)."""
    record = (info or {}).get("blind_spot")
    if not isinstance(record, Mapping):
        return {"blind_spot_mode": "not recorded", "blind_spot_offsets": None, "blind_spot_setting": None, "blind_spot_evidence": None}
    offsets = record.get("offsets")
    return {
        "blind_spot_mode": str(record.get("mode", "not recorded")),
        "blind_spot_offsets": " ".join(f"({dy},{dx})" for dy, dx in offsets) if offsets else None,
        "blind_spot_setting": None if record.get("setting") is None else str(record.get("setting")),
        "blind_spot_evidence": None if record.get("evidence") is None else str(record.get("evidence")),
    }


def read_noise_model(path: str | os.PathLike) -> NoiseModel:
    """A ``noise_model.json`` written by the QC stage; a clear error naming the file otherwise."""
    path = Path(path)
    try:
        return NoiseModel.from_dict(json.loads(path.read_text()))
    except OSError as error:
        raise QCInputError(f"cannot read noise model {path}: {error}") from error
    except (json.JSONDecodeError, ValueError, TypeError) as error:
        raise QCInputError(f"{path} is not a noise model: {error}") from error


def write_noise_model(model: NoiseModel, path: str | os.PathLike) -> None:
    with atomic_output(path) as temporary:
        Path(temporary).write_text(json.dumps(model.to_dict(), indent=2))


EXPORT_CLIPPING_COLUMNS = ("export_clipped_low", "export_clipped_high", "export_clipped_fraction")


def read_export_clipping(clipping_csv: str | os.PathLike) -> dict[str, int]:
    """Totals of a TIFF export's per-image clipping table (``denoised_tiff/<channel>/clipping.csv``)."""
    try:
        table = pd.read_csv(clipping_csv)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise QCInputError(f"cannot read the export's clipping table {clipping_csv}: {error}") from error
    missing = {"pixels", "clipped_low", "clipped_high"} - set(table.columns)
    if missing:
        raise QCInputError(f"{clipping_csv}: not an export clipping table, missing {sorted(missing)}")
    return {column: int(table[column].sum()) for column in ("pixels", "clipped_low", "clipped_high")}


def export_clipping_columns(totals: Mapping[str, int] | None) -> dict[str, float]:
    """Pixels the export rounded into the source dtype's range: below its minimum, above its maximum,
    and their share of all exported pixels; NaN for a channel that was not exported."""
    if not totals:
        return dict.fromkeys(EXPORT_CLIPPING_COLUMNS, math.nan)
    pixels = totals["pixels"]
    return {
        "export_clipped_low": totals["clipped_low"],
        "export_clipped_high": totals["clipped_high"],
        "export_clipped_fraction": (totals["clipped_low"] + totals["clipped_high"]) / pixels if pixels else math.nan,
    }


def read_training_check(path: str | os.PathLike) -> dict[str, Any]:
    """A ``denoised/<channel>.training_check.json`` the predict step wrote
    (:func:`jump_n2v.n2v.similarity.check_array`); a clear error naming the file otherwise."""
    path = Path(path)
    check = _read_json(path, "the training-data check ")
    if not isinstance(check, dict) or not isinstance(check.get("moved"), list) or not check.get("plate") or not check.get("channel"):
        raise QCInputError(f"{path} is not a training-data check (needs plate, channel and a 'moved' list)")
    return check


def training_check_columns(check: Mapping[str, Any] | None) -> dict[str, Any]:
    """TRAINING_CHECK_COLUMNS: each moved statistic with its change and tolerance, and the check's notes
    (None without a check)."""
    if check is None:
        return dict.fromkeys(TRAINING_CHECK_COLUMNS)
    statistics = check.get("statistics", {})
    moved = ", ".join(
        f"{name} {statistics[name]['change']:.3g} (tolerance {statistics[name]['tolerance']:g})" for name in check["moved"]
    )
    return {"training_check_moved": moved or None, "training_check_notes": " | ".join(check.get("notes", [])) or None}


def summarize(
    tables: Iterable[pd.DataFrame],
    models: Mapping[tuple[str, str], Mapping[str, Any]] | None = None,
    qc_settings: Mapping[str, Mapping[str, Any]] | None = None,
    noise_models: Mapping[tuple[str, str], NoiseModel] | None = None,
    rejected: Mapping[tuple[str, str], int] | None = None,
    clipping: Mapping[tuple[str, str], Mapping[str, int]] | None = None,
    training_checks: Mapping[tuple[str, str], Mapping[str, Any]] | None = None,
) -> pd.DataFrame:
    """One row per (plate, channel): ``n_images``, ``<metric>_mean`` / ``<metric>_median`` of every
    metric present, the fitted noise model (NOISE_MODEL_COLUMNS, from ``noise_models``), the model's
    training summary and blind-spot record (BLIND_SPOT_COLUMNS) and ``flags`` (a list of names, see
    FLAG_DESCRIPTIONS).

    ``tables`` are :func:`channel_metrics` results. ``models`` maps (plate, channel) to the model's
    info (:func:`load_model_info`); ``qc_settings`` maps channel to its resolved ``qc`` settings
    (schema defaults for channels not given). ``rejected`` maps (plate, channel) to the number of
    images ingest left out (``n_rejected``; any makes a ``rejected_images`` flag). ``clipping`` maps
    (plate, channel) to the TIFF export's clipped pixel counts (``pixels``, ``clipped_low``,
    ``clipped_high``: :func:`read_export_clipping`); channels not exported get NaN in the
    EXPORT_CLIPPING_COLUMNS. ``training_checks`` maps (plate, channel) to the predict step's comparison
    with the training data (:func:`read_training_check`): TRAINING_CHECK_COLUMNS, and an
    ``unlike_training_data`` flag when a statistic moved. Reference-metric columns appear only when some
    table has them.
    """
    combined = pd.concat(list(tables), ignore_index=True)
    if combined.empty:
        raise QCInputError("summarize: no per-image metrics to summarise")
    metrics = [name for name in NO_REFERENCE_METRICS + NOISE_MODEL_METRICS + REFERENCE_METRICS if name in combined.columns]
    models = models or {}
    noise_models = noise_models or {}
    qc_settings = qc_settings or {}
    rows = []
    for (plate, channel), group in combined.groupby(["plate", "channel"], sort=True):
        values = group[metrics].replace([np.inf, -np.inf], np.nan)
        row: dict[str, Any] = {
            "experiment": group["experiment"].iloc[0],
            "plate": plate,
            "channel": channel,
            "n_images": len(group),
            # inf appears only when the denoised image is perfectly flat; count it rather than average it.
            "n_images_infinite_snr_gain": int(np.isinf(group["snr_gain_db"]).sum()),
        }
        if "estimated_gain_is_bound" in group:
            row["n_images_estimated_gain_bound"] = int((group["estimated_gain_is_bound"] > 0).sum())
        for name in metrics:
            row[f"{name}_mean"] = float(values[name].mean())
            row[f"{name}_median"] = float(values[name].median())
        if row.get("n_images_estimated_gain_bound"):
            row["estimated_gain_note"] = estimated_gain_note(row["n_images_estimated_gain_bound"], len(group))
        info = models.get((plate, channel))
        training = (info or {}).get("training", {})
        row["model_dir"] = (info or {}).get("model_dir")
        row["best_val_loss"] = training.get("best_val_loss", math.nan)
        row["best_epoch"] = training.get("best_epoch", math.nan)
        row["epochs_run"] = training.get("epochs_run", math.nan)
        row["stopped_early"] = training.get("stopped_early")
        row.update(noise_model_columns(noise_models.get((plate, channel))))
        row.update(blind_spot_columns(info))
        row["n_rejected"] = int((rejected or {}).get((plate, channel), 0))
        row.update(export_clipping_columns((clipping or {}).get((plate, channel))))
        check = (training_checks or {}).get((plate, channel))
        row.update(training_check_columns(check))
        row["flags"] = _flags(row, resolve_section("qc", qc_settings.get(channel)))
        if check is not None and check["moved"]:
            row["flags"].append("unlike_training_data")
        if row["n_rejected"]:
            row["flags"].append("rejected_images")
        rows.append(row)
    return pd.DataFrame.from_records(rows)


def write_table(table: pd.DataFrame, csv_path: str | os.PathLike, parquet_path: str | os.PathLike | None = None) -> None:
    """Write ``table`` as CSV (and parquet), each atomically. List cells (``flags``) become
    ``;``-joined strings in the CSV and stay lists in parquet."""
    as_text = table.copy()
    for column in as_text.columns:
        if as_text[column].map(lambda value: isinstance(value, (list, tuple))).any():
            as_text[column] = as_text[column].map(lambda value: ";".join(value) if isinstance(value, (list, tuple)) else value)
    with atomic_output(csv_path) as temporary:
        as_text.to_csv(temporary, index=False)
    if parquet_path is not None:
        with atomic_output(parquet_path) as temporary:
            table.to_parquet(temporary, index=False)
