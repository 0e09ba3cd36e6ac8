"""Export of denoised arrays to per-image TIFFs and a CellProfiler LoadData CSV."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import zarr

from jump_n2v.export.loaddata import write_loaddata_csv
from jump_n2v.export.tiff import convert_for_export, exported_name, export_tiffs, source_dtype
from jump_n2v.ingest.discover import discover_plate
from jump_n2v.ingest.discover import write_index as discover_write_index
from jump_n2v.ingest.readers import read_channel


def write_denoised(path, channel: str, image_ids: list[str], dtype=np.float32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    images = (rng.random((len(image_ids), 12, 10)) * 1000).astype(dtype)
    array = zarr.create_array(store=str(path), shape=images.shape, chunks=(1, 12, 10), dtype=dtype)
    array[:] = images
    array.attrs.update({"channel": channel, "image_ids": image_ids, "plate": "P1", "output_dtype": "float32"})
    return images


def write_index(path, rows: list[dict]) -> None:
    pd.DataFrame(rows).to_csv(path, index=False)


def loaddata_index(tmp_path):
    """Per-channel source files in per-well folders, as a LoadData or Phenix plate has."""
    rows = []
    for image, (well, site) in enumerate([("A01", 1), ("A01", 2), ("B03", 1)]):
        rows.append({
            "image": image, "plate": "P1", "well": well, "site": site,
            "source_DNA": f"/data/P1/{well}/{well}_s{site}_w1.tiff",
            "source_RNA": f"/data/P1/{well}/{well}_s{site}_w2.TIF",
        })
    write_index(tmp_path / "index.csv", rows)
    return rows


def test_exported_tiffs_keep_source_names_and_pixels(tmp_path):
    rows = loaddata_index(tmp_path)
    ids = [row["image"] for row in rows]
    images = write_denoised(tmp_path / "DNA.zarr", "DNA", ids)
    paths = export_tiffs(tmp_path / "DNA.zarr", tmp_path / "index.csv", tmp_path / "out", "flat")
    assert [p.name for p in paths.values()] == ["A01_s1_w1.tiff", "A01_s2_w1.tiff", "B03_s1_w1.tiff"]
    for row, image in enumerate(ids):
        assert paths[image].parent == tmp_path / "out"
        written = tifffile.imread(paths[image])
        assert written.dtype == np.float32
        np.testing.assert_array_equal(written, images[row])
    assert not list((tmp_path / "out").glob(".tmp-*"))


def test_mirror_layout_keeps_source_subfolders(tmp_path):
    rows = loaddata_index(tmp_path)
    write_denoised(tmp_path / "RNA.zarr", "RNA", [row["image"] for row in rows], dtype=np.uint16)
    paths = export_tiffs(tmp_path / "RNA.zarr", tmp_path / "index.csv", tmp_path / "out", "mirror")
    assert paths[2] == tmp_path / "out" / "B03" / "B03_s1_w2.TIF"
    assert tifffile.imread(paths[2]).dtype == np.uint16


def test_flat_layout_refuses_colliding_names(tmp_path):
    rows = [
        {"image": 0, "plate": "P1", "well": "A01", "site": 1, "source_DNA": "/x/A01/img.tif"},
        {"image": 1, "plate": "P1", "well": "A02", "site": 1, "source_DNA": "/x/A02/img.tif"},
    ]
    write_index(tmp_path / "index.csv", rows)
    write_denoised(tmp_path / "DNA.zarr", "DNA", [0, 1])
    with pytest.raises(ValueError, match="would both be written to .*use export_layout: mirror"):
        export_tiffs(tmp_path / "DNA.zarr", tmp_path / "index.csv", tmp_path / "out", "flat")
    paths = export_tiffs(tmp_path / "DNA.zarr", tmp_path / "index.csv", tmp_path / "out", "mirror")
    assert paths[0] != paths[1]


def test_hyperstack_sources_get_the_channel_in_the_name():
    assert exported_name("plate/A01_s1.tif", "DNA", shared=True) == "A01_s1_DNA.tif"
    assert exported_name("plate/A01_s1.ome.tiff", "AGP", shared=True) == "A01_s1_AGP.tiff"
    assert exported_name("s3://bucket/r01c01f01p01-ch1sk1fk1fl1.tiff", "DNA", shared=False) == "r01c01f01p01-ch1sk1fk1fl1.tiff"
    assert exported_name("plate/A01_s1_w1.png", "DNA", shared=False) == "A01_s1_w1.tiff"


def test_loaddata_csv_points_at_exported_files_of_images_present_in_every_channel(tmp_path):
    rows = loaddata_index(tmp_path)
    ids = [row["image"] for row in rows]
    write_denoised(tmp_path / "DNA.zarr", "DNA", ids)
    # The RNA image of B03 site 1 was rejected at ingest: CellProfiler needs every channel, so it goes.
    write_denoised(tmp_path / "RNA.zarr", "RNA", ids[:2])
    zarrs = {"DNA": tmp_path / "DNA.zarr", "RNA": tmp_path / "RNA.zarr"}
    for path in zarrs.values():
        export_tiffs(path, tmp_path / "index.csv", tmp_path / "out", "flat")
    table = write_loaddata_csv(tmp_path / "index.csv", zarrs, tmp_path / "out", "flat", tmp_path / "load_data.csv")
    written = pd.read_csv(tmp_path / "load_data.csv")
    assert list(written.columns) == [
        "Metadata_Plate", "Metadata_Well", "Metadata_Site",
        "FileName_OrigDNA", "PathName_OrigDNA", "FileName_OrigRNA", "PathName_OrigRNA",
    ]
    assert len(written) == len(table) == 2
    assert written["Metadata_Well"].tolist() == ["A01", "A01"] and written["Metadata_Site"].tolist() == [1, 2]
    for _, row in written.iterrows():
        for channel in ("DNA", "RNA"):
            file = tmp_path / "out" / row[f"FileName_Orig{channel}"]
            assert row[f"PathName_Orig{channel}"] == str((tmp_path / "out").resolve()) and file.is_file()


def test_loaddata_csv_refuses_missing_exports(tmp_path):
    rows = loaddata_index(tmp_path)
    write_denoised(tmp_path / "DNA.zarr", "DNA", [row["image"] for row in rows])
    with pytest.raises(FileNotFoundError, match="exported DNA file"):
        write_loaddata_csv(tmp_path / "index.csv", {"DNA": tmp_path / "DNA.zarr"}, tmp_path / "out", "flat", tmp_path / "ld.csv")
    assert not (tmp_path / "ld.csv").exists()


def test_bad_inputs_are_named(tmp_path):
    rows = loaddata_index(tmp_path)
    write_denoised(tmp_path / "DNA.zarr", "DNA", [0, 7, 2])
    with pytest.raises(ValueError, match=r"image\(s\) \[7\] are not in the index table"):
        export_tiffs(tmp_path / "DNA.zarr", tmp_path / "index.csv", tmp_path / "out")
    with pytest.raises(ValueError, match="holds channel 'DNA', not 'RNA'"):
        export_tiffs(tmp_path / "DNA.zarr", tmp_path / "index.csv", tmp_path / "out", channel="RNA")
    pd.DataFrame(rows).drop(columns=["source_DNA"]).to_csv(tmp_path / "bad.csv", index=False)
    write_denoised(tmp_path / "ok.zarr", "DNA", [row["image"] for row in rows])
    with pytest.raises(ValueError, match=r"bad.csv: not an image index .*missing column\(s\) \['source_DNA'\]"):
        export_tiffs(tmp_path / "ok.zarr", tmp_path / "bad.csv", tmp_path / "out")
    with pytest.raises(ValueError, match="unknown export layout 'nested'"):
        export_tiffs(tmp_path / "ok.zarr", tmp_path / "index.csv", tmp_path / "out", "nested")


def test_images_without_a_source_are_skipped_as_ingest_rejected_them(tmp_path):
    rows = loaddata_index(tmp_path)
    rows[1]["source_RNA"] = ""  # missing file: the image is absent from the RNA array
    write_index(tmp_path / "index.csv", rows)
    ids = [row["image"] for row in rows]
    write_denoised(tmp_path / "RNA.zarr", "RNA", [ids[0], ids[2]])
    paths = export_tiffs(tmp_path / "RNA.zarr", tmp_path / "index.csv", tmp_path / "out", "mirror")
    assert sorted(paths) == sorted([ids[0], ids[2]]) and all(path.is_file() for path in paths.values())


def test_hyperstack_plate_exports_one_file_per_channel_with_integer_image_ids(tmp_path):
    rows = [
        {"image": i, "plate": "P1", "well": "A01", "site": i + 1,
         "source_DNA": f"stacks/A01_s{i + 1}.tif", "source_RNA": f"stacks/A01_s{i + 1}.tif"}
        for i in range(2)
    ]
    write_index(tmp_path / "index.csv", rows)
    for seed, channel in enumerate(("DNA", "RNA")):
        images = write_denoised(tmp_path / f"{channel}.zarr", channel, [0, 1], seed=seed)
        zarr.open_array(str(tmp_path / f"{channel}.zarr"), mode="r+").attrs["image_ids"] = [0, 1]
        paths = export_tiffs(tmp_path / f"{channel}.zarr", tmp_path / "index.csv", tmp_path / channel)
        assert [p.name for p in paths.values()] == [f"A01_s1_{channel}.tif", f"A01_s2_{channel}.tif"]
        np.testing.assert_array_equal(tifffile.imread(paths[1]), images[1])
    # Each channel exported to its own folder; one LoadData CSV for CellProfiler covers both.
    table = write_loaddata_csv(
        tmp_path / "index.csv", {c: tmp_path / f"{c}.zarr" for c in ("DNA", "RNA")},
        {c: tmp_path / c for c in ("DNA", "RNA")}, "flat", tmp_path / "load_data.csv",
    )
    assert table["FileName_OrigRNA"].tolist() == ["A01_s1_RNA.tif", "A01_s2_RNA.tif"]
    assert table["PathName_OrigDNA"].tolist() == [str((tmp_path / "DNA").resolve())] * 2


# ---------------------------------------------------------------- source dtype, clipping, pixel size


def test_source_dtype_comes_from_the_array_or_its_recorded_range(tmp_path):
    write_denoised(tmp_path / "f.zarr", "DNA", [0])
    array = zarr.open_array(str(tmp_path / "f.zarr"), mode="r+")
    assert source_dtype(array) == np.float32  # no dtype_range: a float source
    array.attrs["dtype_range"] = [0, 65535]
    assert source_dtype(array) == np.uint16
    array.attrs["dtype_range"] = [-2147483648, 2147483647]
    assert source_dtype(array) == np.int32
    write_denoised(tmp_path / "u.zarr", "DNA", [0], dtype=np.uint8)
    assert source_dtype(zarr.open_array(str(tmp_path / "u.zarr"), mode="r")) == np.uint8


def test_integer_export_rounds_and_clips_and_counts_the_clipped_pixels():
    image = np.array([[-3.2, -0.4, 0.5, 1.5], [2.49, 65534.6, 65535.4, 70000.0]], dtype=np.float32)
    pixels, low, high = convert_for_export(image, np.uint16, "source")
    assert pixels.dtype == np.uint16
    assert pixels.tolist() == [[0, 0, 0, 2], [2, 65535, 65535, 65535]]
    assert (low, high) == (1, 1)  # -0.4 and 65535.4 round into the range, -3.2 and 70000 do not


@pytest.mark.parametrize("dtype", [np.int32, np.uint32, np.int64])
def test_integer_export_of_wide_dtypes_clips_without_wrapping_around(dtype):
    # float32 cannot hold 2**31 - 1: clipping in float32 and casting wraps int32's maximum to its minimum.
    info = np.iinfo(dtype)
    image = np.array([[3e19, -3e19, 1000.0]], dtype=np.float32)
    pixels, low, high = convert_for_export(image, dtype, "source")
    assert pixels.dtype == dtype
    assert pixels.tolist()[0][0] >= info.max - 2**11 and pixels[0, 0] > 0  # at (or a float64 step below) the maximum
    assert pixels[0, 1] == info.min and pixels[0, 2] == 1000 and (low, high) == (1, 1)


def test_float_export_is_on_cellprofilers_zero_to_one_scale():
    image = np.array([[-10.0, 0.0, 655.35, 65535.0, 70000.0]], dtype=np.float32)
    pixels, low, high = convert_for_export(image, np.uint16, "float32")
    assert pixels.dtype == np.float32
    np.testing.assert_allclose(pixels, [[0.0, 0.0, 0.01, 1.0, 1.0]], rtol=1e-6)
    assert (low, high) == (1, 1)


def test_float_sources_are_written_unchanged_and_bad_pixels_refused():
    image = np.array([[-1.5, 2.5]], dtype=np.float32)
    for export_dtype in ("source", "float32"):
        pixels, low, high = convert_for_export(image, np.float32, export_dtype)
        np.testing.assert_array_equal(pixels, image)
        assert (low, high) == (0, 0)
    with pytest.raises(ValueError, match="1 pixel.* not finite"):
        convert_for_export(np.array([[np.nan, 1.0]]), np.uint16, "source")
    with pytest.raises(ValueError, match="unknown export dtype 'uint16'"):
        convert_for_export(image, np.uint16, "uint16")


def test_export_defaults_to_the_source_dtype_with_a_clipping_table_and_the_pixel_size(tmp_path):
    rows = loaddata_index(tmp_path)
    ids = [row["image"] for row in rows]
    images = write_denoised(tmp_path / "DNA.zarr", "DNA", ids)
    images[1, 0, :3] = [-5.0, -7.0, 1e6]  # denoising can overshoot the source range
    array = zarr.open_array(str(tmp_path / "DNA.zarr"), mode="r+")
    array[1] = images[1]
    array.attrs.update({"dtype_range": [0, 65535], "pixel_size_um": 0.65})
    paths = export_tiffs(tmp_path / "DNA.zarr", tmp_path / "index.csv", tmp_path / "out", "flat")
    for row, image in enumerate(ids):
        written = read_channel(paths[image], "DNA")
        assert written.pixels.dtype == np.uint16 and written.pixel_size_um == 0.65
        np.testing.assert_array_equal(written.pixels, np.clip(np.rint(images[row]), 0, 65535).astype(np.uint16))
    clipping = pd.read_csv(tmp_path / "out" / "clipping.csv")
    assert clipping["file"].tolist() == [p.name for p in paths.values()]
    assert clipping["clipped_low"].tolist() == [0, 2, 0] and clipping["clipped_high"].tolist() == [0, 1, 0]
    assert (clipping["pixels"] == 120).all()

    float_paths = export_tiffs(tmp_path / "DNA.zarr", tmp_path / "index.csv", tmp_path / "f", "flat", export_dtype="float32")
    scaled = tifffile.imread(float_paths[ids[0]])
    assert scaled.dtype == np.float32 and 0 <= scaled.min() and scaled.max() <= 1
    np.testing.assert_allclose(scaled, np.clip(images[0] / 65535, 0, 1), rtol=1e-6)


# ---------------------------------------------------------------- LoadData plates: the input table itself


def gallery_table(tmp_path, plate="BR1", other_plate="BR2"):
    """A LoadData table in the Gallery's form: metadata, illumination functions, a Brightfield channel,
    a URL channel with a frame index, and a second plate's rows interleaved."""
    rows = []
    for position, (row_plate, well, site) in enumerate(
        [(plate, "B02", 1), (other_plate, "A01", 1), (plate, "A01", 2), (plate, "A01", 1)]
    ):
        rows.append({
            "Metadata_Source": "source_4", "Metadata_Batch": "2021_04_26_Batch1", "Metadata_Plate": row_plate,
            "Metadata_Well": well, "Metadata_Site": str(site), "Metadata_ChannelName_OrigDNA": "HOECHST 33342",
            "FileName_OrigDNA": f"{row_plate}_{well}_s{site}_w1.tiff", "PathName_OrigDNA": str(tmp_path / "images"),
            "FileName_OrigBrightfield": f"{row_plate}_{well}_s{site}_w6.tiff", "PathName_OrigBrightfield": str(tmp_path / "images"),
            "URL_OrigRNA": (tmp_path / "images" / f"{row_plate}_{well}_s{site}_w3.tiff").as_uri(), "Frame_OrigRNA": "2",
            "FileName_IllumDNA": f"{row_plate}_IllumDNA.npy", "PathName_IllumDNA": str(tmp_path / "illum"),
            "Metadata_Row": str(position),
        })
    return pd.DataFrame(rows)


