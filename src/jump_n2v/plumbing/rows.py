"""Seeded samples of an array's rows, shared by the stages that must pick the same images
(QC's panels, the control model's prediction of QC's sample)."""

from __future__ import annotations

import numpy as np


def choose_rows(n_images: int, count: int, seed: int) -> list[int]:
    """``count`` distinct array rows out of ``n_images``, seeded, in ascending order."""
    if n_images < 1:
        raise ValueError("there are no images to choose from")
    rng = np.random.default_rng(seed)
    return sorted(int(row) for row in rng.choice(n_images, size=min(count, n_images), replace=False))
