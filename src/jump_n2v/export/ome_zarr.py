"""Export a plate's denoised channels as one OME-Zarr HCS plate (OME-NGFF 0.5 on Zarr v3).

The plate follows the NGFF high-content-screening layout, written with ome-zarr-py (the reference
writer), the layout napari (napari-ome-zarr), Fiji (MoBIE) and QuPath read:

    denoised_plate.ome.zarr/            plate metadata: rows, columns, wells, field_count
        B/2/                            one group per well (row letter / column number)
            0/ 1/ ...                   one image per field (site), in site order
                s0/ s1/ ...             resolution levels of a (c, y, x) array, channels together

Each field holds every exported channel in the order given, labelled in its ``omero`` channel
metadata; y and x carry the arrays' ``pixel_size_um`` as a scale in micrometres (or no unit when the
source had no pixel size). Resolution levels halve the image while its shorter side stays at least
``min_level_size`` pixels. Fields are read and written one at a time, so memory stays at one field
(all channels) whatever the plate size.

A site that is missing from any channel (rejected at ingest with ``on_bad_image: skip``) cannot be
a field with all channels; it is left out, logged, and listed under ``jump_n2v`` in the plate's
attributes together with the source arrays.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import zarr

from jump_n2v.plumbing.atomic import atomic_output
from jump_n2v.export.channels import check_images_indexed, index_by_image, open_denoised_channels
from jump_n2v.plumbing.wells import parse_well, row_label

# Display colours (RRGGBB) for the Cell Painting stains, as viewers usually show them; others cycle.
STAIN_COLORS = {"DNA": "0000FF", "ER": "00FF00", "RNA": "FFFF00", "AGP": "FF0000", "Mito": "FF00FF"}
OTHER_COLORS = ("00FFFF", "FF8000", "FFFFFF", "8000FF")
PIXEL_SIZE_TOLERANCE = 1e-6  # relative; pixel sizes of one plate's channels must agree


def split_well(well: str) -> tuple[str, int]:
    """("B", 3) for well "B03": the plate row name and the column number."""
    row, column = parse_well(well)
    return row_label(row), column + 1


def row_names_through(last_row: str) -> list[str]:
    """Plate row names from A up to ``last_row``: A..Z, then AA..AF for 1536-well plates."""
    last = parse_well(f"{last_row}1")[0]
    if last >= 52:
        raise ValueError(f"plate row {last_row!r} is beyond AZ")
    return [row_label(row) for row in range(last + 1)]


def resolution_factors(shape: tuple[int, int], min_level_size: int) -> list[int]:
    """Downsampling factors 2, 4, ... while the shorter image side stays >= ``min_level_size``."""
    factors, factor = [], 2
    while min(shape) // factor >= min_level_size:
        factors.append(factor)
        factor *= 2
    return factors


def _pixel_size(arrays: Mapping[str, zarr.Array]) -> float | None:
    sizes = {channel: array.attrs.get("pixel_size_um") for channel, array in arrays.items()}
    known = {channel: float(size) for channel, size in sizes.items() if size is not None}
    if not known:
        return None
    if len(known) != len(sizes):
        raise ValueError(f"pixel_size_um is missing for some channels of the plate: {sizes}")
    reference = next(iter(known.values()))
    if any(not math.isclose(size, reference, rel_tol=PIXEL_SIZE_TOLERANCE) for size in known.values()):
        raise ValueError(f"the plate's channels have different pixel_size_um: {known}")
    if not reference > 0:
        raise ValueError(f"pixel_size_um must be positive, got {reference}")
    return reference


def _display_windows(arrays: Mapping[str, zarr.Array], first_rows: Mapping[str, int]) -> dict[str, dict]:
    """omero display windows: the 0.1-99.9 percentile range of each channel's first field, within the
    source dtype's range when the array records one (else the field's min..max)."""
    windows = {}
    for channel, array in arrays.items():
        image = np.asarray(array[first_rows[channel]], dtype=np.float64)
        start, end = (float(v) for v in np.percentile(image, [0.1, 99.9]))
        dtype_range = array.attrs.get("dtype_range")
        low, high = (float(v) for v in dtype_range) if dtype_range else (float(image.min()), float(image.max()))
        windows[channel] = {"min": min(low, start), "max": max(high, end), "start": start, "end": max(end, start + 1e-6)}
    return windows


def _plate_arrays(denoised_zarrs: Mapping[str, str | os.PathLike]) -> tuple[dict, dict, tuple[int, int], float | None, np.dtype]:
    """Each channel's array and its row per image id, checked to share one image size and pixel size;
    with the size, the pixel size and the dtype every channel fits in."""
    opened = open_denoised_channels(denoised_zarrs)
    arrays = {channel: array for channel, (array, _) in opened.items()}
    rows_of = {channel: {image: row for row, image in enumerate(image_ids)} for channel, (_, image_ids) in opened.items()}
    shapes = {channel: tuple(array.shape[1:]) for channel, array in arrays.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"the plate's channels have different image sizes: {shapes}")
    pixel_size = _pixel_size(arrays)
    return arrays, rows_of, next(iter(shapes.values())), pixel_size, np.result_type(*(array.dtype for array in arrays.values()))


def _complete_images(index, rows_of: Mapping[str, Mapping[int, int]], denoised_zarrs, index_csv, log) -> tuple[list[int], dict[int, list[str]]]:
    """The index's images present in every channel (index order), and the others that some channel has,
    each with the channels that lack it (logged: they are left out)."""
    channels = list(rows_of)
    for channel, rows in rows_of.items():
        check_images_indexed(denoised_zarrs[channel], sorted(rows), index, index_csv)
    complete = [image for image in index["image"] if all(image in rows_of[c] for c in channels)]
    complete_set = set(complete)
    left_out = {
        int(image): [c for c in channels if image not in rows_of[c]]
        for image in index["image"] if image not in complete_set and any(image in rows_of[c] for c in channels)
    }
    if not complete:
        raise ValueError(f"no image of {index_csv} is present in every channel {channels}")
    if left_out and log is not None:
        log.warning("%d site(s) lack a channel and are left out of the OME-Zarr plate: %s",
                    len(left_out), dict(list(left_out.items())[:10]))
    return complete, left_out


def _fields_by_well(index, complete: Sequence[int]) -> dict[tuple[str, int], list[int]]:
    """(row name, column number) -> the well's image ids in site order: its fields."""
    fields: dict[tuple[str, int], list[int]] = {}
    for image in complete:
        row = index.loc[image]
        fields.setdefault(split_well(row["well"]), []).append(int(image))
    for well_images in fields.values():
        well_images.sort(key=lambda image: int(index.loc[image, "site"]))
    return fields


