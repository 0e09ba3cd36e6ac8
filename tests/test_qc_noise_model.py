"""QC that a blur cannot fool: residuals checked against the fitted noise model.

A Gaussian blur in place of the denoised output is flagged on every demo stain and its estimated gain
stays near its true PSNR gain (the implied SNR gain does not); a real N2V on independent noise is not
flagged; a one-pixel blind spot on 2 x 2-box-correlated noise is (it hands the shared noise back).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import torch
import zarr
from scipy import ndimage

from conftest import demo_sites
from jump_n2v.demo import DEMO_CHANNELS, DemoSpec
from jump_n2v.noise import estimate_noise_model
from jump_n2v.qc.measures import image_metrics
from jump_n2v.qc.summary import summarize

torch.set_num_threads(1)

# The flags a denoiser that removes signal or hands noise back raises.
MODEL_FLAGS = {"residual_structure", "noise_leak", "no_estimated_gain", "residual_autocorrelation"}


def summary_row(raws, outputs, cleans, channel, name):
    model = estimate_noise_model(raws)
    rows = [
        {"experiment": "E", "plate": name, "channel": channel, "image": str(i), **image_metrics(raw, out, clean, model)}
        for i, (raw, out, clean) in enumerate(zip(raws, outputs, cleans))
    ]
    return summarize([pd.DataFrame(rows)]).iloc[0]


@pytest.mark.parametrize("channel", DEMO_CHANNELS)
def test_a_blur_is_flagged_on_every_stain_and_cannot_raise_the_estimated_gain(channel):
    raws, cleans = demo_sites(DemoSpec(), sites=2, channel=channel, box=False)
    for sigma in (1.0, 2.0, 3.0):
        blurred = [ndimage.gaussian_filter(raw.astype(np.float64), sigma) for raw in raws]
        row = summary_row(raws, blurred, cleans, channel, f"blur{sigma}")
        assert "residual_structure" in row["flags"], (sigma, row["residual_curvature_corr_median"])
        # The implied SNR gain reads tens of dB; the estimate does not exceed the true PSNR gain (its
        # leak is charged), though texture the model mistakes for noise can make it pessimistic.
        assert row["snr_gain_db_median"] > row["estimated_gain_db_median"] + 10
        assert row["estimated_gain_db_median"] <= row["psnr_gain_db_mean"] + 1.5


def test_the_raw_image_handed_back_is_flagged():
    raws, cleans = demo_sites(DemoSpec(size=128, cells_per_site=4), sites=2, channel="DNA", box=False)
    row = summary_row(raws, [raw.astype(np.float64) for raw in raws], cleans, "DNA", "identity")
    assert {"noise_leak", "no_estimated_gain"} <= set(row["flags"])
    assert row["noise_leak_median"] == pytest.approx(1.0, abs=0.1)


def train_and_denoise(raws, tmp_path):
    from jump_n2v.n2v.trained import load_trained
    from jump_n2v.n2v.training import N2VSettings, train_channel
    from jump_n2v.predict.runner import denoise_image

    array = zarr.create_array(store=str(tmp_path / "raw.zarr"), shape=(len(raws),) + raws[0].shape, chunks=(1,) + raws[0].shape, dtype="uint16")
    array[:] = np.stack(raws)
    # 10 epochs: with 4, a real N2V on independent noise was flagged on some seeds (1 and 2 gave
    # residual_autocorrelation and 0.8-2.4 dB); with 10 it passed on seeds 0, 1, 2 and 42 (4.8-5.7 dB).
    settings = N2VSettings.from_dict(
        dict(patch_size=32, batch_size=8, base_filters=8, epochs=10, steps_per_epoch=50, validation_patches=16,
             device="cpu", learning_rate=0.004, train_images=len(raws), masked_fraction=0.02, seed=42)
    )
    train_channel([str(tmp_path / "raw.zarr")], settings, tmp_path / "model", log=logging.getLogger("test"))
    trained = load_trained(tmp_path / "model")
    return [denoise_image(trained.net, raw, trained.mean, trained.std, {"device": "cpu"}) for raw in raws]


@pytest.mark.slow
@pytest.mark.usefixtures("pinned_torch")
def test_n2v_on_independent_noise_passes_and_a_one_pixel_blind_spot_on_correlated_noise_is_flagged(tmp_path):
    # Training takes another path on another CPU (a 2-core AMD EPYC left the one-pixel model worse
    # than raw, without noise_leak). So this asserts what every honest outcome shows, as checked on
    # seeds 0, 1, 2, 42 here: a real N2V passes and denoises; a one-pixel blind spot on correlated
    # noise is flagged, either for handing the shared noise back or for doing worse than raw.
    spec = DemoSpec(size=128, cells_per_site=4)
    raws, cleans = demo_sites(spec, sites=4, channel="DNA", box=False)
    good = summary_row(raws, train_and_denoise(raws, tmp_path / "independent"), cleans, "DNA", "independent")
    assert not MODEL_FLAGS & set(good["flags"]), good["flags"]
    assert good["psnr_gain_db_mean"] > 3  # it did denoise
    # The estimate never claims more than the true gain; texture the noise model mistakes for noise
    # can make it pessimistic (seed 2: 3.5 dB estimated for 5.4 dB).
    assert good["psnr_gain_db_mean"] - 2.5 < good["estimated_gain_db_median"] < good["psnr_gain_db_mean"] + 1.5

    raws, cleans = demo_sites(spec, sites=4, channel="DNA", box=True)
    one_pixel = summary_row(raws, train_and_denoise(raws, tmp_path / "correlated"), cleans, "DNA", "correlated")
    flags = set(one_pixel["flags"])
    assert "noise_leak" in flags or {"psnr_drop", "no_estimated_gain"} <= flags, one_pixel["flags"]
    # Whichever way it failed, the estimate follows the true gain, and so calls it no better than
    # raw when it is not; the implied SNR gain is fooled by the noise handed back.
    assert one_pixel["estimated_gain_db_median"] == pytest.approx(one_pixel["psnr_gain_db_mean"], abs=1.5)
    assert one_pixel["snr_gain_db_median"] > one_pixel["psnr_gain_db_mean"] + 10
