"""One self-contained HTML QC report per experiment (figures embedded as base64 data URIs).

The page is rendered from the Jinja2 templates in ``jump_n2v/qc/templates`` with autoescaping, so a
plate, channel, file name or problem text is always shown as text. Its size is bounded: figures are
re-encoded as lossless WebP (Chromium, Firefox and Safari show it; about 60 % smaller than
Matplotlib's RGBA PNG for the noisy panels), only ``EXAMPLE_PLATES_PER_CHANNEL`` plates per channel
get their figures embedded (the others are linked), and only the first ``REJECTS_LISTED`` rejected
images are listed (with counts per plate and channel).
"""

from __future__ import annotations

import base64
import datetime
import io
import json
import math
import os
import platform
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import jinja2
import pandas as pd
from PIL import Image

from jump_n2v.plumbing.atomic import atomic_output
from jump_n2v.model_record import ModelRecord, ModelRecordError
from jump_n2v.qc.downstream import FEATURES, SOURCES, plate_scores, read_downstream
from jump_n2v.qc.figures import noise_model_trends
from jump_n2v.qc.files import (
    QCInputError,
    load_model_info,
    read_export_clipping,
    read_noise_model,
    read_training_check,
    write_table,
)
from jump_n2v.qc.summary import FLAG_DESCRIPTIONS, summarize

# (column, header) of the summary table, in order; absent columns are left out (reference metrics
# exist only when the plate has a clean reference).
SUMMARY_COLUMNS = (
    ("plate", "plate"),
    ("channel", "channel"),
    ("n_images", "images"),
    ("estimated_gain_db_median", "estimated gain over raw (dB, noise model)"),
    ("estimated_mse_median", "estimated MSE to clean"),
    ("snr_gain_db_median", "implied SNR gain (dB, fooled by blur)"),
    ("noise_leak_median", "noise leak"),
    ("residual_curvature_corr_median", "corr(residual, curvature)"),
    ("residual_variance_ratio_max_bin_median", "residual var / model, worst bin"),
    ("noise_sigma_raw_median", "noise σ raw"),
    ("noise_sigma_denoised_median", "noise σ denoised"),
    ("residual_to_noise_ratio_median", "residual std / noise σ raw"),
    ("residual_signal_corr_median", "corr(residual, denoised)"),
    ("residual_autocorr_x_median", "residual autocorr x"),
    ("residual_autocorr_y_median", "residual autocorr y"),
    ("mean_shift_relative_median", "image mean shift (denoised / raw − 1)"),
    ("background_shift_relative_median", "background mean shift"),
    ("bright_shift_relative_median", "bright-object mean shift"),
    ("bias_relative_median", "offset / intensity range"),
    ("psnr_raw_db_mean", "PSNR raw (dB)"),
    ("psnr_denoised_db_mean", "PSNR denoised (dB)"),
    ("psnr_gain_db_mean", "PSNR gain (dB)"),
    ("ssim_raw_mean", "SSIM raw"),
    ("ssim_denoised_mean", "SSIM denoised"),
    ("best_val_loss", "best validation loss"),
    ("best_epoch", "best epoch"),
    ("epochs_run", "epochs run"),
    ("n_rejected", "images rejected"),
    ("export_clipped_fraction", "export: share of pixels clipped"),
    ("training_check_moved", "unlike training data: moved (change, tolerance)"),
    ("downstream_f1_raw", "nuclei F1 raw (downstream)"),
    ("downstream_f1_denoised", "nuclei F1 denoised (downstream)"),
    ("disagreement_mean_median", "control model: mean |main − control| / σ"),
    ("disagreement_structure_p99_median", "control: p99 on structure (σ)"),
    ("disagreement_background_p99_median", "control: p99 on background (σ)"),
    ("disagreement_check_p99_median", "control: p99 judged (σ)"),
    ("control_disjoint", "control: training images disjoint"),
    ("flags", "flags"),
)

