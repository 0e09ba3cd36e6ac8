"""read_channel: every TIFF layout a plate arrives in, mapped by channel name, and every bad-file case."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from jump_n2v.ingest.readers import BadImageError, read_channel

CHANNELS = ["DNA", "ER", "RNA"]


def planes(count: int, dtype=np.uint16, shape=(24, 32), seed: int = 0) -> np.ndarray:
    """Distinct random planes (plane k is offset by 1000*k so a wrong plane cannot pass as right)."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 500, (count, *shape)).astype(np.float64) + 1000 * np.arange(count)[:, None, None]
    if np.dtype(dtype).kind == "u" and np.dtype(dtype).itemsize == 1:
        data = rng.integers(0, 250, (count, *shape))
    if np.dtype(dtype).kind == "i":
        data = data - 2000
    return data.astype(dtype)


def imagej(path, data, axes, labels=None, **kwargs):
    metadata = {"axes": axes}
    if labels is not None:
        metadata["Labels"] = labels
    tifffile.imwrite(path, data, imagej=True, metadata=metadata, **kwargs)
    return path


def test_imagej_cyx_channel_is_found_by_its_label_and_pixel_size_is_read(tmp_path):
    data = planes(3)
    path = tmp_path / "site.tif"
    tifffile.imwrite(path, data, imagej=True, resolution=(1 / 0.65, 1 / 0.65),
                     metadata={"axes": "CYX", "Labels": ["RNA", "DNA", "ER"], "unit": "um"})
    image = read_channel(path, "DNA")
    np.testing.assert_array_equal(image.pixels, data[1])
    assert image.pixel_size_um == pytest.approx(0.65)


def test_labels_take_precedence_over_channel_order(tmp_path):
    data = planes(3)
    path = imagej(tmp_path / "site.tif", data, "CYX", labels=["RNA", "DNA", "ER"])
    np.testing.assert_array_equal(read_channel(path, "ER", channel_order=CHANNELS).pixels, data[2])


def test_unlabelled_cyx_is_mapped_by_channel_order(tmp_path):
    data = planes(3)
    path = imagej(tmp_path / "site.tif", data, "CYX")
    np.testing.assert_array_equal(read_channel(path, "RNA", channel_order=["ER", "RNA", "DNA"]).pixels, data[1])
    assert read_channel(path, "RNA", channel_order=["ER", "RNA", "DNA"]).pixel_size_um is None


def test_unlabelled_multichannel_file_without_channel_order_is_refused(tmp_path):
    path = imagej(tmp_path / "site.tif", planes(3), "CYX")
    with pytest.raises(BadImageError, match="channel_order") as caught:
        read_channel(path, "DNA")
    assert str(path) in str(caught.value)
    assert "never by position" in str(caught.value)


def test_channel_order_of_the_wrong_length_is_refused(tmp_path):
    path = imagej(tmp_path / "site.tif", planes(3), "CYX")
    with pytest.raises(BadImageError, match="3 channel planes .* channel_order names 2"):
        read_channel(path, "DNA", channel_order=["DNA", "ER"])


def test_zcyx_takes_the_configured_z_plane(tmp_path):
    data = planes(12).reshape(4, 3, 24, 32)
    path = imagej(tmp_path / "z.tif", data, "ZCYX", labels=CHANNELS * 4)
    np.testing.assert_array_equal(read_channel(path, "ER", z_plane=2).pixels, data[2, 1])


def test_zcyx_max_projection(tmp_path):
    data = planes(12).reshape(4, 3, 24, 32)
    rng = np.random.default_rng(1)
    data = data[rng.permutation(4)]  # the maximum is spread over planes, not all in the last one
    path = imagej(tmp_path / "z.tif", data, "ZCYX", labels=CHANNELS * 4)
    np.testing.assert_array_equal(read_channel(path, "RNA", z_projection="max").pixels, data[:, 2].max(axis=0))


def test_z_stack_without_z_setting_is_refused(tmp_path):
    path = imagej(tmp_path / "z.tif", planes(12).reshape(4, 3, 24, 32), "ZCYX", labels=CHANNELS * 4)
    with pytest.raises(BadImageError, match="4 Z planes.*z_plane.*z_projection"):
        read_channel(path, "DNA")


def test_z_plane_beyond_the_stack_is_refused(tmp_path):
    path = imagej(tmp_path / "z.tif", planes(12).reshape(4, 3, 24, 32), "ZCYX", labels=CHANNELS * 4)
    with pytest.raises(BadImageError, match="z_plane is 7 but the file has 4"):
        read_channel(path, "DNA", z_plane=7)


def test_tzcyx_takes_the_time_point_and_z_plane(tmp_path):
    data = planes(24).reshape(2, 4, 3, 24, 32)
    path = imagej(tmp_path / "tz.tif", data, "TZCYX")
    image = read_channel(path, "DNA", channel_order=CHANNELS, time_point=1, z_plane=3)
    np.testing.assert_array_equal(image.pixels, data[1, 3, 0])