def _plate_grid(fields: Mapping[tuple[str, int], list[int]]) -> tuple[list[str], list[str], list[str]]:
    """The plate's row names, column names and well paths ("B/2"), rows A.. and columns 1.. up to the last used."""
    row_names = row_names_through(max((r for r, _ in fields), key=lambda r: (len(r), r)))
    column_names = [str(c) for c in range(1, max(c for _, c in fields) + 1)]
    well_paths = [f"{r}/{c}" for r, c in sorted(fields, key=lambda rc: (row_names.index(rc[0]), rc[1]))]
    return row_names, column_names, well_paths


def _omero(arrays: Mapping[str, zarr.Array], first_rows: Mapping[str, int]) -> dict:
    """The fields' ``omero`` metadata: each channel's label, colour and display window."""
    windows = _display_windows(arrays, first_rows)
    colors = iter(OTHER_COLORS * len(arrays))
    return {
        "channels": [
            {"label": c, "color": STAIN_COLORS.get(c) or next(colors), "active": True, "window": windows[c]}
            for c in arrays
        ],
        "rdefs": {"model": "color"},
    }


def _write_fields(root, fields, arrays, rows_of, dtype, image_options: dict, name: str, total: int, log) -> int:
    """Every well's metadata and fields (all channels stacked, one field in memory at a time); returns how many."""
    from ome_zarr.writer import write_image, write_well_metadata

    height, width = next(iter(arrays.values())).shape[1:]
    written = 0
    for (row_name, column), images in fields.items():
        well = root.require_group(f"{row_name}/{column}")
        write_well_metadata(well, [{"path": str(field)} for field in range(len(images))])
        for field, image in enumerate(images):
            stack = np.stack([np.asarray(arrays[c][rows_of[c][image]]).astype(dtype, copy=False) for c in arrays])
            write_image(
                stack, well.require_group(str(field)), axes=["c", "y", "x"], storage_options={"chunks": (1, height, width)},
                name=f"{name} {row_name}{column:02d} field {field}", **image_options,
            )
            written += 1
            if log is not None and written % 200 == 0:
                log.info("OME-Zarr plate: %d/%d fields written", written, total)
    return written


