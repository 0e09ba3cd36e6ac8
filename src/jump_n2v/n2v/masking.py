"""Blind-spot masking for Noise2Void training: N2V, N2V2 and structN2V, vectorised in torch.

A batch of normalised patches is split into a grid of square cells of side
``round(1 / sqrt(masked_fraction / hidden))``, where ``hidden`` is the number of pixels each blind spot
hides (1, or 1 + its region's); one pixel per cell is picked at random (stratified sampling, as in N2V
and CAREamics) and its value is replaced so that the network never sees it. ``masked_fraction`` is thus
the fraction of pixels the network does not see, whatever the region: a 3 x 3 region spreads the blind
spots 3x further apart than a lone pixel, so that the input stays mostly raw (at 5 % hidden pixels,
2 x 2-mixed AGP: centres 7 px apart 29.96 dB, 13 px apart 32.75; docs/benchmarks.md 'Masked fraction'):

* ``uniform`` (N2V): the value of a uniformly random neighbour in the ``roi_size`` x ``roi_size``
  window around the pixel, the centre excluded;
* ``median`` (N2V2): the median of that window, the centre excluded.

A window offset that would leave the patch is mirrored about the blind spot (``dy -> -dy``), so the
source stays inside the patch and, unlike clamping or reflecting the coordinate at the border, can
never land on the blind spot itself. With a blind-spot region (:class:`BlindRegion`: any set of
neighbour offsets, e.g. the 3 x 3 neighbours for pixel-mixed camera noise, or structN2V's line,
:class:`StructMask`), the region's pixels around each blind spot are replaced too and are left out
of the replacement window, because their noise is correlated with the centre's: a 2-D region's pixels
copy values drawn from the blind spot's window outside the region; structN2V's line gets uniform random
values, as published. The loss stays on the blind spots only: :func:`masked_mse`.

Patches may have been flipped or rotated (:func:`dihedral`, transform ids 0-7) before masking; the
region is then transformed with them (``transforms``), so it always covers the neighbours that share
the noise in the original image: a row-correlated streak becomes a column streak in a rotated patch,
and so does its mask.

Cells on the bottom and right edges cut by the patch border would get one blind spot in a smaller area
(at patch 68 and 22-pixel cells the last two rows and columns were masked 11x as often as the rest);
each cell's pixel is drawn in the whole cell instead and dropped when it falls outside the patch, so
every pixel is a blind spot with the same probability.

Everything runs on the batch's device with tensor indexing; there is no per-pixel Python loop.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

Replacement = Literal["uniform", "median"]

# The region pixels (structN2V's line) are replaced with values drawn uniformly from this range of the normalised data,
# as the original implementation (Broaddus et al. 2020, n2v's apply_structN2Vmask) does. The range does
# not depend on the patch, so the random values cannot leak the blind-spot value (a patch min/max could).
STRUCT_RANDOM_RANGE = (-2.0, 2.0)


def dihedral(patch: np.ndarray | torch.Tensor, transform: int) -> np.ndarray | torch.Tensor:
    """One of the 8 flips/90-degree rotations of a (..., Y, X) numpy array or torch tensor (0 = identity).

    Transforms 4-7 flip the columns first; ``transform % 4`` counter-clockwise quarter turns follow.
    A tensor stays on its device (prediction's test-time augmentation turns tiles on the GPU).
    """
    if isinstance(patch, torch.Tensor):
        if transform >= 4:
            patch = patch.flip(-1)
        return torch.rot90(patch, transform % 4, dims=(-2, -1))
    if transform >= 4:
        patch = patch[..., ::-1]
    return np.rot90(patch, transform % 4, axes=(-2, -1))


@dataclass(frozen=True)
class BlindRegion:
    """Neighbours of a blind spot that are masked with it: (dy, dx) offsets, the centre excluded.

    Build it with :meth:`from_offsets`, which sorts, de-duplicates and drops (0, 0).
    """

    offsets: tuple[tuple[int, int], ...]
    # How region pixels are filled: "window" (default) copies values drawn from the blind spot's own
    # replacement window, outside the region, so the patch keeps its local intensities but none of the
    # noise the centre shares; "random" draws from STRUCT_RANDOM_RANGE, as structN2V's line does.
    # Measured (benchmarks/bench_noise.py, 2x2-mixed noise, 8-neighbour region, 100 steps): random fill
    # cost 7.5 dB (DNA) and 3.2 dB (ER) against window fill: real neighbours never look like [-2, 2] noise.
    fill: Literal["window", "random"] = "window"

    def __post_init__(self) -> None:
        if self.fill not in ("window", "random"):
            raise ValueError(f"blind-spot region fill must be 'window' or 'random', got {self.fill!r}")
        for offset in self.offsets:
            if (
                len(offset) != 2
                or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in offset)
            ):
                raise ValueError(f"blind-spot region offsets must be [dy, dx] integer pairs, got {offset!r}")
            if tuple(offset) == (0, 0):
                raise ValueError("blind-spot region offsets exclude the centre (0, 0)")

    @classmethod
    def from_offsets(cls, offsets, fill: Literal["window", "random"] = "window") -> "BlindRegion":
        pairs = {(int(dy), int(dx)) for dy, dx in offsets} - {(0, 0)}
        return cls(tuple(sorted(pairs)), fill)

    @property
    def radius(self) -> int:
        """Largest |dy| or |dx| of the region (0 when empty)."""
        return max((max(abs(dy), abs(dx)) for dy, dx in self.offsets), default=0)

    def union(self, other: "BlindRegion | None") -> "BlindRegion":
        """Both regions' offsets; filled from the window if either is (a 2-D region joined by a line)."""
        if other is None:
            return self
        fill = "window" if "window" in (self.fill, other.fill) else "random"
        return BlindRegion.from_offsets(self.offsets + other.offsets, fill)

    def transformed(self, transform: int) -> "BlindRegion":
        """The region in a patch transformed by :func:`dihedral` ``transform``.

        Computed by transforming a small image of the region with the very function that transforms
        the patches, so the two can never disagree.
        """
        if not self.offsets:
            return self
        half = self.radius
        grid = np.zeros((2 * half + 1, 2 * half + 1), dtype=bool)
        for dy, dx in self.offsets:
            grid[half + dy, half + dx] = True
        ys, xs = np.nonzero(dihedral(grid, transform))
        return BlindRegion.from_offsets(zip((ys - half).tolist(), (xs - half).tolist()), self.fill)

    def to_list(self) -> list[list[int]]:
        return [[dy, dx] for dy, dx in self.offsets]


def neighbourhood_region(kind: Literal["cross", "square"], radius: int = 1) -> BlindRegion:
    """The 4-neighbour cross or the full (2 radius + 1)^2 square around the blind spot."""
    if kind == "cross":
        steps = [s for s in range(-radius, radius + 1) if s]
        return BlindRegion.from_offsets([(0, s) for s in steps] + [(s, 0) for s in steps])
    return BlindRegion.from_offsets(
        (dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)
    )


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

    def region(self) -> BlindRegion:
        return BlindRegion.from_offsets(self.line_offsets(), fill="random")


def as_region(region: "BlindRegion | StructMask | None") -> BlindRegion | None:
    """A :class:`BlindRegion` from a region or a structN2V line; None (or empty) for a one-pixel spot."""
    if isinstance(region, StructMask):
        region = region.region()
    return region if region is not None and region.offsets else None


def stratification_cell_size(masked_fraction: float, hidden: int = 1) -> int:
    """Side of the grid cells that each hold one blind spot hiding ``hidden`` pixels, so that about
    ``masked_fraction`` of the pixels are hidden (0.05 -> 4 pixels alone, 13 with 8 neighbours)."""
    if not 0 < masked_fraction <= 1:
        raise ValueError(f"masked_fraction must be in (0, 1], got {masked_fraction}")
    return max(1, round(1 / math.sqrt(masked_fraction / hidden)))


def stratified_positions(
    planes: int,
    height: int,
    width: int,
    cell_size: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One uniformly random pixel per grid cell of every plane: (plane, y, x) index tensors.

    The pixel is drawn in the whole ``cell_size`` square even where the patch border cuts the cell, and
    dropped when it lands outside: every pixel is then a blind spot with probability 1 / cell_size**2
    (drawing inside the cut part instead would over-sample the last rows and columns). A patch side
    shorter than the cell is one cell along that axis, so every plane keeps at least one blind spot.
    """
    cell_y, cell_x = min(cell_size, height), min(cell_size, width)
    cells_y = math.ceil(height / cell_y)
    cells_x = math.ceil(width / cell_x)
    start_y = torch.arange(cells_y, device=device) * cell_y
    start_x = torch.arange(cells_x, device=device) * cell_x
    uniform = torch.rand((planes, cells_y, cells_x, 2), generator=generator, device=device)
    ys = start_y[None, :, None] + (uniform[..., 0] * cell_y).long()
    xs = start_x[None, None, :] + (uniform[..., 1] * cell_x).long()
    plane = torch.arange(planes, device=device)[:, None, None].expand(planes, cells_y, cells_x)
    inside = (ys < height) & (xs < width)
    return plane[inside], ys[inside], xs[inside]


def _mirrored(centre: torch.Tensor, offset: torch.Tensor, size: int) -> torch.Tensor:
    """``centre + offset``, or ``centre - offset`` where that would leave [0, size).

    Needs ``2 * |offset| < size``. The allowed offsets are symmetric in each axis, so the mirrored
    offset is allowed too, and it is never zero: the source is never the blind spot.
    """
    forward = centre + offset
    return torch.where((forward < 0) | (forward >= size), centre - offset, forward)


@functools.lru_cache(maxsize=64)
def replacement_offsets(
    roi_size: int, region: BlindRegion | StructMask | None = None, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dy, dx) of the window pixels a blind spot's replacement is drawn from.

    The ``roi_size`` x ``roi_size`` window without its centre, and without the blind-spot region when
    there is one (those pixels carry noise correlated with the centre's). Cached: built once per
    setting and device, not per batch; callers must not modify the returned tensors.
    """
    if roi_size < 3 or roi_size % 2 == 0:
        raise ValueError(f"roi_size must be an odd number >= 3, got {roi_size}")
    half = roi_size // 2
    excluded = {(0, 0)}
    region = as_region(region)
    if region is not None:
        excluded.update(region.offsets)
    pairs = [
        (dy, dx)
        for dy in range(-half, half + 1)
        for dx in range(-half, half + 1)
        if (dy, dx) not in excluded
    ]
    if not pairs:
        raise ValueError(f"the blind-spot region covers the whole {roi_size}x{roi_size} window; raise roi_size")
    offsets = torch.tensor(pairs, dtype=torch.long, device=device)
    return offsets[:, 0], offsets[:, 1]


@functools.lru_cache(maxsize=64)
def _transformed_tables(
    roi_size: int, region: BlindRegion | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per dihedral transform: the replacement window (8, K, 2) and the region (8, R, 2) offsets.

    The window is a square, so every transform leaves K (its size without the region) unchanged.
    """
    windows, regions = [], []
    for transform in range(8):
        moved = region.transformed(transform) if region is not None else None
        offset_y, offset_x = replacement_offsets(roi_size, moved, device)
        windows.append(torch.stack([offset_y, offset_x], dim=1))
        if moved is not None:
            regions.append(torch.tensor(moved.offsets, dtype=torch.long, device=device))
    return torch.stack(windows), (torch.stack(regions) if regions else None)


def mask_batch(
    batch: torch.Tensor,
    *,
    masked_fraction: float,
    roi_size: int,
    replacement: Replacement = "uniform",
    region: BlindRegion | StructMask | None = None,
    transforms: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Blind-spot mask a batch of patches shaped (..., H, W); every (..., ) plane is masked on its own.

    Returns ``(masked_input, mask)``: the input with the blind spots (and their regions) replaced, and
    a boolean tensor that is True at the blind spots, where the loss is taken against ``batch``.
    ``region`` is a :class:`BlindRegion` or a structN2V :class:`StructMask`, in the coordinates of the
    untransformed image; ``transforms`` (one :func:`dihedral` id per plane, default all 0) says how each
    patch was flipped/rotated, and the region turns with it. ``generator`` (on the batch's device)
    makes the masks reproducible.
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
    region = as_region(region)
    transforms = _plane_transforms(transforms, planes.shape[0], device)

    plane, ys, xs = stratified_positions(
        planes.shape[0], height, width,
        stratification_cell_size(masked_fraction, 1 + (len(region.offsets) if region is not None else 0)),
        generator=generator, device=device,
    )
    spots = _BlindSpots(planes.reshape(-1), plane, ys, xs, height, width)
    windows, region_tables = _transformed_tables(roi_size, region, device)
    window = windows[transforms[plane]]  # (N, K, 2): each spot's window in its patch's orientation
    # The random draws happen in this order (replacement values, then region fill): the masks of a seed depend on it.
    values = _replacement_values(spots, window, replacement, generator)

    masked = planes.clone()
    masked_flat = masked.view(-1)
    if region_tables is not None:
        line = region_tables[transforms[plane]]  # (N, R, 2)
        _fill_region(masked_flat, spots, line, window, region.fill, generator)
    # Blind spots are written last so a neighbouring spot's region never overwrites their replacement.
    centre = spots.centre
    masked_flat[centre] = values

    mask = torch.zeros(planes.shape, dtype=torch.bool, device=device)
    mask.view(-1)[centre] = True
    return masked.view(batch.shape), mask.view(batch.shape)


def _plane_transforms(transforms: torch.Tensor | None, planes: int, device: torch.device) -> torch.Tensor:
    """One dihedral id per patch plane, checked (all 0 when none are given)."""
    if transforms is None:
        return torch.zeros(planes, dtype=torch.long, device=device)
    transforms = torch.as_tensor(transforms, dtype=torch.long, device=device).reshape(-1)
    if transforms.numel() != planes:
        raise ValueError(f"{transforms.numel()} transforms given for {planes} patch planes")
    if transforms.numel() and (int(transforms.min()) < 0 or int(transforms.max()) > 7):
        raise ValueError("transforms must be dihedral ids 0-7")
    return transforms


@dataclass(frozen=True, eq=False)
class _BlindSpots:
    """The blind spots of a batch: the flattened planes, each spot's (plane, y, x) and the plane size."""

    flat: torch.Tensor
    plane: torch.Tensor
    ys: torch.Tensor
    xs: torch.Tensor
    height: int
    width: int

    @property
    def centre(self) -> torch.Tensor:
        """Each spot's index into the flattened planes."""
        return self.plane * (self.height * self.width) + self.ys * self.width + self.xs

    def values_at(self, plane: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """The pixels at ``offsets`` (..., 2) from (``ys``, ``xs``), mirrored to stay inside the patch."""
        source_y = _mirrored(ys, offsets[..., 0], self.height)
        source_x = _mirrored(xs, offsets[..., 1], self.width)
        return self.flat[plane * (self.height * self.width) + source_y * self.width + source_x]


def _replacement_values(
    spots: _BlindSpots, window: torch.Tensor, replacement: Replacement, generator: torch.Generator | None
) -> torch.Tensor:
    """Each blind spot's new value: a uniformly drawn window pixel (N2V) or the window median (N2V2)."""
    device = spots.flat.device
    if replacement == "uniform":
        count = spots.plane.numel()
        choice = torch.randint(0, window.shape[1], (count,), generator=generator, device=device)
        picked = window[torch.arange(count, device=device), choice]
        return spots.values_at(spots.plane, spots.ys, spots.xs, picked)
    values_window = spots.values_at(spots.plane[:, None], spots.ys[:, None], spots.xs[:, None], window)
    # quantile(0.5) averages the two middle values of the even-sized window, like numpy.median.
    return torch.quantile(values_window.float(), 0.5, dim=1).to(spots.flat.dtype)


def _fill_region(
    masked_flat: torch.Tensor, spots: _BlindSpots, line: torch.Tensor, window: torch.Tensor,
    fill: Literal["window", "random"], generator: torch.Generator | None,
) -> None:
    """Overwrite, in ``masked_flat``, the region pixels (``line``: (N, R, 2) offsets) around each blind spot."""
    height, width, device = spots.height, spots.width, spots.flat.device
    line_y = spots.ys[:, None] + line[..., 0]
    line_x = spots.xs[:, None] + line[..., 1]
    inside = (line_y >= 0) & (line_y < height) & (line_x >= 0) & (line_x < width)
    line_index = (spots.plane[:, None] * (height * width) + line_y * width + line_x)[inside]
    if fill == "random":
        low, high = STRUCT_RANDOM_RANGE
        noise = torch.rand(line_index.numel(), generator=generator, device=device)
        masked_flat[line_index] = (low + (high - low) * noise).to(spots.flat.dtype)
        return
    # Each region pixel copies a value from the blind spot's window (outside the region).
    pick = torch.randint(0, window.shape[1], line.shape[:2], generator=generator, device=device)
    picked = torch.gather(window, 1, pick[..., None].expand(*pick.shape, 2))
    sources = spots.values_at(spots.plane[:, None], spots.ys[:, None], spots.xs[:, None], picked)
    masked_flat[line_index] = sources[inside]


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of (prediction - target)**2 over the blind spots (``mask`` True), in float32."""
    weight = mask.to(torch.float32)
    squared = (prediction.float() - target.float()).square()
    return (squared * weight).sum() / weight.sum().clamp_min(1.0)


@torch.inference_mode()
def network_masked_errors(
    net: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, masks: torch.Tensor, batch_size: int,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The network's squared error at every blind spot of masked ``inputs`` (``masks`` True), float32,
    ``batch_size`` patches per pass on the tensors' device, with the net in eval mode."""
    net.eval()
    errors = []
    for start in range(0, len(inputs), batch_size):
        stop = start + batch_size
        with torch.autocast(inputs.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            prediction = net(inputs[start:stop])
        errors.append((prediction.float() - targets[start:stop])[masks[start:stop]].square())
    return torch.cat(errors)


def network_masked_mse(
    net: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, masks: torch.Tensor, batch_size: int,
    autocast_dtype: torch.dtype | None = None,
) -> float:
    """The network's mean squared error over the blind spots of masked ``inputs``: the validation loss
    of training."""
    return float(network_masked_errors(net, inputs, targets, masks, batch_size, autocast_dtype).mean())
