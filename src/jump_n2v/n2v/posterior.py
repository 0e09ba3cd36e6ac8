"""Posterior step: give back part of what the blind spot throws away, under the fitted noise model.

A blind-spot network estimates each pixel from its surroundings; the noisy pixel itself still holds
information about the signal (the idea behind PN2V and Laine et al. 2019), and so do its neighbours
inside the blind region: their noise is correlated with the pixel's where the camera mixes pixels, and
the network's error varies slowly, so their residuals measure it. The posterior step is the linear
estimate from the raw values of a window around the pixel (:func:`posterior_windows`: the pixel alone
where the blind spot is one pixel; where it is a region, per intensity bin whichever of the pixel, the
pixel and its region, and that grown by one ring scores better on held-out patches),
``out = s_hat + sum_j w_j(m) * (x_j - s_hat)``, with one weight vector per intensity bin of ``m``, the
network output smoothed (Gaussian, sigma 2 px). Measured on 2 x 2-mixed synthetic stains at 400 steps
(in-sample fits on the benchmark's two sites; BM3D with the true noise PSD in brackets): DNA the pixel
alone 40.6 dB, the 3 x 3 blind region 41.9, grown to 5 x 5 42.2 (42.8); AGP 31.5, 32.2, 32.9 (34.5).
Independent noise keeps the pixel alone: there the model's correlations are what the blind-spot decision
judged negligible, and their errors (a fitted lag-1 of 0.07 where the truth is 0) moved the weights of
a 5 x 5 window enough to cost 0.4 dB (synthetic AGP). Binning by the smoothed output keeps a
pixel's bin nearly independent of its own noise: binned by ``s_hat`` itself, the extreme bins collect
the pixels whose noise pushed ``s_hat`` there, and the per-bin risk estimate is biased (measured with a
3 x 3 mean on 2 x 2-box-mixed noise: weights 0.08 where the truth is 0).

The weights are fitted once, at the end of training, on the held-out validation patches by minimising
Stein's unbiased risk estimate (SURE) of the combination's error to the unknown clean signal. For
noise ``n ~ N(0, Sigma)`` (Sigma from the fitted :class:`~jump_n2v.noise.NoiseModel`: its
signal-dependent variance and its 5 x 5 spatial correlation) and any estimate ``f(x)``::

    E|f - s|^2 = E|f - x|^2 - tr(Sigma) + 2 tr(Sigma J_f)

and for ``f = s_hat + sum_j w_j d_j`` with ``d_j = x_j - s_hat`` (``x_0`` the pixel itself), per pixel of
a bin with ``M = mean d d^T``, ``m = mean d d_0``, ``A = mean d_0^2``, ``V = mean var``, ``C_j = mean
Sigma_0j`` and ``T = mean b * (s_hat(x + eps b) - s_hat(x)) / eps`` (a Monte Carlo estimate of
``tr(Sigma J_s_hat)`` with ``b ~ N(0, Sigma)``; ``s_hat`` reads every ``x_j`` through the same
derivative ``(1 - sum w)``), the risk ``A - 2 w.m + w.M w - V + 2 T + 2 w.(C - T)`` is least at
``w = M^-1 (m - C + T)``. With the centre alone this is ``w = 1 - (V - T) / A``.

Why this stays valid where a naive posterior does not: an N2V network at inference sees the centre
pixel (it is masked only in training) and, on correlated noise with a one-pixel blind spot, copies the
noise of the neighbours. Both make ``s_hat``'s error correlated with the pixel's noise; a textbook
Gaussian posterior (``w = v_prior / (v_prior + v_noise)``) then counts the noise twice. ``T`` measures
exactly that correlation (under the model's Sigma, correlated neighbours included), so the weight falls
towards 0 where the network already uses the pixel or its noisy neighbours. It relies on the noise
model: a model the estimator flagged as processed data gives no posterior at all (see
:func:`fit_posterior`).

Safe when the model is off. The risk above hangs on the model's variance: if the true noise covariance
is ``c`` times the model's (``C`` and ``T`` scale with it), the posterior's risk minus the network's along
the weights ``a w`` is ``a^2 w.M w - 2 a w.(m - c (C - T))``, negative only for
``a < 2 w.(m - c (C - T)) / w.M w``. How far from the model's the true variance can be is measured on
the same pixels, without the network: the finest diagonal Haar detail of the raw validation patches
(what wavelet noise estimates use; signal smooth at the pixel scale barely enters it) in units of what
the model predicts for it, its median read as a variance ratio, and the two ends of that median's
confidence interval (:data:`MARGIN_CONFIDENCE_Z` standard errors; the lower end at most 1, the upper
end, the bin's margin, at least 1). The cost is linear in ``c``, so weights scaled to cost nothing at
both ends cost nothing between them, allowing too for each neighbour's modelled correlation to be off
by :data:`CORRELATION_TOLERANCE`. Both ends matter once neighbours carry weight: with the pixel alone a
model that reads the variance high only lowers the weight, but a neighbour's weight can be the one a
lower true variance makes costly (a gain read 1.4x the camera's cost 6.3 dB before the lower end was
checked). A fixed margin of 1.5 (the rule before the measured one) zeroed every weight of a network
whose error is small against the noise, which is where the posterior's gain lies (0.5-2.1 dB on the
demo plate). A bin's weights are also checked on the half of the validation patches they were not fitted
on (the bound must hold there too) and fall back to 0 (the network's output) where it does not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from scipy import ndimage

from jump_n2v.noise import haar_detail_factor

POSTERIOR_BINS = 8
# Singular values of the residuals' second moments below this fraction of the largest are treated as 0.
SOLVE_RCOND = 1e-6
# How far the model's correlation with a neighbour may be off (in correlation units) without a weight on
# that neighbour costing: the site fit's worst lag error on real texture with known noise is 0.03 on 13 of
# 14 images, 0.04 on one (docs/benchmarks.md 'The noise model on real fields'). 0.05 halved the window's
# gain in tests/test_blind_spot.py's mixed-noise case and cost 0.3-0.5 dB on synthetic mixed AGP.
CORRELATION_TOLERANCE = 0.03
PERTURBATION = 0.01  # eps, in units of the noise standard deviation (the net is piecewise linear)
PERTURBATION_DRAWS = 2
BINNING_SIGMA = 2.0
# Standard errors above the measured median variance ratio that a bin's variance margin is taken at.
MARGIN_CONFIDENCE_Z = 3.0
# Median of a chi-square variable with one degree of freedom: median(d^2) / this is d's variance.
CHI2_1_MEDIAN = 0.454936423119572


def binning_signal(denoised: np.ndarray) -> np.ndarray:
    """What the bins are read from: the network output smoothed over its last two axes."""
    sigma = (0,) * (denoised.ndim - 2) + (BINNING_SIGMA, BINNING_SIGMA)
    return ndimage.gaussian_filter(np.asarray(denoised, dtype=np.float32), sigma, mode="reflect")


@dataclass(frozen=True)
class Posterior:
    """Per-bin raw-pixel weights: ``out = s_hat + sum_j w_j(s_hat) (x_j - s_hat)``; signals in source units.

    ``offsets`` are the (dy, dx) of the raw pixels used, (0, 0) the pixel itself; ``weight`` holds one
    tuple per bin, a weight per offset (a plain number per bin means the pixel alone, as model folders
    written before the window recorded it)."""

    signal: tuple[float, ...]  # bin centres of the smoothed network output, increasing
    weight: tuple[tuple[float, ...], ...]
    offsets: tuple[tuple[int, int], ...] = ((0, 0),)

    def __post_init__(self) -> None:
        weight = tuple(tuple(float(w) for w in row) if isinstance(row, (tuple, list)) else (float(row),) for row in self.weight)
        object.__setattr__(self, "weight", weight)
        object.__setattr__(self, "offsets", tuple((int(dy), int(dx)) for dy, dx in self.offsets))
        if any(len(row) != len(self.offsets) for row in weight) or len(weight) != len(self.signal):
            raise ValueError(f"posterior: {len(self.signal)} bins and {len(self.offsets)} offsets, but weights {weight}")

    def apply(self, raw: np.ndarray, denoised: np.ndarray) -> np.ndarray:
        """The posterior estimate (float32) from the raw image and the network output (same units).
        The window is reflected at the image border."""
        denoised = np.asarray(denoised, dtype=np.float32)
        level = binning_signal(denoised)
        r = window_radius(self.offsets)
        padded = np.pad(np.asarray(raw, dtype=np.float32), [(0, 0)] * (denoised.ndim - 2) + [(r, r), (r, r)], mode="reflect")
        height, width = denoised.shape[-2:]
        out = denoised.copy()
        for index, (dy, dx) in enumerate(self.offsets):
            weight = np.interp(level, self.signal, [row[index] for row in self.weight]).astype(np.float32)
            out += weight * (padded[..., r + dy : r + dy + height, r + dx : r + dx + width] - denoised)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"signal": list(self.signal), "weight": [list(row) for row in self.weight],
                "offsets": [list(offset) for offset in self.offsets]}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "Posterior":
        return cls(signal=tuple(float(v) for v in values["signal"]), weight=tuple(values["weight"]),
                   offsets=tuple(tuple(o) for o in values.get("offsets", [(0, 0)])))


def window_radius(offsets: Sequence[tuple[int, int]]) -> int:
    """How far (Chebyshev) the window's farthest raw pixel lies from the pixel."""
    return max(max(abs(dy), abs(dx)) for dy, dx in offsets)


