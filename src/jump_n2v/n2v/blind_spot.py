"""The blind-spot policy: which neighbours a blind spot hides, and how a training batch is masked with them.

N2V assumes noise independent from pixel to pixel. Before training, the noise model is estimated from a
sample of the training images (:func:`jump_n2v.noise.estimate_noise_model`); with ``auto`` the
neighbours whose noise is correlated with the centre's (real Phenix exports: lag-1 about 0.45 in x and
y) join the blind spot as a region (:class:`~jump_n2v.n2v.masking.BlindRegion`), else the blind spot is
the pixel alone (:func:`decide_blind_spot`). The decision and the masking settings together make a
:class:`BlindSpotMasking`, which masks batches with :mod:`jump_n2v.n2v.masking`'s mechanics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import torch

from jump_n2v.n2v.masking import BlindRegion, Replacement, StructMask, mask_batch, neighbourhood_region
from jump_n2v.n2v.sampling import PLAN_COLUMNS
from jump_n2v.noise import SHORT_RANGE_TOLERANCE, NoiseModel


class BlindSpotSettings(Protocol):
    """The n2v settings the blind-spot policy reads, read-only (:class:`~jump_n2v.n2v.training.N2VSettings`
    has them; a protocol because training imports this module, not the other way round)."""

    @property
    def masked_fraction(self) -> float: ...
    @property
    def roi_size(self) -> int: ...
    @property
    def replacement(self) -> Replacement: ...
    @property
    def struct_mask(self) -> StructMask | None: ...
    @property
    def blind_spot(self) -> Literal["auto", "pixel", "region"]: ...
    @property
    def blind_spot_offsets(self) -> list | None: ...
    @property
    def blind_spot_correlation(self) -> float: ...


@dataclass(frozen=True)
class BlindSpotMasking:
    """How training masks its patches: blind-spot density, replacement window and rule, and the region
    masked with each blind spot (None: the pixel alone)."""

    masked_fraction: float
    roi_size: int
    replacement: Replacement
    region: BlindRegion | StructMask | None

    @classmethod
    def from_settings(cls, settings: BlindSpotSettings, region: BlindRegion | None) -> "BlindSpotMasking":
        """The masking of ``settings`` with the blind-spot ``region`` decided for the data."""
        return cls(
            masked_fraction=settings.masked_fraction,
            roi_size=settings.roi_size,
            replacement=settings.replacement,
            region=region,
        )

    def mask(
        self, batch: torch.Tensor, *, transforms: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(masked_input, mask)`` of ``batch``: see :func:`~jump_n2v.n2v.masking.mask_batch`."""
        return mask_batch(
            batch, transforms=transforms, generator=generator, masked_fraction=self.masked_fraction,
            roi_size=self.roi_size, replacement=self.replacement, region=self.region,
        )


def mask_plan_batch(
    targets: torch.Tensor, rows: np.ndarray, generator: torch.Generator,
    masking: BlindSpotMasking,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Blind-spot mask the patches read for plan ``rows``; the region turns with each patch's
    flip/rotation, so it covers the pixels that share noise in the image, not in the patch."""
    transforms = torch.from_numpy(np.asarray(rows)[:, PLAN_COLUMNS.index("transform")]).to(targets.device)
    return masking.mask(targets, transforms=transforms, generator=generator)


def _correlation_evidence(model: NoiseModel) -> str:
    lag = model.lag
    return (
        f"lag-1 corr x={lag(0, 1):.2f} y={lag(1, 0):.2f}, diagonal {lag(1, 1):.2f}/{lag(1, -1):.2f}, "
        f"lag-2 x={lag(0, 2):.2f} y={lag(2, 0):.2f}"
    )


def _texture_signature(model: NoiseModel) -> bool:
    """Lag-2 correlation above SHORT_RANGE_TOLERANCE along both x and y: isotropic long-range correlation,
    which cell texture gives and a camera's pixel mixing (a 2 x 2 box, a half-pixel shift) does not; a
    one-axis streak (lag 2 along rows only) is a mixing and keeps its offsets."""
    return min(abs(model.lag(0, 2)), abs(model.lag(2, 0))) > SHORT_RANGE_TOLERANCE


def decide_blind_spot(settings: BlindSpotSettings, noise_model: NoiseModel | None) -> tuple[BlindRegion | None, dict]:
    """The blind-spot region to train with and the record of why (model.json ``blind_spot``).

    ``noise_model`` is the fitted :class:`~jump_n2v.noise.NoiseModel`, or None when it could not be
    estimated (then ``auto`` keeps a one-pixel blind spot). A ``struct_mask`` line is always added.
    """
    threshold = settings.blind_spot_correlation
    evidence = "no noise model" if noise_model is None else _correlation_evidence(noise_model)
    estimated = [] if noise_model is None else [tuple(o) for o in noise_model.correlated_offsets(threshold)]
    if noise_model is not None and _texture_signature(noise_model):
        # Lag-2 correlation along both axes is cell texture, not an acquisition's mixing (every real Phenix
        # site mixes nearest neighbours only: lag-2 ~0 on its background); the region stops at the 8 neighbours.
        estimated = [(dy, dx) for dy, dx in estimated if max(abs(dy), abs(dx)) <= 1]
        evidence += f"; lag-2 above {SHORT_RANGE_TOLERANCE} along x and y (texture): region kept within the 8 neighbours"
    if settings.blind_spot == "pixel":
        region, why = None, "forced by blind_spot: pixel"
    elif settings.blind_spot == "region" and settings.blind_spot_offsets is not None:
        region, why = BlindRegion.from_offsets(settings.blind_spot_offsets), "blind_spot_offsets"
    elif settings.blind_spot == "region":
        if estimated:
            region, why = BlindRegion.from_offsets(estimated), f"neighbours with noise correlation > {threshold}"
        else:
            region, why = neighbourhood_region("square"), f"no neighbour correlated above {threshold}: the 8 neighbours"
    elif estimated:
        region, why = BlindRegion.from_offsets(estimated), f"auto: neighbours with noise correlation > {threshold}"
    else:
        region, why = None, f"auto: no neighbour with noise correlation > {threshold}"
    if settings.struct_mask is not None:
        region = settings.struct_mask.region().union(region)
        why += f"; plus struct_mask {settings.struct_mask.axis} line of {settings.struct_mask.span}"
    record = {
        "mode": "region" if region is not None else "pixel",
        "offsets": region.to_list() if region is not None else [],
        "setting": settings.blind_spot,
        "evidence": f"{evidence}; {why}",
    }
    return region, record
