"""Per-image QC of one plate channel, streamed from its raw, denoised (and clean) Zarr arrays one image at a time."""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Mapping

import numpy as np
import pandas as pd
import zarr

from jump_n2v.ingest.discover import read_index
from jump_n2v.plumbing.ngff import open_channel_array
from jump_n2v.plumbing.rows import choose_rows
from jump_n2v.noise import NoiseModel, SiteNoiseModels, estimate_noise_model, estimate_site_noise_models
from jump_n2v.qc.files import QCInputError
from jump_n2v.qc.measures import NO_REFERENCE_METRICS, NOISE_MODEL_METRICS, REFERENCE_METRICS, image_metrics

# Per-image columns that identify the image rather than measure it.
ID_COLUMNS = ("experiment", "plate", "channel", "image", "well", "site", "row")


def open_zarr(array: zarr.Array | str | os.PathLike, role: str) -> tuple[zarr.Array, str]:
    """The array and a name for error messages (its path)."""
    if isinstance(array, zarr.Array):
        return array, f"{role} array {array.store_path}"
    try:
        return open_channel_array(array), str(array)
    except Exception as error:  # zarr raises several types for a missing/corrupt store
        raise QCInputError(f"cannot open {role} Zarr array {array}: {error}") from error


def array_image_ids(array: zarr.Array, where: str) -> list[str]:
    """The array's ``image_ids`` attribute as text, one per row; QCInputError naming ``where`` otherwise."""
    ids = array.attrs.get("image_ids")
    if ids is None:
        raise QCInputError(f"{where}: attribute 'image_ids' is missing")
    if len(ids) != array.shape[0]:
        raise QCInputError(f"{where}: 'image_ids' lists {len(ids)} images but the array has {array.shape[0]} rows")
    return [str(image) for image in ids]


def well_site_by_image(index: pd.DataFrame | str | os.PathLike | None) -> pd.DataFrame | None:
    """The image index (index.csv, read by ingest's reader, or its DataFrame) keyed by the image id as text,
    as the arrays' ``image_ids`` are read here, for each image's ``well`` and ``site``; None without one."""
    if index is None:
        return None
    if isinstance(index, pd.DataFrame):
        table, where = index, "index table"
    else:
        where = str(index)
        try:
            table = read_index(index)
        except ValueError as error:
            raise QCInputError(str(error)) from error
    missing = {"image", "well", "site"} - set(table.columns)
    if missing:
        raise QCInputError(f"{where}: missing column(s) {sorted(missing)}")
    table = table.assign(image=table["image"].astype(str))
    if table["image"].duplicated().any():
        duplicated = table.loc[table["image"].duplicated(), "image"].iloc[0]
        raise QCInputError(f"{where}: image {duplicated!r} appears more than once")
    return table.set_index("image")


def _noise_sample(raw: zarr.Array | str | os.PathLike, images: int, seed: int) -> tuple[list[np.ndarray], tuple | None, str]:
    """A seeded sample of at most ``images`` raw images, the array's ``dtype_range`` attribute (it marks
    clipped and saturated pixels) and the array's name for errors."""
    raw, where = open_zarr(raw, "raw")
    if raw.ndim != 3 or raw.shape[0] == 0:
        raise QCInputError(f"{where}: expected a non-empty (images, Y, X) array, got shape {raw.shape}")
    dtype_range = raw.attrs.get("dtype_range")
    sample = [np.asarray(raw[row]) for row in choose_rows(raw.shape[0], images, seed)]
    return sample, tuple(dtype_range) if dtype_range else None, where


def channel_noise_model(raw: zarr.Array | str | os.PathLike, images: int = 16, seed: int = 0) -> NoiseModel:
    """The noise model of one (plate, channel) on its own, fitted to a seeded sample of at most ``images``
    raw images. The workflow's QC uses :func:`plate_noise_models` instead: a textured channel alone reads
    its texture as correlated noise."""
    sample, dtype_range, where = _noise_sample(raw, images, seed)
    try:
        return estimate_noise_model(sample, dtype_range=dtype_range, seed=seed)
    except ValueError as error:
        raise QCInputError(f"{where}: cannot fit a noise model: {error}") from error


