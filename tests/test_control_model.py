"""The control model per channel (qc.control_model): its training, its prediction of QC's sample, the
disagreement QC measures and the model_disagreement flag, on synthetic plates.

One small DNA model (the main one) is trained on 4 of 8 demo sites; its control with train_control (seed
+ 1000, the other 4 sites), and an under-trained control (1 epoch of 3 steps). The numbers they must keep
to were measured by benchmarks/calibrate_disagreement.py (docs/qc.md 'Control model'): two well-trained
models read 0.8-1.2 sigma (p99 on structure), under-trained controls 2.3-2.4, the threshold is 2.0.
"""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import TINY_CONFIG, demo_camera, demo_sites, run_snakemake, torch_pinned
from jump_n2v.demo import DemoSpec, render_site
from jump_n2v.n2v.control import CONTROL_SEED_OFFSET, control_settings, plan_control, read_control, train_control
from jump_n2v.n2v.sampling import PatchSampler
from jump_n2v.n2v.trained import load_trained
from jump_n2v.n2v.training import N2VSettings, train_channel
from jump_n2v.noise import estimate_noise_model
from jump_n2v.plumbing.ngff import create_channel_array, open_channel_array
from jump_n2v.predict.arrays import predict_array
from jump_n2v.predict.control import predict_control
from jump_n2v.predict.runner import denoise_image
from jump_n2v.qc import run_channel_qc, run_disagreement_qc
from jump_n2v.qc.disagreement import image_disagreement
from jump_n2v.qc.summary import FLAG_DESCRIPTIONS, summarize
from jump_n2v.settings import ConfigError, QCSettings
from workflow_copy import REPO, copy_workflow

SPEC = DemoSpec(size=128, cells_per_site=4)
# The calibration's "well trained" budget: about 9 s per model on one thread.
WELL_TRAINED = dict(patch_size=32, batch_size=8, base_filters=8, epochs=10, steps_per_epoch=50, validation_patches=256,
                    device="cpu", learning_rate=0.004, masked_fraction=0.02, train_images=4, seed=0)
UNDER_TRAINED = dict(epochs=1, steps_per_epoch=3)
QC = QCSettings.from_dict({"control_model": True})
LOG = logging.getLogger("test")


def channel_store(path, images, channel="DNA"):
    array = create_channel_array(path, shape=(len(images),) + images[0].shape, chunks=(1,) + images[0].shape, dtype="uint16",
                                 attributes={"plate": "P1", "channel": channel, "image_ids": list(range(len(images)))})
    array[:] = np.stack(images)
    return path


