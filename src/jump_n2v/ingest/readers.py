"""Read one channel plane of one TIFF file, whatever the layout, and check it is a usable image.

Channels are always mapped by NAME: ImageJ ``Labels``, OME channel names, or the experiment's
``channel_order`` for files that carry no names (RGB/RGBA samples and unlabelled stacks included).
A multi-channel file with neither is an error, because picking a plane by position alone silently
swaps stains when an instrument or export changes its order.

Only the needed planes are decoded where the layout allows it: each ImageJ/OME plane is its own page,
and tiled files are read through tifffile's Zarr view, so one channel does not cost the whole file.
"""

from __future__ import annotations

import io
import math
import os
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

import numpy as np
import tifffile
import zarr

from jump_n2v.plumbing.storage import StorageError, is_remote, read_bytes, storage_settings

# tifffile axis codes that can hold channels: C (ImageJ/OME), S (RGB(A) or planar samples),
# Q and I (stacks whose meaning the file does not state).
CHANNEL_AXES = "CSQI"
TIME_AXIS = "T"
Z_AXIS = "Z"

# Lengths in these units, as ImageJ and OME write them, converted to micrometres.
UNIT_TO_UM = {
    "um": 1.0, "µm": 1.0, "μm": 1.0, "micron": 1.0, "microns": 1.0, "\\u00b5m": 1.0, "micrometer": 1.0,
    "nm": 1e-3, "nanometer": 1e-3, "mm": 1e3, "millimeter": 1e3, "cm": 1e4, "centimeter": 1e4,
    "m": 1e6, "meter": 1e6,
}
TIFF_RESOLUTION_UNIT_CENTIMETER = 3


class BadImageError(ValueError):
    """An image that cannot be used; ``path`` is the file and ``problem`` says what is wrong."""

    def __init__(self, path: str | os.PathLike | None, problem: str) -> None:
        self.path = "" if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path or '<no file>'}: {problem}")


class ChannelImage(NamedTuple):
    """One channel plane (2-D) and the pixel size in micrometres when the file states it."""

    pixels: np.ndarray
    pixel_size_um: float | None


def read_channel(
    path: str | os.PathLike,
    channel: str | None,
    *,
    channel_order: Sequence[str] | None = None,
    z_projection: str = "none",
    z_plane: int | None = None,
    time_point: int = 0,
    storage: Mapping | None = None,
) -> ChannelImage:
    """Read the plane of ``channel`` from the TIFF at ``path`` and check its pixel values.

    ``path`` may be an s3:// URL, downloaded whole with the plate's ``storage`` settings (the
    plate config's ``storage`` block; None: the defaults, anonymous).

    A file with a single channel plane (JUMP, Phenix: one file per channel) is returned whatever
    ``channel`` is (unless ``channel_order`` names several channels). Z stacks need
    ``z_projection="max"`` or ``z_plane``; ``time_point`` picks the time point of a T axis.
    Raises BadImageError naming the file and the problem.
    """
    if z_projection not in ("none", "max"):
        raise ValueError(f"z_projection must be 'none' or 'max', not {z_projection!r}")
    if is_remote(path):
        try:
            source = io.BytesIO(read_bytes(str(path), storage_settings({"storage": storage})))
        except StorageError as error:
            raise BadImageError(path, error.problem) from error
    else:
        path = source = Path(path)
        if not path.is_file():
            raise BadImageError(path, "file does not exist" if not path.exists() else "not a regular file")
    try:
        with tifffile.TiffFile(source) as tif:
            series = tif.series[0]
            selection, z_count = _plan_selection(
                path, tif, series, channel, channel_order, z_projection, z_plane, time_point
            )
            pixels = _read_selection(series, selection, z_count)
            pixel_size = _pixel_size_um(tif, series)
            if pixel_size is not None:
                # Resolutions are stored as rationals: 1/(20/13) should read 0.65, not 0.6499999999999999.
                pixel_size = float(f"{pixel_size:.6g}")
    except BadImageError:
        raise
    except Exception as error:  # tifffile/imagecodecs raise many types for damaged files
        raise BadImageError(path, f"cannot read the TIFF (corrupt or truncated?): {type(error).__name__}: {error}") from error
    check_pixels(pixels, path)
    return ChannelImage(pixels, pixel_size)


