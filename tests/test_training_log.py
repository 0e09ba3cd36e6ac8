"""The training log's one loss-curve drawing: a PNG of the documented size, and a broken log named."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest

from conftest import png_size
from jump_n2v.training_log import TrainingLogError, loss_curves, loss_figure_size

def write_log(path, epochs=6):
    epoch = np.arange(1, epochs + 1)
    pd.DataFrame(
        {
            "epoch": epoch,
            "step": epoch * 10,
            "train_loss": 1.0 / epoch,
            "val_loss": 1.2 / epoch + 0.02 * epoch,
            "learning_rate": 1e-3 * 0.9**epoch,
            "seconds": epoch * 1.5,
        }
    ).to_csv(path, index=False)


def test_loss_curves_writes_a_png_of_the_documented_size(tmp_path):
    write_log(tmp_path / "training_log.csv")
    loss_curves(tmp_path / "training_log.csv", tmp_path / "curve.png", title="P1 DNA")
    assert png_size(tmp_path / "curve.png") == loss_figure_size()


def test_loss_curves_names_a_log_missing_columns(tmp_path):
    pd.DataFrame({"epoch": [1], "train_loss": [1.0]}).to_csv(tmp_path / "training_log.csv", index=False)
    with pytest.raises(TrainingLogError, match="training_log.csv.*val_loss"):
        loss_curves(tmp_path / "training_log.csv", tmp_path / "curve.png")
    assert not (tmp_path / "curve.png").exists()
