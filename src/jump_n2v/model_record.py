"""model.json: the typed record a training writes beside its weights, and every reader's one way to read it.

Training writes it last (its presence means the model folder is complete); prediction, the
training-data check, QC, the report and the BioImage Model Zoo export read it. The record holds the
n2v settings as trained, the normalisation, the training summary, the data split, the seed, the
software versions and, from models trained since they were added, the blind-spot decision, the fitted
noise model, the posterior step and the training-data record (absent ones read as None).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Mapping

MODEL_JSON = "model.json"


class ModelRecordError(ValueError):
    """A model.json that cannot be read or lacks what a record needs; the message names the file."""


@dataclasses.dataclass(frozen=True)
class TrainingSummary:
    """How the training went: the best validation loss and its epoch, how long, whether it stopped early."""

    best_val_loss: float | None
    best_epoch: int
    epochs_run: int
    steps: int
    seconds: float
    stopped_early: bool
    resumed_from_epoch: int | None = None
    patches_per_second: float | None = None


@dataclasses.dataclass(frozen=True)
class ModelRecord:
    """The content of a model folder's model.json (field order is the file's key order)."""

    settings: dict[str, Any]
    normalization: dict[str, Any]
    training: TrainingSummary
    seed: int
    versions: dict[str, str]
    data: dict[str, Any] | None = None
    blind_spot: dict[str, Any] | None = None
    noise_model: dict[str, Any] | None = None
    posterior: dict[str, Any] | None = None
    training_data: dict[str, Any] | None = None

    REQUIRED = ("settings", "normalization", "training", "seed", "versions")
    # The file's key order (the order training has always written them in).
    FILE_ORDER = ("settings", "normalization", "training", "data", "seed", "versions", "blind_spot", "noise_model",
                  "posterior", "training_data")

    @classmethod
    def from_dict(cls, content: Mapping[str, Any], source: str = MODEL_JSON) -> "ModelRecord":
        """A record from model.json's content; ModelRecordError naming ``source`` and what is wrong."""
        if not isinstance(content, Mapping):
            raise ModelRecordError(f"{source}: expected a JSON object, got {type(content).__name__}")
        missing = [key for key in cls.REQUIRED if key not in content]
        if missing:
            raise ModelRecordError(f"{source}: no {', '.join(repr(key) for key in missing)} (not a model.json training wrote?)")
        unknown = sorted(set(content) - set(cls.FILE_ORDER))
        if unknown:
            raise ModelRecordError(f"{source}: unknown key(s) {unknown}")
        training = content["training"]
        if not isinstance(training, Mapping):
            raise ModelRecordError(f"{source}: no 'training' summary object")
        try:
            summary = TrainingSummary(**training)
        except TypeError as error:
            raise ModelRecordError(f"{source}: the 'training' summary does not fit: {error}") from None
        return cls(**{**{key: content[key] for key in content if key != "training"}, "training": summary})

    @classmethod
    def read(cls, model_dir_or_json: str | os.PathLike) -> "ModelRecord":
        """The record of a model folder (or of its model.json); ModelRecordError naming the file otherwise."""
        path = model_json_path(model_dir_or_json)
        try:
            content = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"no trained model at {model_dir_or_json}: {path} does not exist") from None
        except OSError as error:
            raise ModelRecordError(f"cannot read {path}: {error}") from error
        except json.JSONDecodeError as error:
            raise ModelRecordError(f"{path} is not valid JSON: {error}") from None
        return cls.from_dict(content, str(path))

    def to_dict(self) -> dict[str, Any]:
        """The JSON content, keys in the file's order."""
        content = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        content["training"] = dataclasses.asdict(self.training)
        return {key: content[key] for key in self.FILE_ORDER}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"


def model_json_path(model_dir_or_json: str | os.PathLike) -> Path:
    """A model folder's model.json (a path that already names the file is returned as is)."""
    path = Path(model_dir_or_json)
    return path / MODEL_JSON if path.is_dir() else path
