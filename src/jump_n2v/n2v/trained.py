"""A trained model read back from its model folder, ready for prediction: :func:`load_trained`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

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
    metadata: dict
    posterior: Posterior | None = None


def load_trained(model_dir_or_model_json: str | Path) -> TrainedModel:
    """The network and normalisation written by :func:`~jump_n2v.n2v.training.train_channel` (a model
    folder or its model.json)."""
    path = Path(model_dir_or_model_json)
    model_json = path / "model.json" if path.is_dir() else path
    weights_path = model_json.with_name("model.pt")
    try:
        metadata = json.loads(model_json.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no trained model at {path}: {model_json} does not exist") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{model_json} is not valid JSON: {error}") from None
    if not weights_path.exists():
        raise FileNotFoundError(f"{model_json} has no weights beside it: {weights_path} is missing")
    saved = torch.load(weights_path, map_location="cpu", weights_only=True)
    if saved.get("format") != MODEL_FORMAT:
        raise ValueError(f"{weights_path}: unsupported model format {saved.get('format')!r}")
    net = build_unet(**saved["architecture"])
    net.load_state_dict(saved["state_dict"])
    net.eval()
    settings = N2VSettings.from_dict(metadata["settings"])
    normalization = metadata["normalization"]
    posterior = metadata.get("posterior") or {}
    return TrainedModel(
        net=net,
        settings=settings,
        mean=float(normalization["mean"]),
        std=float(normalization["std"]),
        metadata=metadata,
        posterior=Posterior.from_dict(posterior) if posterior.get("fitted") else None,
    )