def loaddata_plate(tmp_path, suffix=".csv.gz"):
    table = gallery_table(tmp_path)
    path = tmp_path / f"load_data{suffix}"
    table.to_csv(path, index=False)
    index = discover_plate("BR1", {"format": "loaddata", "load_data": str(path)}, ["DNA", "RNA"])
    discover_write_index(index, tmp_path / "index.csv")
    return table, path, index


def test_loaddata_export_is_the_input_table_with_only_the_denoised_file_columns_replaced(tmp_path):
    table, path, index = loaddata_plate(tmp_path)
    ids = index["image"].tolist()
    zarrs = {c: tmp_path / f"{c}.zarr" for c in ("DNA", "RNA")}
    folders = {c: tmp_path / "out" / c for c in zarrs}
    for seed, (channel, zarr_path) in enumerate(zarrs.items()):
        write_denoised(zarr_path, channel, ids, seed=seed)
        export_tiffs(zarr_path, tmp_path / "index.csv", folders[channel], "flat")
    write_loaddata_csv(tmp_path / "index.csv", zarrs, folders, "flat", tmp_path / "load_data.csv", source_table=path)
    written = pd.read_csv(tmp_path / "load_data.csv", dtype=str, keep_default_na=False)
    assert list(written.columns) == list(table.columns)
    expected = table[table["Metadata_Plate"] == "BR1"].reset_index(drop=True)  # this plate's rows, table order
    assert written["Metadata_Row"].tolist() == ["0", "2", "3"]
    untouched = [c for c in table.columns if c not in ("FileName_OrigDNA", "PathName_OrigDNA", "URL_OrigRNA", "Frame_OrigRNA")]
    pd.testing.assert_frame_equal(written[untouched], expected[untouched])
    dna = tifffile.imread(Path(written["PathName_OrigDNA"][0]) / written["FileName_OrigDNA"][0])
    np.testing.assert_array_equal(dna, zarr.open_array(str(zarrs["DNA"]), mode="r")[index.index[index.well == "B02"][0]])
    assert written["FileName_OrigDNA"].tolist() == expected["FileName_OrigDNA"].tolist()  # names are kept
    assert set(written["PathName_OrigDNA"]) == {str(folders["DNA"].resolve())}
    assert written["URL_OrigRNA"].tolist() == [(folders["RNA"].resolve() / Path(url).name).as_uri() for url in expected["URL_OrigRNA"]]
    assert (written["Frame_OrigRNA"] == "0").all()  # the exported file holds one plane
    # The exported table is itself a LoadData table this pipeline reads: same sites, denoised files.
    again = discover_plate("BR1", {"format": "loaddata", "load_data": str(tmp_path / "load_data.csv")}, ["DNA", "RNA"])
    assert again[["well", "site"]].equals(index[["well", "site"]])
    assert again["source_RNA"].map(lambda p: Path(p).parent == folders["RNA"].resolve()).all()