def check_pixels(pixels: np.ndarray, path: str | os.PathLike | None) -> None:
    """Raise BadImageError for pixel values that would poison training: non-finite or constant images."""
    if pixels.ndim != 2:
        raise BadImageError(path, f"expected a 2-D image, got shape {pixels.shape}")
    if pixels.size == 0:
        raise BadImageError(path, f"empty image of shape {pixels.shape}")
    if pixels.dtype.kind not in "uif":
        raise BadImageError(path, f"unsupported pixel type {pixels.dtype}; expected integers or floats")
    if pixels.dtype.kind == "f":
        finite = np.isfinite(pixels)
        if not finite.all():
            bad = int(pixels.size - np.count_nonzero(finite))
            raise BadImageError(path, f"{bad} pixel(s) are NaN or infinite")
    low, high = pixels.min(), pixels.max()
    if low == high:
        raise BadImageError(path, f"all pixels have the same value ({low.item()}): blank or failed acquisition")


def file_channel_names(tif: tifffile.TiffFile, series: tifffile.TiffPageSeries, channel_count: int) -> list[str] | None:
    """Channel names the file itself states (ImageJ Labels or OME Channel/@Name), else None."""
    if tif.is_ome and tif.ome_metadata:
        names = _ome_channel_names(tif.ome_metadata)
        if names is not None and len(names) == channel_count:
            return names
    if tif.is_imagej:
        labels = (tif.imagej_metadata or {}).get("Labels")
        # ImageJ labels are per plane (C varies fastest): the first C labels name the channels.
        if isinstance(labels, (list, tuple)) and len(labels) >= channel_count and len(labels) % channel_count == 0:
            names = [str(label).strip() for label in labels[:channel_count]]
            if all(names) and len(set(names)) == channel_count:
                return names
    return None


def _plan_selection(path, tif, series, channel, channel_order, z_projection, z_plane, time_point):
    """Index (one entry per series axis) that selects the wanted plane; Z left as a slice to project."""
    axes, shape = series.axes, series.shape
    if "Y" not in axes or "X" not in axes:
        raise BadImageError(path, f"unsupported axes {axes!r} (shape {shape}): no Y and X axes")
    selection: list[int | slice] = []
    channel_axis = None
    z_count = 1
    for position, (axis, length) in enumerate(zip(axes, shape)):
        if axis in "YX":
            selection.append(slice(None))
        elif length == 1:
            selection.append(0)
        elif axis in CHANNEL_AXES:
            if channel_axis is not None:
                raise BadImageError(
                    path, f"unsupported axes {axes!r} (shape {shape}): more than one channel-like axis"
                )
            channel_axis = position
            selection.append(0)  # filled in below
        elif axis == TIME_AXIS:
            if time_point >= length:
                raise BadImageError(path, f"ingest time_point is {time_point} but the file has {length} time points")
            selection.append(time_point)
        elif axis == Z_AXIS:
            if z_plane is not None and z_projection == "none":
                if z_plane >= length:
                    raise BadImageError(path, f"ingest z_plane is {z_plane} but the file has {length} Z planes")
                selection.append(z_plane)
            elif z_projection == "max":
                selection.append(slice(None))
                z_count = length
            else:
                raise BadImageError(
                    path,
                    f"the file has {length} Z planes: set the ingest setting z_plane (which plane) "
                    "or z_projection: max",
                )
        else:
            raise BadImageError(
                path, f"unsupported axes {axes!r} (shape {shape}): cannot interpret axis {axis!r} of length {length}"
            )
    if channel_axis is not None:
        selection[channel_axis] = _channel_index(
            path, tif, series, shape[channel_axis], channel, channel_order
        )
    elif channel_order and len(channel_order) > 1:
        # Names on a single plane are often slice or file labels, so they are not checked; but a
        # hyperstack described as several channels must hold several.
        raise BadImageError(
            path, f"the file has 1 channel plane (axes {axes!r}) but channel_order names {len(channel_order)}: "
            f"{list(channel_order)}"
        )
    return tuple(selection), z_count


def _channel_index(path, tif, series, count, channel, channel_order) -> int:
    names = file_channel_names(tif, series, count)
    source = "the file's channel names"
    if names is None:
        if not channel_order:
            raise BadImageError(
                path,
                f"the file has {count} channel planes (axes {series.axes!r}) but no channel names; set the "
                "experiment's channel_order to name them in file order (channels are mapped by name, never "
                "by position alone)",
            )
        if len(channel_order) != count:
            raise BadImageError(
                path,
                f"the file has {count} channel planes (axes {series.axes!r}) but channel_order names "
                f"{len(channel_order)}: {list(channel_order)}",
            )
        names = list(channel_order)
        source = "channel_order"
    if channel is None:
        raise BadImageError(path, f"the file has {count} channels {names}; say which one to read")
    if names.count(channel) > 1:
        raise BadImageError(path, f"channel {channel!r} appears {names.count(channel)} times in {source} {names}")
    if channel in names:
        return names.index(channel)
    # Labels are often typed by hand ("dna", "Mito"): a unique match ignoring case is the channel.
    folded = [index for index, name in enumerate(names) if str(name).casefold() == channel.casefold()]
    if len(folded) > 1:
        raise BadImageError(
            path, f"channel {channel!r} is ambiguous: {source} {names} hold {[names[i] for i in folded]}, "
            "which differ only in case",
        )
    if not folded:
        raise BadImageError(path, f"missing channel {channel!r}: {source} are {names}")
    return folded[0]


