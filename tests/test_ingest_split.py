"""split_channel: Zarr contents and attributes, bad images under fail and skip, atomicity, bounded memory."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import tifffile
import zarr

from jump_n2v.ingest import split as split_module
from jump_n2v.ingest.discover import discover_plate
from jump_n2v.ingest.readers import BadImageError
from jump_n2v.ingest.split import chunk_shape, split_channel
from jump_n2v.plumbing.ngff import FULL_RESOLUTION, open_channel_array

CHANNELS = ["DNA", "ER", "RNA"]
SHAPE = (24, 32)


def site_planes(number: int, shape=SHAPE, dtype=np.uint16) -> np.ndarray:
    """Three distinct channel planes for site ``number`` (values encode site and channel)."""
    rng = np.random.default_rng(number)
    data = rng.integers(0, 100, (3, *shape)) + 1000 * np.arange(3)[:, None, None] + 10000 * (number % 5)
    return data.astype(dtype)


def hyperstack_plate(folder, count: int, *, labels=True) -> pd.DataFrame:
    """``count`` ImageJ CYX sites (wells A01, A02, ... one site each) and their index."""
    folder.mkdir(parents=True, exist_ok=True)
    for number in range(count):
        metadata = {"axes": "CYX", **({"Labels": CHANNELS} if labels else {})}
        tifffile.imwrite(folder / f"A{number + 1:02d}_s1.tif", site_planes(number), imagej=True, metadata=metadata,
                         compression="zlib")
    return discover_plate("P1", {"format": "hyperstack", "pattern": str(folder / "{well}_s{site}.tif")}, CHANNELS)


def run_split(index, tmp_path, *, channel="ER", skip=False, channel_order=None, fmt="hyperstack",
              max_rejected_fraction=1.0, **kwargs):
    """The split of ``channel``; by default any number of rejects is allowed (these plates are tiny)."""
    out = tmp_path / "results" / "raw" / f"{channel}.zarr"
    rejects = tmp_path / "results" / "rejects" / f"{channel}.csv"
    ingest = {"on_bad_image": "skip" if skip else "fail", "max_rejected_fraction": max_rejected_fraction}
    summary = split_channel(
        index, channel, experiment="exp", plate="P1", plate_cfg={"format": fmt}, channel_order=channel_order,
        ingest=ingest, out_zarr=out, rejects_csv=rejects, **kwargs,
    )
    return summary, out, rejects


def test_split_writes_the_channel_of_every_image_in_index_order(tmp_path):
    index = hyperstack_plate(tmp_path / "raw", 5)
    summary, out, rejects = run_split(index, tmp_path, channel="ER", threads=2)
    array = open_channel_array(out, mode="r")
    assert array.shape == (5, *SHAPE) and array.dtype == np.uint16 and array.chunks == (1, *SHAPE)
    for row in range(5):
        np.testing.assert_array_equal(array[row], site_planes(row)[1])
    assert dict(array.attrs) == {
        "channel": "ER", "plate": "P1", "experiment": "exp", "image_ids": [0, 1, 2, 3, 4],
        "source_format": "hyperstack", "pixel_size_um": None, "dtype_range": [0, 65535],
    }
    assert array.metadata.zarr_format == 3
    table = pd.read_csv(rejects)
    assert list(table.columns) == ["plate", "channel", "image", "well", "site", "file", "problem"] and table.empty
    assert (summary["kept"], summary["rejected"], summary["shape"]) == (5, 0, [5, *SHAPE])


def test_split_of_unlabelled_hyperstacks_uses_channel_order(tmp_path):
    index = hyperstack_plate(tmp_path / "raw", 2, labels=False)
    _, out, _ = run_split(index, tmp_path, channel="RNA", channel_order=["ER", "DNA", "RNA"])
    np.testing.assert_array_equal(open_channel_array(out)[1], site_planes(1)[2])


def test_split_of_loaddata_single_channel_files_keeps_float_dtype_and_pixel_size(tmp_path):
    folder = tmp_path / "plate 1" / "Images"
    folder.mkdir(parents=True)
    rows, expected = [], []
    for site in (1, 2, 3):
        data = site_planes(site, dtype=np.float32)[0] / 7
        expected.append(data)
        tifffile.imwrite(folder / f"s{site}.tiff", data, imagej=True, resolution=(2.0, 2.0), metadata={"unit": "um"})
        rows.append({"Metadata_Plate": "P1", "Metadata_Well": "B02", "Metadata_Site": site,
                     "FileName_OrigDNA": f"s{site}.tiff", "PathName_OrigDNA": "Images"})
    pd.DataFrame(rows).to_csv(tmp_path / "plate 1" / "load_data.csv", index=False)
    index = discover_plate("P1", {"format": "loaddata", "load_data": str(tmp_path / "plate 1" / "load_data.csv")}, ["DNA"])
    # The experiment's channel_order describes hyperstacks; one-channel LoadData files ignore it.
    _, out, _ = run_split(index, tmp_path, channel="DNA", fmt="loaddata", channel_order=CHANNELS)
    array = open_channel_array(out)
    assert array.dtype == np.float32
    np.testing.assert_array_equal(array[:], np.stack(expected))
    assert array.attrs["pixel_size_um"] == pytest.approx(0.5)
    assert array.attrs["dtype_range"] is None and array.attrs["source_format"] == "loaddata"


def test_large_images_are_tiled_and_read_back_exactly(tmp_path, monkeypatch):
    monkeypatch.setattr(split_module, "WHOLE_IMAGE_MAX_SIDE", 40)
    monkeypatch.setattr(split_module, "MAX_TILE_SIDE", 32)
    folder = tmp_path / "raw"
    folder.mkdir()
    expected = []
    for site in (1, 2):
        data = site_planes(site, shape=(70, 50))
        expected.append(data[0])
        tifffile.imwrite(folder / f"A01_s{site}.tif", data, imagej=True, metadata={"axes": "CYX", "Labels": CHANNELS})
    index = discover_plate("P1", {"format": "hyperstack", "pattern": str(folder / "{well}_s{site}.tif")}, CHANNELS)
    _, out, _ = run_split(index, tmp_path, channel="DNA")
    array = open_channel_array(out)
    assert array.chunks == (1, 24, 25)  # 70 -> 3 tiles of 24 (last partial), 50 -> 2 tiles of 25
    np.testing.assert_array_equal(array[:], np.stack(expected))


def test_chunk_shape_is_whole_image_for_jump_sizes_and_even_tiles_above():
    assert chunk_shape(1080, 1080) == (1, 1080, 1080)
    assert chunk_shape(2160, 2160) == (1, 2160, 2160)
    assert chunk_shape(5000, 3000) == (1, 1000, 1000)
    assert chunk_shape(4096, 2500) == (1, 1024, 834)


# Each bad case: (name, damage(folder, index) -> expected problem text). Image 2 (well A03) is damaged.
def _corrupt(folder, index):
    path = folder / "A03_s1.tif"
    path.write_bytes(path.read_bytes()[:200])
    return "cannot read the TIFF"


def _missing_channel(folder, index):
    tifffile.imwrite(folder / "A03_s1.tif", site_planes(2), imagej=True, metadata={"axes": "CYX", "Labels": ["DNA", "RNA", "AGP"]})
    return "missing channel 'ER'"


def _shape_differs(folder, index):
    tifffile.imwrite(folder / "A03_s1.tif", site_planes(2, shape=(24, 30)), imagej=True, metadata={"axes": "CYX", "Labels": CHANNELS})
    return "differs from the plate's majority"


def _dtype_differs(folder, index):
    tifffile.imwrite(folder / "A03_s1.tif", site_planes(2, dtype=np.float32), imagej=True, metadata={"axes": "CYX", "Labels": CHANNELS})
    return "float32 differs from the plate's majority"


def _missing_file(folder, index):
    (folder / "A03_s1.tif").unlink()
    return "does not exist"


def _not_finite(folder, index):
    data = site_planes(2, dtype=np.float32)
    data[1, 0, 0] = np.nan
    tifffile.imwrite(folder / "A03_s1.tif", data, imagej=True, metadata={"axes": "CYX", "Labels": CHANNELS})
    return "NaN or infinite"


def _constant(folder, index):
    data = site_planes(2)
    data[1] = 0
    tifffile.imwrite(folder / "A03_s1.tif", data, imagej=True, metadata={"axes": "CYX", "Labels": CHANNELS})
    return "same value (0)"


BAD_CASES = [_corrupt, _missing_channel, _shape_differs, _dtype_differs, _missing_file, _not_finite, _constant]


@pytest.mark.parametrize("damage", BAD_CASES, ids=lambda damage: damage.__name__.strip("_"))
def test_bad_image_fails_the_split_naming_the_file_and_problem(tmp_path, damage):
    folder = tmp_path / "raw"
    index = hyperstack_plate(folder, 5)
    problem = damage(folder, index)
    with pytest.raises(BadImageError) as caught:
        run_split(index, tmp_path, channel="ER")
    assert str(folder / "A03_s1.tif") in str(caught.value)
    assert problem in str(caught.value)
    assert "well A03 site 1" in str(caught.value)
    assert not (tmp_path / "results" / "raw" / "ER.zarr").exists()
    assert not any(path.name.startswith(".tmp-") for path in (tmp_path / "results" / "raw").iterdir())


@pytest.mark.parametrize("damage", BAD_CASES, ids=lambda damage: damage.__name__.strip("_"))
def test_bad_image_is_skipped_and_listed_in_the_rejects_table(tmp_path, damage):
    folder = tmp_path / "raw"
    index = hyperstack_plate(folder, 5)
    problem = damage(folder, index)
    summary, out, rejects = run_split(index, tmp_path, channel="ER", skip=True)
    array = open_channel_array(out)
    assert array.shape == (4, *SHAPE)
    assert array.attrs["image_ids"] == [0, 1, 3, 4]
    for row, image in enumerate([0, 1, 3, 4]):
        np.testing.assert_array_equal(array[row], site_planes(image)[1])
    table = pd.read_csv(rejects)
    assert len(table) == 1
    assert table.iloc[0][["plate", "channel", "image", "well", "site"]].tolist() == ["P1", "ER", 2, "A03", 1]
    assert table.iloc[0]["file"] == str(folder / "A03_s1.tif")
    assert problem in table.iloc[0]["problem"]
    assert (summary["kept"], summary["rejected"]) == (4, 1)


def test_first_image_bad_makes_the_next_good_one_the_reference(tmp_path):
    folder = tmp_path / "raw"
    index = hyperstack_plate(folder, 3)
    (folder / "A01_s1.tif").write_bytes(b"broken")
    _, out, rejects = run_split(index, tmp_path, skip=True)
    assert open_channel_array(out).attrs["image_ids"] == [1, 2]
    assert pd.read_csv(rejects).image.tolist() == [0]


def test_index_row_without_a_file_is_a_bad_image(tmp_path):
    index = hyperstack_plate(tmp_path / "raw", 3)
    index.loc[1, "source_ER"] = ""
    _, out, rejects = run_split(index, tmp_path, skip=True)
    assert open_channel_array(out).attrs["image_ids"] == [0, 2]
    assert "lists no file for channel ER" in pd.read_csv(rejects).problem[0]


def test_split_with_no_usable_image_fails_even_when_skipping(tmp_path):
    folder = tmp_path / "raw"
    index = hyperstack_plate(folder, 2)
    for path in folder.iterdir():
        path.write_bytes(b"broken")
    with pytest.raises(BadImageError, match="no usable image for channel ER of plate P1: all 2 rejected"):
        run_split(index, tmp_path, skip=True)
    assert not (tmp_path / "results" / "raw" / "ER.zarr").exists()
    assert len(pd.read_csv(tmp_path / "results" / "rejects" / "ER.csv")) == 2


def test_interrupted_split_leaves_no_complete_looking_array(tmp_path, monkeypatch):
    index = hyperstack_plate(tmp_path / "raw", 8)
    real_read = split_module.read_channel
    calls = []

    def read_then_interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt  # as when the job is killed mid-plate
        return real_read(*args, **kwargs)

    monkeypatch.setattr(split_module, "read_channel", read_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_split(index, tmp_path, threads=2)
    raw = tmp_path / "results" / "raw"
    assert not (raw / "ER.zarr").exists()
    assert list(raw.iterdir()) == []  # the temporary store is gone too
    assert not (tmp_path / "results" / "rejects" / "ER.csv").exists()


def test_progress_is_logged_to_a_callable_or_a_logger(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(split_module, "PROGRESS_SECONDS", 0.0)
    index = hyperstack_plate(tmp_path / "raw", 3)
    messages = []
    run_split(index, tmp_path, log=messages.append)
    assert any("1/3 images" in message and "MB/s" in message for message in messages)
    with caplog.at_level(logging.INFO, logger="rule"):
        run_split(index, tmp_path, log=logging.getLogger("rule"))
    assert any("2/3 images" in record.getMessage() for record in caplog.records)


MEMORY_PROBE = textwrap.dedent(
    """
    import sys, tracemalloc
    import numpy as np, tifffile
    from pathlib import Path
    from jump_n2v.ingest.discover import discover_plate
    from jump_n2v.ingest.split import split_channel

    folder, count = Path(sys.argv[1]), int(sys.argv[2])
    (folder / "raw").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for number in range(count):
        tifffile.imwrite(folder / "raw" / f"A{number // 9 + 1:02d}_s{number % 9 + 1}.tif",
                         rng.integers(0, 4000, (256, 256), dtype=np.uint16), compression="zlib")
    index = discover_plate("P", {"format": "hyperstack", "pattern": str(folder / "raw" / "{well}_s{site}.tif")}, ["DNA"])
    tracemalloc.start()
    split_channel(index, "DNA", experiment="e", plate="P", plate_cfg={"format": "hyperstack"}, channel_order=None,
                  ingest={}, out_zarr=folder / "DNA.zarr", rejects_csv=folder / "DNA.csv", threads=2)
    print(tracemalloc.get_traced_memory()[1])
    """
)


def test_split_peak_memory_does_not_grow_with_the_number_of_images(tmp_path):
    peaks = {}
    for count in (8, 48):
        result = subprocess.run(
            [sys.executable, "-c", MEMORY_PROBE, str(tmp_path / str(count)), str(count)],
            capture_output=True, text=True, check=True,
        )
        peaks[count] = int(result.stdout.strip().splitlines()[-1])
    image_bytes = 256 * 256 * 2
    # Holding every image would add 40 images (5.2 MB) to the peak; allow a few images of jitter.
    assert peaks[48] < peaks[8] + 8 * image_bytes, peaks


def test_index_read_back_with_plain_read_csv_still_splits(tmp_path):
    # pd.read_csv turns an empty source cell into NaN; it must stay "no file", not become a path.
    index = hyperstack_plate(tmp_path / "raw", 3)
    index.loc[1, "source_ER"] = ""
    index.to_csv(tmp_path / "index.csv", index=False)
    _, out, rejects = run_split(pd.read_csv(tmp_path / "index.csv"), tmp_path, skip=True)
    assert open_channel_array(out).attrs["image_ids"] == [0, 2]
    assert pd.read_csv(rejects).file.isna().all()  # no file to name


@pytest.mark.parametrize("dtype", ["uint8", "<u2", ">u2", "int16", "float32"])
@pytest.mark.parametrize("compressor", ["blosc", "zstd"], ids=["chunk-files", "through-zarr"])
def test_stored_pixels_read_back_exactly_for_each_dtype_and_writer(tmp_path, monkeypatch, dtype, compressor):
    if compressor == "zstd":  # a codec the direct chunk-file writer does not handle: zarr writes
        monkeypatch.setattr(split_module, "COMPRESSOR", zarr.codecs.ZstdCodec(level=1))
    folder = tmp_path / "raw"
    folder.mkdir()
    expected = []
    for site in (1, 2, 3):
        data = site_planes(site)[0].astype(np.float64)
        data = (data / data.max() * 200 - (50 if dtype == "int16" else 0)).astype(dtype)
        expected.append(data)
        tifffile.imwrite(folder / f"A01_s{site}.tif", data, byteorder=">" if dtype == ">u2" else "<")
    index = discover_plate("P1", {"format": "hyperstack", "pattern": str(folder / "{well}_s{site}.tif")}, ["DNA"])
    _, out, _ = run_split(index, tmp_path, channel="DNA")
    array = open_channel_array(out)
    assert array.dtype == np.dtype(dtype).newbyteorder("=")
    np.testing.assert_array_equal(array[:], np.stack(expected))


def test_an_odd_first_site_is_judged_against_the_plates_majority(tmp_path):
    # The first site used to be the reference: every good image was rejected and the run trained on one.
    folder = tmp_path / "raw"
    index = hyperstack_plate(folder, 5)
    tifffile.imwrite(folder / "A01_s1.tif", site_planes(0, shape=(24, 30)), imagej=True, metadata={"axes": "CYX", "Labels": CHANNELS})
    summary, out, rejects = run_split(index, tmp_path, skip=True)
    array = open_channel_array(out, mode="r")
    assert array.shape == (4, *SHAPE) and array.attrs["image_ids"] == [1, 2, 3, 4]
    for row, image in enumerate([1, 2, 3, 4]):
        np.testing.assert_array_equal(array[row], site_planes(image)[1])
    table = pd.read_csv(rejects)
    assert table.file.tolist() == [str(folder / "A01_s1.tif")]
    assert "differs from the plate's majority (24, 32) uint16 (4 of 5 images" in table.problem[0]
    assert summary["kept"] == 4
    assert sorted(path.name for path in out.iterdir()) == [FULL_RESOLUTION, "zarr.json"]  # no group arrays left inside


def test_with_fail_an_odd_first_site_is_the_file_named(tmp_path):
    folder = tmp_path / "raw"
    index = hyperstack_plate(folder, 5)
    tifffile.imwrite(folder / "A01_s1.tif", site_planes(0, dtype=np.float32), imagej=True, metadata={"axes": "CYX", "Labels": CHANNELS})
    with pytest.raises(BadImageError) as caught:
        run_split(index, tmp_path)
    assert caught.value.path == str(folder / "A01_s1.tif")
    assert "well A01 site 1" in str(caught.value) and "float32 differs from the plate's majority" in str(caught.value)
    assert not (tmp_path / "results" / "raw" / "ER.zarr").exists()
    assert list((tmp_path / "results" / "raw").iterdir()) == []


def test_rejecting_more_than_max_rejected_fraction_fails_the_split(tmp_path):
    folder = tmp_path / "raw"
    index = hyperstack_plate(folder, 5)
    (folder / "A04_s1.tif").write_bytes(b"broken")
    with pytest.raises(BadImageError, match=r"1 of 5 images of channel ER of plate P1 were rejected \(20.0%\), "
                                            r"more than ingest max_rejected_fraction 0.05 allows"):
        run_split(index, tmp_path, skip=True, max_rejected_fraction=0.05)  # the schema default
    assert not (tmp_path / "results" / "raw" / "ER.zarr").exists()
    assert pd.read_csv(tmp_path / "results" / "rejects" / "ER.csv").file.tolist() == [str(folder / "A04_s1.tif")]
    summary, _, _ = run_split(index, tmp_path, skip=True, max_rejected_fraction=0.2)
    assert summary["rejected"] == 1


def test_max_rejected_fraction_defaults_to_five_percent():
    from jump_n2v.settings import resolve_section

    assert resolve_section("ingest")["max_rejected_fraction"] == 0.05


def test_a_failed_split_writes_its_rejects_table_where_the_error_sends_the_user(tmp_path):
    # In the workflow, Snakemake deletes a failed job's outputs (rejects/ER.csv among them): the table
    # the error pointed to was gone. failed_rejects_csv (beside the job's log) survives.
    folder = tmp_path / "raw"
    index = hyperstack_plate(folder, 4)
    for name in ("A02_s1.tif", "A03_s1.tif"):
        (folder / name).write_bytes(b"broken")
    kept = tmp_path / "logs" / "ER.rejects.csv"
    with pytest.raises(BadImageError, match=rf"2 of 4 images .* they are listed in {kept}\."):
        run_split(index, tmp_path, skip=True, max_rejected_fraction=0.25, failed_rejects_csv=kept)
    assert pd.read_csv(kept).file.tolist() == [str(folder / "A02_s1.tif"), str(folder / "A03_s1.tif")]
    for name in folder.iterdir():
        name.write_bytes(b"broken")
    with pytest.raises(BadImageError, match=rf"all 4 rejected \(listed in {kept}\)"):
        run_split(index, tmp_path, skip=True, failed_rejects_csv=kept)
    assert len(pd.read_csv(kept)) == 4


@pytest.mark.parametrize("samples", [3, 4])
def test_rgb_and_rgba_uint8_hyperstacks_split_by_channel_order_or_labels(tmp_path, samples):
    from test_ingest_readers import RGB_NAMES, rgb_site

    folder = tmp_path / "rgb"
    folder.mkdir()
    written = {}
    for number, labels in enumerate([True, False, True]):
        written[number] = rgb_site(folder / f"A{number + 1:02d}_s1.tif", samples, imagej_metadata=labels, labels=labels, seed=number)
    index = discover_plate("P1", {"format": "hyperstack", "pattern": str(folder / "{well}_s{site}.tif")}, ["DNA", "RNA"])
    _, out, _ = run_split(index, tmp_path, channel="RNA", channel_order=RGB_NAMES[:samples])
    array = open_channel_array(out)
    assert array.shape == (3, 64, 48) and array.dtype == np.uint8
    for number, data in written.items():
        np.testing.assert_array_equal(array[number], data[..., 2])
