"""The per-channel Zarr stores (raw, clean, denoised) as OME-NGFF 0.5 images on Zarr v3.

Each ``{channel}.zarr`` is an NGFF image group, so ome-zarr-py's reader (which napari-ome-zarr is
built on) opens it with the plate's pixel size and the channel's name:

    {channel}.zarr/     group: "ome" metadata (version 0.5, multiscales: axes and scale; omero: channel label)
        0/              the (image, y, x) array, one row per site, carrying the workflow's attributes
                        (channel, plate, image_ids, pixel_size_um, dtype_range, ...)

The group has one resolution level only. NGFF allows that (a multiscales entry needs at least one
dataset), and these arrays are working stores read row by row by training, prediction and QC, never
browsed zoomed out; the optional HCS export (jump_n2v.export.ome_zarr) is the place for pyramids.

Only this module knows the layout: writers call :func:`create_channel_array` and
:func:`set_channel_attributes`, readers :func:`open_channel_array`. The NGFF metadata is always
derived from the array's own attributes (``channel``, ``pixel_size_um``, ``dtype_range``), so the two
agree as long as attributes change through :func:`set_channel_attributes`.
"""

from __future__ import annotations

import os
import posixpath
from typing import Any, Mapping

import zarr
from zarr.codecs import BloscCodec

NGFF_VERSION = "0.5"
# Every channel store's chunks (raw, clean, denoised): Blosc LZ4 with byte shuffle. On 1080 x 1080
# fields (benchmarks/bench_codecs.py, docs/benchmarks.md "Prediction pipeline: dask graph and codec") it encodes uint16 ~10x and float32 ~4x
# faster than zarr's default (zstd level 0 = 3) and decodes 2-6x faster, at about the same size
# (uint16) or smaller (float32): at the rates a GPU denoises, zstd's encoder was the bottleneck.
CHANNEL_CODEC = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")
FULL_RESOLUTION = "0"  # the path of the only dataset, relative to the image group
DIMENSION_NAMES = ("image", "y", "x")
# The first axis holds the plate's sites (the ``image`` column of index.csv), not time points, channels
# or z-planes, so it gets a custom type: NGFF 0.5 allows one axis "of type channel or a null / custom
# type" before the space axes, and the ome-zarr reader accepts one axis of an unknown type. Calling it
# "t" would make viewers show sites as a time series with a time unit.
IMAGE_AXIS = {"name": "image", "type": "site"}
SPACE_UNIT = "micrometer"
DISPLAY_COLOR = "FFFFFF"  # one channel per image: shown in grey


def create_channel_array(
    store: str | os.PathLike | zarr.abc.store.Store,
    *,
    shape: tuple[int, int, int],
    chunks: tuple[int, int, int],
    dtype: Any,
    attributes: Mapping[str, Any] | None = None,
    **array_options: Any,
) -> zarr.Array:
    """Create an NGFF image group at ``store`` (a path, e.g. an atomic_output temporary, or a zarr
    store) holding one empty (image, y, x) array; return that array. ``array_options`` go to
    ``zarr.create_array`` (fill_value, config ...; compressors default to CHANNEL_CODEC). Stores
    written with another codec (zarr's default zstd, before) read as before: zarr takes the codec
    from the array's metadata."""
    array_options.setdefault("compressors", [CHANNEL_CODEC])
    if len(shape) != len(DIMENSION_NAMES):
        raise ValueError(f"a channel array is (image, y, x), got shape {tuple(shape)}")
    group = zarr.open_group(store=str(store) if isinstance(store, (str, os.PathLike)) else store, mode="w")
    array = group.create_array(
        FULL_RESOLUTION, shape=shape, chunks=chunks, dtype=dtype, dimension_names=DIMENSION_NAMES, **array_options
    )
    set_channel_attributes(array, attributes or {})
    return array


def open_channel_array(path: str | os.PathLike, mode: str = "r") -> zarr.Array:
    """The (image, y, x) array of the channel store at ``path``.

    A bare Zarr array (the layout before the stores became NGFF images) is returned as it is, so a
    results folder written by an earlier version stays readable without splitting again.
    """
    node = zarr.open(store=str(path), mode=mode)
    if isinstance(node, zarr.Array):
        return node
    multiscales = node.attrs.get("ome", {}).get("multiscales")
    if not multiscales:
        raise ValueError(f"{path} is a Zarr group without OME-NGFF multiscales metadata, not a channel array")
    dataset = multiscales[0]["datasets"][0]["path"]  # the full resolution comes first (NGFF)
    array = node.get(dataset)
    if not isinstance(array, zarr.Array):
        raise ValueError(f"{path}: the NGFF image's first dataset {dataset!r} is not a Zarr array")
    return array


def set_channel_attributes(array: zarr.Array, attributes: Mapping[str, Any]) -> None:
    """Update the array's attributes and rewrite its image group's NGFF metadata from them: the scale
    in micrometres from ``pixel_size_um`` (no unit and scale 1 when it is null), the omero channel
    label from ``channel``, the display window from ``dtype_range`` when known."""
    array.attrs.update(dict(attributes))
    parent, name = posixpath.split(array.path)
    if name != FULL_RESOLUTION:
        raise ValueError(f"{array.store_path} is not the full-resolution array of an NGFF channel image")
    group = zarr.open_group(store=array.store, path=parent, mode="r+")
    group.attrs["ome"] = ngff_metadata(array.attrs.get("channel"), array.attrs.get("pixel_size_um"),
                                       array.attrs.get("dtype_range"))


def ngff_metadata(channel: str | None, pixel_size_um: float | None, dtype_range=None) -> dict[str, Any]:
    """The image group's "ome" attribute. Written here rather than with ome-zarr-py's writer, which
    would put ome-zarr (and, through it, scikit-image) into every rule's environment that reads these
    stores; the tests read it back with ome-zarr-py's reader and validate it with ome-zarr-models."""
    space = {"type": "space", "unit": SPACE_UNIT} if pixel_size_um is not None else {"type": "space"}
    size = float(pixel_size_um) if pixel_size_um is not None else 1.0
    multiscale = {
        "axes": [dict(IMAGE_AXIS), {"name": "y", **space}, {"name": "x", **space}],
        "datasets": [{"path": FULL_RESOLUTION, "coordinateTransformations": [{"type": "scale", "scale": [1.0, size, size]}]}],
    }
    metadata: dict[str, Any] = {"version": NGFF_VERSION, "multiscales": [multiscale]}
    if channel is not None:
        multiscale["name"] = str(channel)
        # omero lists one channel: the image has no c axis, the store is one channel.
        label: dict[str, Any] = {"label": str(channel), "color": DISPLAY_COLOR, "active": True}
        if dtype_range:
            low, high = (float(v) for v in dtype_range)
            label["window"] = {"min": low, "max": high, "start": low, "end": high}
        metadata["omero"] = {"channels": [label], "rdefs": {"model": "greyscale"}}
    return metadata
