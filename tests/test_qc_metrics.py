"""QC metrics: correctness on synthetic images, streaming over Zarr arrays, summary flags, tables."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import zarr
from scipy import ndimage

from jump_n2v.qc.channel import channel_metrics
from jump_n2v.qc.files import QCInputError, load_model_info, write_table
from jump_n2v.qc.measures import (
    NO_REFERENCE_METRICS,
    REFERENCE_METRICS,
    image_metrics,
    lag1_autocorrelation,
    noise_sigma,
    psnr_db,
    reference_data_range,
    snr_gain_db,
    ssim,
)
from jump_n2v.qc.summary import summarize

SIZE = 96


def smooth_image(seed: int, size: int = SIZE) -> np.ndarray:
    """Blob-like 'cells' on a background, in uint16-like units (background 200, peaks ~ 3200)."""
    rng = np.random.default_rng(seed)
    spots = np.zeros((size, size))
    spots[rng.integers(0, size, 12), rng.integers(0, size, 12)] = 1.0
    blobs = ndimage.gaussian_filter(spots, 5)
    return 200.0 + 3000.0 * blobs / blobs.max()


def write_array(path, data, image_ids, dtype, plate="P1", channel="DNA"):
    array = zarr.create_array(store=str(path), shape=data.shape, chunks=(1,) + data.shape[1:], dtype=dtype)
    array[:] = data
    array.attrs.update(image_ids=image_ids, channel=channel, plate=plate, experiment="E1", dtype_range=[0, 65535])
    return array


def make_plate(tmp_path, denoiser, n_images=4, sigma=50.0, with_clean=True, plate="P1"):
    """raw/denoised(/clean) Zarr arrays and index.csv of one synthetic plate; ``denoiser(raw, clean)``
    makes the denoised stack."""
    rng = np.random.default_rng(1)
    clean = np.stack([smooth_image(seed) for seed in range(n_images)])
    raw = np.clip(np.rint(clean + rng.normal(0, sigma, clean.shape)), 0, 65535).astype(np.uint16)
    denoised = denoiser(raw.astype(np.float64), clean).astype(np.float32)
    wells = [f"B{column:02d}" for column in range(2, 2 + n_images)]
    ids = list(range(n_images))  # index.csv image ids, as the split writes them
    root = tmp_path / plate
    root.mkdir()
    paths = {
        "raw": root / "raw.zarr",
        "denoised": root / "denoised.zarr",
        "clean": root / "clean.zarr" if with_clean else None,
        "index": root / "index.csv",
    }
    write_array(paths["raw"], raw, ids, "uint16", plate=plate)
    write_array(paths["denoised"], denoised, ids, "float32", plate=plate)
    if with_clean:
        write_array(paths["clean"], clean.astype(np.uint16), ids, "uint16", plate=plate)
    pd.DataFrame({"image": ids, "plate": plate, "well": wells, "site": 1, "source_DNA": "x.tif"}).to_csv(paths["index"], index=False)
    return paths


def oracle(raw, clean):
    return clean


def halving(raw, clean):
    return 0.5 * raw


def test_psnr_matches_a_known_mse():
    reference = np.zeros((32, 32))
    reference[0, 0] = 100.0  # data range 100
    test = reference + 2.0  # MSE 4
    assert psnr_db(reference, test, reference_data_range(reference)) == pytest.approx(10 * math.log10(100**2 / 4))


@pytest.mark.parametrize("size, dtype", [(16, np.float64), (64, np.uint16), (200, np.float32)])
def test_psnr_equals_the_hand_written_formula_it_replaced(size, dtype):
    # psnr_db now calls skimage.metrics.peak_signal_noise_ratio; it must give what 10 log10(R^2 / MSE)
    # in float64 gave before.
    rng = np.random.default_rng(size)
    reference = (1000 + 500 * rng.random((size, size))).astype(dtype)
    test = np.clip(reference + rng.normal(0, 20, reference.shape), 0, None).astype(dtype)
    data_range = reference_data_range(reference)
    mse = float(np.mean((test.astype(np.float64) - reference.astype(np.float64)) ** 2))
    assert psnr_db(reference, test, data_range) == pytest.approx(10.0 * math.log10(data_range**2 / mse), rel=1e-12)


def test_psnr_of_identical_images_is_infinite_and_of_a_constant_reference_undefined():
    image = smooth_image(0)
    assert psnr_db(image, image, reference_data_range(image)) == math.inf
    assert math.isnan(psnr_db(np.ones((8, 8)), np.zeros((8, 8)), 0.0))


def test_reference_data_range_is_max_minus_min_of_the_reference():
    assert reference_data_range(np.array([[3.0, 10.0], [250.0, 7.0]])) == 247.0


def test_ssim_is_one_for_identical_images_and_lower_with_noise():
    image = smooth_image(0)
    noisy = image + np.random.default_rng(0).normal(0, 200, image.shape)
    data_range = reference_data_range(image)
    assert ssim(image, image, data_range) == pytest.approx(1.0)
    assert ssim(image, noisy, data_range) < 0.9


@pytest.mark.parametrize("sigma", [5.0, 40.0])
def test_noise_sigma_recovers_gaussian_noise_on_a_smooth_image(sigma):
    image = smooth_image(3, size=256) + np.random.default_rng(2).normal(0, sigma, (256, 256))
    assert noise_sigma(image) == pytest.approx(sigma, rel=0.05)


def test_noise_sigma_ignores_a_bilinear_surface():
    y, x = np.mgrid[0:64, 0:64]
    assert noise_sigma(3.0 * x + 7.0 * y + 0.05 * x * y + 100.0) == pytest.approx(0.0, abs=1e-9)


def test_snr_gain_is_20_log10_of_the_sigma_ratio():
    assert snr_gain_db(10.0, 1.0) == pytest.approx(20.0)
    assert snr_gain_db(10.0, 0.0) == math.inf


def test_residual_correlates_with_signal_when_the_denoiser_removes_signal():
    raw = smooth_image(0) + np.random.default_rng(0).normal(0, 50, (SIZE, SIZE))
    halved = image_metrics(raw, 0.5 * raw)
    assert halved["residual_signal_corr"] == pytest.approx(1.0)
    clean = smooth_image(0)
    perfect = image_metrics(raw, clean)
    assert abs(perfect["residual_signal_corr"]) < 0.1


def test_autocorrelation_is_near_zero_for_white_noise_and_large_for_blurred_noise():
    noise = np.random.default_rng(4).normal(0, 1, (128, 128))
    blurred = ndimage.gaussian_filter(noise, 2)
    for axis in (0, 1):
        assert abs(lag1_autocorrelation(noise, axis)) < 0.05
        assert lag1_autocorrelation(blurred, axis) > 0.8


def test_autocorrelation_distinguishes_the_axes():
    row_correlated = ndimage.uniform_filter1d(np.random.default_rng(5).normal(0, 1, (128, 128)), 5, axis=1)
    assert lag1_autocorrelation(row_correlated, axis=1) > 0.7
    assert abs(lag1_autocorrelation(row_correlated, axis=0)) < 0.05


def test_residual_bias_and_noise_ratio_of_an_oracle_denoiser():
    clean = smooth_image(1, size=128)
    raw = clean + np.random.default_rng(6).normal(0, 30, clean.shape)
    values = image_metrics(raw, clean, clean)
    assert values["residual_to_noise_ratio"] == pytest.approx(1.0, abs=0.06)
    assert abs(values["bias_relative"]) < 0.002
    offset = image_metrics(raw, clean - 300.0)
    low, high = np.percentile(clean, [0.5, 99.5])  # the signal range bias_relative is relative to
    assert offset["bias_relative"] == pytest.approx(300.0 / (high - low), rel=0.02)
    assert values["psnr_gain_db"] == math.inf  # denoised equals the reference exactly


def test_channel_metrics_gives_one_row_per_image_with_ids_and_reference_columns(tmp_path):
    paths = make_plate(tmp_path, oracle, n_images=3)
    table = channel_metrics(paths["raw"], paths["denoised"], clean=paths["clean"], index=paths["index"])
    assert len(table) == 3
    assert list(table["image"]) == ["0", "1", "2"]
    assert list(table["well"]) == ["B02", "B03", "B04"]
    assert set(table["plate"]) == {"P1"} and set(table["channel"]) == {"DNA"} and set(table["experiment"]) == {"E1"}
    assert set(REFERENCE_METRICS) <= set(table.columns)
    assert (table["psnr_denoised_db"] > table["psnr_raw_db"]).all()
    assert (table["snr_gain_db"] > 6).all()


def test_channel_metrics_without_reference_has_no_psnr_or_ssim_columns(tmp_path):
    paths = make_plate(tmp_path, oracle, n_images=2, with_clean=False)
    table = channel_metrics(paths["raw"], paths["denoised"], index=paths["index"])
    assert not [column for column in table.columns if "psnr" in column or "ssim" in column]
    assert set(NO_REFERENCE_METRICS) <= set(table.columns)


def test_channel_metrics_matches_clean_rows_by_image_id(tmp_path):
    paths = make_plate(tmp_path, oracle, n_images=3)
    clean = zarr.open_array(str(paths["clean"]), mode="r")
    reordered = np.asarray(clean[:])[::-1]
    write_array(tmp_path / "reversed.zarr", reordered, list(clean.attrs["image_ids"])[::-1], "uint16")
    in_order = channel_metrics(paths["raw"], paths["denoised"], clean=paths["clean"])
    reversed_rows = channel_metrics(paths["raw"], paths["denoised"], clean=tmp_path / "reversed.zarr")
    pd.testing.assert_series_equal(in_order["psnr_raw_db"], reversed_rows["psnr_raw_db"])


def test_channel_metrics_rejects_mismatched_image_ids(tmp_path):
    paths = make_plate(tmp_path, oracle, n_images=2)
    denoised = zarr.open_array(str(paths["denoised"]), mode="r+")
    denoised.attrs["image_ids"] = ["other_1", "other_2"]
    with pytest.raises(QCInputError, match="image_ids"):
        channel_metrics(paths["raw"], paths["denoised"])


def test_channel_metrics_rejects_non_finite_denoised_values_naming_the_image(tmp_path):
    paths = make_plate(tmp_path, oracle, n_images=2)
    denoised = zarr.open_array(str(paths["denoised"]), mode="r+")
    denoised[1, 3, 3] = np.nan
    with pytest.raises(QCInputError, match="image '1'"):
        channel_metrics(paths["raw"], paths["denoised"])


def test_channel_metrics_names_a_missing_array(tmp_path):
    paths = make_plate(tmp_path, oracle, n_images=1)
    with pytest.raises(QCInputError, match="nowhere.zarr"):
        channel_metrics(paths["raw"], tmp_path / "nowhere.zarr")


def model_info(tmp_path, best_val_loss=0.42):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    training = {"best_val_loss": best_val_loss, "best_epoch": 7, "epochs_run": 9, "steps": 90, "seconds": 12.5, "stopped_early": True}
    (model_dir / "model.json").write_text(json.dumps({"settings": {}, "normalization": {"mean": 1.0, "std": 2.0}, "training": training, "seed": 42, "versions": {}}))
    return load_model_info(model_dir)


def test_summary_flags_a_structure_removing_denoiser_and_not_a_good_one(tmp_path):
    good = make_plate(tmp_path, oracle, plate="GOOD")
    bad = make_plate(tmp_path, halving, plate="BAD")
    tables = [channel_metrics(p["raw"], p["denoised"], clean=p["clean"], index=p["index"]) for p in (good, bad)]
    info = model_info(tmp_path)
    summary = summarize(tables, models={("GOOD", "DNA"): info}).set_index("plate")
    assert summary.at["GOOD", "flags"] == []
    assert {"residual_structure", "residual_autocorrelation", "bias", "psnr_drop"} <= set(summary.at["BAD", "flags"])
    assert summary.at["GOOD", "best_val_loss"] == 0.42
    assert math.isnan(summary.at["BAD", "best_val_loss"])
    assert summary.at["GOOD", "n_images"] == 4


def test_summary_flags_a_denoiser_that_leaves_the_noise(tmp_path):
    paths = make_plate(tmp_path, lambda raw, clean: raw + 0.0, with_clean=False)
    summary = summarize([channel_metrics(paths["raw"], paths["denoised"])])
    assert "no_snr_gain" in summary.at[0, "flags"]
    assert "psnr_drop" not in summary.at[0, "flags"]  # no reference, so no PSNR to drop
    assert not [column for column in summary.columns if "psnr" in column]


def test_summary_uses_each_channels_threshold(tmp_path):
    paths = make_plate(tmp_path, halving)
    table = channel_metrics(paths["raw"], paths["denoised"])
    lenient = {"DNA": {"residual_structure_threshold": 1.5, "residual_autocorrelation_threshold": 1.0, "bias_threshold": 10.0, "noise_leak_threshold": 1.0, "min_estimated_gain_db": -100.0}}
    assert summarize([table], qc_settings=lenient).at[0, "flags"] == []


def test_load_model_info_names_a_broken_model_json(tmp_path):
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(QCInputError, match="model.json"):
        load_model_info(tmp_path)


def test_write_table_writes_csv_with_joined_flags_and_parquet_with_lists(tmp_path):
    paths = make_plate(tmp_path, halving, n_images=2)
    summary = summarize([channel_metrics(paths["raw"], paths["denoised"])])
    write_table(summary, tmp_path / "out" / "summary.csv", tmp_path / "out" / "summary.parquet")
    from_csv = pd.read_csv(tmp_path / "out" / "summary.csv")
    from_parquet = pd.read_parquet(tmp_path / "out" / "summary.parquet")
    assert from_csv.at[0, "flags"] == ";".join(summary.at[0, "flags"])
    assert list(from_parquet.at[0, "flags"]) == summary.at[0, "flags"]
    assert not list((tmp_path / "out").glob(".tmp-*"))
