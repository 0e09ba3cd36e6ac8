"""Export a denoised channel as per-image TIFFs named after the source files, for CellProfiler and viewers.

Each denoised (images, Y, X) Zarr array is written as one single-channel TIFF per image, named after
the image's source file so that existing file-name conventions keep working:

* a source file holding only this channel (LoadData, Phenix) keeps its name, e.g.
  ``r01c01f01p01-ch1sk1fk1fl1.tiff``;
* a source file shared by several channels (a multi-channel hyperstack) gets the channel appended,
  ``A01_s1.tif`` -> ``A01_s1_DNA.tif``;
* sources that are not TIFFs get the ``.tiff`` suffix, and ``.ome.tif(f)`` loses ``.ome`` (the
  exported files carry no OME-XML, so an OME reader must not be chosen for them).

``layout`` "flat" puts every file directly in the export folder (two sources with the same name are
an error); "mirror" keeps each source's subfolders relative to the common parent of all the index's
sources. Files are uncompressed unless asked, so any TIFF reader opens them, and carry the array's
``pixel_size_um`` as TIFF resolution tags in pixels per centimetre (the standard TIFF unit, which
:mod:`jump_n2v.ingest.readers` reads back).

Pixel values (``export_dtype``, see :func:`convert_for_export`):

* ``source`` (default): the source images' integer dtype, rounded to the nearest integer and clipped
  to the dtype's range. CellProfiler divides an integer image by its dtype's maximum (uint16: 65535),
  so measurements on the denoised images are on the raw images' scale.
* ``float32``: float32 on CellProfiler's scale for the source dtype, ``(value - dtype_min) /
  (dtype_max - dtype_min)`` (uint16: ``value / 65535``), clipped to 0..1. CellProfiler keeps float
  images already in 0..1; it divides one with values above 1 by 2**32 - 1 and rescales one with
  negative values from the int32 range (a flat ~0.5), which is why raw-unit floats must not be exported.

Sources that were float images have no dtype maximum: their float32 values are written as they are.
The pixels pushed outside the range are counted per image in ``clipping.csv`` in the export folder
(image, well, site, file, pixels, clipped_low, clipped_high) and in the job log.

:mod:`jump_n2v.export.loaddata` writes the CellProfiler LoadData CSV that points at these files.
"""

from __future__ import annotations

import logging
import os
import posixpath
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
import zarr

from jump_n2v.plumbing.atomic import atomic_output
from jump_n2v.plumbing.dtypes import integer_bounds, integer_range
from jump_n2v.export.channels import check_images_indexed, index_by_image, open_denoised

LAYOUTS = ("flat", "mirror")
EXPORT_DTYPES = ("source", "float32")
CLIPPING_TABLE = "clipping.csv"
_INTEGER_DTYPES = tuple(np.dtype(name) for name in ("uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64"))


def _source_columns(index: pd.DataFrame) -> list[str]:
    return [column for column in index.columns if column.startswith("source_")]


