"""QC figures: raw | denoised | residual panels and plate maps (the loss curve is training's, jump_n2v.training_log). PNGs, written atomically.

Figures have fixed sizes in inches at ``DPI`` and are saved without tight bounding boxes, so their
pixel size is known in advance (:func:`panel_figure_size` etc.).
"""

from __future__ import annotations

import io
import os
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes; must precede pyplot

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import zarr  # noqa: E402
from matplotlib import pyplot as plt  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from jump_n2v.plumbing.atomic import atomic_output  # noqa: E402
from jump_n2v.plumbing.rows import choose_rows  # noqa: E402  (also QC's own sample, re-exported)
from jump_n2v.qc.channel import array_image_ids, open_zarr, well_site_by_image  # noqa: E402
from jump_n2v.qc.disagreement import disagreement_map, matched_rows, structure_mask  # noqa: E402
from jump_n2v.qc.files import QCInputError  # noqa: E402
from jump_n2v.noise import NoiseModel  # noqa: E402
from jump_n2v.plumbing.wells import parse_well, row_label  # noqa: E402

DPI = 100
PANEL_INCHES = 3.2  # side of one image panel
CONTRAST_PERCENTILES = (1.0, 99.8)  # of the raw image; the same stretch is used for the denoised one
RESIDUAL_PERCENTILE = 99.5  # of |residual|; the symmetric colour limit of the residual panel
PLATE_FIGURE_INCHES = {(16, 24): (9.0, 5.6), (32, 48): (14.0, 8.4)}


def _save(figure: plt.Figure, out_png: str | os.PathLike) -> None:
    try:
        with atomic_output(out_png) as temporary:
            figure.savefig(temporary, format="png", dpi=DPI)
    finally:
        plt.close(figure)


# --------------------------------------------------------------------------------------------------
# raw | denoised | residual panels


