"""QC's noise models per plate: one pixel mixing, the camera's, shared by the plate's channels (issue 18:
on a confluent real site a stain fitted alone read its texture as correlated noise, and the report's
noise-model table showed a different "camera" per channel)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import zarr
from scipy import ndimage

from jump_n2v.demo import mix_pixels
from jump_n2v.noise import SHORT_RANGE_TOLERANCE, SiteNoiseModels
from jump_n2v.qc import QCInputError, channel_noise_model, plate_noise_models, read_site_noise_models, run_plate_noise_models
from jump_n2v.qc.files import write_site_noise_models
from real_fields import site_channels


def _array(images: np.ndarray) -> zarr.Array:
    array = zarr.create_array(store=zarr.storage.MemoryStore(), shape=images.shape, chunks=(1, *images.shape[1:]), dtype=images.dtype)
    array[:] = images
    array.attrs.update(dtype_range=[0, 65535], image_ids=[str(i) for i in range(len(images))])
    return array


def _camera(photons: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """2 x 2-mixed Poisson-Gaussian camera counts (gain 2, offset 100, read sd 3), as uint16."""
    noisy = mix_pixels(2.0 * rng.poisson(photons) + 100.0 + rng.normal(0, 3.0, photons.shape), "box2x2")
    return np.clip(np.rint(noisy), 0, 65535).astype(np.uint16)


def _synthetic_plate(rng: np.random.Generator) -> dict[str, zarr.Array]:
    """A confluent stain (texture at every scale down to two pixels, everywhere) and a sparse one
    (a flat background with a few spots), both from one 2 x 2-mixing camera."""
    images = {"Confluent": [], "Sparse": []}
    for _ in range(4):
        texture = ndimage.gaussian_filter(rng.standard_normal((256, 256)), 1.2)
        images["Confluent"].append(_camera(60.0 + 40.0 * np.clip(texture / texture.std(), -1.4, 3), rng))
        spots = ndimage.gaussian_filter((rng.random((256, 256)) > 0.999).astype(float), 3.0)
        images["Sparse"].append(_camera(8.0 + 60.0 * spots / spots.max(), rng))
    return {name: _array(np.stack(stack)) for name, stack in images.items()}


def test_every_channel_of_a_plate_gets_the_mixing_measured_where_noise_dominates():
    arrays = _synthetic_plate(np.random.default_rng(0))
    alone = channel_noise_model(arrays["Confluent"], images=4)
    assert abs(alone.lag(0, 2)) > SHORT_RANGE_TOLERANCE  # texture read as noise when fitted alone
    site = plate_noise_models(arrays, {"Confluent": 4, "Sparse": 4})
    assert site.mixing is not None and "Sparse" in site.mixing_channels, site.notes
    mixing = np.asarray(site.mixing)
    assert 0.4 <= mixing[2, 3] <= 0.6 and 0.4 <= mixing[3, 2] <= 0.6
    for name, model in site.models.items():
        assert np.allclose(model.correlation_array, mixing), name
        assert any("mixing measured on" in note for note in model.notes), name  # the report's notes say so


def test_the_plate_noise_models_round_trip_and_a_broken_file_is_named(tmp_path):
    arrays = _synthetic_plate(np.random.default_rng(1))
    path = tmp_path / "noise_models.json"
    written = run_plate_noise_models(arrays, path, {"Confluent": {"noise_model_images": 2}, "Sparse": {"noise_model_images": 2}})
    assert read_site_noise_models(path) == written
    assert SiteNoiseModels.from_dict(json.loads(path.read_text())) == written
    write_site_noise_models(written, tmp_path / "again.json")
    assert (tmp_path / "again.json").read_text() == path.read_text()
    (tmp_path / "broken.json").write_text('{"mixing": null}')
    with pytest.raises(QCInputError, match="broken.json"):
        read_site_noise_models(tmp_path / "broken.json")


@pytest.mark.slow
def test_qc_fits_a_real_confluent_site_with_the_camera_of_its_background_dominated_channel():
    # Version5 (pe2loaddata 0.2.0): RNA fitted alone read gain 46 and lag-2 0.40 (texture); with the site's
    # mixing, measured on Mito's background, every channel reads lag-1 about 0.49 and lag-2 0.
    files = site_channels("Version5")
    arrays = {name: _array(tifffile.imread(files[name])[None]) for name in ("RNA", "ER", "AGP", "Mito")}
    assert abs(channel_noise_model(arrays["RNA"]).lag(0, 2)) > 0.3
    site = plate_noise_models(arrays, {name: 1 for name in arrays})
    assert site.agree and site.mixing_channels == ("Mito",), site.notes
    for name, model in site.models.items():
        assert 0.4 <= model.lag(0, 1) <= 0.55 and model.lag(0, 2) == 0.0, name
        assert model.gain > 0, name