def posterior_windows(blind_region: Sequence[Sequence[int]] = ()) -> tuple[tuple[tuple[int, int], ...], ...]:
    """The nested windows the posterior chooses from per bin, each extending the one before, (0, 0) first:
    the pixel alone; with a blind region, also the pixel and its region, and that grown by one ring (a
    3 x 3 region gives 1, 9 and 25 raw pixels)."""
    region = sorted({(int(dy), int(dx)) for dy, dx in blind_region} - {(0, 0)})
    if not region:
        return (((0, 0),),)
    inner = ((0, 0), *region)
    grown = {(dy + a, dx + b) for dy, dx in inner for a in (-1, 0, 1) for b in (-1, 0, 1)} - set(inner)
    return (((0, 0),), inner, (*inner, *sorted(grown)))


def correlated_unit_noise(shape: tuple[int, ...], correlation: np.ndarray, generator: torch.Generator) -> torch.Tensor:
    """Unit-variance Gaussian noise over the last two axes whose (circular) autocorrelation is ``correlation``.

    ``correlation`` is (2L+1) x (2L+1), centred on lag 0. White noise is filtered with the square root of
    the power spectrum (negative parts of an estimated spectrum are clipped to 0).
    """
    height, width = shape[-2:]
    half = correlation.shape[0] // 2
    grid = np.zeros((height, width))
    for dy in range(-half, half + 1):
        for dx in range(-half, half + 1):
            grid[dy % height, dx % width] += correlation[dy + half, dx + half]
    spectrum = np.sqrt(np.clip(np.fft.fft2(grid).real, 0.0, None))
    spectrum *= math.sqrt(height * width / max(float(np.square(spectrum).sum()), 1e-12))
    white = torch.randn(shape, generator=generator, dtype=torch.float64)
    filtered = torch.fft.ifft2(torch.fft.fft2(white) * torch.from_numpy(spectrum)).real
    return filtered.to(torch.float32)


