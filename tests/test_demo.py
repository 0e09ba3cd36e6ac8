import json

import numpy as np
import tifffile

from jump_n2v.demo import DEMO_CHANNELS, DemoSpec, write_demo_manifest, write_demo_plate


def write_small_plate(root, seed=3):
    spec = DemoSpec(wells=("B02", "C03"), sites=1, size=64, cells_per_site=4, seed=seed)
    return write_demo_plate(str(root / "raw/{well}_s{site}.tif"), str(root / "clean/{well}_s{site}.tif"), spec, plate="P")


def test_demo_plate_is_labelled_imagej_cyx_uint16_with_float_ground_truth(tmp_path):
    manifest = write_small_plate(tmp_path)
    assert [(f["well"], f["site"]) for f in manifest["files"]] == [("B02", 1), ("C03", 1)]
    with tifffile.TiffFile(tmp_path / "raw/B02_s1.tif") as tif:
        assert tif.series[0].axes == "CYX"
        assert tif.series[0].shape == (5, 64, 64)
        assert tif.series[0].dtype == np.uint16
        assert tif.imagej_metadata["Labels"] == list(DEMO_CHANNELS)
    clean = tifffile.imread(tmp_path / "clean/B02_s1.tif")
    assert clean.dtype == np.float32 and clean.shape == (5, 64, 64)


def test_demo_noise_is_zero_mean_with_poisson_gaussian_variance(tmp_path):
    spec = DemoSpec(wells=("B02",), sites=1, size=128, cells_per_site=6, seed=5)
    write_demo_plate(str(tmp_path / "raw/{well}_s{site}.tif"), str(tmp_path / "clean/{well}_s{site}.tif"), spec)
    raw = tifffile.imread(tmp_path / "raw/B02_s1.tif").astype(np.float64)
    clean = tifffile.imread(tmp_path / "clean/B02_s1.tif").astype(np.float64)
    residual = raw - clean
    assert abs(residual.mean()) < 0.5
    # Var = gain * (clean - offset) + read_noise**2 (+ 1/12 from rounding).
    expected_variance = (spec.gain * (clean - spec.offset) + spec.read_noise**2 + 1 / 12).mean()
    assert abs(residual.var() / expected_variance - 1) < 0.1


def test_demo_plate_is_reproducible_from_its_seed(tmp_path):
    write_small_plate(tmp_path / "a", seed=11)
    write_small_plate(tmp_path / "b", seed=11)
    write_small_plate(tmp_path / "c", seed=12)
    a, b, c = (tifffile.imread(tmp_path / d / "raw/C03_s1.tif") for d in "abc")
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_manifest_records_spec_and_files(tmp_path):
    manifest = write_small_plate(tmp_path)
    write_demo_manifest(manifest, tmp_path / "manifest.json")
    saved = json.loads((tmp_path / "manifest.json").read_text())
    assert saved["spec"]["seed"] == 3 and len(saved["files"]) == 2