def _read_selection(series, selection: tuple, z_count: int) -> np.ndarray:
    if all(length == 1 for axis, length in zip(series.axes, series.shape) if axis not in "YX"):
        # The whole series is this one plane (plain 2-D file, or only length-1 extra axes).
        return series.asarray(maxworkers=1).reshape(_plane_shape(series))
    # Zarr view of the series: only the strips/tiles/pages covering the selection are decoded.
    with series.aszarr(maxworkers=1) as store:
        array = zarr.open_array(store, mode="r")
        if z_count == 1:
            return np.asarray(array[selection])
        z_position = next(i for i, item in enumerate(selection) if isinstance(item, slice) and series.axes[i] == Z_AXIS)
        projection = None
        for z in range(z_count):  # plane by plane so a deep stack never sits in memory at once
            index = list(selection)
            index[z_position] = z
            plane = np.asarray(array[tuple(index)])
            projection = plane if projection is None else np.maximum(projection, plane, out=projection)
        return projection


def _plane_shape(series) -> tuple[int, int]:
    return series.shape[series.axes.index("Y")], series.shape[series.axes.index("X")]


def plane_size(path: str | os.PathLike) -> tuple[int, int]:
    """The (height, width) of the local TIFF's image plane, read from its header alone.

    Taken from the series' Y and X axes, wherever they sit: an RGB(A) file is YXS, so its last two
    axes are height and samples. Raises BadImageError when the file cannot be read or has no Y/X axes.
    """
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            if "Y" not in series.axes or "X" not in series.axes:
                raise BadImageError(path, f"unsupported axes {series.axes!r} (shape {series.shape}): no Y and X axes")
            return _plane_shape(series)
    except BadImageError:
        raise
    except Exception as error:  # tifffile raises many types for damaged files
        raise BadImageError(path, f"cannot read the TIFF header: {type(error).__name__}: {error}") from error


def _ome_channel_names(ome_xml: str) -> list[str] | None:
    pixels = _ome_pixels_element(ome_xml)
    if pixels is None:
        return None
    names = [element.get("Name") for element in pixels if element.tag.endswith("}Channel") or element.tag == "Channel"]
    if not names or any(not name for name in names):
        return None
    return [name.strip() for name in names]


def _ome_pixels_element(ome_xml: str):
    try:
        root = ElementTree.fromstring(ome_xml)
    except ElementTree.ParseError:
        return None
    for element in root.iter():
        if element.tag.endswith("}Pixels") or element.tag == "Pixels":
            return element  # first image's Pixels: the series read is series[0]
    return None


def _pixel_size_um(tif: tifffile.TiffFile, series) -> float | None:
    """Pixel size from OME PhysicalSizeX or ImageJ resolution + unit; None when the file does not say."""
    if tif.is_ome and tif.ome_metadata:
        pixels = _ome_pixels_element(tif.ome_metadata)
        if pixels is not None and pixels.get("PhysicalSizeX"):
            factor = UNIT_TO_UM.get(pixels.get("PhysicalSizeXUnit", "µm").strip().lower())
            size = float(pixels.get("PhysicalSizeX"))
            if factor is not None and math.isfinite(size) and size > 0:
                return size * factor
    page = series.keyframe
    resolution = page.tags.get("XResolution")
    if resolution is None:
        return None
    numerator, denominator = resolution.value
    if not numerator or not denominator:
        return None
    pixels_per_unit = numerator / denominator
    if tif.is_imagej:
        unit = str((tif.imagej_metadata or {}).get("unit", "")).strip().lower()
        factor = UNIT_TO_UM.get(unit)
        return 1.0 / pixels_per_unit * factor if factor is not None else None
    unit_tag = page.tags.get("ResolutionUnit")
    # Plain TIFFs in inches usually carry a meaningless 72 dpi default, so only centimetres count.
    if unit_tag is not None and int(unit_tag.value) == TIFF_RESOLUTION_UNIT_CENTIMETER:
        return 1e4 / pixels_per_unit
    return None
