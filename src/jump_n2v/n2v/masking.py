"""Blind-spot masking for Noise2Void training: N2V, N2V2 and structN2V, vectorised in torch.

A batch of normalised patches is split into a grid of square cells of side
``round(1 / sqrt(masked_fraction))``; one pixel per cell is picked at random (stratified sampling, as
in N2V and CAREamics) and its value is replaced so that the network never sees it:

* ``uniform`` (N2V): the value of a uniformly random neighbour in the ``roi_size`` x ``roi_size``
  window around the pixel, the centre excluded;
* ``median`` (N2V2): the median of that window, the centre excluded.

A window offset that would leave the patch is mirrored about the blind spot (``dy -> -dy``), so the
source stays inside the patch and, unlike clamping or reflecting the coordinate at the border, can
never land on the blind spot itself. With a structN2V mask, the pixels on a line through the
blind spot (along the axis the noise is correlated in) get random values too, and are also left out of
the replacement window, because their noise is correlated with the centre's. The loss stays on the
blind spots only: :func:`masked_mse`.

Everything runs on the batch's device with tensor indexing; there is no per-pixel Python loop.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal

import torch

Replacement = Literal["uniform", "median"]

# structN2V replaces the line pixels with values drawn uniformly from this range of the normalised data,
# as the original implementation (Broaddus et al. 2020, n2v's apply_structN2Vmask) does. The range does
# not depend on the patch, so the random values cannot leak the blind-spot value (a patch min/max could).
STRUCT_RANDOM_RANGE = (-2.0, 2.0)


@dataclass(frozen=True)
class StructMask:
    """structN2V line mask: ``axis`` is the direction the noise is correlated along, ``span`` is odd."""

    axis: Literal["row", "column"]
    span: int

    def __post_init__(self) -> None:
        if self.axis not in ("row", "column"):
            raise ValueError(f"struct_mask axis must be 'row' or 'column', got {self.axis!r}")
        if self.span < 3 or self.span % 2 == 0:
            raise ValueError(f"struct_mask span must be an odd number >= 3, got {self.span}")

    def line_offsets(self) -> list[tuple[int, int]]:
        """(dy, dx) of the masked line pixels relative to the blind spot, the centre excluded."""
        half = self.span // 2
        steps = [step for step in range(-half, half + 1) if step != 0]
        return [(0, step) for step in steps] if self.axis == "row" else [(step, 0) for step in steps]


def stratification_cell_size(masked_fraction: float) -> int:
    """Side of the grid cells that each hold one blind spot (0.002 -> 22 pixels)."""
    if not 0 < masked_fraction <= 1:
        raise ValueError(f"masked_fraction must be in (0, 1], got {masked_fraction}")
    return max(1, round(1 / math.sqrt(masked_fraction)))


def stratified_positions(
    planes: int,
    height: int,
    width: int,
    cell_size: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One uniformly random pixel in every grid cell of every plane: (plane, y, x) index tensors.

    Cells on the bottom and right edges may be cut by the patch border; their pixel is drawn inside the
    part that lies in the patch, so every cell gets exactly one blind spot.
    """
    cells_y = math.ceil(height / cell_size)
    cells_x = math.ceil(width / cell_size)
    start_y = torch.arange(cells_y, device=device) * cell_size
    start_x = torch.arange(cells_x, device=device) * cell_size
    extent_y = (height - start_y).clamp(max=cell_size)
    extent_x = (width - start_x).clamp(max=cell_size)
    uniform = torch.rand((planes, cells_y, cells_x, 2), generator=generator, device=device)
    ys = start_y[None, :, None] + (uniform[..., 0] * extent_y[None, :, None]).long()
    xs = start_x[None, None, :] + (uniform[..., 1] * extent_x[None, None, :]).long()
    plane = torch.arange(planes, device=device)[:, None, None].expand(planes, cells_y, cells_x)
    return plane.reshape(-1), ys.reshape(-1), xs.reshape(-1)


def _mirrored(centre: torch.Tensor, offset: torch.Tensor, size: int) -> torch.Tensor:
    """``centre + offset``, or ``centre - offset`` where that would leave [0, size).

    Needs ``2 * |offset| < size``. The allowed offsets are symmetric in each axis, so the mirrored
    offset is allowed too, and it is never zero: the source is never the blind spot.
    """
    forward = centre + offset
    return torch.where((forward < 0) | (forward >= size), centre - offset, forward)


