"""A trained model read back from its model folder, ready for prediction: :func:`load_trained`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from jump_n2v.model_record import ModelRecord, model_json_path
from jump_n2v.n2v.artefacts import MODEL_FORMAT
from jump_n2v.n2v.model import UNet, build_unet
from jump_n2v.n2v.posterior import Posterior
from jump_n2v.n2v.training import N2VSettings


@dataclass
class TrainedModel:
    """A trained network ready for prediction (eval mode, on the CPU) with its normalisation."""

    net: UNet
    settings: N2VSettings
    mean: float
    std: float
    record: ModelRecord
    posterior: Posterior | None = None


def load_trained(model_dir_or_model_json: str | Path) -> TrainedModel:
    """The network and normalisation written by :func:`~jump_n2v.n2v.training.train_channel` (a model
    folder or its model.json)."""
    model_json = model_json_path(model_dir_or_model_json)
    record = ModelRecord.read(model_json)
    weights_path = model_json.with_name("model.pt")
    if not weights_path.exists():
        raise FileNotFoundError(f"{model_json} has no weights beside it: {weights_path} is missing")
    saved = torch.load(weights_path, map_location="cpu", weights_only=True)
    if saved.get("format") != MODEL_FORMAT:
        raise ValueError(f"{weights_path}: unsupported model format {saved.get('format')!r}")
    net = build_unet(**saved["architecture"])
    net.load_state_dict(saved["state_dict"])
    net.eval()
    posterior = record.posterior or {}
    return TrainedModel(
        net=net,
        settings=N2VSettings.from_dict(record.settings),
        mean=float(record.normalization["mean"]),
        std=float(record.normalization["std"]),
        record=record,
        posterior=Posterior.from_dict(posterior) if posterior.get("fitted") else None,
    )
