"""Are the images to denoise like the images the model was trained on?

N2V's authors warn that a model should only denoise images "acquired similarly to the training data"
(similar features and SNR). Training records a compact description of its data in model.json
(``training_data``, :func:`training_record`): the noise model fitted to its noise-sample images (gain,
read variance, lag-1 correlation), the quantiles of those images' pixels after the model's
normalisation, and the best network's masked N2V loss on its validation patches (winsorised: see
``masked_loss`` below). Before a plate
is denoised, :func:`compare_with_training` describes a few seeded images of it the same way (the same
estimator, the same quantiles, the network's masked loss on patches of them, masked as validation was)
and names each statistic that moved beyond its tolerance (the ``predict`` settings
``training_check_*``; defaults measured on synthetic plates, docs/benchmarks.md 'Images unlike the training data').

Statistics (``change`` in the comparison; each is "moved" when it exceeds its tolerance):

* ``noise_gain``: ratio of the per-pixel gains, folded to >= 1 (1.5: either 1.5x or 1/1.5x);
* ``noise_read_sd``: |difference| of the read-noise standard deviations, in units of the
  training images' noise standard deviation at their median level (for a sparse stain, the background's
  spread);
* ``noise_lag1``: largest |difference| of the lag-1 noise correlations along x and y;
* ``intensity``: largest |difference| of a normalised-intensity quantile (1, 5, 25, 50, 75, 95, 99 %),
  as a fraction of the training quantiles' 1-99 % range;
* ``masked_loss``: ratio of the sample's masked loss to the training record's, folded to >= 1; both
  are means of the squared errors at the blind spots, each error capped at the 99th percentile of the
  validation patches' errors (the record's ``masked_loss_cap``). Uncapped, the few blind spots on one
  debris object set the mean: on pe2loaddata's real Version1 site it moved 0.9-11.8x between patch
  seeds on the very image the model was trained on.

A model trained before this record existed cannot be compared: the comparison says so and flags nothing.
A record of format 1 holds the best validation loss (the mean over all blind spots); its models are
compared by that mean.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from jump_n2v.plumbing.atomic import write_text_atomic
from jump_n2v.model_record import ModelRecord
from jump_n2v.n2v.blind_spot import BlindSpotMasking
from jump_n2v.n2v.masking import BlindRegion, network_masked_errors
from jump_n2v.noise import NoiseModel, estimate_site_noise_models

QUANTILE_LEVELS = (1, 5, 25, 50, 75, 95, 99)
RECORD_FORMAT = 2
# The masked loss's squared errors are capped at this percentile of the validation patches' errors.
MASKED_LOSS_CAP_PERCENTILE = 99.0
COMPARISON_FORMAT = 1
# Flat 16 x 16 blocks a noise model needs before it is used (the blind spot, the posterior, this check).
MIN_NOISE_BLOCKS = 100
STATISTICS = ("noise_gain", "noise_read_sd", "noise_lag1", "intensity", "masked_loss")
# The predict setting that holds each statistic's tolerance.
TOLERANCE_SETTINGS = {
    "noise_gain": "training_check_gain_ratio",
    "noise_read_sd": "training_check_read_sd",
    "noise_lag1": "training_check_lag1",
    "intensity": "training_check_intensity",
    "masked_loss": "training_check_loss_ratio",
}
_PATCH_STREAM = 21
_MASK_STREAM = 22


def fit_noise_model(images: Sequence[np.ndarray], seed: int) -> tuple[NoiseModel | None, str]:
    """The noise model training fits (the site estimator: mixing measured on the background, then fixed),
    or None when it cannot be fitted or rests on fewer than MIN_NOISE_BLOCKS flat blocks; and a note why."""
    try:
        # Integer images are clipped at their dtype's range: the estimator reads it from the dtype.
        fitted = estimate_site_noise_models({"channel": list(images)}, seed=seed)
    except ValueError as error:  # too little flat background, constant images, ...
        return None, f"noise model could not be estimated from {len(images)} image(s): {error}"
    model = fitted.models["channel"]
    if model.blocks < MIN_NOISE_BLOCKS:
        # Measured: 27 blocks of smooth 48 x 48 stripes read neighbour correlations of 0.3 on independent
        # noise (a 5 x 5 region was masked and the model denoised nothing); 192 blocks of 128 x 128
        # box-mixed images read the true 0.5. One 1080 x 1080 site has 4,489 blocks.
        return None, (f"noise model of {len(images)} image(s) rests on only {model.blocks} flat 16 x 16 blocks "
                      f"(< {MIN_NOISE_BLOCKS}): not used")
    return model, "; ".join(fitted.notes)


def normalised_quantiles(images: Sequence[np.ndarray], mean: float, std: float) -> list[float]:
    """The QUANTILE_LEVELS percentiles of the images' pixels after the normalisation ``(x - mean) / std``."""
    pixels = np.concatenate([np.asarray(image, dtype=np.float64).ravel() for image in images])
    return [float(q) for q in np.percentile((pixels - mean) / std, QUANTILE_LEVELS)]