# Which summary cells to highlight for each flag.
FLAG_COLUMNS = {
    "residual_structure": ("residual_curvature_corr_median",),
    "residual_autocorrelation": ("residual_autocorr_x_median", "residual_autocorr_y_median"),
    "noise_leak": ("noise_leak_median",),
    "no_estimated_gain": ("estimated_gain_db_median",),
    "bias": ("mean_shift_relative_median", "background_shift_relative_median", "bright_shift_relative_median"),
    "psnr_drop": ("psnr_gain_db_mean", "psnr_denoised_db_mean"),
    "no_snr_gain": ("snr_gain_db_median",),
    "rejected_images": ("n_rejected",),
    "unlike_training_data": ("training_check_moved",),
    "downstream_worse": ("downstream_f1_denoised",),
    "model_disagreement": ("disagreement_check_p99_median", "disagreement_structure_p99_median"),
}

FLAG_THRESHOLDS = {
    "residual_structure": "residual_structure_threshold",
    "residual_autocorrelation": "residual_autocorrelation_threshold",
    "bias": "bias_threshold",
    "noise_leak": "noise_leak_threshold",
    "no_estimated_gain": "min_estimated_gain_db",
    "downstream_worse": "downstream_f1_tolerance",
    "model_disagreement": "model_disagreement_threshold",
}

# (column, header) of the noise-model table, one row per plate and channel: QC's own fit, then the
# training fit from model.json (the one the posterior step uses), then the blind spot.
NOISE_MODEL_TABLE = (
    ("plate", "plate"),
    ("channel", "channel"),
    ("noise_model_images", "QC fit: raw images"),
    ("noise_gain", "gain (ADU/e⁻, per pixel)"),
    ("noise_offset", "offset (ADU)"),
    ("noise_read_sd", "read noise σ (ADU)"),
    ("noise_camera_gain", "camera gain before mixing"),
    ("noise_corr_x", "lag-1 x"),
    ("noise_corr_y", "lag-1 y"),
    ("noise_corr_x2", "lag-2 x"),
    ("noise_corr_y2", "lag-2 y"),
    ("noise_processed", "processed data"),
    ("training_noise_gain", "training fit (posterior): gain"),
    ("training_noise_read_sd", "training fit: read noise σ (ADU)"),
    ("training_noise_images", "training fit: images"),
    ("blind_spot_mode", "blind spot"),
    ("blind_spot_offsets", "blind-spot offsets"),
    ("blind_spot_setting", "setting"),
    ("blind_spot_evidence", "evidence"),
    ("noise_notes", "notes"),
)

# Plates per channel whose figures (panels, plate map, loss curve) are embedded; flagged plates first.
EXAMPLE_PLATES_PER_CHANNEL = 3
# Rejected images listed in the report; the rejects tables hold them all.
REJECTS_LISTED = 200