@torch.inference_mode()
def fit_posterior(
    net: torch.nn.Module,
    patches: torch.Tensor,
    mean: float,
    std: float,
    noise_model: Any,
    *,
    batch_size: int,
    seed: int,
    bins: int = POSTERIOR_BINS,
    windows: Sequence[Sequence[tuple[int, int]]] = (((0, 0),),),
) -> tuple[Posterior | None, dict[str, Any]]:
    """Fit the per-bin weights of the raw pixels of one of the nested ``windows`` (see
    :func:`posterior_windows`; per bin, the one whose weights fitted on one half of the validation patches
    score the lower estimated error on the other) on normalised validation ``patches`` (N, 1, P, P);
    returns (posterior, evidence).

    The evidence records, per bin, the weight and the estimated MSE (source units squared) of the
    network output and of the posterior. A border of P/8 (at most 8 px) is left out: prediction tiles
    carry a halo, so their outputs never see a patch border.
    """
    if noise_model is None:
        return None, {"fitted": False, "reason": "no noise model"}
    if getattr(noise_model, "processed", False):
        return None, {"fitted": False, "reason": "the noise model flags the data as processed: " + "; ".join(noise_model.notes)}
    net.eval()
    candidates = [tuple((int(dy), int(dx)) for dy, dx in window) for window in windows]
    offsets = candidates[-1]
    if not offsets or offsets[0] != (0, 0) or any(offsets[: len(c)] != c for c in candidates):
        raise ValueError(f"posterior windows {candidates}: nested, each extending the one before, (0, 0) first")
    pixels = _PixelRisks.of(net, patches, mean, std, noise_model, offsets, batch_size=batch_size, seed=seed)
    rows = _fit_bins(pixels, bins, mean, std, sizes=tuple(len(c) for c in candidates))
    if not rows:
        return None, {"fitted": False, "reason": "too few validation pixels"}
    counts = np.array([row["pixels"] for row in rows], dtype=np.float64)
    evidence = {
        "fitted": True,
        "method": f"per-bin weights of the raw pixels of the nested windows of {[len(c) for c in candidates]} pixels (the one "
                  "scoring better on held-out patches) minimising SURE under the "
                  "fitted noise model (correlation included), scaled down so that they cost nothing while the true variance is anywhere "
                  "between the ends of each bin's measured ratio to the model's (confidence interval of the raw patches' Haar-detail "
                  "variance over the model's) and each neighbour's correlation is off by up to CORRELATION_TOLERANCE, "
                  "and checked on the held-out half of the validation patches",
        "estimated_mse_network": float(np.average([row["mse_network"] for row in rows], weights=counts)),
        "estimated_mse_posterior": float(np.average([row["mse_posterior"] for row in rows], weights=counts)),
        "bins": rows,
    }
    posterior = Posterior(signal=tuple(row["signal"] for row in rows), weight=tuple(row["weights"] for row in rows), offsets=offsets)
    return posterior, evidence