def _noise_summary(model: NoiseModel | None) -> dict[str, float] | None:
    if model is None:
        return None
    return {"gain": model.gain, "read_variance": model.read_variance, "lag1_x": model.lag(0, 1), "lag1_y": model.lag(1, 0)}


def winsorised_mean(errors: torch.Tensor, cap: float | None) -> float:
    """Mean of ``errors`` each capped at ``cap`` (None: uncapped, as format-1 records were)."""
    return float((errors if cap is None else errors.clamp(max=cap)).mean())


def masked_loss_cap(errors: torch.Tensor) -> float:
    """The cap of the masked loss's squared errors: their :data:`MASKED_LOSS_CAP_PERCENTILE` percentile."""
    # numpy, not torch.quantile, which refuses more than 2**24 values (large validation sets at a high masked fraction).
    return float(np.percentile(errors.double().cpu().numpy(), MASKED_LOSS_CAP_PERCENTILE))


def training_record(
    quantiles: Sequence[float], noise_model: NoiseModel | None, validation_errors: torch.Tensor, images: int
) -> dict:
    """model.json ``training_data``: what :func:`compare_with_training` compares a plate's sample with.
    ``validation_errors``: the best network's squared errors at the validation patches' blind spots."""
    cap = masked_loss_cap(validation_errors)
    return {
        "format": RECORD_FORMAT,
        "images": images,
        "noise": _noise_summary(noise_model),
        "quantile_levels": list(QUANTILE_LEVELS),
        "quantiles": [float(q) for q in quantiles],
        "masked_loss": winsorised_mean(validation_errors, cap),
        "masked_loss_cap": cap,
    }


def _blind_region(record: ModelRecord) -> BlindRegion | None:
    """The blind-spot region the model was trained with (its struct_mask line included), from model.json."""
    record = record.blind_spot or {}
    offsets = record.get("offsets") or []
    return BlindRegion.from_offsets(offsets) if record.get("mode") == "region" and offsets else None


@torch.inference_mode()
def masked_errors(trained: Any, images: Sequence[np.ndarray], patches: int, seed: int) -> torch.Tensor:
    """The network's squared errors at the blind spots of ``patches`` seeded patches of ``images``,
    normalised, patched and masked as training's validation patches were (its patch size, masked
    fraction, window, blind spot)."""
    settings = trained.settings
    size = settings.patch_size
    rng = np.random.default_rng([seed, _PATCH_STREAM])
    usable = [image for image in images if min(image.shape) >= size]
    if not usable:
        raise ValueError(f"no image is as large as the model's {size}-px patches")
    batch = np.empty((patches, 1, size, size), dtype=np.float32)
    for row in range(patches):
        image = usable[int(rng.integers(len(usable)))]
        y, x = (int(rng.integers(0, side - size + 1)) for side in image.shape)
        batch[row, 0] = image[y : y + size, x : x + size]
    targets = torch.from_numpy((batch - np.float32(trained.mean)) * np.float32(1.0 / trained.std))
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, _MASK_STREAM]).generate_state(1)[0]))
    masking = BlindSpotMasking.from_settings(settings, _blind_region(trained.record))
    inputs, masks = masking.mask(targets, generator=generator)
    device = next(trained.net.parameters()).device
    return network_masked_errors(trained.net, inputs.to(device), targets.to(device), masks.to(device), settings.batch_size)