def _busiest_crop(image: np.ndarray, size: int) -> tuple[int, int, int]:
    """Top-left corner and side of the ``size`` crop, on a half-crop grid, with the most variance
    (so the zoom shows cells rather than empty background)."""
    height, width = image.shape
    size = min(size, height, width)
    step = max(size // 2, 1)
    best, best_variance = (0, 0), -1.0
    for top in range(0, height - size + 1, step):
        for left in range(0, width - size + 1, step):
            variance = float(image[top : top + size, left : left + size].var())
            if variance > best_variance:
                best, best_variance = (top, left), variance
    return best[0], best[1], size


def panel_figure_size(n_sites: int) -> tuple[int, int]:
    """Pixel (width, height) of :func:`channel_panels`' PNG for ``n_sites`` sites."""
    return round(3 * PANEL_INCHES * DPI), round(2 * n_sites * PANEL_INCHES * DPI)


def channel_panels(
    raw: zarr.Array | str | os.PathLike,
    denoised: zarr.Array | str | os.PathLike,
    out_png: str | os.PathLike,
    index: pd.DataFrame | str | os.PathLike | None = None,
    panel_sites: int = 3,
    crop_size: int = 128,
    seed: int = 0,
) -> list[str]:
    """Raw | denoised | residual for ``panel_sites`` seeded sites, each with a zoomed-crop row.

    Raw and denoised share one contrast stretch (``CONTRAST_PERCENTILES`` of the raw image); the
    residual ``raw - denoised`` uses a symmetric diverging map. Returns the image ids shown.
    """
    raw, raw_where = open_zarr(raw, "raw")
    denoised, denoised_where = open_zarr(denoised, "denoised")
    if denoised.shape != raw.shape:
        raise QCInputError(f"{denoised_where}: shape {denoised.shape} differs from the raw array's {raw.shape}")
    image_ids = array_image_ids(raw, raw_where)
    index_table = well_site_by_image(index)
    rows = choose_rows(raw.shape[0], panel_sites, seed)
    width, height = panel_figure_size(len(rows))
    figure, axes = plt.subplots(2 * len(rows), 3, figsize=(width / DPI, height / DPI), squeeze=False, layout="constrained")
    plate = raw.attrs.get("plate", "")
    channel = raw.attrs.get("channel", "")
    for position, row in enumerate(rows):
        image = image_ids[row]
        raw_image = np.asarray(raw[row], dtype=np.float64)
        denoised_image = np.asarray(denoised[row], dtype=np.float64)
        residual = raw_image - denoised_image
        low, high = np.percentile(raw_image, CONTRAST_PERCENTILES)
        if high <= low:
            high = low + 1.0
        limit = float(np.percentile(np.abs(residual), RESIDUAL_PERCENTILE)) or 1.0
        if index_table is not None and image in index_table.index:
            where = f"{plate} {index_table.at[image, 'well']} site {index_table.at[image, 'site']}"
        else:
            where = f"{plate} {image}"
        top, left, size = _busiest_crop(denoised_image, crop_size)
        crop = (slice(top, top + size), slice(left, left + size))
        for zoomed, axes_row in ((False, axes[2 * position]), (True, axes[2 * position + 1])):
            view = crop if zoomed else (slice(None), slice(None))
            suffix = f" (zoom {size}px)" if zoomed else ""
            panels = (
                ("raw", raw_image[view], dict(cmap="gray", vmin=low, vmax=high)),
                ("denoised", denoised_image[view], dict(cmap="gray", vmin=low, vmax=high)),
                ("residual raw-denoised", residual[view], dict(cmap="RdBu_r", vmin=-limit, vmax=limit)),
            )
            for ax, (name, data, style) in zip(axes_row, panels):
                ax.imshow(data, interpolation="nearest", **style)
                ax.set_title(f"{where} {channel}\n{name}{suffix}", fontsize=8)
                ax.set_axis_off()
                if not zoomed:
                    ax.add_patch(Rectangle((left - 0.5, top - 0.5), size, size, fill=False, edgecolor="yellow", lw=0.8))
    _save(figure, out_png)
    return [image_ids[row] for row in rows]


# --------------------------------------------------------------------------------------------------
# main | control | disagreement (qc.control_model)

DISAGREEMENT_LIMIT = 3.0  # noise sigmas at the ends of the disagreement map's colour scale


def disagreement_panels(
    denoised: zarr.Array | str | os.PathLike,
    control: zarr.Array | str | os.PathLike,
    noise_model: NoiseModel,
    out_png: str | os.PathLike,
    index: pd.DataFrame | str | os.PathLike | None = None,
) -> list[str]:
    """Main output | control output | (main - control) / sigma for every image the control denoised;
    both outputs share one contrast stretch, the map is clipped at +-DISAGREEMENT_LIMIT sigma and the
    structure the check judges is outlined. Returns the image ids shown."""
    denoised, control, pairs = matched_rows(denoised, control)
    index_table = well_site_by_image(index)
    width, height = panel_figure_size(len(pairs))
    figure, axes = plt.subplots(len(pairs), 3, figsize=(width / DPI, height / 2 / DPI), squeeze=False, layout="constrained")
    plate, channel = denoised.attrs.get("plate", ""), denoised.attrs.get("channel", "")
    for axes_row, (image, main_row, control_row) in zip(axes, pairs):
        main_image = np.asarray(denoised[main_row], dtype=np.float64)
        control_image = np.asarray(control[control_row], dtype=np.float64)
        low, high = np.percentile(main_image, CONTRAST_PERCENTILES)
        high = high if high > low else low + 1.0
        where = (f"{plate} {index_table.at[image, 'well']} site {index_table.at[image, 'site']}"
                 if index_table is not None and image in index_table.index else f"{plate} {image}")
        panels = (
            ("main model", main_image, dict(cmap="gray", vmin=low, vmax=high)),
            ("control model", control_image, dict(cmap="gray", vmin=low, vmax=high)),
            ("(main - control) / noise sigma", disagreement_map(main_image, control_image, noise_model),
             dict(cmap="RdBu_r", vmin=-DISAGREEMENT_LIMIT, vmax=DISAGREEMENT_LIMIT)),
        )
        for ax, (name, data, style) in zip(axes_row, panels):
            shown = ax.imshow(data, interpolation="nearest", **style)
            ax.set_title(f"{where} {channel}\n{name}", fontsize=8)
            ax.set_axis_off()
        axes_row[2].contour(structure_mask((main_image + control_image) / 2, noise_model), levels=[0.5], colors="black", linewidths=0.4)
        figure.colorbar(shown, ax=axes_row[2], shrink=0.8)
    _save(figure, out_png)
    return [image for image, _, _ in pairs]


# --------------------------------------------------------------------------------------------------
# Plate map


def plate_layout(wells: Sequence[str]) -> tuple[int, int]:
    """(rows, columns) of the plate: 384 wells (16 x 24) unless a well lies beyond P/24, then 1536 (32 x 48)."""
    positions = [parse_well(well) for well in wells]
    if all(row < 16 and column < 24 for row, column in positions):
        return 16, 24
    if all(row < 32 and column < 48 for row, column in positions):
        return 32, 48
    beyond = next(well for well, (row, column) in zip(wells, positions) if row >= 32 or column >= 48)
    raise ValueError(f"well {beyond!r} lies beyond a 1536-well plate (rows A-AF, columns 1-48)")


def plate_figure_size(layout: tuple[int, int]) -> tuple[int, int]:
    """Pixel (width, height) of :func:`plate_map`'s PNG for a plate layout."""
    inches = PLATE_FIGURE_INCHES[layout]
    return round(inches[0] * DPI), round(inches[1] * DPI)


def plate_map(metrics: pd.DataFrame, metric: str, out_png: str | os.PathLike, title: str = "") -> tuple[int, int]:
    """Wells coloured by ``metric`` averaged per well; wells without images grey. One plate per call.

    Returns the plate layout (rows, columns).
    """
    if metric not in metrics.columns:
        raise QCInputError(f"plate map: no per-image metric {metric!r}; available: {', '.join(map(str, metrics.columns))}")
    if metrics["plate"].nunique() > 1:
        raise QCInputError(f"plate map: metrics of several plates given ({sorted(metrics['plate'].unique())}); pass one plate")
    known = metrics.dropna(subset=["well"])
    if known.empty:
        raise QCInputError("plate map: no image has a well (was the index table passed to channel_metrics?)")
    layout = plate_layout(list(known["well"].unique()))
    grid = np.full(layout, np.nan)
    finite = known.assign(value=known[metric].replace([np.inf, -np.inf], np.nan))
    for well, value in finite.groupby("well")["value"].mean().items():
        grid[parse_well(well)] = value
    width, height = plate_figure_size(layout)
    figure, ax = plt.subplots(figsize=(width / DPI, height / DPI), layout="constrained")
    colours = matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")
    finite_values = grid[np.isfinite(grid)]
    low, high = (float(finite_values.min()), float(finite_values.max())) if finite_values.size else (0.0, 1.0)
    if high <= low:
        low, high = low - 0.5, high + 0.5
    shown = ax.imshow(np.ma.masked_invalid(grid), cmap=colours, vmin=low, vmax=high, interpolation="nearest")
    rows, columns = layout
    label_every = 1 if columns <= 24 else 2
    ax.set_xticks(range(0, columns, label_every), [str(c + 1) for c in range(0, columns, label_every)], fontsize=7)
    ax.set_yticks(range(0, rows, label_every), [row_label(r) for r in range(0, rows, label_every)], fontsize=7)
    ax.set_xticks(np.arange(-0.5, columns), minor=True)
    ax.set_yticks(np.arange(-0.5, rows), minor=True)
    ax.grid(which="minor", color="white", lw=0.5)
    ax.tick_params(which="minor", length=0)
    colourbar = figure.colorbar(shown, ax=ax, fraction=0.04, pad=0.01)
    colourbar.set_label(f"{metric} (mean per well; grey = no image)", fontsize=8)
    ax.set_title(title or metric, fontsize=10)
    _save(figure, out_png)
    return layout


# --------------------------------------------------------------------------------------------------
# Noise model across plates

NOISE_TREND_INCHES = (10.0, 3.2)
NOISE_TREND_PANELS = (("noise_gain", "gain (ADU per e⁻, per pixel)"), ("noise_read_sd", "read noise σ (ADU)"), ("noise_corr_x", "lag-1 correlation x"))


def noise_model_trends(summary: pd.DataFrame) -> bytes:
    """PNG bytes: gain, read noise and lag-1 correlation of the fitted noise model per plate (x, in
    order), one line per channel, so a drifting camera or exposure shows."""
    missing = {"plate", "channel"} | {name for name, _ in NOISE_TREND_PANELS}
    missing -= set(summary.columns)
    if missing:
        raise QCInputError(f"noise model trends: the summary lacks column(s) {sorted(missing)}")
    plates = sorted(summary["plate"].astype(str).unique())
    position = {plate: index for index, plate in enumerate(plates)}
    figure, axes = plt.subplots(1, len(NOISE_TREND_PANELS), figsize=NOISE_TREND_INCHES, dpi=DPI)
    for axis, (column, label) in zip(axes, NOISE_TREND_PANELS):
        for channel, group in summary.groupby("channel", sort=True):
            group = group.assign(x=group["plate"].astype(str).map(position)).sort_values("x")
            axis.plot(group["x"], group[column].astype(float), marker="o", label=str(channel))
        axis.set_title(label, fontsize=9)
        axis.set_xticks(range(len(plates)), plates, rotation=45, ha="right", fontsize=7)
        axis.tick_params(axis="y", labelsize=7)
    axes[0].legend(fontsize=7)
    figure.subplots_adjust(bottom=0.3, wspace=0.3, left=0.06, right=0.98)
    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format="png", dpi=DPI)
    finally:
        plt.close(figure)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------------
