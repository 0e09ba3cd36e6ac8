"""Real texture, known noise: the real Phenix fields made nearly clean, then given camera noise of known gain
and read noise, independent or 2 x 2-mixed as the synthetic plates mix it (``jump_n2v.demo.mix_pixels``).

The nearly clean base of a 2160 x 2160 binning-1 image is the mean of each 2 x 2 cell (1080 x 1080, real
pixel-scale texture). Its own noise is not zero and is part of the truth: each cell's diagonal pairs
``A = (p00 + p11) / 2`` and ``B = (p01 + p10) / 2`` share the cell's centre, so their difference cancels
texture to first order, and for the real fields' nearest-neighbour (2 x 2 box) mixing
``var(base noise) = 9/4 var(A - B)`` exactly (for independent noise it would be 1/4 var(A - B): the box
assumption is the larger, so the truth errs towards more residual noise). ``var(A - B)`` is taken from the
median absolute difference in each of 8 intensity bins (the curvature of bright structures leaks into a few
differences), and the residual variance is fitted as a line in the base level and added to the truth; 2 x 2 mixing scales it by 49/144 (its own lag-1 correlation
is 1/6 per axis) where the added noise scales by 1/4.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import tifffile

from jump_n2v.demo import mix_pixels
from real_fields import site_channels

OFFSET = 100.0  # the black level given to the known-noise images
ROUNDING_VARIANCE = 1.0 / 12.0
BOX_ADDED_FACTOR = 0.25  # per-pixel variance of white noise after a 2 x 2 box
BOX_RESIDUAL_FACTOR = 49.0 / 144.0  # the same for the base's residual noise (lag-1 1/6 per axis)
BOX_LAG1 = 0.5


@dataclass(frozen=True)
class CleanBase:
    image: np.ndarray  # float64, 1080 x 1080
    residual_gain: float  # the base's own noise variance = residual_gain * level + residual_intercept
    residual_intercept: float


@lru_cache(maxsize=None)
def clean_base(version: str, channel: str) -> CleanBase:
    """The 2 x 2 mean of a binning-1 real image and the line its residual noise variance follows."""
    image = tifffile.imread(site_channels(version)[channel]).astype(np.float64)
    height, width = (image.shape[0] // 2) * 2, (image.shape[1] // 2) * 2
    if min(height, width) < 1024:
        raise ValueError(f"{version} {channel}: {image.shape} is not a binning-1 field (2 x 2 means would be under 512 px)")
    cells = image[:height, :width].reshape(height // 2, 2, width // 2, 2)
    base = cells.mean(axis=(1, 3))
    difference = (cells[:, 0, :, 0] + cells[:, 1, :, 1] - cells[:, 0, :, 1] - cells[:, 1, :, 0]) / 2
    edges = np.quantile(base, np.linspace(0, 1, 9))
    levels, variances = [], []
    for low, high in zip(edges[:-1], edges[1:]):
        chosen = (base >= low) & (base <= high)
        levels.append(base[chosen].mean())
        # Median absolute deviation (Gaussian): bright structures' curvature leaks into a few differences.
        spread = np.median(np.abs(difference[chosen] - np.median(difference[chosen]))) / 0.6744897501960817
        variances.append(9.0 / 4.0 * spread**2)
    gain, intercept = np.polyfit(levels, variances, 1)
    return CleanBase(base, float(gain), float(intercept))


@dataclass(frozen=True)
class KnownNoise:
    """The true per-pixel noise of a known-noise image: ``variance = gain * stored + intercept``."""

    gain: float
    intercept: float
    lag1: float  # true lag-1 correlation in x and y
    mixed: bool
    residual_share: float  # of the variance at the image's mean level

    def variance(self, stored: float) -> float:
        return self.gain * stored + self.intercept

    def region(self) -> set[tuple[int, int]]:
        """The neighbours that share noise with a pixel: the 8 neighbours for a 2 x 2 box, none otherwise."""
        return {(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)} - {(0, 0)} if self.mixed else set()


def known_noise_image(base: CleanBase, *, camera_gain: float, read_sd: float, mixed: bool, seed: int) -> tuple[np.ndarray, KnownNoise]:
    """uint16 image: ``camera_gain * Poisson((base - dark) / camera_gain) + OFFSET + N(0, read_sd)``, mixed
    after the camera when ``mixed``; ``dark`` is the base's 0.1th percentile (about zero photons)."""
    rng = np.random.default_rng(seed)
    dark = float(np.percentile(base.image, 0.1))
    photons = np.clip(base.image - dark, 0.0, None) / camera_gain
    noisy = camera_gain * rng.poisson(photons) + OFFSET + rng.normal(0.0, read_sd, photons.shape)
    noisy = mix_pixels(noisy, "box2x2" if mixed else "none")
    image = np.clip(np.rint(noisy), 0, 65535).astype(np.uint16)
    # Stored level S = base - dark + OFFSET; the residual variance line is in the base level.
    residual_gain, residual_intercept = base.residual_gain, base.residual_gain * (dark - OFFSET) + base.residual_intercept
    added_factor, residual_factor = (BOX_ADDED_FACTOR, BOX_RESIDUAL_FACTOR) if mixed else (1.0, 1.0)
    gain = added_factor * camera_gain + residual_factor * residual_gain
    intercept = added_factor * (read_sd**2 - camera_gain * OFFSET) + residual_factor * residual_intercept + ROUNDING_VARIANCE
    level = float(image.mean())
    residual = residual_factor * (residual_gain * level + residual_intercept)
    share = residual / (gain * level + intercept)
    lag1 = BOX_LAG1 if mixed else share / 6.0
    return image, KnownNoise(gain, intercept, lag1, mixed, share)


def estimator_errors(model, truth: KnownNoise, region: set[tuple[int, int]]) -> dict:
    """Relative gain and read-variance errors (read variance: the model's variance at its dark level, against
    the true variance there), the worst lag-1 and lag-2 correlation errors, and whether the blind region
    stays within the truth's."""
    lag2 = max(abs(model.lag(dy, dx)) for dy in range(-2, 3) for dx in range(-2, 3) if max(abs(dy), abs(dx)) == 2)
    return {
        "gain_error": model.gain / truth.gain - 1.0,
        "read_error": model.read_variance / truth.variance(model.offset) - 1.0,
        "lag1_error": max(abs(model.lag(0, 1) - truth.lag1), abs(model.lag(1, 0) - truth.lag1)),
        "lag2_error": lag2,
        "region": len(region),
        "region_within_truth": region <= truth.region(),
    }
