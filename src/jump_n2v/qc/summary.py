"""The per-(plate, channel) summary of the per-image QC metrics, and the flags raised on it."""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from jump_n2v.noise import NoiseModel
from jump_n2v.qc.downstream import downstream_worse
from jump_n2v.qc.disagreement import DISAGREEMENT_METRICS
from jump_n2v.qc.files import ModelInfo, QCInputError
from jump_n2v.settings import QCSettings
from jump_n2v.qc.measures import INTENSITY_SHIFT_METRICS, NO_REFERENCE_METRICS, NOISE_MODEL_METRICS, REFERENCE_METRICS

# Columns of the summary that describe the fitted noise model of a (plate, channel).
NOISE_MODEL_COLUMNS = (
    "noise_gain", "noise_offset", "noise_read_sd", "noise_camera_gain", "noise_corr_x", "noise_corr_y",
    "noise_corr_x2", "noise_corr_y2", "noise_processed", "noise_notes",
)
# Columns of the summary that show the noise model training fitted (model.json ``noise_model``), which the
# posterior step and the blind spot use; NOISE_MODEL_COLUMNS are QC's own fit, to another sample.
TRAINING_NOISE_COLUMNS = ("training_noise_gain", "training_noise_read_sd", "training_noise_images")
BLIND_SPOT_COLUMNS = ("blind_spot_mode", "blind_spot_offsets", "blind_spot_setting", "blind_spot_evidence")
# Columns of the summary from the predict step's comparison with the training data (training_check.json).
TRAINING_CHECK_COLUMNS = ("training_check_moved", "training_check_notes")
# Columns of the nuclei channel's row from the downstream segmentation (plates with true nucleus labels).
DOWNSTREAM_COLUMNS = ("downstream_f1_raw", "downstream_f1_denoised")

# What each flag means; the report prints these next to the thresholds used.
FLAG_DESCRIPTIONS = {
    "residual_structure": "median corr(residual, curvature of the denoised image), both in units of the "
    "noise model's standard deviation (without a noise model: median |corr(residual, denoised)|), exceeds "
    "qc.residual_structure_threshold: the residual is concentrated on structure, so the denoiser removed "
    "signal along with noise (a blur does). Every denoiser removes some (BM3D with the true noise "
    "parameters reads 0.09-0.25 on the synthetic plates); the default 0.25 is where blurs that cost 2 dB "
    "or more are all flagged (docs/benchmarks.md 'QC calibration').",
    "residual_autocorrelation": "median lag-1 autocorrelation of the residual along x or y exceeds the "
    "noise model's own (0 without a model) by more than qc.residual_autocorrelation_threshold: the "
    "removed part has spatial structure that the noise does not have (signal, or row/column-correlated "
    "noise that structN2V's struct_mask is meant for).",
    "noise_leak": "median noise leak exceeds qc.noise_leak_threshold: the output carries part of each "
    "pixel's own noise (it used the noisy pixel, or neighbours sharing its noise: a blur, or a one-pixel "
    "blind spot on correlated noise), so noise was handed back and the estimated MSE is only corrected "
    "to first order. Some leak is no defect (BM3D carries 0.06-0.26, and the posterior step mixes the raw "
    "pixel in where that lowers the MSE); the default 0.3 is above every output at or above BM3D's PSNR on "
    "the synthetic plates (docs/benchmarks.md 'QC calibration').",
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
    "downstream_worse": "on a plate with true nucleus labels (demo plates), nuclei segmented on the denoised "
    "images (one fixed method: Gaussian smoothing, Otsu threshold, distance-transform watershed) match the "
    "true nuclei worse than those segmented on the raw images: F1 at IoU 0.5 more than "
    "qc.downstream_f1_tolerance below raw's, or the correlation of a per-nucleus feature (mean intensity, "
    "area, GLCM contrast) with its value on the clean image more than qc.downstream_correlation_tolerance "
    "below raw's (see 'Downstream segmentation'). Denoising cost the analysis it is meant to help, e.g. by "
    "blurring nuclei together or erasing their texture.",
    "model_disagreement": "a control model, trained like the channel's model (same n2v settings, seed + 1000, "
    "other images: see control_disjoint) denoised QC's sample of the plate (qc.control_images), and the two outputs "
    "disagree on structure by more than qc.model_disagreement_threshold noise sigmas: the median over the images "
    "of the 99th percentile of |main - control| / sigma(signal) on structure (pixels more than 3 sigma above "
    "the image's 10th-percentile level; the whole image where under 1 % is structure) exceeds it. What the "
    "denoised image shows there depends on the training draw, not only on the data: an under-trained or "
    "unstable model. On the synthetic plates two well-trained models read 0.9-1.3 and under-trained controls "
    "2.4 and above (docs/qc.md 'Control model'). With control_disjoint false the plate had too few images "
    "for disjoint training sets and the two models share some.",
    "rejected_images": "ingest left images of this channel out (on_bad_image: skip): unreadable, or their "
    "shape or dtype differs from the plate's majority; the Rejects section lists each file and why.",
}