def _predict_in_batches(net: torch.nn.Module, inputs: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The net's output for ``inputs``, ``batch_size`` patches per pass on the net's device, back on the CPU."""
    device = next(net.parameters()).device
    out = [net(inputs[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(inputs), batch_size)]
    return torch.cat(out)


@dataclass(frozen=True, eq=False)
class _PixelRisks:
    """SURE's inputs per validation pixel inside the border (flattened, normalised units): the binning
    signal, the residuals ``d_j = x_j - s_hat`` of the window's raw pixels (offsets x pixels, the pixel
    itself first), their noise covariance with the pixel under the model (same shape), tr(Sigma J), which
    half of the patches it lies in, and its 2 x 2 cell's squared Haar detail over what the model predicts
    for it (:func:`haar_variance_ratios`)."""

    level: np.ndarray
    residuals: np.ndarray
    covariance: np.ndarray
    trace: np.ndarray
    half: np.ndarray
    haar_ratio: np.ndarray

    @classmethod
    def of(
        cls, net: torch.nn.Module, patches: torch.Tensor, mean: float, std: float, noise_model: Any,
        offsets: tuple[tuple[int, int], ...], *, batch_size: int, seed: int,
    ) -> "_PixelRisks":
        generator = torch.Generator().manual_seed(seed)
        correlation = np.asarray(noise_model.correlation, dtype=np.float64)
        lags = correlation.shape[0] // 2
        margin = max(window_radius(offsets), min(8, patches.shape[-1] // 8))
        height, width = patches.shape[-2:]
        inner = (slice(None), 0, slice(margin, height - margin), slice(margin, width - margin))

        def at(array: np.ndarray, dy: int, dx: int) -> np.ndarray:
            """The values at (y + dy, x + dx) of the inner pixels, flattened."""
            return array[:, 0, margin + dy : height - margin + dy, margin + dx : width - margin + dx].reshape(-1)

        x = patches.float().cpu()
        estimate = _predict_in_batches(net, x, batch_size)
        signal = estimate.double() * std + mean
        variance = torch.from_numpy(noise_model.variance(signal.numpy())) / std**2  # normalised units
        sd = variance.sqrt().float()
        trace = torch.zeros_like(estimate)
        for _ in range(PERTURBATION_DRAWS):
            b = sd * correlated_unit_noise(tuple(x.shape), correlation, generator)
            perturbed = _predict_in_batches(net, x + PERTURBATION * b, batch_size)
            trace += b * (perturbed - estimate) / PERTURBATION
        trace /= PERTURBATION_DRAWS
        raw, centre, variance = x.numpy(), estimate[inner].reshape(-1).numpy(), variance.numpy()
        pixel_variance = at(variance, 0, 0)
        residuals = np.stack([at(raw, dy, dx) - centre for dy, dx in offsets]).astype(np.float32)
        covariance = np.stack([
            (correlation[lags + dy, lags + dx] if max(abs(dy), abs(dx)) <= lags else 0.0)
            * np.sqrt(pixel_variance * at(variance, dy, dx)) for dy, dx in offsets
        ]).astype(np.float32)
        # Which half of the validation patches each pixel lies in: weights fitted on one half are checked on the other.
        half = np.broadcast_to((np.arange(len(x)) % 2)[:, None, None], estimate[inner].shape).flatten()
        return cls(
            level=binning_signal(estimate.numpy())[inner].flatten(),
            residuals=residuals,
            covariance=covariance,
            trace=trace[inner].flatten().numpy().astype(np.float64),
            half=half,
            haar_ratio=haar_variance_ratios(raw, variance, correlation)[inner].flatten(),
        )

    def risk(self, chosen: np.ndarray, factors: tuple[float, float] = (1.0, 1.0)) -> "_BinRisk":
        """The SURE statistics of the ``chosen`` pixels, safe while the true variance is between ``factors``
        times the model's."""
        return _BinRisk.of(self.residuals[:, chosen], self.covariance[:, chosen], self.trace[chosen], factors)

    def variance_margin(self, chosen: np.ndarray) -> tuple[float, tuple[float, float]]:
        """(measured variance ratio, (low, high)) of the ``chosen`` pixels: the median Haar ratio read as a
        variance ratio to the model's, and the ends of its confidence interval (low at most 1, high at least 1)."""
        ratios = self.haar_ratio[chosen]
        cells = max(ratios.size / 4, 1.0)  # each 2 x 2 cell's ratio is carried by its 4 pixels
        spread = min(0.5, MARGIN_CONFIDENCE_Z / (2.0 * math.sqrt(cells)))
        measured = float(np.median(ratios)) / CHI2_1_MEDIAN
        low, high = (float(np.quantile(ratios, 0.5 + side * spread)) / CHI2_1_MEDIAN for side in (-1, 1))
        return measured, (min(1.0, low), max(1.0, high))


