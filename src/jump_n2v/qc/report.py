"""One self-contained HTML QC report per experiment (figures embedded as base64 data URIs).

No template engine: the page is assembled from escaped strings with :class:`string.Template`.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import math
import os
import platform
from importlib import metadata as importlib_metadata
from pathlib import Path
from string import Template
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from jump_n2v.atomic import atomic_output
from jump_n2v.qc.figures import noise_model_trends
from jump_n2v.qc.metrics import (
    FLAG_DESCRIPTIONS,
    QCInputError,
    load_model_info,
    read_export_clipping,
    read_noise_model,
    summarize,
    write_table,
)

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
    ("bias_relative_median", "relative bias"),
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
    ("flags", "flags"),
)

# Which summary cells to highlight for each flag.
FLAG_COLUMNS = {
    "residual_structure": ("residual_curvature_corr_median",),
    "residual_autocorrelation": ("residual_autocorr_x_median", "residual_autocorr_y_median"),
    "noise_leak": ("noise_leak_median",),
    "no_estimated_gain": ("estimated_gain_db_median",),
    "bias": ("bias_relative_median",),
    "psnr_drop": ("psnr_gain_db_mean", "psnr_denoised_db_mean"),
    "no_snr_gain": ("snr_gain_db_median",),
    "rejected_images": ("n_rejected",),
}

FLAG_THRESHOLDS = {
    "residual_structure": "residual_structure_threshold",
    "residual_autocorrelation": "residual_autocorrelation_threshold",
    "bias": "bias_threshold",
    "noise_leak": "noise_leak_threshold",
    "no_estimated_gain": "min_estimated_gain_db",
}

# (column, header) of the noise-model table, one row per plate and channel.
NOISE_MODEL_TABLE = (
    ("plate", "plate"),
    ("channel", "channel"),
    ("noise_gain", "gain (ADU/e⁻, per pixel)"),
    ("noise_offset", "offset (ADU)"),
    ("noise_read_sd", "read noise σ (ADU)"),
    ("noise_camera_gain", "camera gain before mixing"),
    ("noise_corr_x", "lag-1 x"),
    ("noise_corr_y", "lag-1 y"),
    ("noise_corr_x2", "lag-2 x"),
    ("noise_corr_y2", "lag-2 y"),
    ("noise_processed", "processed data"),
    ("blind_spot_mode", "blind spot"),
    ("blind_spot_offsets", "blind-spot offsets"),
    ("blind_spot_setting", "setting"),
    ("blind_spot_evidence", "evidence"),
    ("noise_notes", "notes"),
)

DEFINITIONS = """
<p>All statistics are per image, in the raw image's intensity units, then summarised per plate and
channel (median over images for the no-reference measures, mean for PSNR/SSIM). The residual is
<code>raw − denoised</code>.</p>
<h3>Reference metrics (only with a clean ground truth)</h3>
<dl>
<dt>PSNR</dt><dd><code>10·log10(R² / MSE)</code> of an image against its clean reference, where the
data range <b>R is the clean reference image's max − min</b> (per image). Reported for raw vs clean and
denoised vs clean; the PSNR gain is their difference.</dd>
<dt>SSIM</dt><dd>Mean structural similarity (scikit-image, 7×7 uniform window) against the clean
reference with the same data range R.</dd>
<dd>PSNR and SSIM need a clean reference. A plate without one has no PSNR or SSIM columns: PSNR of the
denoised image against the raw one would measure how much the image changed, not how good it is, so
it is not computed.</dd>
</dl>
<h3>Measures from the noise model (the headline)</h3>
<dl>
<dt>noise model</dt><dd>Fitted per plate and channel to a seeded sample of raw images: per-pixel variance
<code>gain·(signal − offset) + read noise²</code> and the noise's 5×5 autocorrelation, from the flattest
16×16 blocks (quadratic surface removed) binned by intensity. Gain and read noise describe the data
as stored; after pixel mixing (a 2×2 box, a half-pixel shift) the per-pixel variance is lower and the
lag-1 correlation about 0.5, and the camera's own gain is <code>gain × Σ correlation</code>. The
offset is the dark level (darkest flat blocks, assumed to hold no photons): with a lit background it
reads high and the read noise with it; the gain and the variance line are unaffected.</dd>
<dt>noise leak</dt><dd>The share of each pixel's own noise that the output carries, measured on the
raw image's pure-noise blocks: 0 for a blind spot that covers the noise, the centre weight for a
linear filter (0.16 for a Gaussian blur of σ 1), 1 for the raw image; a one-pixel blind spot on
correlated noise carries the noise it shares with its neighbours.</dd>
<dt>estimated MSE / estimated gain over raw</dt><dd><code>MSE ≈ mean((raw − denoised)²) − σ²·(1 − 2·leak)</code>
with σ² the model's noise variance at the denoised value, and gain <code>10·log10(σ² / MSE)</code> dB
(the raw image's MSE is σ²). Since <code>|x−y|² = |s−y|² + |n|² + 2⟨n, s−y⟩</code>, this is unbiased when
the output does not depend on the pixel's own noise (blind spot, leak 0) and is SURE for a linear
filter; it assumes the model's variance is right and the leak the same at every intensity. A blur
cannot raise it the way it raises the implied SNR gain: its leak is measured and charged.
∞ means an estimated MSE at or below 0.</dd>
<dt>corr(residual, curvature)</dt><dd>Correlation of the residual with the curvature (negative
Laplacian of Gaussian, σ 1) of the denoised image, both in units of the model's noise σ. A blur leaves
<code>−(σ²/2)·∇²signal</code> in the residual (0.3 or more on the demo plate); a denoiser that removes
only noise gives about 0.</dd>
<dt>residual var / model, worst bin</dt><dd>Residual power divided by the model's noise variance, per
intensity bin of the denoised image (8 quantile bins), worst bin. About 1 plus the relative MSE for a
blind-spot output; above 1 where signal was removed.</dd>
</dl>
<h3>No-reference measures (always)</h3>
<dl>
<dt>noise σ</dt><dd>Gaussian noise level estimated from the finest diagonal detail band of a db2
wavelet transform: <code>σ = median(|HH₁|) / 0.6745</code> (Donoho's MAD estimator, as in
scikit-image's <code>estimate_sigma</code>). Smooth signal barely enters this band, so σ tracks the
pixel noise; for Poisson (shot) noise it is a typical, not a per-pixel, level.</dd>
<dt>implied SNR gain</dt><dd><code>20·log10(σ_raw / σ_denoised)</code> dB, assuming the signal itself is
unchanged. Any smoothing lowers σ_denoised, a plain blur too (40–70 dB), so it is shown only beside
the estimated gain above, which a blur cannot fool.</dd>
<dt>residual std / noise σ raw</dt><dd>About 1 when the denoiser removed the noise and nothing else;
well above 1 means signal was removed too, well below 1 that noise was left. With shot (Poisson)
noise, σ raw is the level of the typical, mostly dim, pixel while the residual also holds the larger
noise of bright pixels, so values somewhat above 1 (about 1.1–1.4) are expected.</dd>
<dt>corr(residual, denoised)</dt><dd>Pearson correlation over pixels. Removed noise is uncorrelated
with the signal (about 0); a denoiser that removes or rescales signal gives a large |value|.</dd>
<dt>residual autocorr x / y</dt><dd>Lag-1 autocorrelation of the residual along x (columns) and y
(rows). A residual that is only noise has the noise model's own lag-1 correlation (about 0 for
pixel-independent noise, blind-spot networks give slightly less); the flag compares against the
model's value. Higher values mean the residual holds structure — edges of cells, or noise correlated
along rows or columns, for which structN2V's <code>struct_mask</code> is meant.</dd>
<dt>relative bias</dt><dd>Mean residual divided by the denoised image's 0.5–99.5 percentile range.</dd>
<dt>best validation loss</dt><dd>The model's lowest masked-pixel (N2V) loss on the held-out
validation patches, in normalised units; comparable between channels only roughly (it includes the
noise variance).</dd>
</dl>
"""

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em auto; max-width: 1500px; color: #222; padding: 0 1em; }
h1 { border-bottom: 2px solid #2b6cb0; padding-bottom: .2em; }
h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
div.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: 0.78em; }
th, td { border: 1px solid #ccc; padding: 2px 5px; text-align: right; }
th { background: #edf2f7; text-align: center; }
td.text { text-align: left; }
tr.flagged td { background: #fff5f5; }
td.bad { background: #fed7d7 !important; font-weight: bold; }
span.flag { display: inline-block; background: #c53030; color: white; border-radius: 3px; padding: 0 5px; margin: 1px; font-size: 0.9em; }
span.ok { color: #2f855a; }
img { max-width: 100%; border: 1px solid #ddd; }
figure { margin: 1em 0; }
figcaption { font-size: 0.85em; color: #555; }
nav a { margin-right: 1em; }
dt { font-weight: bold; margin-top: .4em; }
code { background: #f4f4f4; padding: 0 3px; }
.note { color: #555; font-size: 0.9em; }
"""

PAGE = Template(
    """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>$title</title>
<style>$css</style>
</head>
<body>
<h1>$title</h1>
<p class="note">Generated $generated by jump-n2v.</p>
<nav>$navigation</nav>
$body
</body>
</html>
"""
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


def _cell(value: Any, classes: Sequence[str] = ()) -> str:
    is_text = isinstance(value, str)
    names = list(classes) + (["text"] if is_text else [])
    attribute = f' class="{" ".join(names)}"' if names else ""
    return f"<td{attribute}>{html.escape(_format(value))}</td>"


def _flag_list(flags: Any) -> list[str]:
    if flags is None:
        return []
    if isinstance(flags, str):
        return [flag for flag in flags.split(";") if flag]
    return [str(flag) for flag in flags]


def _embed_png(path: str | os.PathLike, alt: str) -> str:
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise QCInputError(f"report: cannot read figure {path}: {error}") from error
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise QCInputError(f"report: figure {path} is not a PNG file")
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img src="data:image/png;base64,{encoded}" alt="{html.escape(alt)}">'


def _table(frame: pd.DataFrame, table_id: str) -> str:
    if frame.empty:
        return '<p class="note">None.</p>'
    header = "".join(f"<th>{html.escape(str(column))}</th>" for column in frame.columns)
    body = []
    for _, row in frame.iterrows():
        body.append("<tr>" + "".join(_cell(row[column]) for column in frame.columns) + "</tr>")
    return f'<div class="scroll"><table id="{table_id}"><thead><tr>{header}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _has_values(summary: pd.DataFrame, column: str) -> bool:
    return column in summary.columns and summary[column].notna().any()


def _summary_table(summary: pd.DataFrame) -> str:
    columns = [(name, header) for name, header in SUMMARY_COLUMNS if name == "flags" or _has_values(summary, name)]
    head = "".join(f"<th>{html.escape(header)}</th>" for _, header in columns)
    rows = []
    for _, record in summary.sort_values(["plate", "channel"]).iterrows():
        flags = _flag_list(record.get("flags"))
        bad_columns = {column for flag in flags for column in FLAG_COLUMNS.get(flag, ())}
        cells = []
        for name, _ in columns:
            if name == "flags":
                badges = "".join(f'<span class="flag">{html.escape(flag)}</span>' for flag in flags)
                cells.append(f'<td class="text">{badges or "<span class=ok>none</span>"}</td>')
            else:
                cells.append(_cell(record.get(name), ["bad"] if name in bad_columns else []))
        row_class = ' class="flagged"' if flags else ""
        rows.append(f"<tr{row_class}>{''.join(cells)}</tr>")
    return f'<div class="scroll"><table id="summary"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def _noise_model_section(summary: pd.DataFrame) -> str:
    columns = [(name, header) for name, header in NOISE_MODEL_TABLE if name in summary.columns]
    if not any(name == "noise_gain" for name, _ in columns) or not summary["noise_gain"].notna().any():
        return '<p class="note">No noise model was recorded.</p>'
    head = "".join(f"<th>{html.escape(header)}</th>" for _, header in columns)
    rows = []
    for _, record in summary.sort_values(["plate", "channel"]).iterrows():
        rows.append("<tr>" + "".join(_cell(record.get(name)) for name, _ in columns) + "</tr>")
    table = f'<div class="scroll"><table id="noise-models"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'
    encoded = base64.b64encode(noise_model_trends(summary)).decode("ascii")
    figure = (
        f'<figure><img id="noise-model-trends" src="data:image/png;base64,{encoded}" alt="noise model across plates">'
        "<figcaption>Fitted gain, read noise and lag-1 correlation per plate (x, sorted by name), one line per "
        "channel: a drifting camera or exposure shows as a trend.</figcaption></figure>"
    )
    return table + figure


def _flags_section(summary: pd.DataFrame, settings: Mapping[str, Mapping[str, Any]]) -> str:
    items = []
    for _, record in summary.sort_values(["plate", "channel"]).iterrows():
        for flag in _flag_list(record.get("flags")):
            threshold_key = FLAG_THRESHOLDS.get(flag)
            qc = (settings.get(record["channel"]) or {}).get("qc", {})
            threshold = f" (threshold {_format(qc[threshold_key])})" if threshold_key and threshold_key in qc else ""
            items.append(
                f"<li><b>{html.escape(str(record['plate']))} / {html.escape(str(record['channel']))}</b>: "
                f'<span class="flag">{html.escape(flag)}</span>{html.escape(threshold)} — '
                f"{html.escape(FLAG_DESCRIPTIONS.get(flag, ''))}</li>"
            )
    if not items:
        return '<p id="no-flags"><span class="ok">No flags raised.</span></p>'
    return f'<ul id="flags">{"".join(items)}</ul>'


def _model_summary(model_json: str | os.PathLike) -> str:
    try:
        info = json.loads(Path(model_json).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise QCInputError(f"report: cannot read model summary {model_json}: {error}") from error
    training = info.get("training", {})
    normalization = info.get("normalization", {})
    facts = {
        "model": str(model_json),
        "best validation loss": training.get("best_val_loss"),
        "best epoch": training.get("best_epoch"),
        "epochs run": training.get("epochs_run"),
        "steps": training.get("steps"),
        "training seconds": training.get("seconds"),
        "stopped early": training.get("stopped_early"),
        "normalisation mean": normalization.get("mean"),
        "normalisation std": normalization.get("std"),
        "seed": info.get("seed"),
        "software at training": ", ".join(f"{name} {version}" for name, version in sorted((info.get("versions") or {}).items())),
    }
    rows = "".join(f'<tr><th>{html.escape(key)}</th>{_cell(value)}</tr>' for key, value in facts.items())
    return f'<table class="model">{rows}</table>'


def _channel_sections(channel_artifacts: Sequence[Mapping[str, Any]]) -> tuple[str, list[str]]:
    by_channel: dict[str, list[Mapping[str, Any]]] = {}
    for artifact in channel_artifacts:
        missing = {"plate", "channel"} - set(artifact)
        if missing:
            raise QCInputError(f"report: a channel artifact lacks {sorted(missing)}: {dict(artifact)}")
        by_channel.setdefault(str(artifact["channel"]), []).append(artifact)
    parts, anchors = [], []
    for channel in sorted(by_channel):
        anchor = f"channel-{channel}"
        anchors.append(anchor)
        parts.append(f'<section id="{html.escape(anchor)}"><h2>Channel {html.escape(channel)}</h2>')
        for artifact in sorted(by_channel[channel], key=lambda item: str(item["plate"])):
            plate = str(artifact["plate"])
            parts.append(f"<h3>Plate {html.escape(plate)}</h3>")
            figures = (
                ("panels_png", "raw | denoised | residual (raw − denoised) for seeded sites; raw and denoised share one contrast stretch (1–99.8 percentiles of raw), the yellow box marks the zoomed crop"),
                ("plate_map_png", "plate map of the per-well mean of the chosen metric; grey wells have no image"),
                ("curve_png", "training and validation masked-pixel loss per epoch"),
            )
            for key, caption in figures:
                if artifact.get(key):
                    parts.append(
                        f"<figure>{_embed_png(artifact[key], f'{plate} {channel} {key}')}"
                        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
                    )
            if artifact.get("model_json"):
                parts.append(_model_summary(artifact["model_json"]))
        parts.append("</section>")
    return "\n".join(parts), anchors


def _settings_table(settings: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """One row per setting, one column per channel; rows where channels differ are marked."""
    channels = sorted(settings)
    if not channels:
        return '<p class="note">No settings given.</p>'
    keys = sorted({(section, key) for channel in channels for section, values in settings[channel].items() for key in values})
    head = "<th>setting</th>" + "".join(f"<th>{html.escape(channel)}</th>" for channel in channels)
    rows = []
    for section, key in keys:
        values = [settings[channel].get(section, {}).get(key, "–") for channel in channels]
        rendered = [json.dumps(value) if not isinstance(value, str) else value for value in values]
        differs = len(set(rendered)) > 1
        cells = "".join(f'<td class="text{" bad" if differs else ""}">{html.escape(text)}</td>' for text in rendered)
        rows.append(f'<tr><td class="text">{html.escape(section)}.{html.escape(key)}</td>{cells}</tr>')
    return f'<div class="scroll"><table id="settings"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


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
) -> None:
    """Write the experiment's self-contained QC report to ``out_html`` (atomically).

    Arguments:
        experiment: the experiment name (page title).
        summary_df: :func:`jump_n2v.qc.metrics.summarize` output (``flags`` as lists or ``;``-joined
            strings, so a re-read CSV works too).
        channel_artifacts: one mapping per (plate, channel) with keys ``plate``, ``channel`` and
            optionally ``panels_png``, ``plate_map_png``, ``curve_png`` (PNG paths, embedded) and
            ``model_json`` (path of the model.json whose training summary is shown).
        settings: channel -> resolved settings sections (``jump_n2v.config.channel_settings``), e.g.
            ``{"DNA": {"n2v": {...}, "predict": {...}, "qc": {...}}}``; the flag thresholds come from
            each channel's ``qc`` section.
        versions: software name -> version.
        rejects_df: images left out by ingest (columns plate, channel, file, problem; see
            :func:`read_rejects`), or None.
        out_html: the report path.
    """
    required = {"plate", "channel", "n_images", "flags"} - set(summary_df.columns)
    if required:
        raise QCInputError(f"report: the summary table lacks column(s) {sorted(required)}")
    channel_html, channel_anchors = _channel_sections(channel_artifacts)
    has_reference = _has_values(summary_df, "psnr_denoised_db_mean")
    reference_note = (
        "PSNR and SSIM are shown for plates with a clean reference."
        if has_reference
        else "No plate has a clean reference, so PSNR and SSIM are omitted (see the definitions)."
    )
    if rejects_df is None:
        rejects_df = pd.DataFrame(columns=["plate", "channel", "file", "problem"])
    body = "\n".join(
        [
            '<section id="flags-section"><h2>Flags</h2>',
            _flags_section(summary_df, settings),
            "</section>",
            '<section id="summary-section"><h2>Summary per plate and channel</h2>',
            f'<p class="note">{html.escape(reference_note)} Highlighted cells triggered a flag.</p>',
            _summary_table(summary_df),
            "</section>",
            '<section id="noise-model-section"><h2>Noise model per plate and channel</h2>',
            '<p class="note">Blind spot: the correlated-noise handling recorded in each model.json '
            "(<code>blind_spot</code>: pixel or region, its offsets, the setting and the evidence for it).</p>",
            _noise_model_section(summary_df),
            "</section>",
            '<section id="definitions"><h2>Metric definitions</h2>',
            DEFINITIONS,
            "<h3>Flags</h3><dl>"
            + "".join(f"<dt>{html.escape(name)}</dt><dd>{html.escape(text)}</dd>" for name, text in FLAG_DESCRIPTIONS.items())
            + "</dl>",
            "</section>",
            channel_html,
            '<section id="settings-section"><h2>Settings (resolved per channel)</h2>',
            '<p class="note">Highlighted rows differ between channels.</p>',
            _settings_table(settings),
            "</section>",
            '<section id="versions-section"><h2>Software versions</h2>',
            _table(pd.DataFrame(sorted(versions.items()), columns=["software", "version"]), "versions"),
            "</section>",
            f'<section id="rejects-section"><h2>Rejected images ({len(rejects_df)})</h2>',
            _table(rejects_df[["plate", "channel", "file", "problem"]], "rejects"),
            "</section>",
        ]
    )
    links = [("flags-section", "Flags"), ("summary-section", "Summary"), ("noise-model-section", "Noise model"), ("definitions", "Definitions")]
    links += [(anchor, anchor.removeprefix("channel-")) for anchor in channel_anchors]
    links += [("settings-section", "Settings"), ("versions-section", "Versions"), ("rejects-section", "Rejects")]
    navigation = "".join(f'<a href="#{html.escape(anchor)}">{html.escape(text)}</a>' for anchor, text in links)
    page = PAGE.substitute(
        title=html.escape(f"jump-n2v QC report: {experiment}"),
        css=CSS,
        generated=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        navigation=navigation,
        body=body,
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
) -> pd.DataFrame:
    """Summary tables and the HTML report of one experiment from the per-channel QC outputs.

    ``metrics_csvs`` are :func:`jump_n2v.qc.run_channel_qc` ``metrics.csv`` files; the noise_model.json
    beside each goes into the summary, the panels.png and plate_map.png are embedded. ``model_dirs`` maps (plate, channel) to the model folder
    (model.json and the training_curve.png that training drew). ``settings`` maps channel
    to its resolved settings sections (flag thresholds come from ``qc``). ``export_dirs`` maps
    (plate, channel) to the folder its TIFFs were exported to, whose clipping.csv gives the summary's
    export clipping columns. ``versions`` defaults to :func:`software_versions`. Returns the summary table.
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
        model_dir = model_dirs.get((artifact["plate"], artifact["channel"]))
        if model_dir is not None:
            # The train rule already drew this model's loss curves; plates sharing a model share it.
            artifact["curve_png"] = Path(model_dir) / "training_curve.png"
            artifact["model_json"] = Path(model_dir) / "model.json"
        artifacts.append(artifact)
    models = {key: load_model_info(directory) for key, directory in model_dirs.items()}
    rejects = read_rejects(rejects_csvs)
    summary = summarize(
        tables,
        models=models,
        qc_settings={channel: sections.get("qc") for channel, sections in settings.items()},
        noise_models=noise_models,
        rejected=rejects.groupby(["plate", "channel"]).size().to_dict(),
        clipping={key: read_export_clipping(Path(folder) / "clipping.csv") for key, folder in (export_dirs or {}).items()},
    )
    write_table(summary, summary_csv, summary_parquet)
    build_report(experiment, summary, artifacts, settings, versions or software_versions(), rejects, out_html)
    return summary
