"""Export of a plate's denoised channels as an OME-Zarr HCS plate, read back with ome-zarr-py's reader."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader

from jump_n2v.export.ome_zarr import resolution_factors, row_names_through, split_well, write_hcs_plate

SITES = [("B02", 1), ("B02", 2), ("C03", 1), ("C03", 2), ("A01", 1)]


def write_plate(tmp_path, channels=("DNA", "Mito"), pixel_size_um=0.6, size=(24, 20), missing=None, dtype=np.float32):
    """index.csv and one denoised array per channel; ``missing`` = {channel: image id absent from its array}."""
    rows = [{"image": i, "plate": "P1", "well": w, "site": s, **{f"source_{c}": f"/d/{w}_s{s}.tif" for c in channels}}
            for i, (w, s) in enumerate(SITES)]
    pd.DataFrame(rows).to_csv(tmp_path / "index.csv", index=False)
    images, paths = {}, {}
    for k, channel in enumerate(channels):
        ids = [r["image"] for r in rows if (missing or {}).get(channel) != r["image"]]
        data = (np.random.default_rng(k).random((len(ids), *size)) * 1000).astype(dtype)
        path = tmp_path / f"{channel}.zarr"
        array = zarr.create_array(store=str(path), shape=data.shape, chunks=(1, *size), dtype=dtype)
        array[:] = data
        array.attrs.update({"channel": channel, "image_ids": ids, "plate": "P1", "pixel_size_um": pixel_size_um,
                            "dtype_range": None, "output_dtype": "float32"})
        images[channel] = dict(zip(ids, data))
        paths[channel] = path
    return rows, images, paths


def read_plate(path):
    nodes = list(Reader(parse_url(str(path)))())
    return nodes[0]


def test_plate_reads_back_with_pixels_channels_and_scale(tmp_path):
    rows, images, paths = write_plate(tmp_path)
    summary = write_hcs_plate(tmp_path / "index.csv", paths, tmp_path / "plate.ome.zarr", min_level_size=8)
    assert summary["wells"] == 3 and summary["fields"] == 5 and summary["left_out"] == {}

    plate = read_plate(tmp_path / "plate.ome.zarr")
    meta = plate.metadata["metadata"]["plate"]
    assert [r["name"] for r in meta["rows"]] == ["A", "B", "C"]
    assert [c["name"] for c in meta["columns"]] == ["1", "2", "3"]
    assert sorted(w["path"] for w in meta["wells"]) == ["A/1", "B/2", "C/3"]
    assert meta["field_count"] == 2

    # Each field on its own, through the standard reader: pixels, channel names, scale in micrometres.
    for row in rows:
        letter, column = row["well"][0], int(row["well"][1:])
        node = read_plate(tmp_path / "plate.ome.zarr" / letter / str(column) / str(row["site"] - 1))
        assert node.metadata["channel_names"] == ["DNA", "Mito"]
        assert [a["name"] for a in node.metadata["axes"]] == ["c", "y", "x"]
        assert node.metadata["axes"][1]["unit"] == "micrometer"
        full = np.asarray(node.data[0])
        assert full.shape == (2, 24, 20) and full.dtype == np.float32
        for c, channel in enumerate(["DNA", "Mito"]):
            np.testing.assert_array_equal(full[c], images[channel][row["image"]])
        scales = [t[0]["scale"] for t in node.metadata["coordinateTransformations"]]
        assert scales[0] == pytest.approx([1.0, 0.6, 0.6])
        assert len(node.data) == 2 and node.data[1].shape == (2, 12, 10)  # one halved level (min_level_size=8)
        assert scales[1] == pytest.approx([1.0, 1.2, 1.2])


def test_a_site_missing_from_one_channel_is_left_out_and_recorded(tmp_path, caplog):
    _, _, paths = write_plate(tmp_path, missing={"Mito": 3})
    summary = write_hcs_plate(tmp_path / "index.csv", paths, tmp_path / "plate.ome.zarr",
                              log=logging.getLogger("test"))
    assert summary["fields"] == 4 and summary["left_out"] == {3: ["Mito"]}
    assert "left out of the OME-Zarr plate" in caplog.text
    group = zarr.open_group(str(tmp_path / "plate.ome.zarr"), mode="r")
    assert group.attrs["jump_n2v"]["left_out"] == {"3": ["Mito"]}
    well = zarr.open_group(str(tmp_path / "plate.ome.zarr" / "C" / "3"), mode="r")
    assert [image["path"] for image in well.attrs["ome"]["well"]["images"]] == ["0"]


def test_without_pixel_size_the_axes_have_no_unit(tmp_path):
    _, _, paths = write_plate(tmp_path, channels=("DNA",), pixel_size_um=None)
    write_hcs_plate(tmp_path / "index.csv", paths, tmp_path / "plate.ome.zarr")
    node = read_plate(tmp_path / "plate.ome.zarr" / "B" / "2" / "0")
    assert "unit" not in node.metadata["axes"][1]
    assert node.metadata["coordinateTransformations"][0][0]["scale"] == pytest.approx([1.0, 1.0, 1.0])


def test_channels_with_different_pixel_sizes_are_refused(tmp_path):
    _, _, paths = write_plate(tmp_path)
    zarr.open_array(str(paths["Mito"]), mode="r+").attrs["pixel_size_um"] = 0.3
    with pytest.raises(ValueError, match="different pixel_size_um"):
        write_hcs_plate(tmp_path / "index.csv", paths, tmp_path / "plate.ome.zarr")
    assert not (tmp_path / "plate.ome.zarr").exists()


def test_plate_geometry_helpers():
    assert split_well("B03") == ("B", 3) and split_well("af48") == ("AF", 48)
    assert row_names_through("C") == ["A", "B", "C"] and row_names_through("AF")[-1] == "AF"
    assert resolution_factors((1080, 1080), 256) == [2, 4] and resolution_factors((64, 64), 256) == []
    with pytest.raises(ValueError, match="not a well name"):
        split_well("12")