def haar_variance_ratios(x: np.ndarray, variance: np.ndarray, correlation: np.ndarray) -> np.ndarray:
    """Per pixel of ``x`` (..., P, P; P even), the squared finest diagonal Haar detail (a - b - c + d) / 2 of
    its 2 x 2 cell over its expectation for noise alone (the model's mean variance over the cell times the
    detail's factor for the model's correlation). Its median / CHI2_1_MEDIAN estimates the true noise
    variance over the model's; signal smooth at the pixel scale barely enters a diagonal detail."""
    detail = (x[..., 0::2, 0::2] - x[..., 0::2, 1::2] - x[..., 1::2, 0::2] + x[..., 1::2, 1::2]) / 2.0
    cell_variance = (variance[..., 0::2, 0::2] + variance[..., 0::2, 1::2] + variance[..., 1::2, 0::2] + variance[..., 1::2, 1::2]) / 4.0
    ratio = np.square(detail, dtype=np.float64) / np.maximum(cell_variance * haar_detail_factor(correlation), 1e-30)
    return np.repeat(np.repeat(ratio, 2, axis=-2), 2, axis=-1)


def _fit_bins(pixels: _PixelRisks, bins: int, mean: float, std: float, sizes: tuple[int, ...]) -> list[dict[str, Any]]:
    """One evidence row per intensity bin with enough pixels: its signal (source units), weights and risks.
    ``sizes`` are the nested windows' pixel counts (prefixes of the offsets)."""
    level = pixels.level
    edges = np.quantile(level, np.linspace(0, 1, bins + 1))
    which = np.clip(np.searchsorted(edges, level, side="right") - 1, 0, bins - 1)
    scale = std**2
    rows = []
    for index in range(bins):
        chosen = which == index
        if chosen.sum() < 100:
            continue
        measured, factors = pixels.variance_margin(chosen)
        stats = pixels.risk(chosen, factors)
        halves = [pixels.risk(chosen & (pixels.half == h), factors) for h in (0, 1)]
        # The window whose weights, fitted on either half, score the least estimated error on the other at
        # its worst (either end of the variance ratio, correlation errors within the tolerance): a wide
        # window's estimate leans on the model's correlation at every neighbour.
        size = min(sizes, key=lambda n: sum(
            halves[1 - h].window(n).cost(halves[h].window(n).safe_weights()) for h in (0, 1)))
        stats, halves = stats.window(size), [half.window(size) for half in halves]
        weights = stats.safe_weights()
        # Each half's weights must not raise the other half's error, at either end of the measured variance ratio.
        held_out = all(halves[1 - h].cost(halves[h].safe_weights()) <= 0 for h in (0, 1))
        if not held_out:
            weights = np.zeros_like(weights)
        weights = np.concatenate([weights, np.zeros(sizes[-1] - size)])
        rows.append({
            "signal": float(np.median(level[chosen]) * std + mean), "pixels": int(chosen.sum()),
            "window": size, "weight": float(weights[0]), "weights": [float(w) for w in weights], "raw_share": float(weights.sum()),
            "unbounded_weight": float(stats.sure_weights()[0]), "held_out_check": held_out,
            "mse_network": float(stats.risk(np.zeros(size)) * scale), "mse_posterior": float(stats.risk(weights[:size]) * scale),
            "noise_variance": float(stats.variance * scale), "noise_covariance_trace": float(stats.trace * scale),
            "measured_variance_ratio": measured, "variance_margin": factors[1], "variance_margin_low": factors[0],
        })
    return rows


