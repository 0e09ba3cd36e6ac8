"""The per-channel Zarr stores are OME-NGFF 0.5 images: read back with ome-zarr-py's reader (and checked
against the spec's models, ome-zarr-models) after the real split and the real prediction."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader
from ome_zarr_models.v05.image import Image

from jump_n2v.ingest.discover import discover_plate
from jump_n2v.ingest.split import split_channel
from jump_n2v.n2v.model import build_unet
from jump_n2v.plumbing.ngff import create_channel_array, open_channel_array
from jump_n2v.predict.arrays import predict_array

torch.set_num_threads(1)

CHANNELS = ["DNA", "ER"]
SHAPE = (20, 28)
PIXEL_SIZE_UM = 0.65


def write_plate(folder, count=3, pixel_size_um=PIXEL_SIZE_UM):
    """``count`` ImageJ CYX sites with the pixel size in their resolution tags; returns index and pixels."""
    folder.mkdir(parents=True)
    sites = []
    for number in range(count):
        planes = np.random.default_rng(number).integers(0, 4000, (len(CHANNELS), *SHAPE)).astype(np.uint16)
        extra = {"resolution": (1 / pixel_size_um, 1 / pixel_size_um)} if pixel_size_um else {}
        metadata = {"axes": "CYX", "Labels": CHANNELS, **({"unit": "um"} if pixel_size_um else {})}
        tifffile.imwrite(folder / f"A{number + 1:02d}_s1.tif", planes, imagej=True, metadata=metadata, **extra)
        sites.append(planes)
    index = discover_plate("P1", {"format": "hyperstack", "pattern": str(folder / "{well}_s{site}.tif")}, CHANNELS)
    return index, np.stack(sites)


def split(index, tmp_path, channel="ER"):
    out = tmp_path / "raw" / f"{channel}.zarr"
    split_channel(index, channel, experiment="e", plate="P1", plate_cfg={"format": "hyperstack"}, channel_order=None,
                  ingest=None, out_zarr=out, rejects_csv=tmp_path / "rejects" / f"{channel}.csv")
    return out


def read_image(path):
    """The image node ome-zarr-py's reader finds at ``path`` (the first node is the image itself)."""
    nodes = list(Reader(parse_url(str(path)))())
    return nodes[0]


def assert_channel_image(node, channel, pixel_size_um):
    axes = node.metadata["axes"]
    assert [axis["name"] for axis in axes] == ["image", "y", "x"]
    assert [axis.get("type") for axis in axes] == ["site", "space", "space"]
    assert [axis.get("unit") for axis in axes] == [None, "micrometer", "micrometer"]
    assert node.metadata["coordinateTransformations"] == [[{"type": "scale", "scale": [1.0, pixel_size_um, pixel_size_um]}]]
    assert node.metadata["channel_names"] == [channel]
    assert len(node.data) == 1  # one resolution level: a working store, no pyramid


def test_split_writes_an_ngff_image_the_ome_zarr_reader_opens_with_scale_and_channel(tmp_path):
    index, sites = write_plate(tmp_path / "tiffs")
    out = split(index, tmp_path)

    node = read_image(out)
    assert_channel_image(node, "ER", PIXEL_SIZE_UM)
    assert node.metadata["contrast_limits"] == [[0, 65535]]  # the uint16 range: no pass over the pixels for it
    np.testing.assert_array_equal(np.asarray(node.data[0]), sites[:, CHANNELS.index("ER")])
    # The workflow's own view is the same array, with its attributes.
    array = open_channel_array(out)
    assert array.attrs["channel"] == "ER" and array.attrs["image_ids"] == [0, 1, 2]
    assert array.attrs["pixel_size_um"] == pytest.approx(PIXEL_SIZE_UM)
    # Valid against the NGFF 0.5 models (pydantic), not only readable.
    image = Image.from_zarr(zarr.open_group(str(out), mode="r"))
    assert [axis.name for axis in image.attributes.ome.multiscales[0].axes] == ["image", "y", "x"]


def test_prediction_writes_an_ngff_image_with_the_source_scale_and_channel(tmp_path):
    index, _ = write_plate(tmp_path / "tiffs", count=2)
    raw = split(index, tmp_path, channel="DNA")
    denoised = tmp_path / "denoised" / "DNA.zarr"
    predict_array(build_unet(2, 8, "n2v").eval(), 2000.0, 1000.0, raw, denoised, {"device": "cpu"},
                  attrs={"model": "model.json"})

    node = read_image(denoised)
    assert_channel_image(node, "DNA", PIXEL_SIZE_UM)
    written = open_channel_array(denoised)
    assert written.attrs["model"] == "model.json" and written.attrs["image_ids"] == [0, 1]
    pixels = np.asarray(node.data[0])
    assert pixels.dtype == np.float32 and pixels.shape == (2, *SHAPE)
    np.testing.assert_array_equal(pixels, written[:])
    Image.from_zarr(zarr.open_group(str(denoised), mode="r"))


def test_without_a_pixel_size_the_axes_have_no_unit_and_scale_one(tmp_path):
    index, _ = write_plate(tmp_path / "tiffs", count=1, pixel_size_um=None)
    node = read_image(split(index, tmp_path))
    assert [axis.get("unit") for axis in node.metadata["axes"]] == [None, None, None]
    assert node.metadata["coordinateTransformations"] == [[{"type": "scale", "scale": [1.0, 1.0, 1.0]}]]
    assert node.metadata["channel_names"] == ["ER"]


def test_a_bare_array_from_an_earlier_version_still_opens(tmp_path):
    bare = zarr.create_array(store=str(tmp_path / "old.zarr"), shape=(2, 4, 4), dtype="uint8")
    bare[:] = 7
    assert open_channel_array(tmp_path / "old.zarr")[:].tolist() == bare[:].tolist()


def test_a_group_that_is_no_ngff_image_is_refused_by_name(tmp_path):
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    with pytest.raises(ValueError, match=r"plain\.zarr is a Zarr group without OME-NGFF multiscales"):
        open_channel_array(tmp_path / "plain.zarr")


def test_an_in_memory_store_holds_the_same_layout():
    array = create_channel_array(zarr.storage.MemoryStore(), shape=(1, 8, 8), chunks=(1, 8, 8), dtype="float32",
                                 attributes={"channel": "Mito", "pixel_size_um": 0.3})
    group = zarr.open_group(store=array.store, mode="r")
    assert group.attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 0.3, 0.3]
    assert group.attrs["ome"]["omero"]["channels"][0]["label"] == "Mito"