_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("jump_n2v.qc", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _format(value: Any) -> str:
    """Numbers to 4 significant digits; missing values as an en dash."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int,)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if math.isinf(value):
            return "∞" if value > 0 else "−∞"
        if value.is_integer() and abs(value) < 1e6:
            return str(int(value))
        return f"{value:.4g}"
    try:
        if pd.isna(value):
            return "–"
    except (TypeError, ValueError):
        pass
    return str(value)


def _cell(value: Any, classes: Sequence[str] = (), bound_reason: str | None = None) -> dict[str, Any]:
    """A table cell for the template: its text and CSS classes (text cells are left-aligned); a value that
    is only a lower bound reads "≥ value", with the reason as the cell's tooltip."""
    names = list(classes) + (["text"] if isinstance(value, str) else [])
    if bound_reason:
        return {"text": f"≥ {_format(value)}", "classes": names, "title": bound_reason}
    return {"text": _format(value), "classes": names, "title": None}


def _bound_reason(record: Mapping[str, Any], column: str) -> str | None:
    """The reason a summary cell is only a lower bound (the estimated gain's note), else None."""
    if column != "estimated_gain_db_median":
        return None
    note = record.get("estimated_gain_note")
    return note if isinstance(note, str) and note else None


def _flag_list(flags: Any) -> list[str]:
    if flags is None:
        return []
    if isinstance(flags, str):
        return [flag for flag in flags.split(";") if flag]
    return [str(flag) for flag in flags]


# WebP's largest side; a taller figure (panels of more than 25 sites) stays PNG.
WEBP_MAX_SIDE = 16383


def _webp_data_uri(png: bytes, where: str) -> str:
    """A PNG as a lossless-WebP data URI: the same pixels in fewer bytes."""
    if not png.startswith(b"\x89PNG\r\n\x1a\n"):
        raise QCInputError(f"report: figure {where} is not a PNG file")
    with Image.open(io.BytesIO(png)) as image:
        if max(image.size) > WEBP_MAX_SIDE:
            return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        buffer = io.BytesIO()
        # Figures are drawn opaque, so the alpha channel carries nothing; method 4 is Pillow's default
        # speed/size trade-off (6 saves 2 % more at several times the time).
        image.convert("RGB").save(buffer, format="WEBP", lossless=True, method=4)
    return "data:image/webp;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _read_png(path: str | os.PathLike) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise QCInputError(f"report: cannot read figure {path}: {error}") from error


def _table(frame: pd.DataFrame, table_id: str) -> dict[str, Any]:
    return {
        "id": table_id,
        "headers": [str(column) for column in frame.columns],
        "rows": [[_cell(row[column]) for column in frame.columns] for _, row in frame.iterrows()],
    }


def _has_values(summary: pd.DataFrame, column: str) -> bool:
    return column in summary.columns and summary[column].notna().any()


def _summary_table(summary: pd.DataFrame) -> dict[str, Any]:
    columns = [(name, header) for name, header in SUMMARY_COLUMNS if name == "flags" or _has_values(summary, name)]
    rows = []
    for _, record in summary.sort_values(["plate", "channel"]).iterrows():
        flags = _flag_list(record.get("flags"))
        bad_columns = {column for flag in flags for column in FLAG_COLUMNS.get(flag, ())}
        cells = [
            {"flags": flags} if name == "flags"
            else _cell(record.get(name), ["bad"] if name in bad_columns else [], _bound_reason(record, name))
            for name, _ in columns
        ]
        rows.append({"flags": flags, "cells": cells})
    return {"headers": [header for _, header in columns], "rows": rows}


def _noise_model_table(summary: pd.DataFrame) -> dict[str, Any] | None:
    columns = [(name, header) for name, header in NOISE_MODEL_TABLE if name in summary.columns]
    if not any(name == "noise_gain" for name, _ in columns) or not summary["noise_gain"].notna().any():
        return None
    ordered = summary.sort_values(["plate", "channel"])
    return {
        "id": "noise-models",
        "headers": [header for _, header in columns],
        "rows": [[_cell(record.get(name)) for name, _ in columns] for _, record in ordered.iterrows()],
        "trends_src": _webp_data_uri(noise_model_trends(summary), "noise model trends"),
    }


def _flag_items(summary: pd.DataFrame, settings: Mapping[str, Mapping[str, Any]]) -> list[dict[str, str]]:
    items = []
    for _, record in summary.sort_values(["plate", "channel"]).iterrows():
        for flag in _flag_list(record.get("flags")):
            threshold_key = FLAG_THRESHOLDS.get(flag)
            qc = (settings.get(record["channel"]) or {}).get("qc", {})
            threshold = f" (threshold {_format(qc[threshold_key])})" if threshold_key and threshold_key in qc else ""
            items.append(
                {"plate": str(record["plate"]), "channel": str(record["channel"]), "flag": flag,
                 "threshold": threshold, "description": FLAG_DESCRIPTIONS.get(flag, "")}
            )
    return items


def _model_summary(model_json: str | os.PathLike) -> list[tuple[str, dict[str, Any]]]:
    try:
        record = ModelRecord.read(model_json)
    except (OSError, ModelRecordError) as error:
        raise QCInputError(f"report: cannot read model summary {model_json}: {error}") from error
    training = record.training
    facts = {
        "model": str(model_json),
        "best validation loss": training.best_val_loss,
        "best epoch": training.best_epoch,
        "epochs run": training.epochs_run,
        "steps": training.steps,
        "training seconds": training.seconds,
        "stopped early": training.stopped_early,
        "normalisation mean": record.normalization.get("mean"),
        "normalisation std": record.normalization.get("std"),
        "seed": record.seed,
        "software at training": ", ".join(f"{name} {version}" for name, version in sorted(record.versions.items())),
    }
    return [(key, _cell(value)) for key, value in facts.items()]


# (artifact key, link text, caption) of the figures shown per plate and channel.
CHANNEL_FIGURES = (
    ("panels_png", "panels", "raw | denoised | residual (raw − denoised) for seeded sites; raw and denoised share one contrast stretch (1–99.8 percentiles of raw), the yellow box marks the zoomed crop"),
    ("plate_map_png", "plate map", "plate map of the per-well mean of the chosen metric; grey wells have no image"),
    ("curve_png", "loss curve", "training and validation masked-pixel loss per epoch"),
    ("disagreement_png", "control model disagreement", "main model | control model (same settings, another seed and other images) | their difference in units of the noise model's σ, clipped at ±3 σ, for QC's sample; the black outline is the structure the model_disagreement check judges"),
)


def _channel_sections(
    channel_artifacts: Sequence[Mapping[str, Any]], flagged: set[tuple[str, str]], report_dir: Path
) -> list[dict[str, Any]]:
    """Per channel, its plates in name order; the figures of ``EXAMPLE_PLATES_PER_CHANNEL`` of them
    (flagged first, then by name) embedded, the others' linked relative to ``report_dir``."""
    by_channel: dict[str, list[Mapping[str, Any]]] = {}
    for artifact in channel_artifacts:
        missing = {"plate", "channel"} - set(artifact)
        if missing:
            raise QCInputError(f"report: a channel artifact lacks {sorted(missing)}: {dict(artifact)}")
        by_channel.setdefault(str(artifact["channel"]), []).append(artifact)
    sections = []
    for channel in sorted(by_channel):
        artifacts = sorted(by_channel[channel], key=lambda item: str(item["plate"]))
        examples = sorted(artifacts, key=lambda item: ((str(item["plate"]), channel) not in flagged, str(item["plate"])))
        embedded = {id(artifact) for artifact in examples[:EXAMPLE_PLATES_PER_CHANNEL]}
        plates = []
        for artifact in artifacts:
            plate = str(artifact["plate"])
            shown = [(key, text, caption) for key, text, caption in CHANNEL_FIGURES if artifact.get(key)]
            entry: dict[str, Any] = {"plate": plate, "figures": [], "links": []}
            if id(artifact) in embedded:
                entry["figures"] = [
                    {"src": _webp_data_uri(_read_png(artifact[key]), str(artifact[key])), "alt": f"{plate} {channel} {key}", "caption": caption}
                    for key, _, caption in shown
                ]
            else:
                for key, text, _ in shown:
                    if not Path(artifact[key]).is_file():
                        raise QCInputError(f"report: cannot read figure {artifact[key]}: no such file")
                    entry["links"].append({"href": Path(os.path.relpath(artifact[key], report_dir)).as_posix(), "text": text})
            entry["model"] = _model_summary(artifact["model_json"]) if artifact.get("model_json") else None
            plates.append(entry)
        sections.append({"anchor": f"channel-{channel}", "name": channel, "plates": plates, "linked_plates": len(artifacts) > len(embedded)})
    return sections


# (column of plate_scores, row header) of the downstream table, one column per source.
DOWNSTREAM_TABLE = (
    ("images", "images"),
    ("true_nuclei", "true nuclei"),
    ("found_nuclei", "nuclei found"),
    ("count_error_relative", "count error (found / true − 1)"),
    ("f1", "F1 at IoU 0.5"),
    *((f"r_{name}", f"r({name.replace('_', ' ')}, clean)") for name in FEATURES),
)


def _downstream_sections(
    scores: Mapping[tuple[str, str], pd.DataFrame], figures: Mapping[tuple[str, str], Path],
    flagged: set[tuple[str, str]], report_dir: Path,
) -> list[dict[str, Any]]:
    """Per plate, its downstream scores with raw, denoised and clean side by side, and its outline figure
    (embedded for ``EXAMPLE_PLATES_PER_CHANNEL`` plates, flagged first, linked for the others)."""
    keys = sorted(scores, key=lambda key: (key not in flagged, key))
    sections = []
    for position, key in enumerate(keys):
        by_source = scores[key].set_index("source")
        table = {
            "id": f"downstream-{key[0]}", "headers": ["", *SOURCES],
            "rows": [[_cell(header), *(_cell(by_source.at[source, column]) for source in SOURCES)] for column, header in DOWNSTREAM_TABLE],
        }
        entry = {"plate": key[0], "channel": key[1], "worse": key in flagged, "table": table, "figure": None, "link": None}
        if position < EXAMPLE_PLATES_PER_CHANNEL:
            entry["figure"] = _webp_data_uri(_read_png(figures[key]), str(figures[key]))
        else:
            entry["link"] = Path(os.path.relpath(figures[key], report_dir)).as_posix()
        sections.append(entry)
    return sorted(sections, key=lambda entry: entry["plate"])


def _settings_table(settings: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> dict[str, Any] | None:
    """One row per setting, one column per channel; rows where channels differ are marked."""
    channels = sorted(settings)
    if not channels:
        return None
    keys = sorted({(section, key) for channel in channels for section, values in settings[channel].items() for key in values})
    rows = []
    for section, key in keys:
        values = [settings[channel].get(section, {}).get(key, "–") for channel in channels]
        rendered = [json.dumps(value) if not isinstance(value, str) else value for value in values]
        rows.append({"name": f"{section}.{key}", "texts": rendered, "differs": len(set(rendered)) > 1})
    return {"channels": channels, "rows": rows}


def _rejects(rejects: pd.DataFrame) -> dict[str, Any]:
    """The first ``REJECTS_LISTED`` rejected images, and their count per plate and channel."""
    counts = rejects.groupby(["plate", "channel"]).size().reset_index(name="images rejected")
    return {
        "count": len(rejects),
        "table": _table(rejects[["plate", "channel", "file", "problem"]].head(REJECTS_LISTED), "rejects"),
        "counts": _table(counts, "rejects-per-channel"),
    }


def read_rejects(paths: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """Ingest's ``{plate}/rejects/{channel}.csv`` files as one table with columns plate, channel, file,
    problem (plate and channel taken from the path)."""
    frames = []
    for path in map(Path, paths):
        try:
            frame = pd.read_csv(path, dtype=str)
        except pd.errors.EmptyDataError:
            continue
        except (OSError, pd.errors.ParserError) as error:
            raise QCInputError(f"cannot read rejects table {path}: {error}") from error
        missing = {"file", "problem"} - set(frame.columns)
        if missing:
            raise QCInputError(f"rejects table {path}: missing column(s) {sorted(missing)}")
        frames.append(frame[["file", "problem"]].assign(plate=path.parent.parent.name, channel=path.stem))
    if not frames:
        return pd.DataFrame(columns=["plate", "channel", "file", "problem"])
    return pd.concat(frames, ignore_index=True)[["plate", "channel", "file", "problem"]]


def build_report(
    experiment: str,
    summary_df: pd.DataFrame,
    channel_artifacts: Sequence[Mapping[str, Any]],
    settings: Mapping[str, Mapping[str, Mapping[str, Any]]],
    versions: Mapping[str, str],
    rejects_df: pd.DataFrame | None,
    out_html: str | os.PathLike,
    downstream: Mapping[tuple[str, str], Mapping[str, Any]] | None = None,
) -> None:
    """Write the experiment's self-contained QC report to ``out_html`` (atomically).

    Arguments:
        experiment: the experiment name (page title).
        summary_df: :func:`jump_n2v.qc.summary.summarize` output (``flags`` as lists or ``;``-joined
            strings, so a re-read CSV works too).
        channel_artifacts: one mapping per (plate, channel) with keys ``plate``, ``channel`` and
            optionally ``panels_png``, ``plate_map_png``, ``curve_png`` (PNG paths: embedded for
            ``EXAMPLE_PLATES_PER_CHANNEL`` plates per channel, flagged first, linked for the others) and
            ``model_json`` (path of the model.json whose training summary is shown).
        settings: channel -> resolved settings sections (``jump_n2v.config.channel_settings``), e.g.
            ``{"DNA": {"n2v": {...}, "predict": {...}, "qc": {...}}}``; the flag thresholds come from
            each channel's ``qc`` section.
        versions: software name -> version.
        rejects_df: images left out by ingest (columns plate, channel, file, problem; see
            :func:`read_rejects`), or None.
        out_html: the report path.
        downstream: (plate, nuclei channel) -> ``{"scores": plate_scores table, "figure": downstream.png}``
            of the plates with true nucleus labels (section 'Downstream segmentation').
    """
    required = {"plate", "channel", "n_images", "flags"} - set(summary_df.columns)
    if required:
        raise QCInputError(f"report: the summary table lacks column(s) {sorted(required)}")
    has_reference = _has_values(summary_df, "psnr_denoised_db_mean")
    reference_note = (
        "PSNR and SSIM are shown for plates with a clean reference."
        if has_reference
        else "No plate has a clean reference, so PSNR and SSIM are omitted (see the definitions)."
    )
    if rejects_df is None:
        rejects_df = pd.DataFrame(columns=["plate", "channel", "file", "problem"])
    flagged = {(str(record["plate"]), str(record["channel"])) for _, record in summary_df.iterrows() if _flag_list(record.get("flags"))}
    channels = _channel_sections(channel_artifacts, flagged, Path(out_html).absolute().parent)
    links = [("flags-section", "Flags"), ("summary-section", "Summary"), ("noise-model-section", "Noise model"), ("definitions", "Definitions")]
    links += [(channel["anchor"], channel["name"]) for channel in channels]
    flags_of = {(str(record["plate"]), str(record["channel"])): _flag_list(record.get("flags")) for _, record in summary_df.iterrows()}
    worse = {key for key in (downstream or {}) if "downstream_worse" in flags_of.get(key, [])}
    downstream_sections = _downstream_sections(
        {key: value["scores"] for key, value in (downstream or {}).items()},
        {key: value["figure"] for key, value in (downstream or {}).items()}, worse, Path(out_html).absolute().parent,
    )
    if downstream_sections:
        links.append(("downstream-section", "Downstream segmentation"))
    links += [("settings-section", "Settings"), ("versions-section", "Versions"), ("rejects-section", "Rejects")]
    page = _TEMPLATES.get_template("report.html.j2").render(
        title=f"jump-n2v QC report: {experiment}",
        generated=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        links=links,
        flags=_flag_items(summary_df, settings),
        reference_note=reference_note,
        summary=_summary_table(summary_df),
        noise_models=_noise_model_table(summary_df),
        flag_descriptions=list(FLAG_DESCRIPTIONS.items()),
        channels=channels,
        downstream=downstream_sections,
        settings=_settings_table(settings),
        versions=_table(pd.DataFrame(sorted(versions.items()), columns=["software", "version"]), "versions"),
        rejects=_rejects(rejects_df),
    )
    with atomic_output(out_html) as temporary:
        temporary.write_text(page, encoding="utf-8")


# Distributions whose versions the report lists (those not installed are left out).
REPORTED_DISTRIBUTIONS = (
    "jump-n2v", "torch", "numpy", "pandas", "zarr", "scikit-image", "scipy", "matplotlib", "tifffile", "snakemake",
)


def software_versions() -> dict[str, str]:
    """Versions of Python and of the installed ``REPORTED_DISTRIBUTIONS``."""
    versions = {"python": platform.python_version()}
    for name in REPORTED_DISTRIBUTIONS:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions


METRICS_TEXT_COLUMNS = {"experiment": str, "plate": str, "channel": str, "image": str, "well": str}


def with_disagreement(metrics: pd.DataFrame, disagreement_csv: Path) -> pd.DataFrame:
    """The per-image metrics with the control model's disagreement columns (run_disagreement_qc's table)
    on the images it compared, NaN on the others."""
    try:
        table = pd.read_csv(disagreement_csv, dtype={"image": str})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise QCInputError(f"cannot read the control model's disagreement table {disagreement_csv}: {error}") from error
    unknown = set(table.get("image", [])) - set(metrics["image"])
    if "image" not in table or unknown:
        raise QCInputError(f"{disagreement_csv}: no image column, or images not in the plate's metrics: {sorted(unknown)[:3]}")
    return metrics.merge(table, on="image", how="left", validate="one_to_one")


def write_experiment_report(
    experiment: str,
    metrics_csvs: Iterable[str | os.PathLike],
    model_dirs: Mapping[tuple[str, str], str | os.PathLike],
    settings: Mapping[str, Mapping[str, Mapping[str, Any]]],
    rejects_csvs: Iterable[str | os.PathLike],
    summary_csv: str | os.PathLike,
    summary_parquet: str | os.PathLike,
    out_html: str | os.PathLike,
    versions: Mapping[str, str] | None = None,
    export_dirs: Mapping[tuple[str, str], str | os.PathLike] | None = None,
    training_checks: Iterable[str | os.PathLike] = (),
    downstream: Iterable[str | os.PathLike] = (),
) -> pd.DataFrame:
    """Summary tables and the HTML report of one experiment from the per-channel QC outputs.

    ``metrics_csvs`` are :func:`jump_n2v.qc.run_channel_qc` ``metrics.csv`` files; the noise_model.json
    beside each goes into the summary, the panels.png and plate_map.png are embedded. ``model_dirs`` maps (plate, channel) to the model folder
    (model.json and the training_curve.png that training drew). ``settings`` maps channel
    to its resolved settings sections (flag thresholds come from ``qc``). ``export_dirs`` maps
    (plate, channel) to the folder its TIFFs were exported to, whose clipping.csv gives the summary's
    export clipping columns. ``training_checks`` are the predict step's ``training_check.json`` files (each
    names its plate and channel): a statistic that moved flags ``unlike_training_data``. ``downstream`` are
    the downstream rule's ``downstream.csv`` files (:func:`jump_n2v.qc.downstream.run_downstream`; the
    objects table and figure beside each): scored per plate, they may flag ``downstream_worse``. A
    disagreement.csv beside a metrics.csv (qc.control_model: :func:`jump_n2v.qc.run_disagreement_qc`) adds
    its columns to the images it compared and its disagreement.png to the channel's figures. ``versions``
    defaults to :func:`software_versions`. Returns the summary table.
    """
    tables, artifacts, noise_models = [], [], {}
    for path in map(Path, metrics_csvs):
        try:
            table = pd.read_csv(path, dtype=METRICS_TEXT_COLUMNS)
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
            raise QCInputError(f"cannot read per-image metrics {path}: {error}") from error
        if table.empty or {"plate", "channel"} - set(table.columns):
            raise QCInputError(f"per-image metrics {path}: no rows, or no plate/channel columns")
        tables.append(table)
        artifact = {"plate": table["plate"].iloc[0], "channel": table["channel"].iloc[0], "panels_png": path.parent / "panels.png"}
        noise_models[(artifact["plate"], artifact["channel"])] = read_noise_model(path.parent / "noise_model.json")
        if (path.parent / "plate_map.png").exists():
            artifact["plate_map_png"] = path.parent / "plate_map.png"
        if (path.parent / "disagreement.csv").exists():  # qc.control_model was on: the control's sample
            tables[-1] = with_disagreement(table, path.parent / "disagreement.csv")
            artifact["disagreement_png"] = path.parent / "disagreement.png"
        model_dir = model_dirs.get((artifact["plate"], artifact["channel"]))
        if model_dir is not None:
            # The train rule already drew this model's loss curves; plates sharing a model share it.
            artifact["curve_png"] = Path(model_dir) / "training_curve.png"
            artifact["model_json"] = Path(model_dir) / "model.json"
        artifacts.append(artifact)
    models = {key: load_model_info(directory) for key, directory in model_dirs.items()}
    rejects = read_rejects(rejects_csvs)
    downstream_plates = {}
    for path in map(Path, downstream):
        scores = plate_scores(*read_downstream(path))
        if scores.empty:
            raise QCInputError(f"downstream table {path}: no rows")
        key = (str(scores["plate"].iloc[0]), str(scores["channel"].iloc[0]))
        downstream_plates[key] = {"scores": scores, "figure": path.parent / "downstream.png"}
    summary = summarize(
        tables,
        models=models,
        qc_settings={channel: sections.get("qc") for channel, sections in settings.items()},
        noise_models=noise_models,
        rejected=rejects.groupby(["plate", "channel"]).size().to_dict(),
        clipping={key: read_export_clipping(Path(folder) / "clipping.csv") for key, folder in (export_dirs or {}).items()},
        training_checks={(check["plate"], check["channel"]): check for check in map(read_training_check, training_checks)},
        downstream={key: value["scores"] for key, value in downstream_plates.items()},
    )
    write_table(summary, summary_csv, summary_parquet)
    build_report(experiment, summary, artifacts, settings, versions or software_versions(), rejects, out_html,
                 downstream=downstream_plates)
    return summary