@dataclass(frozen=True)
class _BinRisk:
    """One bin's SURE statistics (normalised units) over the window's residuals ``d``: ``second`` = mean
    d d^T, ``cross`` = mean d d_0, ``covariance`` = mean model covariance of each window pixel's noise with
    the pixel's (``variance`` its first entry), ``trace`` = mean tr(Sigma J) per pixel; ``factors``: the
    least and most the true variance may be, in times the model's (measured, :meth:`_PixelRisks.variance_margin`)."""

    second: np.ndarray
    cross: np.ndarray
    covariance: np.ndarray
    trace: float
    factors: tuple[float, float] = (1.0, 1.0)

    @classmethod
    def of(
        cls, residuals: np.ndarray, covariance: np.ndarray, trace: np.ndarray, factors: tuple[float, float] = (1.0, 1.0)
    ) -> "_BinRisk":
        count = residuals.shape[1]
        if count == 0:
            size = residuals.shape[0]
            return cls(np.zeros((size, size)), np.zeros(size), np.zeros(size), 0.0, factors)
        d = residuals.astype(np.float64)
        return cls(d @ d.T / count, d @ d[0] / count, covariance.astype(np.float64).mean(axis=1), float(trace.mean()), factors)

    @property
    def variance(self) -> float:
        return float(self.covariance[0])

    def window(self, size: int) -> "_BinRisk":
        """The statistics of the first ``size`` raw pixels of the window alone."""
        return _BinRisk(self.second[:size, :size], self.cross[:size], self.covariance[:size], self.trace, self.factors)

    @property
    def squared(self) -> float:
        """Mean (s_hat - x)^2."""
        return float(self.second[0, 0])

    def risk(self, weights: np.ndarray, factor: float = 1.0) -> float:
        """SURE of ``s_hat + sum_j w_j d_j`` when the true noise covariance is ``factor`` times the model's."""
        w = np.asarray(weights, dtype=np.float64)
        return float(self.squared - 2 * w @ self.cross + w @ self.second @ w
                     + factor * (2 * self.trace - self.variance + 2 * w @ (self.covariance - self.trace)))

    def sure_weights(self) -> np.ndarray:
        """The weights minimising the risk under the model's covariance (zeros where the residuals carry nothing)."""
        if not self.squared > 0:
            return np.zeros_like(self.cross)
        target = self.cross - (self.covariance - self.trace)
        # The least-norm solution: directions the residuals do not vary along (a network that is itself a
        # linear mean of the window makes its residuals sum to 0) get no weight, not an arbitrary one.
        return np.linalg.lstsq(self.second, target, rcond=SOLVE_RCOND)[0]

    def safe_weights(self) -> np.ndarray:
        """SURE's weights, scaled down until a true covariance anywhere between ``factors`` x the model's, with
        each neighbour's correlation off by up to :data:`CORRELATION_TOLERANCE`, could not make them cost
        (the cost is linear in the factor and in the errors: the ends decide)."""
        weights = self.sure_weights()
        curvature = float(weights @ self.second @ weights)
        if not curvature > 0:
            return np.zeros_like(weights)
        bound = min(2.0 * (float(weights @ (self.cross - f * (self.covariance - self.trace))) - self._slack(weights, f)) / curvature
                    for f in self.factors)
        return weights * float(np.clip(min(1.0, bound), 0.0, 1.0))

    def _slack(self, weights: np.ndarray, factor: float) -> float:
        """The most the neighbours' weights can cost through correlation errors within the tolerance."""
        return CORRELATION_TOLERANCE * factor * self.variance * float(np.abs(weights[1:]).sum())

    def cost(self, weights: np.ndarray) -> float:
        """How much the weights raise the risk over the network's, at the worst of factor 1 and the two ends
        (and the worst correlation error within the tolerance)."""
        zero = np.zeros_like(self.cross)
        return max(self.risk(weights, f) - self.risk(zero, f) + 2 * self._slack(weights, f) for f in (1.0, *self.factors))
