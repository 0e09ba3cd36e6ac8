import hashlib
import json

import numpy as np
import pytest
import tifffile

from jump_n2v.demo import DEMO_CHANNELS, DemoSpec, nucleus_labels_path, write_demo_manifest, write_demo_plate


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


def pixel_digest(manifest) -> str:
    digest = hashlib.sha256()
    for entry in manifest["files"]:
        for key in ("raw", "clean"):
            pixels = tifffile.imread(entry[key])
            digest.update(str(pixels.dtype).encode())
            digest.update(np.ascontiguousarray(pixels).tobytes())
    return digest.hexdigest()


# Digests of the raw and clean pixels as the renderer wrote them before it drew true nucleus labels
# (main a10a045): the labels draw no random numbers, so every demo plate stays as it was.
@pytest.mark.parametrize(("spec", "expected"), [
    (DemoSpec(wells=("B02", "C03"), sites=1, size=64, cells_per_site=4, seed=3),
     "97e17b4f128bcab4234a6bae1d03ee130b85f72d93eda19251fa6fc63c200553"),
    (DemoSpec(wells=("B02",), sites=2, size=96, cells_per_site=6, seed=5, hazards=True, pixel_mixing="box2x2"),
     "a404fb7402c2b38262f46fd5eed543d8ce8de771cd2fffcfa86037d548108f51"),
], ids=["plain", "hazards-box2x2"])
def test_demo_pixels_are_those_rendered_before_the_nucleus_labels(tmp_path, spec, expected):
    manifest = write_demo_plate(str(tmp_path / "raw/{well}_s{site}.tif"), str(tmp_path / "clean/{well}_s{site}.tif"), spec)
    assert pixel_digest(manifest) == expected


def test_demo_writes_one_true_label_per_nucleus_beside_the_clean_images(tmp_path):
    spec = DemoSpec(wells=("B02",), sites=1, size=128, cells_per_site=5, seed=8)
    manifest = write_demo_plate(str(tmp_path / "raw/{well}_s{site}.tif"), str(tmp_path / "clean/{well}_s{site}.tif"), spec)
    entry = manifest["files"][0]
    assert entry["nuclei_labels"] == str(nucleus_labels_path(entry["clean"])) == str(tmp_path / "clean/nuclei_labels/B02_s1.tif")
    labels = tifffile.imread(entry["nuclei_labels"])
    dna = tifffile.imread(entry["clean"])[0]
    assert labels.dtype == np.uint16 and labels.shape == (128, 128)
    assert set(np.unique(labels)) == set(range(spec.cells_per_site + 1))
    # Nuclei are where the DNA stain is: every labelled pixel is brighter than the unlabelled median.
    assert dna[labels > 0].min() > np.median(dna[labels == 0])


def test_debris_and_saturated_cells_leave_the_true_nuclei_as_they_are(tmp_path):
    # The hazards are drawn after a site's cells, so the first site's cells are the same with them.
    labels = {}
    for hazards in (False, True):
        spec = DemoSpec(wells=("B02",), sites=1, size=128, cells_per_site=5, seed=8, hazards=hazards)
        manifest = write_demo_plate(str(tmp_path / f"{hazards}/raw/{{well}}_s{{site}}.tif"),
                                    str(tmp_path / f"{hazards}/clean/{{well}}_s{{site}}.tif"), spec)
        labels[hazards] = tifffile.imread(manifest["files"][0]["nuclei_labels"])
    assert np.array_equal(labels[False], labels[True])
