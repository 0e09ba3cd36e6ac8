"""jump_n2v.qc.disagreement on hand-made outputs: units of the noise sigma, structure vs background, the
flat-image rule, the stores' matching, and the summary's columns and flag (no training here)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from jump_n2v.noise import NoiseModel
from jump_n2v.plumbing.ngff import create_channel_array
from jump_n2v.qc.disagreement import (
    DISAGREEMENT_METRICS, MIN_STRUCTURE_FRACTION, channel_disagreement, disagreement_map, image_disagreement, structure_mask,
)
from jump_n2v.qc.files import QCInputError
from jump_n2v.qc.summary import _flags
from jump_n2v.settings import QCSettings

CORRELATION = tuple(tuple(1.0 if (y, x) == (2, 2) else 0.0 for x in range(5)) for y in range(5))
MODEL = NoiseModel(gain=2.0, offset=100.0, read_variance=9.0, correlation=CORRELATION, clipped_fraction=0.0,
                   saturated_fraction=0.0, processed=False, notes=())


def scene(size=64):
    """A flat background of 110 ADU with one bright disc (300 ADU) in the middle."""
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 5) ** 2
    return np.where(disc, 300.0, 110.0), disc


def test_identical_outputs_do_not_disagree():
    image, _ = scene()
    metrics = image_disagreement(image, image, MODEL)
    assert set(metrics) == set(DISAGREEMENT_METRICS)
    assert metrics["disagreement_mean"] == metrics["disagreement_check_p99"] == 0


def test_disagreement_is_in_units_of_the_noise_sigma_at_the_signal():
    image, _ = scene()
    sigma = np.sqrt(MODEL.variance(image))
    d = disagreement_map(image + sigma / 2, image - sigma / 2, MODEL)
    assert np.allclose(d, 1.0)


def test_structure_is_the_bright_part_and_the_check_judges_it():
    image, disc = scene()
    assert np.array_equal(structure_mask(image, MODEL), disc)
    sigma = np.sqrt(MODEL.variance(image))
    changed = image + np.where(disc, 3 * sigma, 0.0)  # the models disagree on the object only
    metrics = image_disagreement(changed, image, MODEL)
    assert metrics["disagreement_structure_p99"] > 2.5 and metrics["disagreement_background_p99"] == 0
    assert metrics["disagreement_check_p99"] == metrics["disagreement_structure_p99"]


def test_a_flat_image_is_judged_as_a_whole():
    flat = np.full((64, 64), 110.0)
    sigma = np.sqrt(MODEL.variance(flat))
    invented = flat.copy()
    invented[:8, :8] += 2.5 * sigma[:8, :8]  # 1.6 % of the image, below the structure level
    metrics = image_disagreement(invented, flat, MODEL)
    assert metrics["disagreement_structure_fraction"] < MIN_STRUCTURE_FRACTION
    assert np.isnan(metrics["disagreement_structure_p99"])
    # 2.5 sigma of the flat level; sigma is read at the two outputs' mean, a little higher
    assert metrics["disagreement_check_p99"] == metrics["disagreement_p99"] > 2


def store(path, images, ids, **attrs):
    array = create_channel_array(path, shape=images.shape, chunks=(1,) + images.shape[1:], dtype="float32",
                                 attributes={"image_ids": ids, "plate": "P1", "channel": "DNA", **attrs})
    array[:] = images
    return path


def test_control_images_are_matched_to_the_main_rows_by_image_id(tmp_path):
    image, disc = scene()
    main = np.stack([image, image + 50, image])
    denoised = store(tmp_path / "denoised.zarr", main, ["a", "b", "c"])
    control = store(tmp_path / "control.zarr", main[[1]], ["b"], control_disjoint=False)
    table = channel_disagreement(denoised, control, MODEL)
    assert table["image"].tolist() == ["b"] and table["disagreement_mean"].iloc[0] == 0
    assert table["control_disjoint"].tolist() == [False]
    other = store(tmp_path / "other.zarr", main[[1]], ["z"])
    with pytest.raises(QCInputError, match="other.zarr: image 'z' is not in the denoised array"):
        channel_disagreement(denoised, other, MODEL)


@pytest.mark.parametrize("value, flagged", [(1.9, False), (2.1, True), (float("nan"), False)])
def test_the_flag_compares_the_median_check_with_the_threshold(value, flagged):
    row = {"residual_signal_corr_median": 0.0, "residual_autocorr_x_median": 0.0, "residual_autocorr_y_median": 0.0,
           "snr_gain_db_median": 3.0, "disagreement_check_p99_median": value}
    qc = QCSettings.from_dict({"model_disagreement_threshold": 2.0})
    assert ("model_disagreement" in _flags(pd.Series(row).to_dict(), qc)) is flagged