def exported_name(source: str, channel: str, shared: bool) -> str:
    """File name of a denoised image exported from ``source`` (see the module docstring)."""
    name = posixpath.basename(str(source).replace("\\", "/"))
    lower = name.lower()
    for suffix in (".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if lower.endswith(suffix):
            stem, extension = name[: -len(suffix)], name[-len(suffix) :]
            if suffix.startswith(".ome"):
                extension = extension[4:]
            break
    else:
        stem, extension = os.path.splitext(name)[0], ".tiff"
    if not stem:
        raise ValueError(f"cannot name an exported file after source {source!r}: it has no file name")
    return f"{stem}_{channel}{extension}" if shared else f"{stem}{extension}"


def exported_paths(index: pd.DataFrame, channel: str, out_dir: str | os.PathLike, layout: str) -> dict[int, Path]:
    """Where each image of ``index`` (by its ``image`` id) is exported for ``channel``; images without a
    source file for the channel (empty cell) have none."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown export layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    out_dir = Path(out_dir)
    column = f"source_{channel}"
    others = [other for other in _source_columns(index) if other != column]
    if layout == "mirror":
        folders = {
            posixpath.dirname(str(s).replace("\\", "/")) for c in _source_columns(index) for s in index[c] if str(s)
        }
        root = posixpath.commonpath(sorted(folders)) if folders else ""
    paths: dict[int, Path] = {}
    seen: dict[Path, str] = {}
    for row in index.to_dict("records"):
        source = str(row[column])
        if not source:
            continue  # no file for this channel: ingest rejected the image, so it is not in the array
        shared = any(str(row[other]) == source for other in others)
        name = exported_name(source, channel, shared)
        if layout == "mirror":
            folder = posixpath.relpath(posixpath.dirname(source.replace("\\", "/")), root) if root else ""
            path = out_dir / folder / name
        else:
            path = out_dir / name
        if path in seen:
            raise ValueError(
                f"export layout {layout}: sources {seen[path]!r} and {source!r} would both be written to {path}"
                + ("; use export_layout: mirror to keep their folders apart" if layout == "flat" else "")
            )
        seen[path] = source
        paths[int(row["image"])] = path
    return paths


def source_dtype(array: zarr.Array) -> np.dtype:
    """The dtype of the images ``array`` was denoised from.

    An integer array (``output_dtype: input``) has it; a float32 one records the source's integer range
    in its ``dtype_range`` attribute (null for float sources, which gives float32).
    """
    if array.dtype.kind in "ui":
        return np.dtype(array.dtype)
    dtype_range = array.attrs.get("dtype_range")
    if dtype_range is None:
        return np.dtype(np.float32)
    for dtype in _INTEGER_DTYPES:
        if integer_range(dtype) == [int(bound) for bound in dtype_range]:
            return dtype
    raise ValueError(f"dtype_range {dtype_range} is the range of no integer dtype")


def convert_for_export(image: np.ndarray, source: np.dtype, export_dtype: str = "source") -> tuple[np.ndarray, int, int]:
    """``image`` as written to the TIFF, and how many pixels were clipped below and above the range.

    ``source`` is the raw images' dtype. For an integer source, ``export_dtype`` "source" rounds to the
    nearest integer and clips to the dtype's range; "float32" maps the dtype's range onto 0..1 (uint16:
    value / 65535), CellProfiler's scale for integer images, and clips to 0..1. A float source is written as float32 unchanged.
    The arithmetic is done in float64, which holds every int32/uint32 bound exactly (float32 rounds
    2**31 - 1 up to 2**31, which would wrap around when cast).
    """
    if export_dtype not in EXPORT_DTYPES:
        raise ValueError(f"unknown export dtype {export_dtype!r}; expected one of {', '.join(EXPORT_DTYPES)}")
    source = np.dtype(source)
    values = np.asarray(image)
    if source.kind not in "ui":
        return values.astype(np.float32, copy=False), 0, 0
    if export_dtype == "source" and values.dtype == source:
        return values, 0, 0  # already rounded and clipped by predict (output_dtype: input)
    minimum, maximum = integer_range(source)
    values = values.astype(np.float64)
    if not np.isfinite(values).all():
        raise ValueError(f"{np.count_nonzero(~np.isfinite(values))} pixel(s) are not finite numbers")
    if export_dtype == "source":
        np.rint(values, out=values)
        low, high = integer_bounds(source)
        target = source
    else:  # CellProfiler's scale for integer images: (value - dtype min) / (dtype max - dtype min)
        values -= minimum
        values /= float(maximum) - float(minimum)
        low, high, target = 0.0, 1.0, np.dtype(np.float32)
    clipped_low, clipped_high = int(np.count_nonzero(values < low)), int(np.count_nonzero(values > high))
    np.clip(values, low, high, out=values)
    return values.astype(target), clipped_low, clipped_high


def _resolution(pixel_size_um) -> dict:
    """tifffile arguments for the pixel size: pixels per centimetre, the standard TIFF unit."""
    if pixel_size_um is None or not float(pixel_size_um) > 0:
        return {}
    pixels_per_cm = 1e4 / float(pixel_size_um)
    return {"resolution": (pixels_per_cm, pixels_per_cm), "resolutionunit": "CENTIMETER"}


def export_tiffs(
    denoised_zarr: str | os.PathLike,
    index_csv: str | os.PathLike,
    out_dir: str | os.PathLike,
    layout: str = "flat",
    channel: str | None = None,
    *,
    export_dtype: str = "source",
    compression: str | None = None,
    log: logging.Logger | None = None,
) -> dict[int, Path]:
    """Write every image of ``denoised_zarr`` as a TIFF under ``out_dir``; returns image id -> path.

    ``channel`` defaults to the array's ``channel`` attribute (and must match it when given). Pixels
    are converted by :func:`convert_for_export` with ``export_dtype``; the clipped pixels of each image
    go to ``out_dir/clipping.csv``. Images are read and written one at a time, each file atomically.
    ``compression`` is passed to tifffile (e.g. "zlib"); the default writes uncompressed files, which
    every reader supports.
    """
    array, image_ids, array_channel = open_denoised(denoised_zarr)
    if channel is not None and channel != array_channel:
        raise ValueError(f"{denoised_zarr} holds channel {array_channel!r}, not {channel!r}")
    if export_dtype not in EXPORT_DTYPES:
        raise ValueError(f"unknown export dtype {export_dtype!r}; expected one of {', '.join(EXPORT_DTYPES)}")
    index = index_by_image(index_csv, [array_channel])
    check_images_indexed(denoised_zarr, image_ids, index, index_csv)
    paths = exported_paths(index, array_channel, out_dir, layout)
    sourceless = [image for image in image_ids if image not in paths]
    if sourceless:
        raise ValueError(f"{denoised_zarr}: image(s) {sourceless[:5]} have no source_{array_channel} file in {index_csv}")
    try:
        source = source_dtype(array)
    except ValueError as error:
        raise ValueError(f"{denoised_zarr}: {error}") from None
    resolution = _resolution(array.attrs.get("pixel_size_um"))
    clipping = []
    for row, image in enumerate(image_ids):
        path = paths[image]
        try:
            pixels, clipped_low, clipped_high = convert_for_export(array[row], source, export_dtype)
        except ValueError as error:
            raise ValueError(f"{denoised_zarr}, image {image} ({path.name}): {error}") from None
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path) as temporary:
            # A plain TIFF: the ".tmp-" name has a TIFF suffix anyway, so tifffile picks no other format.
            tifffile.imwrite(temporary, pixels, photometric="minisblack", compression=compression, **resolution)
        clipping.append({
            "image": image, "well": index.at[image, "well"], "site": index.at[image, "site"],
            "file": path.relative_to(out_dir).as_posix(), "pixels": int(pixels.size),
            "clipped_low": clipped_low, "clipped_high": clipped_high,
        })
        if log is not None and (row + 1) % 500 == 0:
            log.info("exported %d/%d images of %s", row + 1, len(image_ids), array_channel)
    table = pd.DataFrame(clipping, columns=["image", "well", "site", "file", "pixels", "clipped_low", "clipped_high"])
    with atomic_output(Path(out_dir) / CLIPPING_TABLE) as temporary:
        table.to_csv(temporary, index=False)
    if log is not None:
        written = pixels.dtype if image_ids else source
        total = max(int(table["pixels"].sum()), 1)
        low, high = int(table["clipped_low"].sum()), int(table["clipped_high"].sum())
        log.info(
            "exported %d images of %s to %s as %s (source %s, export_dtype %s, pixel size %s um); clipped %d pixels "
            "below and %d above the range (%.4f%% of %d), per image in %s",
            len(image_ids), array_channel, out_dir, written, source, export_dtype, array.attrs.get("pixel_size_um"),
            low, high, 100 * (low + high) / total, total, CLIPPING_TABLE,
        )
    return {image: paths[image] for image in image_ids}
