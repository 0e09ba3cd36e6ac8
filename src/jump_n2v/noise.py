"""A camera noise model learned from the raw images alone: Poisson-Gaussian variance plus spatial correlation.

What the model describes is the noise of the data *as they are*: ``variance(signal)`` is the per-pixel
marginal variance, ``correlation`` its normalised 5 x 5 autocorrelation. When the acquisition mixed
neighbouring pixels after the camera (a 2 x 2 box, a half-pixel bilinear shift), both differ from the
camera's own: a 2 x 2 box divides the per-pixel variance by 4 and gives lag-1 correlations of 0.5. The
camera's gain is recovered as ``camera_gain = gain * correlation_sum`` (a mixing kernel that sums to 1
keeps the variance of large-area sums, which is what ``correlation_sum`` restores).

Method (flat-block statistics):

1. Every image is cut into 16 x 16 blocks; a least-squares quadratic surface is removed from each block.
2. Blocks holding a pixel at the dtype minimum or maximum are left out (clipping biases the variance).
3. Blocks are binned by their mean; in each bin the noise variance is a low quantile of the block
   variances divided by the same quantile of the variance of pure-noise blocks (a Gamma law with the
   Satterthwaite degrees of freedom of the detrended residual under the current correlation). Blocks that
   hold texture only raise variances, so the lower quantile ignores them; bins where every block holds
   texture (nuclei with chromatin) are recognised by a second-difference (high-pass) estimate, calibrated
   by the correlation and the rounding noise, that is clearly lower, and take that one instead.
4. The correlation is pooled over the blocks consistent with pure noise, and corrected for the
   detrending (which makes residuals anti-correlated) by a fixed-point iteration on the exact expectation.
5. A weighted line ``variance = slope * mean + intercept`` is fitted to the bins; bins far above it
   (texture) are dropped and the line refitted.

On a confluent real field every block holds cell texture, and step 4 reads it as correlated noise (measured
on the real Phenix sites of issue 18: lag-1 0.77, lag-2 0.42, gain 0 with read sd 361 ADU on Version5 RNA).
The pixel mixing is a property of the acquisition, so :func:`estimate_site_noise_models` measures it once
where noise dominates (the intensity bins, of any channel, with the least lag-2 correlation: background) and
refits each channel with it fixed; with a known mixing a bin may also take the median of its pixels' finest
diagonal Haar details (texture at that scale is sparse, so the median ignores it) where texture raises the
block estimates.

Identifiability: the variance line gives only the slope (``gain``) and the intercept
(``read_variance - gain * offset``). The offset (black level) is taken as the *dark level*: the mean of
the darkest flat blocks, assuming they hold no photons; ``read_variance`` is the model variance there.
When the background does hold photons the offset comes out too high and ``read_variance`` too high by
``gain**2 * background_photons``; the intercept, all the variance-stabilising transform needs, is
unaffected.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import stats

from jump_n2v.plumbing.dtypes import integer_bounds

BLOCK = 16
MAX_LAG = 2
# Lags (dy, dx) with dy > 0, or dy == 0 and dx > 0: the other half follows by symmetry.
_HALF_LAGS = tuple((dy, dx) for dy in range(0, MAX_LAG + 1) for dx in range(-MAX_LAG, MAX_LAG + 1) if dy > 0 or dx > 0)
# Lower quantile of the block variances used per intensity bin, and the upper one that still counts as pure noise.
_LOW_QUANTILE = 0.25
_NOISE_ONLY_QUANTILE = 0.9
_MIN_BLOCKS_PER_BIN = 24
# A bin whose detrended variance exceeds the high-pass estimate by more than this holds texture.
_TEXTURE_MARGIN = 0.25
_MAX_BINS = 16
_MAX_BLOCKS = 200_000
_FEW_BLOCKS = 200


@dataclass(frozen=True)
class NoiseModel:
    """Per-pixel noise of one (plate, channel): ``var = gain * (signal - offset) + read_variance``.

    ``gain`` (ADU per electron) and ``read_variance`` (ADU^2) describe the per-pixel *marginal* variance
    of the data as stored; ``correlation`` is the noise's normalised autocorrelation at lags -2..2 in
    (y, x) (row ``dy + 2``, column ``dx + 2``; centre 1.0). ``offset`` is the dark level (see the module
    docstring for the assumption). ``processed`` says the data do not look like raw camera counts; the
    reason is in ``notes``.
    """

    gain: float
    offset: float
    read_variance: float
    correlation: tuple[tuple[float, ...], ...]
    clipped_fraction: float
    saturated_fraction: float
    processed: bool
    notes: tuple[str, ...]
    blocks: int = 0  # usable 16 x 16 blocks the fit used (0: not recorded)

    @property
    def intercept(self) -> float:
        """Variance at signal 0: ``read_variance - gain * offset`` (identifiable from the variance line alone)."""
        return self.read_variance - self.gain * self.offset

    @property
    def correlation_array(self) -> np.ndarray:
        return np.asarray(self.correlation, dtype=np.float64)

    @property
    def correlation_sum(self) -> float:
        """Sum of the correlation over the 5 x 5 lags: 1 for independent noise, 4 for a 2 x 2 box."""
        return float(self.correlation_array.sum())

    @property
    def camera_gain(self) -> float:
        """The gain before any pixel mixing, assuming a mixing kernel that sums to 1 and fits in 5 x 5."""
        return self.gain * self.correlation_sum

    def lag(self, dy: int, dx: int) -> float:
        """Correlation at lag (dy, dx), |dy|, |dx| <= 2."""
        if max(abs(dy), abs(dx)) > MAX_LAG:
            raise ValueError(f"lag ({dy}, {dx}) is outside the model's +-{MAX_LAG} neighbourhood")
        return float(self.correlation[dy + MAX_LAG][dx + MAX_LAG])

    def variance(self, signal: np.ndarray) -> np.ndarray:
        """Per-pixel noise variance at ``signal`` (ADU), never below a small positive floor."""
        signal = np.asarray(signal, dtype=np.float64)
        variance = self.gain * (signal - self.offset) + self.read_variance
        floor = max(self.read_variance, 1e-12) * 1e-3 if self.read_variance > 0 else 1e-12
        return np.maximum(variance, floor)

    def correlated_offsets(self, threshold: float = 0.1) -> list[tuple[int, int]]:
        """Neighbour offsets (dy, dx) whose |correlation| exceeds ``threshold`` (centre excluded)."""
        return [
            (dy, dx)
            for dy in range(-MAX_LAG, MAX_LAG + 1)
            for dx in range(-MAX_LAG, MAX_LAG + 1)
            if (dy, dx) != (0, 0) and abs(self.lag(dy, dx)) > threshold
        ]

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["correlation"] = [list(row) for row in self.correlation]
        values["notes"] = list(self.notes)
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "NoiseModel":
        missing = {"gain", "offset", "read_variance", "correlation"} - set(values)
        if missing:
            raise ValueError(f"noise model is missing {sorted(missing)}")
        correlation = tuple(tuple(float(v) for v in row) for row in values["correlation"])
        if len(correlation) != 2 * MAX_LAG + 1 or any(len(row) != 2 * MAX_LAG + 1 for row in correlation):
            raise ValueError("noise model correlation must be 5 x 5")
        return cls(
            gain=float(values["gain"]),
            offset=float(values["offset"]),
            read_variance=float(values["read_variance"]),
            correlation=correlation,
            clipped_fraction=float(values.get("clipped_fraction", 0.0)),
            saturated_fraction=float(values.get("saturated_fraction", 0.0)),
            processed=bool(values.get("processed", False)),
            notes=tuple(str(note) for note in values.get("notes", ())),
            blocks=int(values.get("blocks", 0)),
        )


# --------------------------------------------------------------------------------------------------
# Variance-stabilising transform (Makitalo & Foi 2013)


def generalized_anscombe(x: np.ndarray, model: NoiseModel) -> np.ndarray:
    """Generalised Anscombe transform: noise of roughly unit variance at every signal level.

    ``f(x) = 2 / g * sqrt(max(g * x + 3/8 g^2 + intercept, 0))`` with ``g = model.gain`` and
    ``intercept = read_variance - gain * offset``, so only the identifiable part of the model is used.
    The correlation is untouched: stabilised noise has the model's correlation.
    """
    gain = _positive_gain(model)
    x = np.asarray(x, dtype=np.float64)
    return 2.0 / gain * np.sqrt(np.maximum(gain * x + 0.375 * gain**2 + model.intercept, 0.0))


def inverse_generalized_anscombe(d: np.ndarray, model: NoiseModel) -> np.ndarray:
    """Exact unbiased inverse of :func:`generalized_anscombe`, in the closed form of Makitalo & Foi (2013).

    Maps E[f(x) | signal] back to the signal (not ``f^-1``, which is biased at low counts). In units of
    electrons, ``p = D^2/4 + sqrt(3/2)/(4D) - 11/(8D^2) + 5 sqrt(3/2)/(8D^3) - 1/8 - sigma^2`` with
    ``sigma^2 = read_variance / gain^2``; back to ADU as ``gain * p + offset``.
    """
    gain = _positive_gain(model)
    d = np.maximum(np.asarray(d, dtype=np.float64), 1e-6)
    root = math.sqrt(1.5)
    polynomial = 0.25 * d**2 + 0.25 * root / d - 11.0 / 8.0 / d**2 + 0.625 * root / d**3 - 0.125
    # In electrons p = polynomial - read_variance / gain^2; in ADU x = gain * p + offset, which needs only
    # the intercept. Zero photons (the offset) is the floor, as max(0, p) in the paper.
    return np.maximum(gain * (polynomial - model.intercept / gain**2), model.offset)


def _positive_gain(model: NoiseModel) -> float:
    if not model.gain > 0:
        raise ValueError(f"the generalised Anscombe transform needs a positive gain, the model has {model.gain}")
    return float(model.gain)


# --------------------------------------------------------------------------------------------------
# Estimation


@lru_cache(maxsize=1)
def _plane_projector() -> np.ndarray:
    """P = I - H: removes the least-squares quadratic surface (1, y, x, y^2, xy, x^2) from a flattened
    16 x 16 block (a plane leaves the curvature of cells and blobs, which reads as correlated noise)."""
    yy, xx = np.mgrid[0:BLOCK, 0:BLOCK].astype(np.float64)
    yy, xx = yy.ravel() / BLOCK - 0.5, xx.ravel() / BLOCK - 0.5
    design = np.stack([np.ones(BLOCK * BLOCK), yy, xx, yy * yy, yy * xx, xx * xx], axis=1)
    q, _ = np.linalg.qr(design)
    return np.eye(BLOCK * BLOCK) - q @ q.T


@lru_cache(maxsize=1)
def _lag_pairs() -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]:
    """Flat indices of the pixel pairs at each lag inside a block."""
    index = np.arange(BLOCK * BLOCK).reshape(BLOCK, BLOCK)
    pairs = {}
    for dy, dx in _HALF_LAGS:
        first = index[0 : BLOCK - dy, max(0, -dx) : BLOCK - max(0, dx)]
        second = index[dy:BLOCK, max(0, dx) : BLOCK - max(0, -dx) if dx < 0 else BLOCK]
        pairs[(dy, dx)] = (first.ravel(), second.ravel())
    return pairs


def _full_correlation(half: Mapping[tuple[int, int], float]) -> np.ndarray:
    grid = np.zeros((2 * MAX_LAG + 1, 2 * MAX_LAG + 1))
    grid[MAX_LAG, MAX_LAG] = 1.0
    for (dy, dx), value in half.items():
        grid[dy + MAX_LAG, dx + MAX_LAG] = value
        grid[-dy + MAX_LAG, -dx + MAX_LAG] = value
    return grid


def _block_covariance(correlation: np.ndarray) -> np.ndarray:
    """The 256 x 256 correlation matrix of a block's pixels under a 5 x 5 stationary correlation."""
    yy, xx = np.divmod(np.arange(BLOCK * BLOCK), BLOCK)
    dy = yy[None, :] - yy[:, None]
    dx = xx[None, :] - xx[:, None]
    inside = (np.abs(dy) <= MAX_LAG) & (np.abs(dx) <= MAX_LAG)
    matrix = np.zeros((BLOCK * BLOCK, BLOCK * BLOCK))
    matrix[inside] = correlation[dy[inside] + MAX_LAG, dx[inside] + MAX_LAG]
    return matrix