def plate_noise_models(
    raws: Mapping[str, zarr.Array | str | os.PathLike], images: Mapping[str, int], seed: int = 0
) -> SiteNoiseModels:
    """The noise models of one plate's channels with one pixel mixing, the camera's (see
    :func:`jump_n2v.noise.estimate_site_noise_models`): measured on the background of the channels where noise
    dominates, then every channel refitted with it, so a confluent stain's texture cannot read as correlated
    noise. ``raws`` maps channel -> raw array; ``images[channel]`` raw images of each (a seeded sample) are used.
    The site's note (which channels' background gave the mixing) is added to every channel's model notes."""
    samples, ranges, wheres = {}, set(), []
    for channel, raw in raws.items():
        samples[channel], dtype_range, where = _noise_sample(raw, images[channel], seed)
        ranges.add(dtype_range)
        wheres.append(where)
    try:
        site = estimate_site_noise_models(samples, dtype_range=ranges.pop() if len(ranges) == 1 else None, seed=seed)
    except ValueError as error:
        raise QCInputError(f"{', '.join(wheres)}: cannot fit the plate's noise models: {error}") from error
    models = {channel: dataclasses.replace(model, notes=model.notes + site.notes) for channel, model in site.models.items()}
    return dataclasses.replace(site, models=models)


def channel_metrics(
    raw: zarr.Array | str | os.PathLike,
    denoised: zarr.Array | str | os.PathLike,
    clean: zarr.Array | str | os.PathLike | None = None,
    index: pd.DataFrame | str | os.PathLike | None = None,
    noise_model: NoiseModel | None = None,
) -> pd.DataFrame:
    """Per-image metrics of one (plate, channel), one row per array row, read one image at a time.

    ``raw``, ``denoised`` and ``clean`` are Zarr arrays or their paths; rows are matched by the
    ``image_ids`` attribute (a clean image missing for a raw one leaves that row's reference metrics
    NaN). ``index`` (index.csv or its DataFrame) supplies ``well`` and ``site``. ``noise_model`` defaults
    to :func:`channel_noise_model` of ``raw``. Columns: ``ID_COLUMNS`` + ``NO_REFERENCE_METRICS`` +
    ``NOISE_MODEL_METRICS`` (+ ``REFERENCE_METRICS`` when ``clean`` is given).
    """
    raw, raw_where = open_zarr(raw, "raw")
    denoised, denoised_where = open_zarr(denoised, "denoised")
    if raw.ndim != 3:
        raise QCInputError(f"{raw_where}: expected (images, Y, X), got shape {raw.shape}")
    if raw.shape[0] == 0:
        raise QCInputError(f"{raw_where}: the array holds no images")
    if denoised.shape != raw.shape:
        raise QCInputError(f"{denoised_where}: shape {denoised.shape} differs from the raw array's {raw.shape}")
    raw_ids = array_image_ids(raw, raw_where)
    if array_image_ids(denoised, denoised_where) != raw_ids:
        raise QCInputError(f"{denoised_where}: 'image_ids' do not match the raw array's ({raw_where})")
    clean_rows: dict[str, int] = {}
    if clean is not None:
        clean, clean_where = open_zarr(clean, "clean")
        if clean.shape[1:] != raw.shape[1:]:
            raise QCInputError(f"{clean_where}: image shape {clean.shape[1:]} differs from the raw {raw.shape[1:]}")
        clean_rows = {image: row for row, image in enumerate(array_image_ids(clean, clean_where))}
    index_table = well_site_by_image(index)
    if noise_model is None:
        noise_model = channel_noise_model(raw)

    attrs = raw.attrs
    rows = []
    for row, image in enumerate(raw_ids):
        raw_image = np.asarray(raw[row])
        denoised_image = np.asarray(denoised[row])
        if not np.all(np.isfinite(denoised_image)):
            raise QCInputError(f"{denoised_where}: image {image!r} (row {row}) contains NaN or infinite values")
        clean_image = np.asarray(clean[clean_rows[image]]) if image in clean_rows else None
        record: dict[str, Any] = {
            "experiment": attrs.get("experiment"),
            "plate": attrs.get("plate"),
            "channel": attrs.get("channel"),
            "image": image,
            "well": None,
            "site": None,
            "row": row,
        }
        if index_table is not None:
            if image not in index_table.index:
                raise QCInputError(f"{raw_where}: image {image!r} is not in the index table")
            record["well"] = str(index_table.at[image, "well"])
            record["site"] = int(index_table.at[image, "site"])
        record.update(image_metrics(raw_image, denoised_image, clean_image, noise_model))
        if clean is not None and clean_image is None:
            record.update({name: math.nan for name in REFERENCE_METRICS})
        rows.append(record)
    columns = list(ID_COLUMNS) + list(NO_REFERENCE_METRICS) + list(NOISE_MODEL_METRICS) + (list(REFERENCE_METRICS) if clean is not None else [])
    table = pd.DataFrame.from_records(rows, columns=columns)
    return table.astype({"site": "Int64"})