@functools.lru_cache(maxsize=32)
def replacement_offsets(
    roi_size: int, struct_mask: StructMask | None = None, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dy, dx) of the window pixels a blind spot's replacement is drawn from.

    The ``roi_size`` x ``roi_size`` window without its centre, and without the structN2V line when
    there is one (those pixels carry noise correlated with the centre's). Cached: built once per
    setting and device, not per batch; callers must not modify the returned tensors.
    """
    if roi_size < 3 or roi_size % 2 == 0:
        raise ValueError(f"roi_size must be an odd number >= 3, got {roi_size}")
    half = roi_size // 2
    excluded = {(0, 0)}
    if struct_mask is not None:
        excluded.update(struct_mask.line_offsets())
    pairs = [
        (dy, dx)
        for dy in range(-half, half + 1)
        for dx in range(-half, half + 1)
        if (dy, dx) not in excluded
    ]
    offsets = torch.tensor(pairs, dtype=torch.long, device=device)
    return offsets[:, 0], offsets[:, 1]


@functools.lru_cache(maxsize=32)
def _line_offsets(struct_mask: StructMask, device: torch.device) -> torch.Tensor:
    return torch.tensor(struct_mask.line_offsets(), dtype=torch.long, device=device)


def mask_batch(
    batch: torch.Tensor,
    *,
    masked_fraction: float,
    roi_size: int,
    replacement: Replacement = "uniform",
    struct_mask: StructMask | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Blind-spot mask a batch of patches shaped (..., H, W); every (..., ) plane is masked on its own.

    Returns ``(masked_input, mask)``: the input with the blind spots (and structN2V lines) replaced, and
    a boolean tensor that is True at the blind spots, where the loss is taken against ``batch``.
    ``generator`` (on the batch's device) makes the masks reproducible.
    """
    if batch.ndim < 2:
        raise ValueError(f"mask_batch needs patches shaped (..., H, W), got shape {tuple(batch.shape)}")
    if replacement not in ("uniform", "median"):
        raise ValueError(f"unknown replacement {replacement!r}: expected 'uniform' or 'median'")
    height, width = batch.shape[-2:]
    if roi_size > min(height, width):
        raise ValueError(f"roi_size {roi_size} does not fit in {height}x{width} patches")
    device = batch.device
    planes = batch.reshape(-1, height, width)
    flat = planes.reshape(-1)

    plane, ys, xs = stratified_positions(
        planes.shape[0], height, width, stratification_cell_size(masked_fraction),
        generator=generator, device=device,
    )
    centre = plane * (height * width) + ys * width + xs
    offset_y, offset_x = replacement_offsets(roi_size, struct_mask, device)

    if replacement == "uniform":
        choice = torch.randint(
            0, offset_y.numel(), (centre.numel(),), generator=generator, device=device
        )
        source_y = _mirrored(ys, offset_y[choice], height)
        source_x = _mirrored(xs, offset_x[choice], width)
        values = flat[plane * (height * width) + source_y * width + source_x]
    else:
        window_y = _mirrored(ys[:, None], offset_y[None, :], height)
        window_x = _mirrored(xs[:, None], offset_x[None, :], width)
        window = flat[plane[:, None] * (height * width) + window_y * width + window_x]
        # quantile(0.5) averages the two middle values of the even-sized window, like numpy.median.
        values = torch.quantile(window.float(), 0.5, dim=1).to(batch.dtype)

    masked = planes.clone()
    masked_flat = masked.view(-1)
    if struct_mask is not None:
        line = _line_offsets(struct_mask, device)
        line_y = ys[:, None] + line[None, :, 0]
        line_x = xs[:, None] + line[None, :, 1]
        inside = (line_y >= 0) & (line_y < height) & (line_x >= 0) & (line_x < width)
        line_index = (plane[:, None] * (height * width) + line_y * width + line_x)[inside]
        low, high = STRUCT_RANDOM_RANGE
        noise = torch.rand(line_index.numel(), generator=generator, device=device)
        masked_flat[line_index] = (low + (high - low) * noise).to(batch.dtype)
    # Blind spots are written last so a neighbouring spot's line never overwrites their replacement.
    masked_flat[centre] = values

    mask = torch.zeros(planes.shape, dtype=torch.bool, device=device)
    mask.view(-1)[centre] = True
    return masked.view(batch.shape), mask.view(batch.shape)


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of (prediction - target)**2 over the blind spots (``mask`` True), in float32."""
    weight = mask.to(torch.float32)
    squared = (prediction.float() - target.float()).square()
    return (squared * weight).sum() / weight.sum().clamp_min(1.0)
