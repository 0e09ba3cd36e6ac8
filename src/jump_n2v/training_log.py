"""The training log: its columns, reading it back, and the one drawing of its loss curve.

Training writes ``training_log.csv`` (one row per epoch) and draws ``training_curve.png`` from it with
:func:`loss_curves`; the report shows that PNG. Torch-free, so anything may draw a log it reads.
"""

from __future__ import annotations

import os

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from jump_n2v.plumbing.atomic import atomic_output

LOG_COLUMNS = ("epoch", "step", "train_loss", "val_loss", "learning_rate", "seconds")
DPI = 100
LOSS_FIGURE_INCHES = (7.0, 4.0)


class TrainingLogError(ValueError):
    """A training log that cannot be read or drawn; the message names the file and the problem."""


def read_training_log(path: str | os.PathLike) -> pd.DataFrame:
    """``training_log.csv`` checked for its columns and at least one epoch."""
    try:
        log = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise TrainingLogError(f"cannot read training log {path}: {error}") from error
    missing = [column for column in LOG_COLUMNS if column not in log.columns]
    if missing:
        raise TrainingLogError(f"training log {path}: missing column(s) {missing}")
    if log.empty:
        raise TrainingLogError(f"training log {path}: no epochs recorded")
    return log


def loss_figure_size() -> tuple[int, int]:
    """Pixel (width, height) of :func:`loss_curves`' PNG (fixed inches at ``DPI``, no tight bounding box)."""
    return round(LOSS_FIGURE_INCHES[0] * DPI), round(LOSS_FIGURE_INCHES[1] * DPI)


def loss_curves(training_log: str | os.PathLike, out_png: str | os.PathLike, title: str = "") -> None:
    """Training and validation masked-pixel loss per epoch, the best validation epoch marked, and the
    learning rate on a second axis; written atomically."""
    log = read_training_log(training_log)
    figure = Figure(figsize=LOSS_FIGURE_INCHES, layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    ax.plot(log["epoch"], log["train_loss"], label="training loss", color="tab:blue")
    ax.plot(log["epoch"], log["val_loss"], label="validation loss", color="tab:orange")
    best = log.loc[log["val_loss"].idxmin()]
    ax.scatter([best["epoch"]], [best["val_loss"]], color="tab:red", zorder=3, label=f"best: epoch {int(best['epoch'])}, {best['val_loss']:.4g}")
    losses = pd.concat([log["train_loss"], log["val_loss"]])
    if (losses > 0).all() and losses.max() / losses.min() > 10:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("masked-pixel loss (normalised units)")
    rate_axis = ax.twinx()
    rate_axis.plot(log["epoch"], log["learning_rate"], color="grey", lw=0.8, ls="--", label="learning rate")
    rate_axis.set_ylabel("learning rate", color="grey")
    handles = ax.get_legend_handles_labels()
    rate_handles = rate_axis.get_legend_handles_labels()
    ax.legend(handles[0] + rate_handles[0], handles[1] + rate_handles[1], fontsize=8, loc="upper right")
    ax.set_title(title or str(training_log), fontsize=9)
    with atomic_output(out_png) as temporary:
        figure.savefig(temporary, format="png", dpi=DPI)