@pytest.mark.parametrize("samples, names", [(3, ["DNA", "ER", "RNA"]), (4, ["DNA", "ER", "RNA", "Alpha"])])
def test_rgb_and_rgba_samples_are_mapped_by_channel_order(tmp_path, samples, names):
    data = np.moveaxis(planes(samples, dtype=np.uint8), 0, -1)  # Y, X, S
    path = tmp_path / "rgb.tif"
    extra = {"extrasamples": ["unassalpha"]} if samples == 4 else {}
    tifffile.imwrite(path, data, photometric="rgb", **extra)
    assert tifffile.TiffFile(path).series[0].axes == "YXS"
    for position, name in enumerate(names):
        np.testing.assert_array_equal(read_channel(path, name, channel_order=names).pixels, data[..., position])


def test_unlabelled_qyx_stack_is_mapped_by_channel_order(tmp_path):
    data = planes(5)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, data)
    assert tifffile.TiffFile(path).series[0].axes == "QYX"
    order = ["DNA", "ER", "RNA", "AGP", "Mito"]
    np.testing.assert_array_equal(read_channel(path, "AGP", channel_order=order).pixels, data[3])


def test_ome_tiff_channel_names_and_physical_size(tmp_path):
    data = planes(3)
    path = tmp_path / "site.ome.tif"
    tifffile.imwrite(path, data, ome=True, metadata={
        "axes": "CYX", "Channel": {"Name": ["ER", "RNA", "DNA"]}, "PhysicalSizeX": 325.0, "PhysicalSizeXUnit": "nm",
    })
    image = read_channel(path, "DNA", channel_order=CHANNELS)  # names in the file win over channel_order
    np.testing.assert_array_equal(image.pixels, data[2])
    assert image.pixel_size_um == pytest.approx(0.325)


def test_tiled_bigtiff_channel(tmp_path):
    data = planes(3, shape=(300, 260))
    path = tmp_path / "tiled.tif"
    tifffile.imwrite(path, data, bigtiff=True, tile=(64, 64), compression="zlib", photometric="minisblack",
                     metadata={"axes": "CYX"})
    with tifffile.TiffFile(path) as tif:
        assert tif.is_bigtiff and tif.pages.first.is_tiled
    np.testing.assert_array_equal(read_channel(path, "RNA", channel_order=CHANNELS).pixels, data[2])


def test_reading_one_channel_does_not_decode_the_other_planes(tmp_path):
    data = planes(3, shape=(64, 64))
    path = imagej(tmp_path / "site.tif", data, "CYX", labels=CHANNELS, compression="zlib")
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[2].dataoffsets[0]
    raw = bytearray(path.read_bytes())
    raw[offset:offset + 40] = b"\xff" * 40  # destroy the RNA plane's deflate stream only
    path.write_bytes(bytes(raw))
    np.testing.assert_array_equal(read_channel(path, "DNA").pixels, data[0])
    with pytest.raises(BadImageError, match="cannot read the TIFF"):
        read_channel(path, "RNA")


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32])
def test_pixel_types_are_kept(tmp_path, dtype):
    data = planes(3, dtype=dtype)
    path = imagej(tmp_path / "site.tif", data, "CYX", labels=CHANNELS)
    image = read_channel(path, "ER")
    assert image.pixels.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(image.pixels, data[1])


@pytest.mark.parametrize("compression", [None, "zlib", "lzw"])
def test_compressed_single_channel_file_is_the_image(tmp_path, compression):
    data = planes(1)[0]
    path = tmp_path / "r01c01f01p01-ch1sk1fk1fl1.tiff"
    tifffile.imwrite(path, data, compression=compression)
    # JUMP/Phenix files hold one channel and no names: the requested channel is the image.
    np.testing.assert_array_equal(read_channel(path, "DNA").pixels, data)


def test_missing_channel_names_the_file_and_its_channels(tmp_path):
    path = imagej(tmp_path / "site.tif", planes(3), "CYX", labels=CHANNELS)
    with pytest.raises(BadImageError) as caught:
        read_channel(path, "Mito")
    assert caught.value.path == str(path)
    assert "missing channel 'Mito'" in caught.value.problem and "['DNA', 'ER', 'RNA']" in caught.value.problem


def test_missing_file_is_a_bad_image(tmp_path):
    with pytest.raises(BadImageError, match="does not exist"):
        read_channel(tmp_path / "nowhere.tif", "DNA")


@pytest.mark.parametrize("keep", [0, 8, 100, 0.5])
def test_corrupt_or_truncated_file_is_a_bad_image(tmp_path, keep):
    path = tmp_path / "site.tif"
    tifffile.imwrite(path, planes(1, shape=(128, 128))[0], compression="lzw")
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep) if isinstance(keep, float) else keep])
    with pytest.raises(BadImageError, match="cannot read the TIFF") as caught:
        read_channel(path, "DNA")
    assert caught.value.path == str(path)


