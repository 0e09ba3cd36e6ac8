"""Export of denoised arrays to per-image TIFFs and a CellProfiler LoadData CSV."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
import zarr

from jump_n2v.export import exported_name, export_tiffs, write_loaddata_csv


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
