"""Images unlike the training data: the record training writes, the check prediction runs, the QC flag.

One small N2V model is trained on the DNA stain of demo sites at one exposure with independent noise.
New sites of that acquisition must not be flagged; a quarter of the light, 2 x 2-mixed noise and
another stain must, naming the statistics that moved (benchmarks/calibrate_training_check.py measured
them on seeds 0-5; the margins to each tolerance are in the schema's descriptions).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from conftest import demo_sites, torch_pinned
from jump_n2v.settings import resolve_section
from jump_n2v.demo import DemoSpec
from jump_n2v.n2v.similarity import (
    QUANTILE_LEVELS, STATISTICS, TOLERANCE_SETTINGS, check_array, comparison_path, compare_with_training, masked_loss,
)
from jump_n2v.n2v.trained import load_trained
from jump_n2v.n2v.training import N2VSettings, train_channel
from jump_n2v.plumbing.ngff import create_channel_array
from jump_n2v.noise import estimate_noise_model
from jump_n2v.predict.runner import denoise_image
from jump_n2v.qc.files import read_training_check
from jump_n2v.qc.measures import image_metrics
from jump_n2v.qc.summary import FLAG_DESCRIPTIONS, summarize

SPEC = DemoSpec(size=128, cells_per_site=4)
# A few seconds of training on one thread (the calibration's settings).
SMALL = dict(patch_size=32, batch_size=8, base_filters=8, epochs=4, steps_per_epoch=25, validation_patches=256,
             device="cpu", learning_rate=0.004, masked_fraction=0.02, train_images=4, seed=0)
PREDICT = resolve_section("predict")
TOLERANCES = {name: PREDICT[key] for name, key in TOLERANCE_SETTINGS.items()}
NEW_SITES = 1000  # seed of the sites compared: never the training sites


def demo_images(channel="DNA", *, light=1.0, box=False, seed=0, sites=4):
    """Raw uint16 demo sites; ``light`` scales every photon count, ``box`` mixes the noise 2 x 2."""
    spec = SPEC if light == 1.0 else dataclasses.replace(
        SPEC, peak_photons={k: v * light for k, v in SPEC.peak_photons.items()}, background_photons=SPEC.background_photons * light)
    return demo_sites(spec, sites, channel, box=box, seed=seed)[0]


def channel_store(path, images, plate="P1", channel="DNA"):
    array = create_channel_array(path, shape=(len(images),) + images[0].shape, chunks=(1,) + images[0].shape,
                                 dtype="uint16", attributes={"plate": plate, "channel": channel})
    array[:] = np.stack(images)
    return array


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """One training trajectory per CPU (one thread, deterministic algorithms), a few seconds."""
    folder = tmp_path_factory.mktemp("unlike")
    with torch_pinned():
        channel_store(folder / "raw.zarr", demo_images())
        train_channel([str(folder / "raw.zarr")], N2VSettings.from_dict(SMALL), folder / "model", log=logging.getLogger("test"))
    return folder / "model"


@pytest.fixture(scope="module")
def trained(model_dir):
    return load_trained(model_dir)


def compare(trained, images):
    return compare_with_training(trained, images, TOLERANCES, patches=PREDICT["training_check_patches"], seed=0)


def test_model_json_records_the_training_data(model_dir):
    metadata = json.loads((model_dir / "model.json").read_text())
    record = metadata["training_data"]
    assert record["quantile_levels"] == list(QUANTILE_LEVELS)
    assert record["quantiles"] == sorted(record["quantiles"]) and len(record["quantiles"]) == len(QUANTILE_LEVELS)
    # Normalised by the training pixels' median: the median of the (same) training images sits at 0.
    assert abs(record["quantiles"][QUANTILE_LEVELS.index(50)]) < 0.1
    assert 0 < record["masked_loss"] <= metadata["training"]["best_val_loss"] < record["masked_loss_cap"]
    noise = record["noise"]
    assert noise["gain"] == metadata["noise_model"]["gain"]
    assert abs(noise["lag1_x"]) < 0.1 and abs(noise["lag1_y"]) < 0.1  # independent noise
    assert record["images"] == len(metadata["data"]["train_images"])


def test_new_images_of_the_same_acquisition_are_not_flagged(trained):
    comparison = compare(trained, demo_images(seed=NEW_SITES))
    assert comparison["comparable"] and comparison["moved"] == [], comparison["statistics"]
    assert set(comparison["statistics"]) == set(STATISTICS)
    assert all(entry["change"] is not None for entry in comparison["statistics"].values())


def with_debris(image, radius=5):
    """``image`` with one disc of debris at the saturation level, tens of times brighter than its cells."""
    yy, xx = np.mgrid[: image.shape[0], : image.shape[1]]
    debris = (yy - image.shape[0] // 3) ** 2 + (xx - image.shape[1] // 3) ** 2 <= radius**2
    out = image.copy()
    out[debris] = np.iinfo(np.uint16).max
    return out


def test_one_debris_object_does_not_make_new_sites_of_the_acquisition_unlike_it(trained):
    # Real sparse fields hold such objects (pe2loaddata's Version1 site): the mean masked loss over all blind
    # spots is set by the few patches that touch it, and flagged the very image a model was trained on.
    images = demo_images(seed=NEW_SITES)
    assert images[0].max() * 20 < np.iinfo(np.uint16).max
    images[0] = with_debris(images[0])
    statistics = compare(trained, images)["statistics"]
    assert not statistics["masked_loss"]["moved"], statistics["masked_loss"]


def record_cap(model_dir):
    return json.loads((model_dir / "model.json").read_text())["training_data"]["masked_loss_cap"]


def test_a_record_of_format_1_is_compared_by_its_mean_masked_loss(model_dir, tmp_path):
    old = tmp_path / "format1"
    shutil.copytree(model_dir, old)
    metadata = json.loads((old / "model.json").read_text())
    record = metadata["training_data"]
    del record["masked_loss_cap"]
    record.update(format=1, masked_loss=metadata["training"]["best_val_loss"])
    (old / "model.json").write_text(json.dumps(metadata))
    trained = load_trained(old)
    images = demo_images(seed=NEW_SITES)
    entry = compare(trained, images)["statistics"]["masked_loss"]
    patches = PREDICT["training_check_patches"]
    assert entry["training"] == metadata["training"]["best_val_loss"]
    assert entry["sample"] == pytest.approx(masked_loss(trained, images, patches, 0, None))
    assert entry["sample"] != pytest.approx(masked_loss(trained, images, patches, 0, record_cap(model_dir)))


def test_a_quarter_of_the_light_is_flagged_on_intensity_and_read_noise(trained):
    comparison = compare(trained, demo_images(light=0.25, seed=NEW_SITES))
    assert {"intensity", "noise_read_sd"} <= set(comparison["moved"]), comparison["statistics"]


def test_correlated_noise_is_flagged_when_trained_on_independent_noise(trained):
    comparison = compare(trained, demo_images(box=True, seed=NEW_SITES))
    assert {"noise_lag1", "noise_gain"} <= set(comparison["moved"]), comparison["statistics"]
    assert comparison["statistics"]["noise_lag1"]["change"] > 0.4  # 2 x 2 box: lag-1 about 0.5


@pytest.mark.parametrize("stain", ["ER", "RNA", "AGP", "Mito"])
def test_another_stain_is_flagged(trained, stain):
    comparison = compare(trained, demo_images(stain, seed=NEW_SITES))
    assert "intensity" in comparison["moved"], comparison["statistics"]


def test_a_model_without_the_record_still_predicts_and_is_not_flagged(model_dir, tmp_path, caplog):
    old = tmp_path / "old_model"
    shutil.copytree(model_dir, old)
    metadata = json.loads((old / "model.json").read_text())
    del metadata["training_data"]
    (old / "model.json").write_text(json.dumps(metadata))
    trained = load_trained(old)
    images = demo_images(light=0.25, seed=NEW_SITES)  # would be flagged with the record
    source = channel_store(tmp_path / "raw.zarr", images)
    with caplog.at_level(logging.INFO):
        comparison = check_array(trained, source, tmp_path / "check.json", PREDICT, log=logging.getLogger("test"))
    assert comparison["comparable"] is False and comparison["moved"] == []
    assert "no training_data record" in comparison["notes"][0]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert denoise_image(trained.net, images[0], trained.mean, trained.std, {"device": "cpu"}).shape == images[0].shape
    row = summary_row(images, read_training_check(tmp_path / "check.json"))
    assert "unlike_training_data" not in row["flags"]


def test_check_array_writes_the_comparison_and_warns_naming_what_moved(trained, tmp_path, caplog):
    source = channel_store(tmp_path / "raw.zarr", demo_images(box=True, seed=NEW_SITES), plate="P2")
    out = comparison_path(tmp_path / "denoised" / "DNA.zarr")
    assert out == tmp_path / "denoised" / "DNA.training_check.json"
    out.parent.mkdir()
    with caplog.at_level(logging.INFO):
        comparison = check_array(trained, source, out, PREDICT, model="m/model.json", log=logging.getLogger("test"))
    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(comparison))
    assert (written["plate"], written["channel"], written["model"]) == ("P2", "DNA", "m/model.json")
    assert len(written["sampled_rows"]) == min(PREDICT["training_check_images"], 4)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "unlike the model's training data" in warnings[0] and "noise_lag1" in warnings[0]
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # atomic: no temporary left


def summary_row(images, check, plate="P1"):
    model = estimate_noise_model(images)
    outputs = [ndimage.gaussian_filter(image.astype(np.float64), 1.0) for image in images]
    rows = [{"experiment": "E", "plate": plate, "channel": "DNA", "image": str(i), **image_metrics(raw, out, None, model)}
            for i, (raw, out) in enumerate(zip(images, outputs))]
    return summarize([pd.DataFrame(rows)], training_checks={(plate, "DNA"): check}).iloc[0]


@pytest.mark.parametrize("case", ["same", "quarter_light"])
def test_the_flag_reaches_the_summary_from_the_predict_steps_json(trained, tmp_path, case):
    images = demo_images(light=1.0 if case == "same" else 0.25, seed=NEW_SITES)
    check_array(trained, channel_store(tmp_path / "raw.zarr", images), tmp_path / "DNA.training_check.json", PREDICT)
    row = summary_row(images, read_training_check(tmp_path / "DNA.training_check.json"))
    assert ("unlike_training_data" in row["flags"]) == (case == "quarter_light"), row["flags"]
    if case == "quarter_light":
        assert "intensity" in row["training_check_moved"] and "tolerance 0.35" in row["training_check_moved"]
    else:
        assert row["training_check_moved"] is None
    assert "unlike_training_data" in FLAG_DESCRIPTIONS


def test_the_cli_predict_warns_and_writes_the_comparison(model_dir, tmp_path, capsys):
    from jump_n2v.cli import main

    channel_store(tmp_path / "raw.zarr", demo_images("Mito", seed=NEW_SITES, sites=2))
    assert main(["predict", str(model_dir), str(tmp_path / "raw.zarr"), str(tmp_path / "DNA.zarr"), "--threads", "1",
                 "--set", "device=cpu"]) == 0
    printed = capsys.readouterr().out
    assert "WARNING:" in printed and "intensity" in printed
    assert "intensity" in json.loads((tmp_path / "DNA.training_check.json").read_text())["moved"]


def test_the_cli_denoise_warns_about_one_image_of_another_stain(model_dir, tmp_path, capsys):
    import tifffile

    from jump_n2v.cli import main

    tifffile.imwrite(tmp_path / "mito.tif", demo_images("Mito", seed=NEW_SITES, sites=1)[0])
    assert main(["denoise", str(model_dir), str(tmp_path / "mito.tif"), str(tmp_path / "out.tif"), "--threads", "1",
                 "--set", "device=cpu"]) == 0
    printed = capsys.readouterr().out
    assert "WARNING:" in printed and "intensity" in printed and (tmp_path / "out.tif").exists()
