"""N2V training: settings, learning, reproducibility, resuming, atomic outputs, loading."""

import csv
import dataclasses
import json
import logging

import numpy as np
import pytest
import torch
import zarr

from conftest import TINY_N2V, png_size
from jump_n2v.settings import load_schema
from jump_n2v.training_log import loss_figure_size
from jump_n2v.n2v import training
from jump_n2v.n2v.masking import StructMask
from jump_n2v.n2v.trained import load_trained
from jump_n2v.n2v.training import N2VSettings, train_channel

torch.set_num_threads(1)

TINY = {**TINY_N2V, "epochs": 4, "train_images": 8, "learning_rate": 0.004}
OUTPUTS = ("model.pt", "model.json", "training_log.csv", "training_curve.png")


def _noisy_plate(path, images=4, size=32, noise=0.3, seed=0):
    """Smooth stripes plus Gaussian noise; the clean image is returned too."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    clean = np.sin(xx / 3.0) + np.cos(yy / 4.0)
    data = np.stack([clean + rng.normal(0, noise, clean.shape) for _ in range(images)]).astype("float32")
    array = zarr.create_array(store=str(path), shape=data.shape, chunks=(1, size, size), dtype="float32")
    array[:] = data
    return str(path), clean


@pytest.fixture
def plate(tmp_path):
    path, _ = _noisy_plate(tmp_path / "plate.zarr")
    return path


def _settings(**overrides):
    return N2VSettings.from_dict({**TINY, **overrides})


def _weights(model_dir):
    return torch.load(model_dir / "model.pt", weights_only=True)["state_dict"]


def _log_rows(model_dir):
    with open(model_dir / "training_log.csv") as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


def _assert_same_weights(first, second):
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


# -- settings ------------------------------------------------------------------------------------


def test_settings_have_exactly_the_schema_fields_and_its_defaults():
    properties = load_schema()["definitions"]["n2v"]["properties"]
    assert [f.name for f in dataclasses.fields(N2VSettings)] == list(properties)
    defaults = N2VSettings.from_dict({})
    assert defaults.to_dict() == {key: spec["default"] for key, spec in properties.items()}


def test_settings_round_trip_with_a_struct_mask():
    settings = N2VSettings.from_dict({"struct_mask": {"axis": "column", "span": 5}, "variant": "n2v2"})
    assert settings.struct_mask == StructMask("column", 5)
    assert settings.replacement == "median"
    assert N2VSettings.from_dict(settings.to_dict()) == settings


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"patch_size": 60, "depth": 3}, "multiple of 2\\*\\*depth = 8"),
        ({"roi_size": 10}, "roi_size must be odd"),
        ({"roi_size": 31, "patch_size": 16, "depth": 1}, "larger than patch_size"),
        ({"struct_mask": {"axis": "row", "span": 4}}, "span must be odd"),
        ({"struct_mask": {"axis": "diagonal", "span": 3}}, "struct_mask"),
        ({"device": "gpu"}, "device must be"),
        ({"batch_size": "32"}, "batch_size: '32' is not of type 'integer'"),
        ({"lr_schedule": "step"}, "lr_schedule"),
        ({"epochz": 3}, "unknown n2v setting 'epochz'"),
    ],
)
def test_bad_settings_are_refused_with_a_clear_message(overrides, message):
    with pytest.raises(ValueError, match=message):
        N2VSettings.from_dict(overrides)


# -- learning ------------------------------------------------------------------------------------


@pytest.mark.usefixtures("pinned_torch")
def test_training_reduces_the_loss_on_a_noisy_image(tmp_path):
    # What every honest training shows, not one CPU's trajectory. Predicting the mean scores about 1 in
    # normalised units; the best validation loss was at most 0.16 on seeds 0-7. The training loss is no
    # reference since the network predicts a correction to a fixed baseline (the local mean outside the
    # blind spot): it starts at the noise floor and moves within its batch-to-batch spread (seeds 0-7:
    # first epoch 0.084-0.104, last 0.077-0.102). What training must add is measured against that
    # baseline: on seeds 0-7 the trained network's MSE to the clean image was 0.12-0.24 of the noisy
    # image's, the baseline alone 0.345.
    path, clean = _noisy_plate(tmp_path / "plate.zarr", images=4, size=48)
    settings = _settings(epochs=6, steps_per_epoch=40, batch_size=8, base_filters=8, patch_size=32)
    metadata = train_channel([path], settings, tmp_path / "model")
    assert metadata["training"]["best_val_loss"] < 0.8 * 1.0

    # The trained network denoises: closer to the clean image than the noisy input is, and than its
    # baseline alone (what an untrained correction would leave).
    trained = load_trained(tmp_path / "model")
    noisy = zarr.open_array(path, mode="r")[0]
    with torch.inference_mode():
        normalised = (torch.from_numpy(noisy) - trained.mean) / trained.std
        denoised = trained.net(normalised[None, None])[0, 0].numpy() * trained.std + trained.mean
        half = trained.net.ring.shape[-1] // 2
        padded = torch.nn.functional.pad(normalised[None, None], (half,) * 4, mode="replicate")
        baseline = torch.nn.functional.conv2d(padded, trained.net.ring)[0, 0].numpy() * trained.std + trained.mean
    noisy_mse = np.mean((noisy - clean) ** 2)
    assert np.mean((denoised - clean) ** 2) < 0.9 * noisy_mse
    assert np.mean((denoised - clean) ** 2) < np.mean((baseline - clean) ** 2)


def test_the_same_seed_gives_identical_weights_and_log(tmp_path, plate):
    train_channel([plate], _settings(), tmp_path / "first")
    train_channel([plate], _settings(), tmp_path / "second")
    _assert_same_weights(_weights(tmp_path / "first"), _weights(tmp_path / "second"))
    assert _log_rows(tmp_path / "first") == _log_rows(tmp_path / "second")
    train_channel([plate], _settings(seed=1), tmp_path / "other")
    assert not torch.equal(
        _weights(tmp_path / "first")["head.weight"], _weights(tmp_path / "other")["head.weight"]
    )


class Interrupted(Exception):
    pass


def _interrupt_after_checkpoint(monkeypatch, epochs):
    """Make training die right after the checkpoint of epoch ``epochs`` is written."""
    save = training.save_checkpoint
    calls = []

    def save_then_die(path, payload):
        save(path, payload)
        calls.append(path)
        if len(calls) == epochs:
            raise Interrupted(f"killed after epoch {epochs}")

    monkeypatch.setattr(training, "save_checkpoint", save_then_die)


@pytest.mark.parametrize("schedule", ["cosine", "plateau"])
def test_a_resumed_run_ends_exactly_like_an_uninterrupted_one(tmp_path, plate, monkeypatch, schedule):
    settings = _settings(lr_schedule=schedule, variant="n2v2")
    train_channel([plate], settings, tmp_path / "straight")

    resumed = tmp_path / "resumed"
    with monkeypatch.context() as patch:
        _interrupt_after_checkpoint(patch, epochs=2)
        with pytest.raises(Interrupted):
            train_channel([plate], settings, resumed)
    assert (resumed / "checkpoint.pt").exists()
    assert not any((resumed / name).exists() for name in OUTPUTS)

    metadata = train_channel([plate], settings, resumed)
    assert metadata["training"]["resumed_from_epoch"] == 2
    assert metadata["training"]["epochs_run"] == 4 and metadata["training"]["steps"] == 12
    _assert_same_weights(_weights(tmp_path / "straight"), _weights(resumed))
    assert _log_rows(tmp_path / "straight") == _log_rows(resumed)
    assert not (resumed / "checkpoint.pt").exists()
    assert sorted(p.name for p in resumed.iterdir()) == sorted(OUTPUTS)


def test_a_checkpoint_for_other_settings_is_ignored(tmp_path, plate, monkeypatch, caplog):
    model_dir = tmp_path / "model"
    with monkeypatch.context() as patch:
        _interrupt_after_checkpoint(patch, epochs=1)
        with pytest.raises(Interrupted):
            train_channel([plate], _settings(), model_dir)
    changed = _settings(learning_rate=0.002)
    with caplog.at_level(logging.INFO):
        metadata = train_channel([plate], changed, model_dir, log=logging.getLogger("test-train"))
    assert "ignoring checkpoint" in caplog.text
    assert metadata["training"]["resumed_from_epoch"] is None
    train_channel([plate], changed, tmp_path / "fresh")
    _assert_same_weights(_weights(model_dir), _weights(tmp_path / "fresh"))


def test_no_outputs_are_left_when_training_fails(tmp_path, plate, monkeypatch):
    def broken_validation(*args, **kwargs):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(training, "network_masked_mse", broken_validation)
    with pytest.raises(RuntimeError, match="simulated failure"):
        train_channel([plate], _settings(), tmp_path / "model")
    assert list((tmp_path / "model").iterdir()) == []


def test_training_stops_early_when_validation_stalls(tmp_path, plate, monkeypatch):
    losses = iter([1.0, 0.5, 0.6, 0.7, 0.8, 0.9])
    monkeypatch.setattr(training, "network_masked_mse", lambda *args, **kwargs: next(losses))
    metadata = train_channel([plate], _settings(epochs=6, early_stopping_patience=2), tmp_path / "model")
    summary = metadata["training"]
    assert summary["stopped_early"] and summary["epochs_run"] == 4
    assert summary["best_epoch"] == 2 and summary["best_val_loss"] == 0.5


# -- outputs -------------------------------------------------------------------------------------


def test_outputs_record_settings_data_split_and_load_back(tmp_path, plate, caplog):
    settings = _settings(struct_mask={"axis": "row", "span": 3}, epochs=2)
    with caplog.at_level(logging.INFO):
        metadata = train_channel([plate], settings, tmp_path / "model", log=logging.getLogger("test-train"))
    assert "epoch 2/2: train loss" in caplog.text and "patches/s" in caplog.text
    model_dir = tmp_path / "model"
    assert sorted(p.name for p in model_dir.iterdir()) == sorted(OUTPUTS)
    on_disk = json.loads((model_dir / "model.json").read_text())
    assert on_disk == metadata
    assert on_disk["settings"] == settings.to_dict() and on_disk["seed"] == settings.seed
    assert set(on_disk["versions"]) == {"python", "torch", "numpy", "jump_n2v"}
    assert set(on_disk["training"]) == {
        "best_val_loss", "best_epoch", "epochs_run", "steps", "seconds", "stopped_early",
        "resumed_from_epoch", "patches_per_second",
    }
    data = on_disk["data"]
    assert data["arrays"] == [plate]
    images = sorted(tuple(i) for i in data["train_images"] + data["validation_images"])
    assert images == [(0, 0), (0, 1), (0, 2), (0, 3)] and len(data["validation_images"]) == 1
    with open(model_dir / "training_log.csv") as handle:
        assert handle.readline().strip() == "epoch,step,train_loss,val_loss,learning_rate,seconds"
    assert (model_dir / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The one loss-curve drawing (jump_n2v.training_log), which the report shows.
    assert png_size(model_dir / "training_curve.png") == loss_figure_size()

    trained = load_trained(model_dir / "model.json")
    assert trained.settings == settings
    assert not trained.net.training
    assert next(trained.net.parameters()).device.type == "cpu"
    assert (trained.mean, trained.std) == (on_disk["normalization"]["mean"], on_disk["normalization"]["std"])
    _assert_same_weights(trained.net.state_dict(), _weights(model_dir))


def test_arrays_can_be_passed_open(tmp_path, plate):
    opened = zarr.open_array(plate, mode="r")
    train_channel([opened], _settings(epochs=1), tmp_path / "open")
    train_channel([plate], _settings(epochs=1), tmp_path / "path")
    _assert_same_weights(_weights(tmp_path / "open"), _weights(tmp_path / "path"))


def test_loading_a_missing_model_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.json"):
        load_trained(tmp_path)


def test_asking_for_a_missing_gpu_is_an_error(tmp_path, plate):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        train_channel([plate], _settings(device="cuda"), tmp_path / "model")