def write_hcs_plate(
    index_csv: str | os.PathLike,
    denoised_zarrs: Mapping[str, str | os.PathLike],
    dst_path: str | os.PathLike,
    *,
    plate_name: str | None = None,
    min_level_size: int = 256,
    log: logging.Logger | None = None,
) -> dict:
    """Write the denoised arrays of one plate (channel name -> (images, Y, X) Zarr array) as an OME-Zarr
    HCS plate at ``dst_path`` (atomically). Returns a summary: wells, fields, channels, pixel size and
    the images left out because a channel lacks them."""
    from ome_zarr.io import parse_url
    from ome_zarr.writer import write_plate_metadata

    if not denoised_zarrs:
        raise ValueError("write_hcs_plate: no channels given")
    channels = list(denoised_zarrs)
    arrays, rows_of, (height, width), pixel_size, dtype = _plate_arrays(denoised_zarrs)
    index = index_by_image(index_csv, channels)
    complete, left_out = _complete_images(index, rows_of, denoised_zarrs, index_csv, log)
    fields = _fields_by_well(index, complete)
    row_names, column_names, well_paths = _plate_grid(fields)
    factors = resolution_factors((height, width), min_level_size)
    image_options = {
        "scale_factors": factors,
        "scale": {"c": 1.0, "y": pixel_size or 1.0, "x": pixel_size or 1.0},
        "axes_units": {"y": "micrometer", "x": "micrometer"} if pixel_size else None,
        "omero": _omero(arrays, {channel: rows_of[channel][complete[0]] for channel in channels}),
    }
    name = plate_name or str(next(iter(index["plate"])))

    with atomic_output(dst_path) as temporary:
        root = zarr.open_group(parse_url(str(temporary), mode="w").store, mode="w")
        write_plate_metadata(
            root, row_names, column_names, well_paths, name=name,
            field_count=max(len(images) for images in fields.values()),
        )
        written = _write_fields(root, fields, arrays, rows_of, dtype, image_options, name, len(complete), log)
        root.attrs["jump_n2v"] = {
            "denoised_arrays": {c: str(Path(p)) for c, p in denoised_zarrs.items()},
            "image_ids": {f"{r}/{c}/{f}": image for (r, c), images in fields.items() for f, image in enumerate(images)},
            "left_out": {str(image): missing for image, missing in left_out.items()},
        }
    summary = {
        "wells": len(fields), "fields": written, "channels": channels, "pixel_size_um": pixel_size,
        "levels": 1 + len(factors), "left_out": left_out,
    }
    if log is not None:
        log.info("OME-Zarr plate %s: %d wells, %d fields, channels %s, pixel size %s um, %d resolution level(s)",
                 dst_path, summary["wells"], written, channels, pixel_size, summary["levels"])
    return summary
