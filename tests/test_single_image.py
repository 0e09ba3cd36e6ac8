"""The single-image helpers behind docs/single_image.ipynb (the notebook itself: test_notebook.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import TINY_N2V
from jump_n2v.plumbing.ngff import open_channel_array
from jump_n2v.single_image import image_panels, image_qc, train_on_image

torch.set_num_threads(1)
TINY = {**TINY_N2V, "validation_patches": 4}


def noisy(shape=(40, 36), seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    clean = 300 + 100 * np.sin(xx / 3.0) * np.cos(yy / 4.0)
    return (clean + rng.normal(0, 20, shape)).astype(np.float32), clean


def test_train_on_image_keeps_the_image_beside_the_model(tmp_path):
    image, _ = noisy()
    trained = train_on_image(image, tmp_path / "model", TINY)
    stored = open_channel_array(str(tmp_path / "model" / "image.zarr"), mode="r")
    np.testing.assert_array_equal(stored[0], image)
    assert trained.record.data["arrays"] == [str(tmp_path / "model" / "image.zarr")]
    assert trained.mean == pytest.approx(float(image.mean()), rel=0.05)


@pytest.mark.parametrize("image,message", [
    (np.zeros((2, 40, 40), np.float32), "must be one 2-D image"),
    (np.full((40, 40), np.nan, np.float32), "NaN or infinite"),
    (np.zeros((12, 40), np.float32), "smaller than n2v patch_size"),
])
def test_train_on_image_refuses_what_it_cannot_train_on(tmp_path, image, message):
    with pytest.raises(ValueError, match=message):
        train_on_image(image, tmp_path / "model", TINY)


def test_image_qc_flags_an_image_that_was_not_denoised(tmp_path):
    image, clean = noisy()
    unchanged = image_qc(image, image.copy(), clean)
    assert "no_snr_gain" in unchanged["flags"] and "snr gain" in unchanged["flags"]["no_snr_gain"].lower()
    better = image_qc(image, clean.astype(np.float32), clean)
    assert better["metrics"]["psnr_gain_db"] > 10 and "no_snr_gain" not in better["flags"]
    assert image_panels(image, clean, tmp_path / "panels.png", crop_size=16).stat().st_size > 0