def masked_loss(trained: Any, images: Sequence[np.ndarray], patches: int, seed: int, cap: float | None) -> float:
    """:func:`masked_errors`' mean, each squared error capped at ``cap`` (None: uncapped)."""
    return winsorised_mean(masked_errors(trained, images, patches, seed), cap)


def _folded_ratio(sample: float, training: float) -> float:
    """max(a / b, b / a) for positive values; NaN when either is not positive."""
    if not (sample > 0 and training > 0):
        return math.nan
    return max(sample / training, training / sample)


def _statistic(training: Any, sample: Any, change: float, tolerance: float, note: str | None = None) -> dict:
    comparable = change is not None and math.isfinite(change)
    entry = {"training": training, "sample": sample, "change": change if comparable else None,
             "tolerance": tolerance, "moved": bool(comparable and change > tolerance)}
    if note or not comparable:
        entry["note"] = note or "not comparable"
    return entry


def _read_sd_unit(trained: Any) -> float:
    """What a read-noise shift is measured in: the training images' noise sd at their median level (the
    normalisation offset) under the model training fitted; for a sparse stain that is its background's
    spread. Models without a recorded noise model use their normalisation scale."""
    if trained.record.noise_model is None:
        return trained.std
    return math.sqrt(float(NoiseModel.from_dict(trained.record.noise_model).variance(trained.mean)))


def compare_with_training(
    trained: Any, images: Sequence[np.ndarray], tolerances: Mapping[str, float], *, patches: int, seed: int,
) -> dict[str, Any]:
    """Compare ``images`` (a sample of those to denoise) with the model's ``training_data`` record.

    ``trained`` is a :class:`~jump_n2v.n2v.trained.TrainedModel`; ``tolerances`` maps each of STATISTICS
    to its tolerance. Returns ``{format, comparable, statistics: {name: {training, sample, change,
    tolerance, moved[, note]}}, moved: [names], notes: [...]}``; ``comparable`` is False (nothing moved)
    for a model without the record.
    """
    record = trained.record.training_data
    if not isinstance(record, Mapping):
        return {"format": COMPARISON_FORMAT, "comparable": False, "statistics": {}, "moved": [],
                "notes": ["model.json has no training_data record (a model trained before it was recorded): "
                          "the images cannot be compared with the training data"]}
    missing = set(STATISTICS) - set(tolerances)
    if missing:
        raise ValueError(f"no tolerance for {sorted(missing)}")
    notes: list[str] = []
    statistics: dict[str, dict] = {}

    noise, noise_note = fit_noise_model(images, seed)
    recorded = record.get("noise")
    if recorded is None or noise is None:
        why = "the training data had no usable noise model" if recorded is None else f"sample: {noise_note}"
        notes.append(f"noise statistics not compared: {why}")
        for name in ("noise_gain", "noise_read_sd", "noise_lag1"):
            statistics[name] = _statistic(None, None, math.nan, tolerances[name], why)
    else:
        sample = _noise_summary(noise)
        statistics["noise_gain"] = _statistic(
            recorded["gain"], sample["gain"], _folded_ratio(sample["gain"], recorded["gain"]), tolerances["noise_gain"])
        read_sd = [math.sqrt(max(value, 0.0)) for value in (recorded["read_variance"], sample["read_variance"])]
        statistics["noise_read_sd"] = _statistic(
            read_sd[0], read_sd[1], abs(read_sd[1] - read_sd[0]) / _read_sd_unit(trained), tolerances["noise_read_sd"])
        lag_change = max(abs(sample[key] - recorded[key]) for key in ("lag1_x", "lag1_y"))
        statistics["noise_lag1"] = _statistic(
            [recorded["lag1_x"], recorded["lag1_y"]], [sample["lag1_x"], sample["lag1_y"]], lag_change, tolerances["noise_lag1"])

    training_quantiles = list(record["quantiles"])
    sample_quantiles = normalised_quantiles(images, trained.mean, trained.std)
    span = training_quantiles[-1] - training_quantiles[0]
    shift = max(abs(s - t) for s, t in zip(sample_quantiles, training_quantiles)) / span if span > 0 else math.nan
    statistics["intensity"] = _statistic(training_quantiles, sample_quantiles, shift, tolerances["intensity"])

    size = trained.settings.patch_size
    if any(min(image.shape) >= size for image in images):
        loss = masked_loss(trained, images, patches, seed, record.get("masked_loss_cap"))
        statistics["masked_loss"] = _statistic(
            record["masked_loss"], loss, _folded_ratio(loss, record["masked_loss"]), tolerances["masked_loss"])
    else:
        why = f"no sampled image is as large as the model's {size}-px patches"
        notes.append(f"masked loss not compared: {why}")
        statistics["masked_loss"] = _statistic(record["masked_loss"], None, math.nan, tolerances["masked_loss"], why)

    moved = [name for name in STATISTICS if statistics[name]["moved"]]
    return {"format": COMPARISON_FORMAT, "comparable": True, "images": len(images), "statistics": statistics,
            "moved": moved, "notes": notes}


