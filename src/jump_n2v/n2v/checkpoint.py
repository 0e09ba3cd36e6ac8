"""Checkpoints of a training run: the file ``checkpoint.pt`` every epoch ends with, written and read back.

A checkpoint holds every state a resumed run needs to end with exactly the weights of an uninterrupted
one: the model, optimiser, scheduler and grad scaler states, the global RNG state, the run's progress
and its best weights so far. It names the run it belongs to (its fingerprint, see
:mod:`jump_n2v.n2v.reproducibility`); one written for other settings or data is ignored.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from jump_n2v.plumbing.atomic import atomic_output
from jump_n2v.n2v.reproducibility import global_rng_state, restore_global_rng_state

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = 1


def cpu_state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the net's weights on the CPU (what checkpoints and model.pt hold)."""
    return {key: value.detach().to("cpu", copy=True) for key, value in net.state_dict().items()}


def checkpoint_payload(
    fingerprint: str, net: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
    scaler: torch.amp.GradScaler, progress: dict, best_weights: dict[str, torch.Tensor],
) -> dict:
    """The checkpoint's content, taken now (the global RNG state included)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "fingerprint": fingerprint,
        "model": cpu_state(net),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict(),
        "rng": global_rng_state(),
        "progress": progress,
        "best_weights": best_weights,
    }


def save_checkpoint(path: Path, payload: dict) -> None:
    """Write the checkpoint atomically: an interrupted write leaves the previous one."""
    with atomic_output(path) as temporary:
        torch.save(payload, temporary)


def load_checkpoint(path: Path, fingerprint: str, log: logging.Logger) -> dict | None:
    """The checkpoint at ``path`` when it belongs to the run ``fingerprint`` names, else None (logged)."""
    if not path.exists():
        return None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a checkpoint we cannot read is worth a line, not a failed run
        log.warning("ignoring unreadable checkpoint %s (%s); training from scratch", path, error)
        return None
    if checkpoint.get("format") != CHECKPOINT_FORMAT or checkpoint.get("fingerprint") != fingerprint:
        log.info(
            "ignoring checkpoint %s: it was written for other settings or training data; "
            "training from scratch", path,
        )
        return None
    return checkpoint


def restore_training_state(
    checkpoint: dict, net: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
    scaler: torch.amp.GradScaler,
) -> None:
    """Load the model, optimiser, scheduler, grad scaler and global RNG states from ``checkpoint``."""
    net.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(checkpoint["scheduler"])
    scaler.load_state_dict(checkpoint["scaler"])
    restore_global_rng_state(checkpoint["rng"])