def _above(value: Any, threshold: float) -> bool:
    """``value > threshold``, False for a missing (NaN) measure."""
    return value is not None and not pd.isna(value) and value > threshold


def _flags(row: Mapping[str, Any], qc: QCSettings) -> list[str]:
    flags = []
    # With a noise model the residual is judged against it (curvature test in units of the model's
    # sigma); shot noise makes the raw residual correlate with the signal, so the plain correlation is
    # only the fallback without one.
    structure = row.get("residual_curvature_corr_median", math.nan)
    if pd.isna(structure):
        structure = abs(row["residual_signal_corr_median"])
    if _above(structure, qc.residual_structure_threshold):
        flags.append("residual_structure")
    # Against the noise model's own correlation when there is one (correlated camera noise is not structure).
    autocorr_x = row.get("residual_autocorr_excess_x_median", math.nan)
    autocorr_y = row.get("residual_autocorr_excess_y_median", math.nan)
    if pd.isna(autocorr_x) or pd.isna(autocorr_y):
        autocorr_x, autocorr_y = row["residual_autocorr_x_median"], row["residual_autocorr_y_median"]
    if max(autocorr_x, autocorr_y) > qc.residual_autocorrelation_threshold:
        flags.append("residual_autocorrelation")
    if _above(row.get("noise_leak_median", math.nan), qc.noise_leak_threshold):
        flags.append("noise_leak")
    shifts = [row.get(f"{name}_median", math.nan) for name in INTENSITY_SHIFT_METRICS]
    if any(_above(abs(shift), qc.bias_threshold) for shift in shifts):
        flags.append("bias")
    if "psnr_gain_db_mean" in row and row["psnr_gain_db_mean"] < 0:
        flags.append("psnr_drop")
    if not row["snr_gain_db_median"] > 0:  # also catches NaN
        flags.append("no_snr_gain")
    estimated_gain = row.get("estimated_gain_db_median", math.nan)
    if not pd.isna(estimated_gain) and not estimated_gain > qc.min_estimated_gain_db:
        flags.append("no_estimated_gain")
    if _above(row.get("disagreement_check_p99_median", math.nan), qc.model_disagreement_threshold):
        flags.append("model_disagreement")
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