def test_not_a_tiff_is_a_bad_image(tmp_path):
    path = tmp_path / "site.tif"
    path.write_text("this is a text file")
    with pytest.raises(BadImageError, match="not a TIFF"):
        read_channel(path, "DNA")


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_non_finite_pixels_are_a_bad_image(tmp_path, bad_value):
    data = planes(1, dtype=np.float32)[0]
    data[3, 4] = bad_value
    path = tmp_path / "site.tif"
    tifffile.imwrite(path, data)
    with pytest.raises(BadImageError, match="1 pixel\\(s\\) are NaN or infinite"):
        read_channel(path, "DNA")


def test_constant_image_is_a_bad_image(tmp_path):
    path = tmp_path / "site.tif"
    tifffile.imwrite(path, np.full((24, 32), 7, np.uint16))
    with pytest.raises(BadImageError, match="same value \\(7\\)"):
        read_channel(path, "DNA")


def test_unsupported_axes_are_refused(tmp_path):
    path = tmp_path / "site.tif"
    tifffile.imwrite(path, planes(6).reshape(2, 3, 24, 32), photometric="minisblack", metadata={"axes": "HCYX"})
    with pytest.raises(BadImageError, match="unsupported axes 'HCYX'"):
        read_channel(path, "DNA", channel_order=CHANNELS)


def test_single_plane_file_is_the_image_whatever_its_label(tmp_path):
    data = planes(1)[0]
    path = tmp_path / "site.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"Labels": ["r01c01f01p01-ch1sk1fk1fl1"]})
    np.testing.assert_array_equal(read_channel(path, "DNA").pixels, data)


def test_single_plane_file_where_channel_order_expects_several_is_refused(tmp_path):
    path = tmp_path / "site.tif"
    tifffile.imwrite(path, planes(1)[0])
    with pytest.raises(BadImageError, match="1 channel plane .* channel_order names 3"):
        read_channel(path, "DNA", channel_order=CHANNELS)


def test_labels_match_the_channel_ignoring_case_when_unambiguous(tmp_path):
    data = planes(3)
    path = imagej(tmp_path / "site.tif", data, "CYX", labels=["rna", "dna", "Er"])
    np.testing.assert_array_equal(read_channel(path, "DNA").pixels, data[1])
    np.testing.assert_array_equal(read_channel(path, "ER").pixels, data[2])
    unlabelled = imagej(tmp_path / "plain.tif", data, "CYX")
    np.testing.assert_array_equal(read_channel(unlabelled, "DNA", channel_order=["rna", "dna", "er"]).pixels, data[1])


def test_labels_differing_only_in_case_are_ambiguous_and_named(tmp_path):
    path = imagej(tmp_path / "site.tif", planes(3), "CYX", labels=["DNA", "dna", "ER"])
    np.testing.assert_array_equal(read_channel(path, "DNA").pixels, planes(3)[0])  # an exact match wins
    with pytest.raises(BadImageError, match=r"channel 'Dna' is ambiguous: .* hold \['DNA', 'dna'\]"):
        read_channel(path, "Dna")


RGB_NAMES = ["DNA", "ER", "RNA", "Alpha"]


def rgb_site(path, samples: int, *, imagej_metadata: bool, labels: bool, shape=(64, 48), seed: int = 0):
    """An 8-bit RGB (3 samples) or RGBA (4) site, samples last (YXS), as the JUMP sources' RGBA hyperstacks."""
    data = np.random.default_rng(seed).integers(0, 250, (*shape, samples)).astype(np.uint8)
    extra = {"extrasamples": ["unassalpha"]} if samples == 4 else {}
    if imagej_metadata:
        extra.update(imagej=True, metadata={"axes": "YXS", **({"Labels": RGB_NAMES[:samples]} if labels else {})})
    elif labels:
        extra.update(metadata={"axes": "YXS", "Labels": RGB_NAMES[:samples]})  # tifffile's own JSON description
    tifffile.imwrite(path, data, photometric="rgb", **extra)
    return data


RGB_CASES = [(samples, imagej_metadata, labels) for samples in (3, 4) for imagej_metadata in (False, True) for labels in (False, True)]


@pytest.mark.parametrize("samples, imagej_metadata, labels", RGB_CASES)
def test_the_planning_size_check_reads_y_and_x_of_rgb_and_rgba_files(tmp_path, samples, imagej_metadata, labels):
    # The check took the last two axes: 64x48 RGBA read as "64x4 pixels ... lower n2v.patch_size to at most 4".
    from jump_n2v.ingest import DiscoveryError, check_patch_fits
    from jump_n2v.ingest.readers import plane_size

    path = tmp_path / "A01_s1.tif"
    data = rgb_site(path, samples, imagej_metadata=imagej_metadata, labels=labels)
    assert tifffile.TiffFile(path).series[0].axes == "YXS"
    assert plane_size(path) == (64, 48)
    check_patch_fits([str(path)], 32, "plate P1, channel ER")
    with pytest.raises(DiscoveryError, match=r"plate P1, channel ER: images are 64x48 pixels .*at most 48"):
        check_patch_fits([str(path)], 64, "plate P1, channel ER")
    np.testing.assert_array_equal(read_channel(path, "ER", channel_order=RGB_NAMES[:samples]).pixels, data[..., 1])
