"""Quality control of denoised plates: per-image metrics, figures, and one HTML report per experiment.

Typical use (one call per (plate, channel), then one per experiment)::

    run_channel_qc(plate_dir / "raw/DNA.zarr", plate_dir / "denoised/DNA.zarr", plate_dir / "qc/DNA",
                   clean=..., index=plate_dir / "index.csv", qc_settings=qc)
    write_experiment_report(experiment, metrics_csvs, model_dirs, settings, rejects_csvs,
                            summary_csv, summary_parquet, report_html)

``write_experiment_report`` wraps :func:`summarize` and :func:`build_report`, which can also be used
directly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from jump_n2v.noise import NoiseModel, SiteNoiseModels
from jump_n2v.qc.channel import channel_metrics, channel_noise_model, plate_noise_models
from jump_n2v.settings import QCSettings
from jump_n2v.qc.disagreement import channel_disagreement
from jump_n2v.qc.figures import channel_panels, disagreement_panels, plate_map
from jump_n2v.qc.files import (
    QCInputError, load_model_info, read_noise_model, read_site_noise_models, write_noise_model, write_site_noise_models,
    write_table,
)
from jump_n2v.qc.measures import image_metrics, noise_sigma, psnr_db, reference_data_range, ssim
from jump_n2v.qc.summary import FLAG_DESCRIPTIONS, summarize
from jump_n2v.qc.report import build_report, read_rejects, software_versions, write_experiment_report

__all__ = [
    "FLAG_DESCRIPTIONS",
    "QCInputError",
    "build_report",
    "channel_metrics",
    "channel_noise_model",
    "channel_disagreement",
    "channel_panels",
    "disagreement_panels",
    "image_metrics",
    "load_model_info",
    "noise_sigma",
    "plate_map",
    "plate_noise_models",
    "psnr_db",
    "read_rejects",
    "read_noise_model",
    "read_site_noise_models",
    "reference_data_range",
    "run_channel_qc",
    "run_plate_noise_models",
    "run_disagreement_qc",
    "software_versions",
    "ssim",
    "summarize",
    "write_experiment_report",
    "write_noise_model",
    "write_table",
]

# Files run_channel_qc always writes into its output folder (the loss curve is training's own).
CHANNEL_QC_FILES = ("metrics.csv", "metrics.parquet", "noise_model.json", "panels.png", "plate_map.png")
# Files run_disagreement_qc writes beside them when qc.control_model is on.
DISAGREEMENT_QC_FILES = ("disagreement.csv", "disagreement.png")


def run_plate_noise_models(
    raws: Mapping[str, str | os.PathLike], out_json: str | os.PathLike, qc_settings: Mapping[str, Mapping[str, Any]]
) -> SiteNoiseModels:
    """The plate's noise models, one pixel mixing shared by its channels (:func:`plate_noise_models`), into
    ``out_json`` (noise_models.json). ``qc_settings`` maps each channel to its qc section: its
    ``noise_model_images`` raw images are used; the first channel's ``seed`` seeds the sample and the fit."""
    settings = {channel: QCSettings.from_dict(qc_settings.get(channel)) for channel in raws}
    seed = next(iter(settings.values())).seed
    site = plate_noise_models(raws, {channel: qc.noise_model_images for channel, qc in settings.items()}, seed=seed)
    write_site_noise_models(site, out_json)
    return site


def run_channel_qc(
    raw: str | os.PathLike,
    denoised: str | os.PathLike,
    out_dir: str | os.PathLike,
    clean: str | os.PathLike | None = None,
    index: str | os.PathLike | None = None,
    qc_settings: Mapping[str, Any] | None = None,
    noise_model: NoiseModel | None = None,
) -> pd.DataFrame:
    """Metrics and figures of one (plate, channel) into ``out_dir``: metrics.csv, metrics.parquet,
    noise_model.json (``noise_model``, the channel's model from the plate's :func:`run_plate_noise_models`
    in the workflow; without it, one fitted to this channel's ``qc.noise_model_images`` raw images alone),
    panels.png, plate_map.png (when ``index`` is given: it holds the wells). Returns the per-image metrics
    table."""
    qc = QCSettings.from_dict(qc_settings)
    out_dir = Path(out_dir)
    if noise_model is None:
        noise_model = channel_noise_model(raw, images=qc.noise_model_images, seed=qc.seed)
    write_noise_model(noise_model, out_dir / "noise_model.json")
    table = channel_metrics(raw, denoised, clean=clean, index=index, noise_model=noise_model)
    write_table(table, out_dir / "metrics.csv", out_dir / "metrics.parquet")
    channel_panels(raw, denoised, out_dir / "panels.png", index=index, panel_sites=qc.panel_sites, crop_size=qc.crop_size, seed=qc.seed)
    plate, channel = table["plate"].iloc[0], table["channel"].iloc[0]
    if index is not None:
        plate_map(table, qc.plate_map_metric, out_dir / "plate_map.png", title=f"{plate} {channel}: {qc.plate_map_metric}")
    return table


def run_disagreement_qc(
    denoised: str | os.PathLike,
    control: str | os.PathLike,
    noise_model_json: str | os.PathLike,
    out_dir: str | os.PathLike,
    index: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """The main vs control model disagreement of one (plate, channel) into ``out_dir``: disagreement.csv
    (one row per image the control denoised, :func:`channel_disagreement`, in units of the noise model
    run_channel_qc fitted, ``noise_model_json``) and disagreement.png. Returns the table."""
    out_dir = Path(out_dir)
    noise_model = read_noise_model(noise_model_json)
    table = channel_disagreement(denoised, control, noise_model)
    write_table(table, out_dir / "disagreement.csv")
    disagreement_panels(denoised, control, noise_model, out_dir / "disagreement.png", index=index)
    return table
