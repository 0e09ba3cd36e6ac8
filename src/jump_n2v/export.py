"""Hand denoised images to downstream tools: per-image TIFFs and a CellProfiler LoadData CSV.

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
sources. Pixel values are those of the Zarr array (float32, or the source dtype with
``output_dtype: input``), uncompressed unless asked, so any TIFF reader opens them.

:func:`write_loaddata_csv` then writes a LoadData CSV with ``Metadata_Plate``, ``Metadata_Well``,
``Metadata_Site`` and ``FileName_Orig<CH>`` / ``PathName_Orig<CH>`` per channel pointing at the
exported files, so a CellProfiler pipeline built for the raw images runs on the denoised ones unchanged.
"""

from __future__ import annotations

import logging
import os
import posixpath
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import tifffile
import zarr

from jump_n2v.atomic import atomic_output
from jump_n2v.ingest.discover import read_index

LAYOUTS = ("flat", "mirror")



def _index_by_image(index_csv: str | os.PathLike, channels: Sequence[str]) -> pd.DataFrame:
    """The plate's index keyed by its integer image id (the arrays' ``image_ids``)."""
    return read_index(index_csv, channels).set_index("image", drop=False)


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


def _open_denoised(denoised_zarr: str | os.PathLike) -> tuple[zarr.Array, list[str], str]:
    path = Path(denoised_zarr)
    if not path.exists():
        raise FileNotFoundError(f"denoised Zarr array {path} does not exist")
    array = zarr.open_array(str(path), mode="r")
    image_ids = array.attrs.get("image_ids")
    channel = array.attrs.get("channel")
    if image_ids is None or channel is None:
        raise ValueError(f"{path}: the array's attributes lack 'image_ids' or 'channel'")
    if array.ndim != 3 or len(image_ids) != array.shape[0]:
        raise ValueError(
            f"{path}: expected an (images, Y, X) array with one image_ids entry per image, got shape "
            f"{array.shape} and {len(image_ids)} image_ids"
        )
    return array, [int(image) for image in image_ids], str(channel)


def export_tiffs(
    denoised_zarr: str | os.PathLike,
    index_csv: str | os.PathLike,
    out_dir: str | os.PathLike,
    layout: str = "flat",
    channel: str | None = None,
    *,
    compression: str | None = None,
    log: logging.Logger | None = None,
) -> dict[int, Path]:
    """Write every image of ``denoised_zarr`` as a TIFF under ``out_dir``; returns image id -> path.

    ``channel`` defaults to the array's ``channel`` attribute (and must match it when given). Images
    are read and written one at a time, each file atomically. ``compression`` is passed to tifffile
    (e.g. "zlib"); the default writes uncompressed files, which every reader supports.
    """
    array, image_ids, array_channel = _open_denoised(denoised_zarr)
    if channel is not None and channel != array_channel:
        raise ValueError(f"{denoised_zarr} holds channel {array_channel!r}, not {channel!r}")
    index = _index_by_image(index_csv, [array_channel])
    unknown = [image for image in image_ids if image not in index.index]
    if unknown:
        raise ValueError(f"{denoised_zarr}: image(s) {unknown[:5]} are not in the index table {index_csv}")
    paths = exported_paths(index, array_channel, out_dir, layout)
    sourceless = [image for image in image_ids if image not in paths]
    if sourceless:
        raise ValueError(f"{denoised_zarr}: image(s) {sourceless[:5]} have no source_{array_channel} file in {index_csv}")
    for row, image in enumerate(image_ids):
        path = paths[image]
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path) as temporary:
            # A plain TIFF: the ".tmp-" name has a TIFF suffix anyway, so tifffile picks no other format.
            tifffile.imwrite(temporary, np.asarray(array[row]), photometric="minisblack", compression=compression)
        if log is not None and (row + 1) % 500 == 0:
            log.info("exported %d/%d images of %s", row + 1, len(image_ids), array_channel)
    if log is not None:
        log.info("exported %d images of %s to %s", len(image_ids), array_channel, out_dir)
    return {image: paths[image] for image in image_ids}


def write_loaddata_csv(
    index_csv: str | os.PathLike,
    denoised_zarrs: Mapping[str, str | os.PathLike],
    out_dir: str | os.PathLike | Mapping[str, str | os.PathLike],
    layout: str,
    dst_path: str | os.PathLike,
) -> pd.DataFrame:
    """Write a CellProfiler LoadData CSV pointing at the TIFFs :func:`export_tiffs` wrote.

    ``denoised_zarrs`` maps each channel name to its denoised array; ``FileName_Orig<CH>`` and
    ``PathName_Orig<CH>`` (absolute folder) columns follow in that order after ``Metadata_Plate``,
    ``Metadata_Well`` and ``Metadata_Site``. Rows are the index's images present in every channel
    (an image rejected at ingest in any channel is left out, as CellProfiler needs all channels), in
    index order. ``out_dir`` is the folder :func:`export_tiffs` wrote to, or a mapping channel -> folder
    when each channel was exported to its own. Every referenced file must exist. Returns the table.
    """
    if not denoised_zarrs:
        raise ValueError("write_loaddata_csv: no channels given")
    channels = list(denoised_zarrs)
    index = _index_by_image(index_csv, channels)
    present = set(index.index)
    for channel, path in denoised_zarrs.items():
        _, image_ids, array_channel = _open_denoised(path)
        if array_channel != channel:
            raise ValueError(f"{path} holds channel {array_channel!r}, but was given as channel {channel!r}")
        present &= set(image_ids)
    rows = index[index["image"].isin(present)]
    table = pd.DataFrame(
        {"Metadata_Plate": rows["plate"], "Metadata_Well": rows["well"], "Metadata_Site": rows["site"]}
    )
    for channel in channels:
        folder = out_dir[channel] if isinstance(out_dir, Mapping) else out_dir
        paths = exported_paths(index, channel, folder, layout)
        files = [paths[image].resolve() for image in rows["image"]]
        missing = [str(file) for file in files if not file.is_file()]
        if missing:
            raise FileNotFoundError(
                f"write_loaddata_csv: {len(missing)} exported {channel} file(s) are missing, e.g. {missing[0]}; "
                "run export_tiffs for that channel first"
            )
        table[f"FileName_Orig{channel}"] = [file.name for file in files]
        table[f"PathName_Orig{channel}"] = [str(file.parent) for file in files]
    table = table.reset_index(drop=True)
    with atomic_output(dst_path) as temporary:
        table.to_csv(temporary, index=False)
    return table
