"""The noise model on real Opera Phenix fields (issue 18): one pixel mixing per site, and known noise on
real texture (tests/real_texture.py builds it from the Version7 binning-1 fields)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
import tifffile

from jump_n2v.n2v.blind_spot import decide_blind_spot
from jump_n2v.n2v.training import N2VSettings
from jump_n2v.noise import estimate_noise_model, estimate_site_noise_models, shows_short_range_mixing
from real_fields import VERSIONS, site_channels
from real_texture import clean_base, estimator_errors, known_noise_image

EIGHT_NEIGHBOURS = {(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)} - {(0, 0)}
STAINS_V7 = ("Actin", "ER", "RNA", "AGP", "Mito", "Brightfield", "DNA")
CAMERA_GAIN, READ_SD = 16.0, 8.0  # ADU per electron and ADU: about 30-300 photons per pixel on these fields

# Noise models estimated on whole real fields, site after site: a minute and a half of CPU, so not in make test-unit.
pytestmark = pytest.mark.slow


def _region(model) -> set[tuple[int, int]]:
    region, _ = decide_blind_spot(N2VSettings.from_dict({}), model)
    return set() if region is None else set(region.offsets)


@lru_cache(maxsize=None)
def _real_site(version: str):
    images = {name: tifffile.imread(path) for name, path in site_channels(version).items()}
    return images, estimate_site_noise_models(images)


@pytest.mark.parametrize("version", VERSIONS)
def test_a_real_site_has_one_mixing_that_its_background_dominated_channels_agree_with(version):
    # Before (7e20fe8) each image was fitted alone: 12 of 19 blind regions grew past the 8 neighbours
    # (up to 24) because texture read as correlated noise.
    images, site = _real_site(version)
    assert site.mixing is not None and site.agree, site.notes
    mixing = np.asarray(site.mixing)
    assert 0.4 <= mixing[2, 3] <= 0.55 and 0.4 <= mixing[3, 2] <= 0.55  # nearest-neighbour mixing
    assert np.all(mixing[[0, 4], :] == 0) and np.all(mixing[:, [0, 4]] == 0)
    # The channels whose own whole-image fit shows the mixing signature agree with the site's mixing;
    # measured 2026-12-07: within 0.054 (brightfield, whose illumination texture adds a little at lag 1).
    # (On Version7 no whole image does: its DNA reads lag-2 0.11; the site's mixing comes from DNA's background bins.)
    background = [name for name, image in images.items() if shows_short_range_mixing(estimate_noise_model(image))]
    assert background or version == "Version7"
    for name in background:
        own = estimate_noise_model(images[name])
        assert abs(own.lag(0, 1) - mixing[2, 3]) <= 0.06 and abs(own.lag(1, 0) - mixing[3, 2]) <= 0.06, name
    for name, model in site.models.items():
        assert np.allclose(model.correlation_array, mixing, atol=1e-6), name
        assert _region(model) == EIGHT_NEIGHBOURS, name


def test_the_background_dominated_channels_are_found_where_the_issue_measured_them():
    # Version5: Mito and brightfield read lag-1 0.44-0.46 and lag-2 ~0; RNA / ER / AGP hold texture at lag 2.
    images, _ = _real_site("Version5")
    own = {name: estimate_noise_model(image) for name, image in images.items()}
    assert shows_short_range_mixing(own["Mito"]) and shows_short_range_mixing(own["Brightfield"])
    assert not any(shows_short_range_mixing(own[name]) for name in ("RNA", "ER", "AGP"))


@lru_cache(maxsize=None)
def _known_noise_site(mixed: bool):
    made = {stain: known_noise_image(clean_base("Version7", stain), camera_gain=CAMERA_GAIN, read_sd=READ_SD,
                                     mixed=mixed, seed=index) for index, stain in enumerate(STAINS_V7)}
    site = estimate_site_noise_models({stain: image for stain, (image, _) in made.items()})
    return {stain: estimator_errors(site.models[stain], truth, _region(site.models[stain])) for stain, (_, truth) in made.items()}


@pytest.mark.parametrize("mixed", [False, True], ids=["independent", "box2x2"])
@pytest.mark.parametrize("stain", STAINS_V7)
def test_known_noise_on_real_texture_correlation_and_blind_region(stain, mixed):
    errors = _known_noise_site(mixed)[stain]
    assert errors["lag1_error"] <= 0.05 and errors["lag2_error"] <= 0.05, errors
    assert errors["region_within_truth"], errors


# Measured 2026-12-07 (benchmarks/bench_noise_real.py): where texture holds more variance than the noise in
# every frequency band the noise occupies, the variance line reads high (a 2 x 2 box leaves the noise a
# quarter of its variance and removes it at Nyquist, where texture is weakest). Not loosened; named here.
VARIANCE_MISSES = {
    (False, "RNA"): "read variance +10.2 %",
    (True, "Actin"): "gain +20 %, read variance +17 %: texture",
    (True, "ER"): "gain +16 %, read variance +25 %: texture",
    (True, "AGP"): "gain +11 %",
    (True, "Mito"): "gain +11 %, read variance +30 %: texture in the darkest blocks",
    (True, "Brightfield"): "gain +14 %: illumination texture",
    (True, "DNA"): "read variance +15 %",
}


@pytest.mark.parametrize("mixed", [False, True], ids=["independent", "box2x2"])
@pytest.mark.parametrize("stain", STAINS_V7)
def test_known_noise_on_real_texture_gain_and_read_variance(stain, mixed, request):
    miss = VARIANCE_MISSES.get((mixed, stain))
    if miss:
        request.applymarker(pytest.mark.xfail(reason=f"measured miss, bound kept: {miss}", strict=True))
    errors = _known_noise_site(mixed)[stain]
    assert abs(errors["gain_error"]) <= 0.1 and abs(errors["read_error"]) <= 0.1, errors
