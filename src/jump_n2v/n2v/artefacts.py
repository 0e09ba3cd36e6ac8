"""The files a training run leaves in its model folder: weights, model.json, training log and loss curve.

Each is written atomically; model.json last, so its presence means the folder is complete. ``model.pt``
holds the best weights with the architecture to rebuild the net (read back by
:func:`jump_n2v.n2v.trained.load_trained`).
"""

from __future__ import annotations

import csv
import io
import platform
from pathlib import Path

import numpy as np
import torch

from jump_n2v.plumbing.atomic import atomic_output, write_text_atomic
from jump_n2v.model_record import ModelRecord, model_json_path
from jump_n2v.training_log import LOG_COLUMNS, loss_curves
from jump_n2v.n2v.sampling import Normalization

MODEL_FORMAT = 1


def write_outputs(
    model_dir: Path, variant: str, architecture: dict, weights: dict[str, torch.Tensor], norm: Normalization,
    record: ModelRecord, rows: list[dict],
) -> None:
    """All outputs, each atomically; model.json last, so its presence means the folder is complete."""
    with atomic_output(model_dir / "model.pt") as temporary:
        torch.save(
            {
                "format": MODEL_FORMAT,
                "architecture": architecture,
                "state_dict": weights,
                "normalization": norm.to_dict(),
            },
            temporary,
        )
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=LOG_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(model_dir / "training_log.csv", buffer.getvalue())
    loss_curves(model_dir / "training_log.csv", model_dir / "training_curve.png", title=f"{variant.upper()} training loss")
    write_text_atomic(model_json_path(model_dir), record.to_json())


def versions() -> dict[str, str]:
    """The software versions model.json records (Python, torch, numpy, jump_n2v)."""
    from importlib import metadata as importlib_metadata

    try:
        package = importlib_metadata.version("jump-n2v")
    except importlib_metadata.PackageNotFoundError:
        package = "unknown"
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "jump_n2v": package,
    }
