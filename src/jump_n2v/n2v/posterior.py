"""Posterior step: give back part of what the blind spot throws away, under the fitted noise model.

A blind-spot network estimates each pixel from its surroundings; the noisy pixel itself still holds
information about the signal (the idea behind PN2V and Laine et al. 2019). The posterior step combines
them per pixel, ``out = s_hat + w(m) * (x - s_hat)``, with one weight ``w`` in [0, 1] per intensity
bin of ``m``, the network output smoothed (Gaussian, sigma 2 px). Binning by the smoothed output keeps a
pixel's bin nearly independent of its own noise: binned by ``s_hat`` itself, the extreme bins collect
the pixels whose noise pushed ``s_hat`` there, and the per-bin risk estimate is biased (measured with a
3 x 3 mean on 2 x 2-box-mixed noise: weights 0.08 where the truth is 0).

The weights are fitted once, at the end of training, on the held-out validation patches by minimising
Stein's unbiased risk estimate (SURE) of the combination's error to the unknown clean signal. For
noise ``n ~ N(0, Sigma)`` (Sigma from the fitted :class:`~jump_n2v.noise.NoiseModel`: its
signal-dependent variance and its 5 x 5 spatial correlation) and any estimate ``f(x)``::

    E|f - s|^2 = E|f - x|^2 - tr(Sigma) + 2 tr(Sigma J_f)

and for ``f = s_hat + w (x - s_hat)``, per pixel of a bin with ``A = mean (s_hat - x)^2``,
``V = mean var`` and ``T = mean b * (s_hat(x + eps b) - s_hat(x)) / eps`` (a Monte Carlo estimate of
``tr(Sigma J_s_hat)`` with ``b ~ N(0, Sigma)``), the risk ``(1-w)^2 A - V + 2 w V + 2 (1-w) T`` is least
at ``w = 1 - (V - T) / A``, clipped to [0, 1].

Why this stays valid where a naive posterior does not: an N2V network at inference sees the centre
pixel (it is masked only in training) and, on correlated noise with a one-pixel blind spot, copies the
noise of the neighbours. Both make ``s_hat``'s error correlated with the pixel's noise; a textbook
Gaussian posterior (``w = v_prior / (v_prior + v_noise)``) then counts the noise twice. ``T`` measures
exactly that correlation (under the model's Sigma, correlated neighbours included), so the weight falls
towards 0 where the network already uses the pixel or its noisy neighbours. It relies on the noise
model: a model the estimator flagged as processed data gives no posterior at all (see
:func:`fit_posterior`).

Safe when the model is off. The risk above hangs on the model's variance: if the true noise variance is
``c`` times the model's (``T`` scales with it), the posterior's risk minus the network's is
``-w (2 - w) A + 2 w c (V - T)``, negative only for ``w < 2 (1 - c (V - T) / A)``. How far above the
model's the true variance can be is measured on the same pixels, without the network: the finest
diagonal Haar detail of the raw validation patches (what wavelet noise estimates use; signal smooth at
the pixel scale barely enters it) in units of what the model predicts for it, its median read as a
variance ratio, and the upper end of that median's confidence interval (:data:`MARGIN_CONFIDENCE_Z`
standard errors) is the bin's margin (never below 1). A weight below the bound for every ``c`` up to the
margin cannot raise the expected error; a model that reads the variance high only lowers the weight,
which is safe too, and texture at the pixel scale only raises the margin. A fixed margin of 1.5 (the
rule before) zeroed every weight of a network whose error is small against the noise, which is where
the posterior's gain lies (0.5-2.1 dB on the demo plate). A bin's weight is also checked on the half of
the validation patches it was not fitted on (the bound must hold there too) and falls back to 0 (the
network's output) where it does not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
from scipy import ndimage

from jump_n2v.noise import haar_detail_factor

POSTERIOR_BINS = 8
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
    """Per-bin raw-pixel weights: ``out = s_hat + w(s_hat) (x - s_hat)``; signals in source units."""

    signal: tuple[float, ...]  # bin centres of the smoothed network output, increasing
    weight: tuple[float, ...]

    def apply(self, raw: np.ndarray, denoised: np.ndarray) -> np.ndarray:
        """The posterior estimate (float32) from the raw image and the network output (same units)."""
        weight = np.interp(binning_signal(denoised), self.signal, self.weight).astype(np.float32)
        return (denoised + weight * (np.asarray(raw, dtype=np.float32) - denoised)).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"signal": list(self.signal), "weight": list(self.weight)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "Posterior":
        return cls(signal=tuple(float(v) for v in values["signal"]), weight=tuple(float(v) for v in values["weight"]))


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
) -> tuple[Posterior | None, dict[str, Any]]:
    """Fit the per-bin weights on normalised validation ``patches`` (N, 1, P, P); returns (posterior, evidence).

    The evidence records, per bin, the weight and the estimated MSE (source units squared) of the
    network output and of the posterior. A border of P/8 (at most 8 px) is left out: prediction tiles
    carry a halo, so their outputs never see a patch border.
    """
    if noise_model is None:
        return None, {"fitted": False, "reason": "no noise model"}
    if getattr(noise_model, "processed", False):
        return None, {"fitted": False, "reason": "the noise model flags the data as processed: " + "; ".join(noise_model.notes)}
    net.eval()
    pixels = _PixelRisks.of(net, patches, mean, std, noise_model, batch_size=batch_size, seed=seed)
    rows = _fit_bins(pixels, bins, mean, std)
    if not rows:
        return None, {"fitted": False, "reason": "too few validation pixels"}
    counts = np.array([row["pixels"] for row in rows], dtype=np.float64)
    evidence = {
        "fitted": True,
        "method": "per-bin weight of the raw pixel minimising SURE under the fitted noise model (correlation included), "
                  "bounded so that it costs nothing while the true variance is within each bin's measured margin of the model's "
                  "(upper confidence bound of the raw patches' Haar-detail variance over the model's), "
                  "and checked on the held-out half of the validation patches",
        "estimated_mse_network": float(np.average([row["mse_network"] for row in rows], weights=counts)),
        "estimated_mse_posterior": float(np.average([row["mse_posterior"] for row in rows], weights=counts)),
        "bins": rows,
    }
    posterior = Posterior(signal=tuple(row["signal"] for row in rows), weight=tuple(row["weight"] for row in rows))
    return posterior, evidence


def _predict_in_batches(net: torch.nn.Module, inputs: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The net's output for ``inputs``, ``batch_size`` patches per pass on the net's device, back on the CPU."""
    device = next(net.parameters()).device
    out = [net(inputs[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(inputs), batch_size)]
    return torch.cat(out)


@dataclass(frozen=True, eq=False)
class _PixelRisks:
    """SURE's inputs per validation pixel inside the border (flattened, normalised units): the binning
    signal, (s_hat - x)^2, the model variance, tr(Sigma J), which half of the patches it lies in, and its
    2 x 2 cell's squared Haar detail over what the model predicts for it (:func:`haar_variance_ratios`)."""

    level: np.ndarray
    squared: np.ndarray
    variance: np.ndarray
    trace: np.ndarray
    half: np.ndarray
    haar_ratio: np.ndarray

    @classmethod
    def of(
        cls, net: torch.nn.Module, patches: torch.Tensor, mean: float, std: float, noise_model: Any, *,
        batch_size: int, seed: int,
    ) -> "_PixelRisks":
        generator = torch.Generator().manual_seed(seed)
        correlation = np.asarray(noise_model.correlation, dtype=np.float64)
        margin = min(8, patches.shape[-1] // 8)
        keep = (slice(None), 0, slice(margin, patches.shape[-2] - margin), slice(margin, patches.shape[-1] - margin))
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
        # Which half of the validation patches each pixel lies in: weights fitted on one half are checked on the other.
        half = np.broadcast_to((np.arange(len(x)) % 2)[:, None, None], estimate[keep].shape).flatten()
        return cls(
            level=binning_signal(estimate.numpy())[keep].flatten(),
            squared=(estimate - x)[keep].flatten().numpy().astype(np.float64) ** 2,
            variance=variance.float()[keep].flatten().numpy().astype(np.float64),
            trace=trace[keep].flatten().numpy().astype(np.float64),
            half=half,
            haar_ratio=haar_variance_ratios(x.numpy(), variance.numpy(), correlation)[keep].flatten(),
        )

    def risk(self, chosen: np.ndarray, margin: float = 1.0) -> "_BinRisk":
        """The SURE statistics of the ``chosen`` pixels, safe up to ``margin`` times the model's variance."""
        return _BinRisk.of(self.squared[chosen], self.variance[chosen], self.trace[chosen], margin)

    def variance_margin(self, chosen: np.ndarray) -> tuple[float, float]:
        """(measured variance ratio, margin) of the ``chosen`` pixels: the median Haar ratio read as a variance
        ratio to the model's, and the upper end of its confidence interval (at least 1)."""
        ratios = self.haar_ratio[chosen]
        cells = max(ratios.size / 4, 1.0)  # each 2 x 2 cell's ratio is carried by its 4 pixels
        upper = min(1.0, 0.5 + MARGIN_CONFIDENCE_Z / (2.0 * math.sqrt(cells)))
        measured = float(np.median(ratios)) / CHI2_1_MEDIAN
        return measured, max(1.0, float(np.quantile(ratios, upper)) / CHI2_1_MEDIAN)


def haar_variance_ratios(x: np.ndarray, variance: np.ndarray, correlation: np.ndarray) -> np.ndarray:
    """Per pixel of ``x`` (..., P, P; P even), the squared finest diagonal Haar detail (a - b - c + d) / 2 of
    its 2 x 2 cell over its expectation for noise alone (the model's mean variance over the cell times the
    detail's factor for the model's correlation). Its median / CHI2_1_MEDIAN estimates the true noise
    variance over the model's; signal smooth at the pixel scale barely enters a diagonal detail."""
    detail = (x[..., 0::2, 0::2] - x[..., 0::2, 1::2] - x[..., 1::2, 0::2] + x[..., 1::2, 1::2]) / 2.0
    cell_variance = (variance[..., 0::2, 0::2] + variance[..., 0::2, 1::2] + variance[..., 1::2, 0::2] + variance[..., 1::2, 1::2]) / 4.0
    ratio = np.square(detail, dtype=np.float64) / np.maximum(cell_variance * haar_detail_factor(correlation), 1e-30)
    return np.repeat(np.repeat(ratio, 2, axis=-2), 2, axis=-1)


def _fit_bins(pixels: _PixelRisks, bins: int, mean: float, std: float) -> list[dict[str, Any]]:
    """One evidence row per intensity bin with enough pixels: its signal (source units), weight and risks."""
    level = pixels.level
    edges = np.quantile(level, np.linspace(0, 1, bins + 1))
    which = np.clip(np.searchsorted(edges, level, side="right") - 1, 0, bins - 1)
    scale = std**2
    rows = []
    for index in range(bins):
        chosen = which == index
        if chosen.sum() < 100:
            continue
        measured, margin = pixels.variance_margin(chosen)
        stats = pixels.risk(chosen, margin)
        halves = [pixels.risk(chosen & (pixels.half == h), margin) for h in (0, 1)]
        weight = stats.safe_weight()
        # Each half's weight must not raise the other half's error, at the model's variance or the margin times it.
        held_out = all(halves[1 - h].cost(halves[h].safe_weight()) <= 0 for h in (0, 1))
        if not held_out:
            weight = 0.0
        rows.append({
            "signal": float(np.median(level[chosen]) * std + mean), "pixels": int(chosen.sum()), "weight": weight,
            "unbounded_weight": stats.sure_weight(), "held_out_check": held_out,
            "mse_network": float(stats.risk(0.0) * scale), "mse_posterior": float(stats.risk(weight) * scale),
            "noise_variance": float(stats.variance * scale), "noise_covariance_trace": float(stats.trace * scale),
            "measured_variance_ratio": measured, "variance_margin": margin,
        })
    return rows


@dataclass(frozen=True)
class _BinRisk:
    """One bin's SURE statistics (normalised units): ``squared`` = mean (s_hat - x)^2, ``variance`` = mean
    model variance, ``trace`` = mean tr(Sigma J) per pixel; ``margin``: how many times the model's variance
    the true one may be (measured, :meth:`_PixelRisks.variance_margin`)."""

    squared: float
    variance: float
    trace: float
    margin: float = 1.0

    @classmethod
    def of(cls, squared: np.ndarray, variance: np.ndarray, trace: np.ndarray, margin: float = 1.0) -> "_BinRisk":
        if squared.size == 0:
            return cls(0.0, 0.0, 0.0, margin)
        return cls(float(squared.mean()), float(variance.mean()), float(trace.mean()), margin)

    def risk(self, weight: float, factor: float = 1.0) -> float:
        """SURE of ``s_hat + w (x - s_hat)`` when the true noise covariance is ``factor`` times the model's."""
        return ((1 - weight) ** 2 * self.squared
                + factor * (-self.variance + 2 * weight * self.variance + 2 * (1 - weight) * self.trace))

    def sure_weight(self, factor: float = 1.0) -> float:
        """The weight minimising the risk at ``factor`` (clipped to [0, 1])."""
        if not self.squared > 0:
            return 0.0
        return float(np.clip(1.0 - factor * (self.variance - self.trace) / self.squared, 0.0, 1.0))

    def safe_weight(self) -> float:
        """SURE's weight, capped where a true variance up to ``margin`` x the model's would make it cost."""
        bound = 2.0 * (1.0 - self.margin * (self.variance - self.trace) / self.squared) if self.squared > 0 else 0.0
        return float(np.clip(min(self.sure_weight(), bound), 0.0, 1.0))

    def cost(self, weight: float) -> float:
        """How much the weight raises the risk over the network's, at the worse of factor 1 and the margin."""
        return max(self.risk(weight, f) - self.risk(0.0, f) for f in (1.0, self.margin))