def test_loaddata_export_leaves_out_rejected_sites_loudly(tmp_path, caplog):
    _, path, index = loaddata_plate(tmp_path, suffix=".csv")
    ids = index["image"].tolist()
    rejected = int(index.loc[index.well == "B02", "image"].iloc[0])
    write_denoised(tmp_path / "DNA.zarr", "DNA", [image for image in ids if image != rejected])
    export_tiffs(tmp_path / "DNA.zarr", tmp_path / "index.csv", tmp_path / "out", "flat")
    with caplog.at_level("WARNING"):
        table = write_loaddata_csv(tmp_path / "index.csv", {"DNA": tmp_path / "DNA.zarr"}, tmp_path / "out", "flat",
                                   tmp_path / "load_data.csv", source_table=path)
    assert table["Metadata_Row"].tolist() == ["2", "3"]
    assert "1 of 3 site(s) LEFT OUT" in caplog.text and "B02 site 1" in caplog.text


def test_loaddata_export_refuses_a_table_that_changed_since_the_index(tmp_path):
    table, path, index = loaddata_plate(tmp_path, suffix=".csv")
    write_denoised(tmp_path / "DNA.zarr", "DNA", index["image"].tolist())
    export_tiffs(tmp_path / "DNA.zarr", tmp_path / "index.csv", tmp_path / "out", "flat")
    table.iloc[::-1].to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"data row 4 is not well A01 site 1 .*the table changed"):
        write_loaddata_csv(tmp_path / "index.csv", {"DNA": tmp_path / "DNA.zarr"}, tmp_path / "out", "flat",
                           tmp_path / "ld.csv", source_table=path)
    pd.read_csv(tmp_path / "index.csv").drop(columns="load_data_row").to_csv(tmp_path / "old_index.csv", index=False)
    with pytest.raises(ValueError, match="has no load_data_row column"):
        write_loaddata_csv(tmp_path / "old_index.csv", {"DNA": tmp_path / "DNA.zarr"}, tmp_path / "out", "flat",
                           tmp_path / "ld.csv", source_table=path)
    assert not (tmp_path / "ld.csv").exists()
