"""model.json as a typed record: one reader for training's loader, QC, the report and the exports."""

import json

import pytest

from jump_n2v.model_record import ModelRecord, ModelRecordError, TrainingSummary

TRAINING = {"best_val_loss": 0.0123, "best_epoch": 4, "epochs_run": 5, "steps": 50, "seconds": 3.5, "stopped_early": False,
            "resumed_from_epoch": None, "patches_per_second": 457.1}
FULL = {
    "settings": {"variant": "n2v", "depth": 2},
    "normalization": {"mean": 900.0, "std": 400.0},
    "training": TRAINING,
    "data": {"arrays": ["raw/DNA.zarr"], "train_images": [[0, 1]], "validation_images": [[0, 2]]},
    "seed": 42,
    "versions": {"torch": "2.13.0"},
    "blind_spot": {"mode": "pixel"},
    "noise_model": {"gain": 2.0},
    "posterior": {"fitted": False},
    "training_data": {"images": 4},
}


def test_a_record_written_as_training_writes_it_reads_back_to_the_same_bytes(tmp_path):
    text = json.dumps(FULL, indent=2) + "\n"  # what training wrote before the record was typed
    (tmp_path / "model.json").write_text(text)
    record = ModelRecord.read(tmp_path)
    assert record.training == TrainingSummary(**TRAINING)
    assert record.training.best_epoch == 4 and record.noise_model == {"gain": 2.0}
    assert record.to_json() == text


def test_a_model_from_before_the_optional_records_reads_them_as_none(tmp_path):
    old = {key: FULL[key] for key in ModelRecord.REQUIRED}
    old["training"] = {key: TRAINING[key] for key in list(TRAINING)[:6]}
    (tmp_path / "model.json").write_text(json.dumps(old))
    record = ModelRecord.read(tmp_path / "model.json")
    assert record.training_data is None and record.blind_spot is None and record.training.patches_per_second is None


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({key: value for key, value in FULL.items() if key != "normalization"}), "no 'normalization'"),
        (json.dumps({**FULL, "trainng": {}}), "unknown key"),
        (json.dumps({**FULL, "training": {"best_epoch": 1}}), "'training' summary does not fit"),
    ],
)
def test_a_broken_model_json_is_refused_naming_the_file_and_the_problem(tmp_path, content, message):
    (tmp_path / "model.json").write_text(content)
    with pytest.raises(ModelRecordError, match=message) as error:
        ModelRecord.read(tmp_path)
    assert str(tmp_path / "model.json") in str(error.value)


def test_a_missing_model_is_told_apart_from_a_broken_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="no trained model"):
        ModelRecord.read(tmp_path / "nowhere")
