"""Per-image quality measures of a denoised image against its raw image (and a clean one when there is one).

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

import math

import numpy as np
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from jump_n2v.noise import NoiseModel, noise_leak

# Median absolute deviation of a standard normal variable: median(|N(0, 1)|).
_MAD_TO_SIGMA = 0.6745

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

