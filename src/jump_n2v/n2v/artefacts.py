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
from jump_n2v.n2v.sampling import Normalization

MODEL_FORMAT = 1
LOG_COLUMNS = ("epoch", "step", "train_loss", "val_loss", "learning_rate", "seconds")


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
    _write_curve(model_dir / "training_curve.png", rows, record.training.best_epoch, variant)
    write_text_atomic(model_json_path(model_dir), record.to_json())


def _write_curve(path: Path, rows: list[dict], best_epoch: int, variant: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    epochs = [row["epoch"] for row in rows]
    axes.plot(epochs, [row["train_loss"] for row in rows], marker=".", label="train")
    axes.plot(epochs, [row["val_loss"] for row in rows], marker=".", label="validation")
    if best_epoch:
        axes.axvline(best_epoch, color="grey", linestyle=":", label=f"best (epoch {best_epoch})")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("epoch")
    axes.set_ylabel("masked-pixel MSE (normalised units)")
    axes.set_title(f"{variant.upper()} training loss")
    axes.legend()
    figure.tight_layout()
    with atomic_output(path) as temporary:
        figure.savefig(temporary, format="png")


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