def flat_sites(count, seed):
    """The demo's background level everywhere through its camera: pure noise, nothing to find."""
    rng = np.random.default_rng(seed)
    return [np.clip(np.rint(demo_camera(SPEC, np.full((SPEC.size, SPEC.size), SPEC.background_photons), rng)), 0, 65535).astype(np.uint16)
            for _ in range(count)]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The main model, its control (train_control) and an under-trained control, once for the module."""
    folder = tmp_path_factory.mktemp("control")
    training = channel_store(folder / "training.zarr", demo_sites(SPEC, 8, "DNA", seed=0)[0])
    settings = N2VSettings.from_dict(WELL_TRAINED)
    with torch_pinned():
        train_channel([str(training)], settings, folder / "main", log=LOG)
        train_control([str(training)], settings, folder / "main" / "model.json", folder / "main" / "control", log=LOG)
        excluded = [tuple(image) for image in read_control(folder / "main" / "control")["excluded_images"]]
        under = dataclasses.replace(control_settings(settings), **UNDER_TRAINED)
        train_channel([str(training)], under, folder / "under", log=LOG, exclude_images=excluded)
    return {"folder": folder, "main": folder / "main", "control": folder / "main" / "control", "under": folder / "under"}


def channel_qc(models, control_dir, images, name):
    """QC of a plate whose raw images are ``images``: the main model's prediction, the control's of QC's
    sample, run_channel_qc and run_disagreement_qc; returns (summary row, disagreement table)."""
    folder = models["folder"] / name
    raw = channel_store(folder / "raw.zarr", images)
    main = load_trained(models["main"])
    with torch_pinned():
        predict_array(main.net, main.mean, main.std, raw, folder / "denoised.zarr", posterior=main.posterior)
        control_record = read_control(models["control"])
        predict_control(load_trained(control_dir), raw, folder / "control.zarr", None, images=QC.control_images, seed=QC.seed,
                        attrs={"control_disjoint": control_record["disjoint"]})
    metrics = run_channel_qc(raw, folder / "denoised.zarr", folder / "qc", qc_settings=QC.to_dict())
    disagreement = run_disagreement_qc(folder / "denoised.zarr", folder / "control.zarr", folder / "qc" / "noise_model.json", folder / "qc")
    table = metrics.merge(disagreement, on="image", how="left")
    summary = summarize([table], qc_settings={"DNA": QC.to_dict()})
    return summary.iloc[0], disagreement


def test_the_control_trains_on_images_the_main_model_did_not_use(models):
    main = json.loads((models["main"] / "model.json").read_text())["data"]
    control = json.loads((models["control"] / "model.json").read_text())
    record = read_control(models["control"])
    used = {tuple(image) for image in main["train_images"] + main["validation_images"]}
    seen = {tuple(image) for image in control["data"]["train_images"] + control["data"]["validation_images"]}
    assert len(used) == len(seen) == 4 and not used & seen
    assert record["disjoint"] is True and record["seed"] == control["seed"] == WELL_TRAINED["seed"] + CONTROL_SEED_OFFSET
    assert {tuple(image) for image in control["data"]["excluded_images"]} == used
    # The main model's record keeps its old form: no excluded_images key.
    assert "excluded_images" not in main


def test_two_well_trained_models_agree_within_the_bound(models):
    row, disagreement = channel_qc(models, models["control"], demo_sites(SPEC, 4, "DNA", seed=2000)[0], "agree")
    assert len(disagreement) == QC.control_images and disagreement["control_disjoint"].all()
    assert row["disagreement_check_p99_median"] < QC.model_disagreement_threshold, row.filter(like="disagreement")
    assert row["disagreement_mean_median"] < 0.3  # well under a noise sigma on average
    assert "model_disagreement" not in row["flags"] and bool(row["control_disjoint"])


def test_an_under_trained_control_is_flagged(models):
    row, _ = channel_qc(models, models["under"], demo_sites(SPEC, 4, "DNA", seed=2000)[0], "under")
    assert row["disagreement_check_p99_median"] > QC.model_disagreement_threshold, row.filter(like="disagreement")
    assert "model_disagreement" in row["flags"]


def test_structure_invented_on_a_flat_image_is_flagged(models):
    """Cells-trained models applied to pure noise: the trained pair outputs the flat level (they do not
    invent structure: calibration 0.15-0.20 sigma), so the invention is put into one output by hand, as
    cells at 4 noise sigmas that the other output lacks; the check must read it far above the bound."""
    flat = flat_sites(2, seed=3000)
    noise = estimate_noise_model(flat, seed=0)
    main, control = load_trained(models["main"]), load_trained(models["control"])
    invented = render_site(SPEC, np.random.default_rng(5))["DNA"]
    invented = invented / invented.max()
    for raw in flat:
        with torch_pinned():
            main_out = denoise_image(main.net, raw, main.mean, main.std, posterior=main.posterior)
            control_out = denoise_image(control.net, raw, control.mean, control.std, posterior=control.posterior)
        honest = image_disagreement(main_out, control_out, noise)
        assert honest["disagreement_check_p99"] < 0.5 * QC.model_disagreement_threshold, honest
        sigma = np.sqrt(noise.variance(main_out))
        hallucinated = image_disagreement(main_out + 4 * sigma * invented, control_out, noise)
        assert hallucinated["disagreement_check_p99"] > QC.model_disagreement_threshold, hallucinated


def test_the_flag_is_described_and_its_threshold_and_sample_are_validated():
    assert "model_disagreement" in FLAG_DESCRIPTIONS and "qc.model_disagreement_threshold" in FLAG_DESCRIPTIONS["model_disagreement"]
    defaults = QCSettings.from_dict()
    assert defaults.control_model is False and defaults.control_images >= 1 and defaults.model_disagreement_threshold > 0
    with pytest.raises(ConfigError, match="control_images must be an integer >= 1"):
        QCSettings.from_dict({"control_images": 0})
    with pytest.raises(ConfigError, match="model_disagreement_threshold must be a number >= 0"):
        QCSettings.from_dict({"model_disagreement_threshold": -1})
    with pytest.raises(ConfigError, match="control_model must be true or false"):
        QCSettings.from_dict({"control_model": "yes"})


# -- the control's images -------------------------------------------------------------------------------


def test_a_plate_with_enough_unused_images_gets_a_disjoint_control():
    plan = plan_control([(0, 1), (0, 4)], [6], seed=0)
    assert plan.disjoint and plan.excluded_images == [(0, 1), (0, 4)] and "did not use (4 of 6)" in plan.note


def test_a_small_plate_gets_a_seeded_half_of_all_images_recorded_as_not_disjoint():
    plan = plan_control([(0, i) for i in range(6)], [6], seed=0)
    assert not plan.disjoint and len(plan.excluded_images) == 3 and "seeded half of all images (3)" in plan.note
    assert plan == plan_control([(0, i) for i in range(6)], [6], seed=0)  # seeded


def test_excluded_images_are_never_sampled_and_no_exclusion_keeps_the_old_draw():
    images = np.random.default_rng(0).integers(0, 1000, size=(10, 32, 32)).astype(np.uint16)
    common = dict(patch_size=16, train_images=4, validation_fraction=0.25, validation_patches=4, augment=False, seed=3)
    plain = PatchSampler([images], **common)
    rng = np.random.default_rng([3, 1, 0])  # the selection stream every model has been trained with
    assert sorted(plain.train_images + plain.validation_images) == [(0, int(i)) for i in np.sort(rng.choice(10, 4, replace=False))]
    used = plain.train_images + plain.validation_images
    other = PatchSampler([images], **common, exclude=used)
    assert len(other.train_images + other.validation_images) == 4 and not set(used) & set(other.train_images + other.validation_images)
    with pytest.raises(ValueError, match="no images left to train on"):
        PatchSampler([images], **common, exclude=[(0, i) for i in range(10)])


# -- the workflow ---------------------------------------------------------------------------------------


@pytest.mark.workflow
def test_the_workflow_trains_predicts_measures_and_reports_the_control(tmp_path):
    """The tiny plate, DNA only, with qc.control_model on: its 4 sites are all the main model's, so the
    control trains on a seeded half of them and says so."""
    config = yaml.safe_load(TINY_CONFIG.read_text())
    experiment = config["experiments"]["tiny"]
    experiment["channels"] = ["DNA"]
    experiment["settings"]["export"] = {"export_tiff": False, "export_ome_zarr": False}
    experiment["settings"]["qc"]["control_model"] = True
    experiment.pop("channel_settings")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    copy_workflow(tmp_path, ["tests/data/tiny_plates.tsv"])
    result = run_snakemake("--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path), "--configfile",
                           str(tmp_path / "config.yaml"), "--cores", "2", timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    results = tmp_path / "results" / "tiny"
    control = read_control(results / "models" / "TinyPlate" / "DNA" / "control")
    assert control["disjoint"] is False and "seeded half of all images" in control["note"]
    assert (results / "models" / "TinyPlate" / "DNA" / "control" / "model.pt").stat().st_size > 0
    sample = open_channel_array(results / "TinyPlate" / "qc" / "DNA" / "control.zarr")
    assert sample.shape == (4, 64, 64) and sorted(sample.attrs["image_ids"]) == [0, 1, 2, 3]
    assert sample.attrs["control_disjoint"] is False
    assert (results / "TinyPlate" / "qc" / "DNA" / "disagreement.png").stat().st_size > 0
    summary = pd.read_csv(results / "report" / "summary.csv")
    for column in ("disagreement_mean_median", "disagreement_structure_p99_median", "disagreement_background_p99_median",
                   "disagreement_check_p99_median"):
        assert np.isfinite(summary[column].iloc[0]), column
    assert not summary["control_disjoint"].iloc[0]
    html = (results / "report" / "report.html").read_text()
    assert "main model | control model" in html and "TinyPlate DNA disagreement_png" in html  # the figure, embedded
    assert "control: p99 judged" in html and "control model disagreement" in html  # the column and its definition