@lru_cache(maxsize=1)
def _highpass_matrix() -> np.ndarray:
    """The separable second difference [1, -2, 1] along y and along x, valid part of a 16 x 16 block,
    as a (14 * 14, 256) matrix. It cancels any surface at most quadratic and passes the noise band
    that smooth (optically blurred) signal and texture barely reach."""
    kernel = np.outer([1.0, -2.0, 1.0], [1.0, -2.0, 1.0])
    inner = BLOCK - 2
    matrix = np.zeros((inner * inner, BLOCK * BLOCK))
    for y in range(inner):
        for x in range(inner):
            window = np.zeros((BLOCK, BLOCK))
            window[y : y + 3, x : x + 3] = kernel
            matrix[y * inner + x] = window.ravel()
    return matrix


@lru_cache(maxsize=1)
def _haar_matrix() -> np.ndarray:
    """The finest diagonal Haar detail (a - b - c + d) / 2 of each of the 64 non-overlapping 2 x 2 cells of a
    16 x 16 block, as a (64, 256) matrix (what wavelet noise estimates take the median of)."""
    matrix = np.zeros((BLOCK * BLOCK // 4, BLOCK * BLOCK))
    for cell, (y, x) in enumerate((y, x) for y in range(0, BLOCK, 2) for x in range(0, BLOCK, 2)):
        window = np.zeros((BLOCK, BLOCK))
        window[y : y + 2, x : x + 2] = [[0.5, -0.5], [-0.5, 0.5]]
        matrix[cell] = window.ravel()
    return matrix


def haar_detail_factor(correlation: np.ndarray) -> float:
    """E[d^2] / variance of one diagonal Haar detail d for noise of this correlation (1 for white noise,
    1/4 for a 2 x 2 box)."""
    kernel = _haar_matrix()[0]
    return float(kernel @ _block_covariance(correlation) @ kernel)


def _highpass_expectations(correlation: np.ndarray) -> tuple[float, float]:
    """For noise of unit variance and this correlation: E[sum (h * n)^2] over a block and its
    Satterthwaite degrees of freedom."""
    matrix = _highpass_matrix()
    covariance = matrix @ _block_covariance(correlation) @ matrix.T
    trace = float(np.trace(covariance))
    return trace, trace**2 / float(np.sum(covariance * covariance))


def _residual_expectations(correlation: np.ndarray) -> tuple[float, float, dict[tuple[int, int], float]]:
    """For noise of unit variance and this correlation, after plane removal: E[sum r^2], the Satterthwaite
    degrees of freedom of sum r^2, and the expected normalised lag products E[mean r_i r_j] / E[mean r^2]."""
    projector = _plane_projector()
    covariance = projector @ _block_covariance(correlation) @ projector
    trace = float(np.trace(covariance))
    dof = trace**2 / float(np.sum(covariance * covariance))
    mean_square = trace / (BLOCK * BLOCK)
    expected = {lag: float(covariance[first, second].mean()) / mean_square for lag, (first, second) in _lag_pairs().items()}
    return trace, dof, expected


def _as_image_list(images: Sequence[np.ndarray] | np.ndarray) -> list[np.ndarray]:
    if isinstance(images, np.ndarray):
        if images.ndim == 2:
            return [images]
        if images.ndim == 3:
            return list(images)
        raise ValueError(f"expected a 2-D image or a (images, Y, X) stack, got shape {images.shape}")
    listed = [np.asarray(image) for image in images]
    if not listed:
        raise ValueError("no images to estimate a noise model from")
    for image in listed:
        if image.ndim != 2:
            raise ValueError(f"expected 2-D images, got shape {image.shape}")
    return listed


def _dtype_range(images: list[np.ndarray], dtype_range: tuple[float, float] | None) -> tuple[float, float] | None:
    if dtype_range is not None:
        low, high = (float(v) for v in dtype_range)
        if not low < high:
            raise ValueError(f"dtype_range must be (min, max) with min < max, got {dtype_range}")
        return low, high
    dtype = images[0].dtype
    if np.issubdtype(dtype, np.integer):
        return integer_bounds(dtype)
    return None


def _inspect_values(images: list[np.ndarray], rng: np.random.Generator) -> tuple[bool, list[str], float]:
    """Whether the values look like raw camera counts, findings as notes, and the quantisation step
    (0 for non-integer data)."""
    sample = np.concatenate([image.ravel()[rng.integers(0, image.size, size=min(image.size, 200_000))] for image in images])
    sample = sample.astype(np.float64)
    notes: list[str] = []
    processed = False
    if not np.all(np.isfinite(sample)):
        return True, ["processed: the data hold NaN or infinite values"], 0.0
    integral = np.all(sample == np.round(sample))
    if not integral:
        processed = True
        if sample.min() >= 0 and sample.max() <= 1.0:
            notes.append("processed: non-integer floats in 0..1 (intensities already normalised, not camera counts)")
        else:
            notes.append("processed: non-integer floats (not camera counts: rescaled, background-subtracted or denoised)")
        return processed, notes, 0.0
    values = sample.astype(np.int64)
    low, high = np.percentile(values, [1, 99])
    core = values[(values >= low) & (values <= high)]
    divisor = int(np.gcd.reduce(np.abs(core - core.min()))) if core.size > 1 else 0
    if divisor > 1:
        notes.append(f"integer values step by {divisor}: counts scaled by {divisor} (e.g. 12-bit data shifted to 16 bits)")
    span = int(high - low) // max(divisor, 1) + 1
    if 16 <= span <= 1 << 16:
        occupied = np.unique((core - core.min()) // max(divisor, 1)).size
        empty = 1.0 - occupied / span
        # A sample of n values over `span` levels leaves about exp(-n / span) of them empty by chance.
        expected_empty = math.exp(-core.size / span)
        if empty > 0.3 and empty > 2 * expected_empty:
            processed = True
            notes.append(
                f"processed: {empty:.0%} of the integer levels between the 1st and 99th percentile never occur "
                "(values rescaled by a non-integer factor after the camera)"
            )
    return processed, notes, float(max(divisor, 1))


def _blocks(image: np.ndarray) -> np.ndarray:
    rows, cols = (image.shape[0] // BLOCK) * BLOCK, (image.shape[1] // BLOCK) * BLOCK
    if rows == 0 or cols == 0:
        return np.empty((0, BLOCK * BLOCK))
    cut = np.asarray(image[:rows, :cols], dtype=np.float64)
    return cut.reshape(rows // BLOCK, BLOCK, cols // BLOCK, BLOCK).transpose(0, 2, 1, 3).reshape(-1, BLOCK * BLOCK)


def _intensity_bins(means: np.ndarray) -> list[np.ndarray]:
    """Indices of the blocks in each intensity bin.

    Bin edges are uniform in sqrt(mean) (the scale on which shot noise is even), so the bright, rare
    blocks get bins of their own rather than one wide bin; neighbouring bins are merged until each holds
    enough blocks.
    """
    low, high = np.percentile(means, [0.5, 99.9])
    if not high > low:
        return [np.arange(means.size)] if means.size >= _MIN_BLOCKS_PER_BIN else []
    scale = np.sqrt(np.clip(means - low, 0, None))
    edges = np.linspace(0.0, math.sqrt(high - low), _MAX_BINS + 1)
    labels = np.clip(np.searchsorted(edges, scale, side="right") - 1, 0, _MAX_BINS - 1)
    bins, pending = [], np.empty(0, dtype=np.int64)
    for label in range(_MAX_BINS):
        pending = np.concatenate([pending, np.flatnonzero(labels == label)])
        if pending.size >= _MIN_BLOCKS_PER_BIN:
            bins.append(pending)
            pending = np.empty(0, dtype=np.int64)
    if pending.size:
        if bins:
            bins[-1] = np.concatenate([bins[-1], pending])
        elif pending.size >= _MIN_BLOCKS_PER_BIN // 2:
            bins.append(pending)
    return bins


def estimate_noise_model(
    images: Sequence[np.ndarray] | np.ndarray,
    *,
    dtype_range: tuple[float, float] | None = None,
    seed: int = 0,
    correlation: np.ndarray | Sequence[Sequence[float]] | None = None,
) -> NoiseModel:
    """Fit a :class:`NoiseModel` to raw images (2-D arrays of one channel, or an (images, Y, X) stack).

    ``dtype_range`` is the (min, max) the camera could store (default: the integer dtype's range; none
    for floats): pixels at either end count as clipped / saturated and their blocks are left out.
    ``seed`` fixes the subsample of blocks when there are more than 200,000. ``correlation`` (5 x 5,
    lags -2..2) fixes the noise correlation instead of estimating it: the acquisition's pixel mixing,
    measured where noise dominates (see :func:`estimate_site_noise_models`); cell texture then cannot
    read as correlated noise.
    """
    listed = _as_image_list(images)
    rng = np.random.default_rng(seed)
    limits = _dtype_range(listed, dtype_range)
    processed, notes, step = _inspect_values(listed, rng)
    blocks, clipped_fraction, saturated_fraction = _usable_blocks(listed, limits, rng, notes)
    fixed = None if correlation is None else _checked_correlation(correlation)
    # Rounding to integers adds white noise of variance step^2 / 12 after any pixel mixing, so the
    # marginal correlation is a mix of the mixed part and this white part (matters for the high-pass).
    statistics = _BlockStatistics.of(blocks)
    slope, intercept, fitted, fit_note = _fit_variance_and_correlation(statistics, step**2 / 12.0, fixed)
    notes.append(fit_note)
    if fixed is not None:
        notes.append("correlation fixed by the caller (the acquisition's pixel mixing), not estimated from these images")
    if slope <= 0:
        notes.append("variance does not grow with the signal: no shot noise visible (processed data, or read noise only)")
        slope = 0.0
    return _assembled_model(statistics.means, slope, intercept, fitted, notes, processed=processed,
                            clipped_fraction=clipped_fraction, saturated_fraction=saturated_fraction, blocks=blocks.shape[0])


def _checked_correlation(correlation) -> np.ndarray:
    grid = np.asarray(correlation, dtype=np.float64)
    size = 2 * MAX_LAG + 1
    if grid.shape != (size, size) or not np.isfinite(grid).all() or grid[MAX_LAG, MAX_LAG] != 1.0:
        raise ValueError(f"a fixed noise correlation must be a finite {size} x {size} grid with 1 at its centre, got shape {grid.shape}")
    if not np.allclose(grid, grid[::-1, ::-1]):
        raise ValueError("a fixed noise correlation must be symmetric: lag (dy, dx) equal to lag (-dy, -dx)")
    return grid


def _usable_blocks(listed: list[np.ndarray], limits, rng: np.random.Generator, notes: list[str]) -> tuple[np.ndarray, float, float]:
    """The 16 x 16 blocks without clipped or saturated pixels (subsampled to 200,000), and the clipped and
    saturated fractions of all pixels (noted)."""
    total = sum(image.size for image in listed)
    clipped = saturated = 0
    blocks_list, bad_list = [], []
    for image in listed:
        values = np.asarray(image)
        if limits is not None:
            low_mask, high_mask = values <= limits[0], values >= limits[1]
        else:
            low_mask = high_mask = np.zeros(values.shape, dtype=bool)
        clipped += int(low_mask.sum())
        saturated += int(high_mask.sum())
        blocks_list.append(_blocks(values))
        bad_list.append(_blocks(low_mask | high_mask).any(axis=1))
    clipped_fraction, saturated_fraction = clipped / total, saturated / total
    if clipped_fraction > 0:
        notes.append(
            f"clipped: {clipped_fraction:.2%} of pixels at the dtype minimum {limits[0]:g} "
            "(noise below the black level was cut off; blocks holding them are left out, so the dark level may read high)"
        )
    if saturated_fraction > 0:
        notes.append(f"saturated: {saturated_fraction:.2%} of pixels at the dtype maximum {limits[1]:g} (left out of the fit)")
    blocks = np.concatenate(blocks_list)[~np.concatenate(bad_list)]
    if blocks.shape[0] > _MAX_BLOCKS:
        blocks = blocks[rng.choice(blocks.shape[0], _MAX_BLOCKS, replace=False)]
    if blocks.shape[0] < _MIN_BLOCKS_PER_BIN // 2:
        raise ValueError(
            f"only {blocks.shape[0]} usable 16 x 16 blocks (unclipped, unsaturated): "
            f"at least {_MIN_BLOCKS_PER_BIN // 2} are needed to fit a noise model"
        )
    if blocks.shape[0] < _FEW_BLOCKS:
        notes.append(f"only {blocks.shape[0]} usable 16 x 16 blocks: a rough model (fit more or larger images)")
    return blocks, clipped_fraction, saturated_fraction


@dataclass(frozen=True)
class _BlockStatistics:
    """Per-block mean, detrended sum of squares, high-pass sum of squares and normalised lag products,
    and the blocks of each intensity bin."""

    means: np.ndarray
    squares: np.ndarray
    highpass_squares: np.ndarray
    haar: np.ndarray  # (blocks, 64) finest diagonal Haar details, float32
    cell_means: np.ndarray  # (blocks, 64) means of the 2 x 2 cells the details come from, float32
    products: dict
    bins: list

    @classmethod
    def of(cls, blocks: np.ndarray) -> "_BlockStatistics":
        means = blocks.mean(axis=1)
        residuals = blocks @ _plane_projector()  # P is symmetric
        highpass = blocks @ _highpass_matrix().T
        products = {lag: np.einsum("ij,ij->i", residuals[:, first], residuals[:, second]) / first.size
                    for lag, (first, second) in _lag_pairs().items()}
        return cls(means, np.einsum("ij,ij->i", residuals, residuals), np.einsum("ij,ij->i", highpass, highpass),
                   (blocks @ _haar_matrix().T).astype(np.float32), (blocks @ np.abs(_haar_matrix()).T / 2).astype(np.float32),
                   products, _intensity_bins(means))


def _fit_variance_and_correlation(statistics: _BlockStatistics, quantisation: float, fixed: np.ndarray | None) -> tuple[float, float, np.ndarray, str]:
    """Alternate the per-bin variances, the correlation (unless ``fixed``) and the variance line; returns
    (slope, intercept, correlation, note on the line fit)."""
    correlation = _full_correlation({lag: 0.0 for lag in _HALF_LAGS}) if fixed is None else fixed
    slope, intercept = 0.0, 1.0  # the first pass treats every block of a bin alike
    pooled_variance = math.inf
    for iteration in range(5):
        bin_means, bin_variances, bin_counts, noise_only, dof = _bin_variances(
            statistics, correlation, slope, intercept, quantisation, pooled_variance,
            use_highpass=iteration > 0, use_haar=fixed is not None)
        correlation, pooled_variance = _pooled_correlation(statistics, noise_only, correlation, fixed)
        slope, intercept, fit_note = _fit_variance_line(np.array(bin_means), np.array(bin_variances), np.array(bin_counts), dof)
        means = statistics.means
        if not slope * means.min() + intercept > 0 or not slope * means.max() + intercept > 0:
            # A line that goes negative inside the data cannot serve as a reference: pivot it on the darkest
            # bin (measured: on photon-starved real-texture fields the free line crossed zero just below the
            # darkest blocks and the old constant fallback read gain 0).
            slope, intercept = _pivoted_line(np.array(bin_means), np.array(bin_variances), np.array(bin_counts))
    return slope, intercept, correlation, fit_note


def _bin_variances(statistics: _BlockStatistics, correlation: np.ndarray, slope: float, intercept: float,
                   quantisation: float, pooled_variance: float, *, use_highpass: bool, use_haar: bool):
    """Per intensity bin: mean, noise variance, block count, and the blocks consistent with pure noise
    (with the variance); plus the Satterthwaite degrees of freedom of a block's detrended variance.

    ``use_haar`` (only with a known correlation: it calibrates the Haar details, and a wrong guess would
    read low) lets a bin take the pixel-level median Haar estimate where texture raises the others."""
    trace, dof, _ = _residual_expectations(correlation)
    white = _full_correlation({lag: 0.0 for lag in _HALF_LAGS})
    white_highpass_trace, _ = _highpass_expectations(white)
    # Correlation of the noise before rounding, from the marginal one at the pooled variance level.
    white_share = quantisation / pooled_variance if pooled_variance > 4 * quantisation else 0.0
    highpass_trace, highpass_dof = _highpass_expectations((correlation - white_share * white) / (1.0 - white_share))
    detrended_variance = statistics.squares / trace
    highpass_variance = (statistics.highpass_squares - quantisation * white_highpass_trace) / highpass_trace + quantisation
    detrended_factor = stats.gamma.ppf(_LOW_QUANTILE, dof / 2, scale=2 / dof)
    highpass_factor = stats.gamma.ppf(_LOW_QUANTILE, highpass_dof / 2, scale=2 / highpass_dof)
    noise_only_factor = stats.gamma.ppf(_NOISE_ONLY_QUANTILE, dof / 2, scale=2 / dof)
    haar_factor = (1.0 - white_share) * haar_detail_factor((correlation - white_share * white) / (1.0 - white_share)) + white_share
    bin_means, bin_variances, bin_counts, noise_only = [], [], [], []
    # Within a bin, block variances are compared relative to the current line, so the spread of
    # means inside a bin does not widen the distribution whose low quantile is taken.
    means = statistics.means
    line = np.maximum(slope * means + intercept, 1e-12)
    for members in statistics.bins:
        bin_mean = float(means[members].mean())
        level = max(slope * bin_mean + intercept, 1e-12)
        variance = float(np.quantile(detrended_variance[members] / line[members], _LOW_QUANTILE)) / detrended_factor * level
        if use_highpass:
            # The detrended variance is exact for pure noise but texture raises it; the high-pass one
            # barely sees texture but hangs on the correlation (a 2 x 2 box leaves it 1/9 of the
            # noise). Where the detrended one is clearly higher, the bin holds texture: use the other.
            textured = float(np.quantile(highpass_variance[members] / line[members], _LOW_QUANTILE)) / highpass_factor * level
            if use_haar:
                cell_line = np.maximum(slope * statistics.cell_means[members] + intercept, 1e-12)
                textured = min(textured, _haar_variance(statistics.haar[members], cell_line, haar_factor) * level)
            if variance > (1.0 + _TEXTURE_MARGIN) * textured:
                variance = textured
        bin_means.append(bin_mean)
        bin_variances.append(variance)
        bin_counts.append(members.size)
        noise_only.append((members[detrended_variance[members] <= variance * noise_only_factor], variance))
    return bin_means, bin_variances, bin_counts, noise_only, dof


def _haar_variance(details: np.ndarray, line: np.ndarray, factor: float) -> float:
    """Noise variance relative to ``line`` (the current line at each detail's own 2 x 2 cell) from the median
    absolute Haar detail of a bin's pixels (Gaussian MAD). Texture at the finest scale is sparse (edges,
    spots): the median ignores the pixels it holds, where every 16 x 16 block of a confluent field holds
    some. Normalised per cell, not per block: a block across a nucleus' edge mixes variances, and the median
    of such a mixture reads low (measured: 0.7x the truth in Version7 DNA's nuclei bins)."""
    relative = details / np.sqrt(line)
    return float((np.median(np.abs(relative)) / 0.6744897501960817) ** 2) / factor


def _pooled_correlation(statistics: _BlockStatistics, noise_only, correlation: np.ndarray, fixed: np.ndarray | None) -> tuple[np.ndarray, float]:
    """The correlation pooled over the pure-noise blocks, corrected for the detrending (``fixed`` is
    returned as is), and the pooled noise variance of those blocks."""
    weight = sum(keep.size for keep, _ in noise_only)
    if fixed is not None:
        return fixed, (sum(keep.size * v for keep, v in noise_only) / weight if weight else math.inf)
    if weight == 0:
        raise ValueError("no 16 x 16 block looks like pure noise: cannot estimate the noise correlation")
    pooled_variance = sum(keep.size * v for keep, v in noise_only) / weight
    mean_square = sum(float(np.sum(statistics.squares[keep])) / (BLOCK * BLOCK) / v for keep, v in noise_only) / weight
    observed = {lag: sum(float(np.sum(statistics.products[lag][keep])) / v for keep, v in noise_only) / weight / mean_square
                for lag in _HALF_LAGS}
    estimate = {lag: correlation[lag[0] + MAX_LAG, lag[1] + MAX_LAG] for lag in _HALF_LAGS}
    for _ in range(6):
        _, _, expected = _residual_expectations(_full_correlation(estimate))
        estimate = {lag: estimate[lag] + observed[lag] - expected[lag] for lag in _HALF_LAGS}
    return _full_correlation(estimate), pooled_variance


def _assembled_model(means: np.ndarray, slope: float, intercept: float, correlation: np.ndarray, notes: list[str], *,
                     processed: bool, clipped_fraction: float, saturated_fraction: float, blocks: int) -> NoiseModel:
    """The model from the fitted line and correlation: dark level, read variance there, and notes."""
    # Dark level: the darkest usable blocks, assumed to hold no photons.
    offset = _dark_level(means, slope, intercept, correlation)
    read_variance = slope * offset + intercept
    if read_variance <= 0:
        notes.append(f"the variance line reaches zero above the dark level ({read_variance:.3g} ADU^2 there): read noise not resolved")
    notes.append(
        "offset = dark level (mean of the darkest flat blocks, assumed to hold no photons); "
        "read_variance = model variance there; gain and read_variance are per-pixel marginal values of the data as stored"
    )
    offsets = [(dy, dx) for dy in range(-MAX_LAG, MAX_LAG + 1) for dx in range(-MAX_LAG, MAX_LAG + 1) if (dy, dx) != (0, 0) and abs(correlation[dy + MAX_LAG, dx + MAX_LAG]) > 0.1]
    if offsets:
        notes.append(
            f"correlated noise: lag-1 x {correlation[MAX_LAG, MAX_LAG + 1]:.2f}, lag-1 y {correlation[MAX_LAG + 1, MAX_LAG]:.2f}; "
            f"camera gain before mixing ~ {slope * float(correlation.sum()):.3g}"
        )
    return NoiseModel(
        gain=float(slope),
        offset=float(offset),
        read_variance=float(read_variance),
        correlation=tuple(tuple(round(float(v), 6) for v in row) for row in correlation),
        clipped_fraction=float(clipped_fraction),
        saturated_fraction=float(saturated_fraction),
        processed=bool(processed),
        notes=tuple(notes),
        blocks=int(blocks),
    )


def _fit_variance_line(means: np.ndarray, variances: np.ndarray, counts: np.ndarray, dof: float) -> tuple[float, float, str]:
    """Weighted least squares of variance on mean; bins far above the line (texture) are dropped."""
    keep = np.ones(means.size, dtype=bool)
    slope, intercept = 0.0, float(np.median(variances))
    for _ in range(5):
        # A bin's variance estimate has relative standard error ~ sqrt(2 / (dof * blocks)) (times ~1.5 for the quantile).
        weights = counts[keep] / np.maximum(variances[keep], 1e-12) ** 2
        if keep.sum() >= 2 and np.ptp(means[keep]) > 0:
            design = np.stack([means[keep], np.ones(keep.sum())], axis=1) * np.sqrt(weights)[:, None]
            slope, intercept = np.linalg.lstsq(design, variances[keep] * np.sqrt(weights), rcond=None)[0]
        predicted = np.maximum(slope * means + intercept, 1e-12)
        relative_error = 1.5 * np.sqrt(2.0 / (dof * counts))
        above = (variances - predicted) / predicted > 4 * relative_error + 0.05
        new_keep = ~above
        if new_keep.sum() < 2 or np.array_equal(new_keep, keep):
            break
        keep = new_keep
    predicted = np.maximum(slope * means[keep] + intercept, 1e-12)
    spread = float(np.sqrt(np.mean(((variances[keep] - predicted) / predicted) ** 2)))
    note = f"variance line fitted to {int(keep.sum())} of {means.size} intensity bins (rms relative misfit {spread:.1%})"
    return float(slope), float(intercept), note


def _pivoted_line(means: np.ndarray, variances: np.ndarray, counts: np.ndarray) -> tuple[float, float]:
    """The weighted least-squares line through the darkest bin's (mean, variance), with a slope of at least 0."""
    dark_mean, dark_variance = float(means[0]), float(variances[0])
    if dark_variance <= 0 or means.size < 2:
        return 0.0, float(np.median(variances))
    weights = counts / np.maximum(variances, 1e-12) ** 2
    run = means - dark_mean
    slope = max(float(np.sum(weights * run * (variances - dark_variance)) / max(float(np.sum(weights * run * run)), 1e-12)), 0.0)
    return slope, dark_variance - slope * dark_mean


def _dark_level(means: np.ndarray, slope: float, intercept: float, correlation: np.ndarray) -> float:
    """Centre of the darkest cluster of block means: the 1st percentile lies ~2.3 block-mean SDs below it."""
    first = float(np.percentile(means, 1))
    block_mean_sd = math.sqrt(max(slope * first + intercept, 1e-12) * float(correlation.sum()) / (BLOCK * BLOCK))
    window = means[(means >= first) & (means <= first + 4.6 * block_mean_sd)]
    return float(np.median(window)) if window.size else first


# --------------------------------------------------------------------------------------------------
# One site, one camera: the pixel mixing shared by its channels

# A channel whose fitted correlation stays within this of 0 at every lag-2 offset shows the acquisition's
# mixing rather than cell texture: measured on the real Phenix sites, background-dominated channels
# (Version5 Mito and brightfield, Version1) read lag-2 -0.05..0.08; confluent RNA / ER / AGP 0.16-0.55.
SHORT_RANGE_TOLERANCE = 0.1
# Channels that show the mixing must agree on their lag-1 correlations within this.
MIXING_AGREEMENT = 0.05


@dataclass(frozen=True)
class SiteNoiseModels:
    """Noise models of one site's channels that share the acquisition's pixel mixing.

    ``mixing`` is the 5 x 5 correlation pooled over the background of ``mixing_channels``: the intensity
    bins whose correlation shows the least lag-2 (texture) and at most SHORT_RANGE_TOLERANCE; every model in ``models`` was refitted with it fixed,
    so gain and read noise stay per channel but no channel's texture can read as correlated noise.
    ``agree`` says the mixing channels' lag-1 correlations there agree within :data:`MIXING_AGREEMENT`. Without
    any such bin, ``mixing`` is None and ``models`` are the channels' own fits (see ``notes``).
    """

    models: Mapping[str, NoiseModel]
    mixing: tuple[tuple[float, ...], ...] | None
    mixing_channels: tuple[str, ...]
    agree: bool
    notes: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "mixing": [list(row) for row in self.mixing] if self.mixing is not None else None,
            "mixing_channels": list(self.mixing_channels),
            "agree": bool(self.agree),
            "notes": list(self.notes),
            "models": {name: model.to_dict() for name, model in self.models.items()},
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "SiteNoiseModels":
        missing = {"mixing", "mixing_channels", "agree", "notes", "models"} - set(values)
        if missing:
            raise ValueError(f"site noise models are missing {sorted(missing)}")
        mixing = values["mixing"]
        return cls(
            models={str(name): NoiseModel.from_dict(model) for name, model in values["models"].items()},
            mixing=tuple(tuple(float(v) for v in row) for row in mixing) if mixing is not None else None,
            mixing_channels=tuple(str(name) for name in values["mixing_channels"]),
            agree=bool(values["agree"]),
            notes=tuple(str(note) for note in values["notes"]),
        )


def shows_short_range_mixing(model: NoiseModel) -> bool:
    """Whether the model's correlation vanishes (within SHORT_RANGE_TOLERANCE) at every lag-2 offset, as
    nearest-neighbour pixel mixing does and cell texture does not."""
    ring = [(dy, dx) for dy in range(-MAX_LAG, MAX_LAG + 1) for dx in range(-MAX_LAG, MAX_LAG + 1) if max(abs(dy), abs(dx)) == MAX_LAG]
    return all(abs(model.lag(dy, dx)) <= SHORT_RANGE_TOLERANCE for dy, dx in ring)


# Intensity bins need this many pure-noise blocks for their own correlation estimate.
_MIN_BIN_BLOCKS = 50
# Bins whose axial lag-2 correlation is within this of the least one count as equally free of texture.
_LEAST_TEXTURE_SLACK = 0.03


@dataclass(frozen=True)
class _BinCorrelation:
    channel: str
    level: float
    correlation: np.ndarray
    blocks: int

    @property
    def texture(self) -> float:
        """The larger axial lag-2 correlation: 0 for nearest-neighbour mixing, raised by cell texture."""
        return max(abs(self.correlation[MAX_LAG, MAX_LAG + 2]), abs(self.correlation[MAX_LAG + 2, MAX_LAG]))


def _bin_correlations(channel: str, images, model: NoiseModel, dtype_range, seed: int) -> list[_BinCorrelation]:
    """The noise correlation of each intensity bin of a channel, on its pure-noise blocks under ``model``."""
    listed = _as_image_list(images)
    notes: list[str] = []
    blocks, _, _ = _usable_blocks(listed, _dtype_range(listed, dtype_range), np.random.default_rng(seed), notes)
    statistics = _BlockStatistics.of(blocks)
    correlation = model.correlation_array
    means, _, _, noise_only, _ = _bin_variances(statistics, correlation, model.gain, model.intercept, 0.0, math.inf,
                                                use_highpass=True, use_haar=False)
    found = []
    for level, (keep, variance) in zip(means, noise_only):
        if keep.size >= _MIN_BIN_BLOCKS:
            estimate, _ = _pooled_correlation(statistics, [(keep, variance)], correlation, None)
            found.append(_BinCorrelation(channel, float(level), estimate, int(keep.size)))
    return found


def _site_mixing(bins: list[_BinCorrelation]) -> tuple[np.ndarray | None, list[_BinCorrelation]]:
    """The mixing pooled over the bins freest of texture (least axial lag-2 correlation), or None when even
    those show more than SHORT_RANGE_TOLERANCE at lag 2; and the bins used."""
    if not bins:
        return None, []
    least = min(item.texture for item in bins)
    if least > SHORT_RANGE_TOLERANCE:
        return None, []
    chosen = [item for item in bins if item.texture <= min(least + _LEAST_TEXTURE_SLACK, SHORT_RANGE_TOLERANCE)]
    mixing = np.average([item.correlation for item in chosen], axis=0, weights=[item.blocks for item in chosen])
    mixing = (mixing + mixing[::-1, ::-1]) / 2
    mixing[MAX_LAG, MAX_LAG] = 1.0
    # What lag-2 correlation is left in these bins is texture (at most SHORT_RANGE_TOLERANCE): a short-range
    # mixing has none. Measured on Version7 with known 2 x 2-mixed noise: 0.07 left there, truth 0.
    ring = np.maximum(np.abs(np.arange(-MAX_LAG, MAX_LAG + 1))[:, None], np.abs(np.arange(-MAX_LAG, MAX_LAG + 1))[None, :]) == MAX_LAG
    mixing[ring] = 0.0
    return mixing, chosen


def estimate_site_noise_models(
    channels: Mapping[str, Sequence[np.ndarray] | np.ndarray],
    *,
    dtype_range: tuple[float, float] | None = None,
    seed: int = 0,
) -> SiteNoiseModels:
    """Fit each channel of one site (or of several sites of one plate) on its own, measure the pixel mixing
    where noise dominates (the intensity bins, of any channel, with the least lag-2 correlation: background),
    and refit every channel with that mixing fixed (see :class:`SiteNoiseModels`)."""
    if not channels:
        raise ValueError("no channels to estimate noise models from")
    own = {name: estimate_noise_model(images, dtype_range=dtype_range, seed=seed) for name, images in channels.items()}
    bins = [item for name, images in channels.items() for item in _bin_correlations(name, images, own[name], dtype_range, seed)]
    mixing, chosen = _site_mixing(bins)
    if mixing is None:
        note = ("no intensity bin of any channel shows a short-range noise correlation (texture at lag 2 everywhere): "
                "the mixing is unmeasured and each channel keeps its own fit")
        return SiteNoiseModels(models=own, mixing=None, mixing_channels=(), agree=False, notes=(note,))
    mixing_channels = tuple(dict.fromkeys(item.channel for item in chosen))
    per_channel = {name: np.average([item.correlation for item in chosen if item.channel == name], axis=0,
                                    weights=[item.blocks for item in chosen if item.channel == name]) for name in mixing_channels}
    spread = max(abs(grid[MAX_LAG + dy, MAX_LAG + dx] - mixing[MAX_LAG + dy, MAX_LAG + dx])
                 for grid in per_channel.values() for dy, dx in ((0, 1), (1, 0)))
    agree = spread <= MIXING_AGREEMENT
    notes = [f"mixing measured on {sum(item.blocks for item in chosen)} background blocks of {', '.join(mixing_channels)} "
             f"(least lag-2 correlation {min(item.texture for item in chosen):.2f}): lag-1 x {mixing[MAX_LAG, MAX_LAG + 1]:.2f}, "
             f"y {mixing[MAX_LAG + 1, MAX_LAG]:.2f}; the channels' lag-1 values differ from it by up to {spread:.3f}"
             + ("" if agree else f" (more than {MIXING_AGREEMENT}: they disagree)")]
    models = {name: estimate_noise_model(images, dtype_range=dtype_range, seed=seed, correlation=mixing)
              for name, images in channels.items()}
    return SiteNoiseModels(models=models, mixing=tuple(tuple(float(v) for v in row) for row in mixing),
                           mixing_channels=mixing_channels, agree=agree, notes=tuple(notes))


# --------------------------------------------------------------------------------------------------
# How much of its own noise an output carries


def noise_only_blocks(image: np.ndarray, model: NoiseModel) -> np.ndarray:
    """Which 16 x 16 blocks of ``image`` (row-major, as cut by the estimator) hold nothing but noise:
    their detrended variance is below the 90th percentile of pure-noise blocks under ``model``."""
    blocks = _blocks(np.asarray(image))
    if blocks.shape[0] == 0:
        return np.zeros(0, dtype=bool)
    trace, dof, _ = _residual_expectations(model.correlation_array)
    residuals = blocks @ _plane_projector()
    relative = np.einsum("ij,ij->i", residuals, residuals) / trace / model.variance(blocks.mean(axis=1))
    return relative <= stats.gamma.ppf(_NOISE_ONLY_QUANTILE, dof / 2, scale=2 / dof)


def noise_leak(raw: np.ndarray, output: np.ndarray, model: NoiseModel) -> float:
    """``E<n, y> / E<n, n>``: the share of each pixel's own noise ``n`` that the output ``y`` carries.

    0 for an output that does not depend on the noise at its own pixel (a blind-spot network on noise
    the blind spot covers); the centre weight for a linear filter (0.16 for a Gaussian blur of sigma
    1, 1 for the identity); for correlated noise also the weight given to neighbours that share the
    pixel's noise. Estimated on the raw image's pure-noise blocks from the residual ``r = x - y``:
    ``1 - <P x, P r> / E<P n, P n>``, with P the quadratic detrend and the denominator from the model
    (signal left in a block then enters only through ``<P s, P (s - y)>``, small for a good output);
    corrected for the detrend, which removes the 6 smooth components that the output is assumed to
    pass unchanged. NaN without such blocks.
    """
    raw = np.asarray(raw, dtype=np.float64)
    output = np.asarray(output, dtype=np.float64)
    if raw.shape != output.shape:
        raise ValueError(f"raw shape {raw.shape} differs from output shape {output.shape}")
    keep = noise_only_blocks(raw, model)
    if not keep.any():
        return math.nan
    projector = _plane_projector()
    raw_blocks = _blocks(raw)[keep]
    noise = raw_blocks @ projector
    residual = (raw_blocks - _blocks(output)[keep]) @ projector
    block_variance = model.variance(raw_blocks.mean(axis=1))
    trace, _, _ = _residual_expectations(model.correlation_array)
    smooth_components = BLOCK * BLOCK - round(float(np.trace(projector)))
    carried = float(np.mean(np.einsum("ij,ij->i", noise, residual) / block_variance))
    return (trace + smooth_components * model.correlation_sum - carried) / (BLOCK * BLOCK)
