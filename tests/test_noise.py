"""The noise model recovers known camera parameters and correlation from synthetic raw images."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from jump_n2v.noise import NoiseModel, estimate_noise_model, generalized_anscombe, inverse_generalized_anscombe

GAIN, OFFSET, READ_SD = 2.0, 100.0, 3.0
ROUNDING_VARIANCE = 1.0 / 12.0  # integer storage adds uniform quantisation noise


def clean_photons(rng: np.random.Generator, size: int, peak: float) -> np.ndarray:
    """Blobs of several sizes on a dark (zero-photon) background, scaled to ``peak`` photons."""
    yy, xx = np.mgrid[0:size, 0:size]
    image = np.zeros((size, size))
    for _ in range(12):
        cy, cx = rng.uniform(0, size, 2)
        radius = rng.uniform(8, 30)
        image += rng.uniform(0.3, 1.0) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2))
    return peak * image / image.max()


# Mixing applied to the noisy image after the camera, with its per-pixel variance factor (sum of squared
# kernel weights) and its lag correlations {(dy, dx): value}.
MIXING = {
    "independent": (None, 1.0, {}),
    # A 2 x 2 box's autocorrelation is [0.5, 1, 0.5] in y times the same in x; a bilinear half-pixel
    # shift in x and y is the same kernel.
    "box2x2": (lambda im: ndimage.uniform_filter(im, 2, mode="reflect"), 0.25, {(0, 1): 0.5, (1, 0): 0.5, (1, 1): 0.25, (1, -1): 0.25}),
    "half_pixel_shift": (lambda im: ndimage.shift(im, (0.5, 0.5), order=1, mode="nearest"), 0.25, {(0, 1): 0.5, (1, 0): 0.5, (1, 1): 0.25, (1, -1): 0.25}),
    # A 3-tap box along x: streaks along rows.
    "row_streaks": (lambda im: ndimage.convolve1d(im, np.ones(3) / 3, axis=1, mode="reflect"), 1 / 3, {(0, 1): 2 / 3, (0, 2): 1 / 3}),
}


def raw_images(mixing: str, peak: float, *, offset: float = OFFSET, count: int = 6, size: int = 256, seed: int = 0, dtype=np.uint16) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    mix = MIXING[mixing][0]
    images = []
    for _ in range(count):
        photons = clean_photons(rng, size, peak)
        noisy = GAIN * rng.poisson(photons) + offset + rng.normal(0, READ_SD, photons.shape)
        if mix is not None:
            noisy = mix(noisy)
        info = np.iinfo(dtype)
        images.append(np.clip(np.rint(noisy), info.min, info.max).astype(dtype))
    return images


@pytest.mark.parametrize("peak", [5, 20, 100])
@pytest.mark.parametrize("mixing", sorted(MIXING))
def test_parameters_and_correlation_recovered(mixing, peak):
    _, factor, lags = MIXING[mixing]
    model = estimate_noise_model(raw_images(mixing, peak))
    true_gain = GAIN * factor
    true_read = READ_SD**2 * factor + ROUNDING_VARIANCE
    true_intercept = true_read - true_gain * OFFSET
    assert model.gain == pytest.approx(true_gain, rel=0.1)
    assert model.intercept == pytest.approx(true_intercept, rel=0.1)
    assert model.read_variance == pytest.approx(true_read, rel=0.1)
    assert model.offset == pytest.approx(OFFSET, abs=1.0)
    # The camera's gain before mixing comes back from the marginal gain and the correlation.
    assert model.camera_gain == pytest.approx(GAIN, rel=0.1)
    for dy, dx in [(0, 1), (0, 2), (1, 0), (2, 0), (1, 1), (1, -1)]:
        expected = lags.get((dy, dx), 0.0)
        tolerance = 0.05 if abs(expected) < 0.05 else 0.1 * abs(expected)
        assert model.lag(dy, dx) == pytest.approx(expected, abs=tolerance), (dy, dx)
        assert model.lag(-dy, -dx) == model.lag(dy, dx)
    assert model.lag(0, 0) == 1.0
    assert not model.processed
    assert model.clipped_fraction == 0 and model.saturated_fraction == 0


def test_correlated_offsets_name_the_mixed_neighbours():
    independent = estimate_noise_model(raw_images("independent", 20))
    assert independent.correlated_offsets() == []
    box = estimate_noise_model(raw_images("box2x2", 20))
    assert set(box.correlated_offsets()) == {(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)} - {(0, 0)}
    streaks = estimate_noise_model(raw_images("row_streaks", 20))
    assert set(streaks.correlated_offsets()) == {(0, 1), (0, -1), (0, 2), (0, -2)}


def test_clipped_and_saturated_pixels_are_counted_and_named():
    clipped = estimate_noise_model(raw_images("independent", 20, offset=0.0))
    assert clipped.clipped_fraction > 0.1
    assert any(note.startswith("clipped") for note in clipped.notes)
    twelve_bit = [np.minimum(image, 4095) for image in raw_images("independent", 100, offset=3900.0)]
    saturated = estimate_noise_model(twelve_bit, dtype_range=(0, 4095))
    assert saturated.saturated_fraction > 0.001
    assert any(note.startswith("saturated") for note in saturated.notes)
    # Saturated blocks are left out, so the gain still comes from the unsaturated ones.
    assert saturated.gain == pytest.approx(GAIN, rel=0.1)


def test_processed_data_are_recognised():
    raw = raw_images("independent", 20)
    normalised = estimate_noise_model([image.astype(np.float32) / 65535 for image in raw])
    assert normalised.processed
    assert any("non-integer floats in 0..1" in note for note in normalised.notes)
    rescaled = estimate_noise_model([np.rint(image.astype(np.float64) * 3.7).astype(np.uint16) for image in raw])
    assert rescaled.processed
    assert any("rescaled by a non-integer factor" in note for note in rescaled.notes)
    shifted = estimate_noise_model([image * 16 for image in raw])
    assert not shifted.processed
    assert any("step by 16" in note for note in shifted.notes)
    integral_floats = estimate_noise_model([image.astype(np.float32) for image in raw])
    assert not integral_floats.processed


def test_round_trip_through_dict():
    model = estimate_noise_model(raw_images("box2x2", 20, count=2))
    again = NoiseModel.from_dict(model.to_dict())
    assert again == model
    with pytest.raises(ValueError, match="missing"):
        NoiseModel.from_dict({"gain": 1.0})


def test_generalized_anscombe_stabilises_and_inverts_without_bias():
    model = NoiseModel(gain=GAIN, offset=OFFSET, read_variance=READ_SD**2, correlation=tuple(tuple(1.0 if (i, j) == (2, 2) else 0.0 for j in range(5)) for i in range(5)), clipped_fraction=0, saturated_fraction=0, processed=False, notes=())
    rng = np.random.default_rng(1)
    for photons in [0.5, 2.0, 10.0, 80.0]:
        raw = GAIN * rng.poisson(photons, 400_000) + OFFSET + rng.normal(0, READ_SD, 400_000)
        stabilised = generalized_anscombe(raw, model)
        if photons >= 10:  # below a few photons no transform makes the variance exactly 1
            assert stabilised.var() == pytest.approx(1.0, abs=0.1)
        # The exact unbiased inverse maps the mean of the transformed data back to the signal.
        signal = GAIN * photons + OFFSET
        assert inverse_generalized_anscombe(np.array([stabilised.mean()]), model)[0] == pytest.approx(signal, abs=0.05 * GAIN * photons + 0.05)


def test_bad_input_is_refused_clearly():
    with pytest.raises(ValueError, match="usable 16 x 16 blocks"):
        estimate_noise_model(np.zeros((20, 20), dtype=np.uint16) + 5)
    with pytest.raises(ValueError, match="2-D"):
        estimate_noise_model([np.zeros((4, 4, 4))])
