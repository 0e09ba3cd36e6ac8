"""Reproducible training runs: seeds, derived seeds, the global RNG state, and the identity of a run.

Every random draw of a run comes from the settings seed: the global generators are seeded once, and each
stream of torch draws (masks, validation masks, the posterior's noise) gets a seed derived from the
settings seed and a stream id. A checkpoint carries the global RNG state so a resumed run draws what an
uninterrupted one would. A run is identified by its settings and its data (array, shape, dtype, image
ids): a checkpoint only resumes the run with the same fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any, Mapping, Sequence

import numpy as np
import torch


def derived_seed(*entropy: int) -> int:
    """A 63-bit seed for a torch generator from the settings seed and a stream id."""
    return int(np.random.SeedSequence(list(entropy)).generate_state(1, np.uint64)[0]) >> 1


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def global_rng_state() -> dict:
    """The global generators' states (Python, numpy, torch, CUDA when present), as a checkpoint holds them."""
    numpy_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_global_rng_state(state: dict) -> None:
    """Put back the states :func:`global_rng_state` returned (after a round trip through a checkpoint)."""
    random.setstate(_as_tuple(state["python"]))
    kind, key, *rest = state["numpy"]
    np.random.set_state((kind, np.array(key, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    # A checkpoint gives Python's state back with lists where random.setstate wants tuples.
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def data_identity(arrays: Sequence[Any], names: Sequence[str]) -> list[dict]:
    """What identifies the training data: each array's name, shape, dtype and image ids."""
    identity = []
    for array, name in zip(arrays, names):
        attrs = getattr(array, "attrs", None)
        image_ids = attrs.get("image_ids") if attrs is not None else None
        identity.append(
            {
                "array": name,
                "shape": list(array.shape),
                "dtype": str(np.dtype(array.dtype)),
                "image_ids": list(image_ids) if image_ids is not None else None,
            }
        )
    return identity


def run_fingerprint(settings: Mapping[str, Any], identity: list[dict]) -> str:
    """SHA-256 of the settings (as plain data) and the data identity: equal only for the same run."""
    text = json.dumps({"settings": settings, "data": identity}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()
