"""The one reader of a plate's denoised channel arrays and image index that every image export shares."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd
import zarr

from jump_n2v.ingest.discover import read_index
from jump_n2v.plumbing.ngff import open_channel_array


def index_by_image(index_csv: str | os.PathLike, channels: Sequence[str]) -> pd.DataFrame:
    """The plate's index keyed by its integer image id (the arrays' ``image_ids``), the ``image``
    column kept; ``channels`` must have their ``source_<CH>`` columns."""
    return read_index(index_csv, channels).set_index("image", drop=False)


def open_denoised(denoised_zarr: str | os.PathLike) -> tuple[zarr.Array, list[int], str]:
    """A denoised (images, Y, X) array, its integer image ids (one per image) and its channel name."""
    path = Path(denoised_zarr)
    if not path.exists():
        raise FileNotFoundError(f"denoised Zarr array {path} does not exist")
    array = open_channel_array(path)
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



def open_denoised_channels(denoised_zarrs: Mapping[str, str | os.PathLike]) -> dict[str, tuple[zarr.Array, list[int]]]:
    """Each channel's denoised array and image ids (:func:`open_denoised`), in the order given, each
    checked to hold the channel it is given as."""
    opened = {}
    for channel, path in denoised_zarrs.items():
        array, image_ids, array_channel = open_denoised(path)
        if array_channel != channel:
            raise ValueError(f"{path} holds channel {array_channel!r}, but was given as channel {channel!r}")
        opened[channel] = (array, image_ids)
    return opened


def check_images_indexed(denoised_zarr: str | os.PathLike, image_ids: Sequence[int], index: pd.DataFrame, index_csv) -> None:
    """ValueError naming the first images of ``image_ids`` (in their order) that ``index`` lacks."""
    unknown = [image for image in image_ids if image not in index.index]
    if unknown:
        raise ValueError(f"{denoised_zarr}: image(s) {unknown[:5]} are not in the index table {index_csv}")
