"""QC figures are written atomically as valid PNGs of the documented size, and bad input is named."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
import zarr

from conftest import png_size
from jump_n2v.qc.figures import (
    channel_panels,
    choose_rows,
    panel_figure_size,
    parse_well,
    plate_figure_size,
    plate_layout,
    plate_map,
    row_label,
)
from jump_n2v.qc.files import QCInputError

def write_stacks(tmp_path, n_images=4, size=80):
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size]
    signal = 500.0 + 400.0 * np.exp(-((y - size / 3) ** 2 + (x - size / 2) ** 2) / 60.0)
    raw = np.clip(signal + rng.normal(0, 40, (n_images, size, size)), 0, None).astype(np.uint16)
    ids = [f"img{i}" for i in range(n_images)]
    wells = ["A01", "A02", "B01", "P24"][:n_images]
    for name, data, dtype in (("raw", raw, "uint16"), ("denoised", np.broadcast_to(signal, raw.shape), "float32")):
        array = zarr.create_array(store=str(tmp_path / f"{name}.zarr"), shape=raw.shape, chunks=(1, size, size), dtype=dtype)
        array[:] = data
        array.attrs.update(image_ids=ids, plate="P1", channel="DNA", experiment="E1")
    index = pd.DataFrame({"image": ids, "plate": "P1", "well": wells, "site": 1})
    return tmp_path / "raw.zarr", tmp_path / "denoised.zarr", index


def test_choose_rows_is_seeded_distinct_and_capped():
    assert choose_rows(10, 3, seed=1) == choose_rows(10, 3, seed=1)
    assert len(set(choose_rows(10, 3, seed=1))) == 3
    assert choose_rows(2, 5, seed=0) == [0, 1]
    assert choose_rows(50, 3, seed=1) != choose_rows(50, 3, seed=2)


def test_channel_panels_writes_a_png_of_the_documented_size(tmp_path):
    raw, denoised, index = write_stacks(tmp_path)
    out = tmp_path / "qc" / "panels.png"
    shown = channel_panels(raw, denoised, out, index=index, panel_sites=2, crop_size=32, seed=3)
    assert len(shown) == 2 and set(shown) <= {"img0", "img1", "img2", "img3"}
    assert png_size(out) == panel_figure_size(2)
    assert not list(out.parent.glob(".tmp-*"))


def test_channel_panels_with_fewer_images_than_sites_shows_them_all(tmp_path):
    raw, denoised, _ = write_stacks(tmp_path, n_images=1, size=40)
    out = tmp_path / "panels.png"
    assert channel_panels(raw, denoised, out, panel_sites=3, crop_size=128) == ["img0"]
    assert png_size(out) == panel_figure_size(1)


@pytest.mark.parametrize(
    ("well", "position"), [("A01", (0, 0)), ("p24", (15, 23)), ("B3", (1, 2)), ("AF48", (31, 47)), ("AA01", (26, 0))]
)
def test_parse_well_gives_zero_based_row_and_column(well, position):
    assert parse_well(well) == position


def test_row_label_inverts_parse_well():
    for row in (0, 15, 25, 26, 31):
        assert parse_well(f"{row_label(row)}01") == (row, 0)


def test_parse_well_rejects_a_non_well_name():
    with pytest.raises(ValueError, match="r1c1"):
        parse_well("r1c1")


def test_plate_layout_is_384_unless_wells_go_beyond_p24():
    assert plate_layout(["A01", "P24"]) == (16, 24)
    assert plate_layout(["A01", "Q01"]) == (32, 48)
    assert plate_layout(["A25"]) == (32, 48)
    with pytest.raises(ValueError, match="AG01"):
        plate_layout(["AG01"])


def test_plate_map_writes_a_png_of_the_documented_size_for_each_layout(tmp_path):
    metrics = pd.DataFrame({"plate": "P1", "well": ["A01", "A01", "C05"], "snr_gain_db": [10.0, 12.0, np.inf]})
    assert plate_map(metrics, "snr_gain_db", tmp_path / "map384.png") == (16, 24)
    assert png_size(tmp_path / "map384.png") == plate_figure_size((16, 24))
    metrics_1536 = metrics.assign(well=["A01", "AF48", "C05"])
    assert plate_map(metrics_1536, "snr_gain_db", tmp_path / "map1536.png") == (32, 48)
    assert png_size(tmp_path / "map1536.png") == plate_figure_size((32, 48))


def test_plate_map_names_an_unknown_metric(tmp_path):
    metrics = pd.DataFrame({"plate": "P1", "well": ["A01"], "snr_gain_db": [1.0]})
    with pytest.raises(QCInputError, match="'sharpness'.*snr_gain_db"):
        plate_map(metrics, "sharpness", tmp_path / "map.png")


def test_plate_map_refuses_several_plates(tmp_path):
    metrics = pd.DataFrame({"plate": ["P1", "P2"], "well": ["A01", "A02"], "snr_gain_db": [1.0, 2.0]})
    with pytest.raises(QCInputError, match="several plates"):
        plate_map(metrics, "snr_gain_db", tmp_path / "map.png")


def test_noise_model_trends_draws_a_png_of_known_size_and_names_missing_columns():
    from jump_n2v.qc.figures import noise_model_trends

    summary = pd.DataFrame(
        {"plate": ["P2", "P1", "P1"], "channel": ["DNA", "DNA", "ER"], "noise_gain": [2.1, 2.0, 0.5], "noise_read_sd": [3.0, 3.1, 1.5], "noise_corr_x": [0.01, 0.0, 0.5]}
    )
    png = noise_model_trends(summary)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (1000, 320)
    with pytest.raises(QCInputError, match="noise_corr_x"):
        noise_model_trends(summary.drop(columns="noise_corr_x"))