def metric_columns(group: pd.DataFrame, metrics: Iterable[str]) -> dict[str, Any]:
    """``n_images`` and the ``<metric>_mean`` / ``<metric>_median`` of one (plate, channel)'s per-image
    metrics, with the count of images whose estimated gain is only a bound (and why)."""
    metrics = list(metrics)
    values = group[metrics].replace([np.inf, -np.inf], np.nan)
    row: dict[str, Any] = {
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
    return row


def control_disjoint(values: pd.Series) -> Any:
    """Whether the control model's training images were disjoint from the main model's (one value per
    plate channel, as the control store recorded it); None where no image was compared."""
    recorded = values.dropna()
    return None if recorded.empty else bool(recorded.astype(str).str.lower().eq("true").all())


def training_summary_columns(info: ModelInfo | None) -> dict[str, Any]:
    """The model folder and model.json's training summary (best validation loss and epoch, epochs run,
    whether it stopped early); NaN / None without a model."""
    if info is None:
        return {"model_dir": None, "best_val_loss": math.nan, "best_epoch": math.nan, "epochs_run": math.nan,
                "stopped_early": None}
    training = info.record.training
    return {
        "model_dir": info.model_dir,
        "best_val_loss": math.nan if training.best_val_loss is None else training.best_val_loss,
        "best_epoch": training.best_epoch,
        "epochs_run": training.epochs_run,
        "stopped_early": training.stopped_early,
    }


def training_noise_columns(info: ModelInfo | None) -> dict[str, Any]:
    """TRAINING_NOISE_COLUMNS from model.json: the gain and read-noise sd of the noise model training
    fitted (``noise_model``, the one the posterior step and the blind spot use) and how many training
    images it was fitted to (``training_data.images``); NaN where model.json does not record them."""
    record = info.record.noise_model if info is not None else None
    if not isinstance(record, Mapping) or record.get("gain") is None or record.get("read_variance") is None:
        return dict.fromkeys(TRAINING_NOISE_COLUMNS, math.nan)
    images = (info.record.training_data or {}).get("images")
    return {
        "training_noise_gain": float(record["gain"]),
        "training_noise_read_sd": math.sqrt(max(float(record["read_variance"]), 0.0)),
        "training_noise_images": math.nan if images is None else int(images),
    }


def blind_spot_columns(info: ModelInfo | None) -> dict[str, Any]:
    """The summary's BLIND_SPOT_COLUMNS from model.json's ``blind_spot`` record ("not recorded" when absent)."""
    record = info.record.blind_spot if info is not None else None
    if not isinstance(record, Mapping):
        return {"blind_spot_mode": "not recorded", "blind_spot_offsets": None, "blind_spot_setting": None, "blind_spot_evidence": None}
    offsets = record.get("offsets")
    return {
        "blind_spot_mode": str(record.get("mode", "not recorded")),
        "blind_spot_offsets": " ".join(f"({dy},{dx})" for dy, dx in offsets) if offsets else None,
        "blind_spot_setting": None if record.get("setting") is None else str(record.get("setting")),
        "blind_spot_evidence": None if record.get("evidence") is None else str(record.get("evidence")),
    }


EXPORT_CLIPPING_COLUMNS = ("export_clipped_low", "export_clipped_high", "export_clipped_fraction")


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


def downstream_columns(scores: pd.DataFrame | None) -> dict[str, float]:
    """DOWNSTREAM_COLUMNS from a plate's downstream scores (NaN without them)."""
    if scores is None:
        return {column: math.nan for column in DOWNSTREAM_COLUMNS}
    f1 = scores.set_index("source")["f1"]
    return {"downstream_f1_raw": float(f1["raw"]), "downstream_f1_denoised": float(f1["denoised"])}


def summarize(
    tables: Iterable[pd.DataFrame],
    models: Mapping[tuple[str, str], Mapping[str, Any]] | None = None,
    qc_settings: Mapping[str, Mapping[str, Any]] | None = None,
    noise_models: Mapping[tuple[str, str], NoiseModel] | None = None,
    rejected: Mapping[tuple[str, str], int] | None = None,
    clipping: Mapping[tuple[str, str], Mapping[str, int]] | None = None,
    training_checks: Mapping[tuple[str, str], Mapping[str, Any]] | None = None,
    downstream: Mapping[tuple[str, str], pd.DataFrame] | None = None,
) -> pd.DataFrame:
    """One row per (plate, channel): ``n_images``, ``<metric>_mean`` / ``<metric>_median`` of every
    metric present, the noise model QC fitted (NOISE_MODEL_COLUMNS, from ``noise_models``, and
    ``noise_model_images``, the raw images it was fitted to), the one training fitted and the posterior
    uses (TRAINING_NOISE_COLUMNS, from model.json), the model's training summary and blind-spot record
    (BLIND_SPOT_COLUMNS) and ``flags`` (a list of names, see
    FLAG_DESCRIPTIONS).

    ``tables`` are :func:`channel_metrics` results. ``models`` maps (plate, channel) to the model's
    info (:func:`load_model_info`); ``qc_settings`` maps channel to its resolved ``qc`` settings
    (schema defaults for channels not given). ``rejected`` maps (plate, channel) to the number of
    images ingest left out (``n_rejected``; any makes a ``rejected_images`` flag). ``clipping`` maps
    (plate, channel) to the TIFF export's clipped pixel counts (``pixels``, ``clipped_low``,
    ``clipped_high``: :func:`read_export_clipping`); channels not exported get NaN in the
    EXPORT_CLIPPING_COLUMNS. ``training_checks`` maps (plate, channel) to the predict step's comparison
    with the training data (:func:`read_training_check`): TRAINING_CHECK_COLUMNS, and an
    ``unlike_training_data`` flag when a statistic moved. ``downstream`` maps (plate, nuclei channel) to
    the plate's :func:`jump_n2v.qc.downstream.plate_scores`: DOWNSTREAM_COLUMNS, and a ``downstream_worse``
    flag (:func:`jump_n2v.qc.downstream.downstream_worse`). Reference-metric columns appear only when some
    table has them; so do the control model's DISAGREEMENT_METRICS (medians over the images it compared,
    :mod:`jump_n2v.qc.disagreement`), with ``control_disjoint`` and the ``model_disagreement`` flag.
    """
    combined = pd.concat(list(tables), ignore_index=True)
    if combined.empty:
        raise QCInputError("summarize: no per-image metrics to summarise")
    measured = NO_REFERENCE_METRICS + NOISE_MODEL_METRICS + REFERENCE_METRICS + DISAGREEMENT_METRICS
    metrics = [name for name in measured if name in combined.columns]
    models = models or {}
    noise_models = noise_models or {}
    qc_settings = qc_settings or {}
    rows = []
    for (plate, channel), group in combined.groupby(["plate", "channel"], sort=True):
        row = {"experiment": group["experiment"].iloc[0], "plate": plate, "channel": channel, **metric_columns(group, metrics)}
        info = models.get((plate, channel))
        qc = QCSettings.from_dict(qc_settings.get(channel))
        row.update(training_summary_columns(info))
        if "control_disjoint" in group:
            row["control_disjoint"] = control_disjoint(group["control_disjoint"])
        noise_model = noise_models.get((plate, channel))
        row.update(noise_model_columns(noise_model))
        # How many raw images QC fitted its noise model to (run_channel_qc: a seeded sample of qc.noise_model_images).
        row["noise_model_images"] = min(qc.noise_model_images, len(group)) if noise_model is not None else math.nan
        row.update(training_noise_columns(info))
        row.update(blind_spot_columns(info))
        row["n_rejected"] = int((rejected or {}).get((plate, channel), 0))
        row.update(export_clipping_columns((clipping or {}).get((plate, channel))))
        check = (training_checks or {}).get((plate, channel))
        row.update(training_check_columns(check))
        row["flags"] = _flags(row, qc)
        if check is not None and check["moved"]:
            row["flags"].append("unlike_training_data")
        if row["n_rejected"]:
            row["flags"].append("rejected_images")
        scores = (downstream or {}).get((plate, channel))
        row.update(downstream_columns(scores))
        if scores is not None and downstream_worse(scores, qc.downstream_f1_tolerance, qc.downstream_correlation_tolerance):
            row["flags"].append("downstream_worse")
        rows.append(row)
    return pd.DataFrame.from_records(rows)