# Downstream segmentation


def segmentation_figure(
    images: dict[str, np.ndarray], labels: dict[str, np.ndarray], truth: np.ndarray, out_png: str | os.PathLike,
    crop_size: int = 128, title: str = "",
) -> tuple[int, int]:
    """One panel per source (raw | denoised | clean) of the same crop (the clean image's busiest), each
    with its segmented nuclei outlined in yellow and the true nuclei in cyan; all share the raw image's
    contrast stretch. Returns the PNG's pixel (width, height)."""
    from skimage.segmentation import find_boundaries

    clean = np.asarray(images["clean"], dtype=np.float64)
    top, left, size = _busiest_crop(clean, crop_size)
    crop = (slice(top, top + size), slice(left, left + size))
    low, high = np.percentile(np.asarray(images["raw"], dtype=np.float64), CONTRAST_PERCENTILES)
    width, height = round(len(images) * PANEL_INCHES * DPI), round(PANEL_INCHES * DPI)
    figure, axes = plt.subplots(1, len(images), figsize=(width / DPI, height / DPI), squeeze=False, layout="constrained")
    true_edges = find_boundaries(truth[crop], mode="inner")
    for ax, (source, image) in zip(axes[0], images.items()):
        ax.imshow(np.asarray(image, dtype=np.float64)[crop], cmap="gray", vmin=low, vmax=max(high, low + 1.0), interpolation="nearest")
        overlay = np.zeros((size, size, 4))
        overlay[true_edges] = (0.0, 1.0, 1.0, 0.8)
        overlay[find_boundaries(labels[source][crop], mode="inner")] = (1.0, 1.0, 0.0, 1.0)
        ax.imshow(overlay, interpolation="nearest")
        ax.set_title(f"{title}\n{source}: found (yellow), true (cyan)", fontsize=8)
        ax.set_axis_off()
    _save(figure, out_png)
    return width, height