def describe_moved(comparison: Mapping[str, Any]) -> str:
    """'noise_lag1 0.48 (tolerance 0.15), intensity 0.31 (tolerance 0.1)': the statistics that moved."""
    return ", ".join(
        f"{name} {comparison['statistics'][name]['change']:.3g} (tolerance {comparison['statistics'][name]['tolerance']:g})"
        for name in comparison["moved"]
    )


def warning_text(comparison: Mapping[str, Any], what: str) -> str | None:
    """The warning to log or print for ``what`` (the images' name), or None when nothing moved."""
    if not comparison["moved"]:
        return None
    return (f"{what} look unlike the model's training data: {describe_moved(comparison)}; N2V should only "
            "denoise images acquired like its training images (train a model on them, or check the output)")


def sample_images(source: Any, count: int, seed: int) -> tuple[list[np.ndarray], list[int]]:
    """``count`` seeded images (rows) of an (images, Y, X) array, and which rows."""
    total = source.shape[0]
    rows = sorted(np.random.default_rng(seed).choice(total, size=min(count, total), replace=False).tolist())
    return [np.asarray(source[row]) for row in rows], rows


def comparison_path(denoised: str | Path) -> Path:
    """Where the comparison of a denoised store's source with the training data goes: beside it,
    ``denoised/DNA.zarr`` -> ``denoised/DNA.training_check.json``."""
    return Path(denoised).with_suffix(".training_check.json")


def check_array(
    trained: Any, source: Any, out_json: str | Path | None, settings: Any, *,
    model: str | None = None, log: logging.Logger | None = None,
) -> dict[str, Any]:
    """Compare a seeded sample of a channel array with the model's training data (:func:`compare_with_training`),
    write the comparison to ``out_json`` (atomically, when given) and log a warning naming what moved.

    ``source`` is an (images, Y, X) array or the path of a channel store; ``settings`` the ``predict``
    settings (a :class:`~jump_n2v.settings.PredictSettings` or a resolved mapping with the ``training_check_*``
    keys); ``model`` the model.json path, recorded in the comparison."""
    if isinstance(source, (str, Path)):
        from jump_n2v.plumbing.ngff import open_channel_array

        source = open_channel_array(source)
    if not isinstance(settings, Mapping):
        settings = dataclasses.asdict(settings)
    images, rows = sample_images(source, settings["training_check_images"], settings["training_check_seed"])
    tolerances = {name: settings[key] for name, key in TOLERANCE_SETTINGS.items()}
    comparison = compare_with_training(trained, images, tolerances, patches=settings["training_check_patches"],
                                       seed=settings["training_check_seed"])
    attrs = dict(getattr(source, "attrs", {}) or {})
    comparison = {"plate": attrs.get("plate"), "channel": attrs.get("channel"), "model": model,
                  "sampled_rows": rows, **comparison}
    if out_json is not None:
        write_text_atomic(Path(out_json), json.dumps(comparison, indent=2) + "\n")
    if log is not None:
        text = warning_text(comparison, f"the {len(images)} sampled image(s)")
        if text:
            log.warning(text)
        elif not comparison["comparable"]:
            log.info("training-data check: %s", "; ".join(comparison["notes"]))
        else:
            log.info("training-data check: the sampled images are like the training data%s",
                     f" ({'; '.join(comparison['notes'])})" if comparison["notes"] else "")
    return comparison

