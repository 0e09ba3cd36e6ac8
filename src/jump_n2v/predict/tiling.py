"""Tile and halo geometry for tiled prediction: receptive field, halo and how each image axis is cut.

Tiling is exact crop-and-stitch (as CAREamics' tile writer does, without blending): every tile carries a
halo of at least the network's receptive radius on each side, tile origins sit on the 2**depth pooling
grid, and only each tile's centre ("core") is kept. The result therefore equals the network applied
once to the whole image after reflect padding (``halo`` pixels on the top and left, enough on the
bottom and right to reach the tile grid), to float rounding; tests/test_predict.py checks this.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import weakref

import torch
from torch import nn

from jump_n2v.settings import ConfigError
from jump_n2v.settings import PredictSettings

DEFAULT_TILE_SIZE = {"cpu": 512, "cuda": 1024}
# On a GPU with tile_size null an image whose side (halos included) is at most this is one tile: a
# 1080 x 1080 field is one 1144 x 1144 tile instead of 4 of 604 (12% instead of 25% of the work spent
# on halos). Estimated, not measured (no GPU here): the default U-Net holds about 128 float32
# channels per pixel at full resolution at its peak, ~2 GiB for a 2048 x 2048 tile, so batch_size 4
# such tiles fit a 16 GiB GPU.
WHOLE_IMAGE_TILE_MAX = 2048

_RECEPTIVE_FIELDS: "weakref.WeakKeyDictionary[nn.Module, int]" = weakref.WeakKeyDictionary()


def size_multiple(net: nn.Module) -> int:
    """The pooling grid every tile side and origin sits on: the network's size_multiple, else 2**depth."""
    multiple = getattr(net, "size_multiple", None)
    if multiple is None:
        multiple = 2 ** int(getattr(net, "depth", 0))
    return int(multiple)


def receptive_field(net: nn.Module) -> int:
    """Width (odd, pixels) of an input window that holds everything any output pixel depends on.

    Measured on the model, not assumed, as the gradient's nonzero extent: on a float64 copy in eval
    mode with every ReLU replaced by the identity (so the data switch no path off: this is the
    structural receptive field, valid for any input), the gradient of one block of 2**depth adjacent
    output pixels (one per phase of the pooling grid, random weights so nothing cancels) is taken with
    respect to a random input, twice per axis with different inputs (max pooling routes the gradient to
    the data's maxima; with dozens of channels every corner of the window is hit). Rows are measured on
    a tall narrow input and columns on a wide flat one, which is cheap at any depth, and the input is
    lengthened until the window does not touch its ends. The result is 2 r + 1 where r bounds every
    pixel's reach from above, at most 2**depth - 1 pixels more than the exact per-pixel value (whose
    cost grows with 4**depth). Cached per network object.
    """
    cached = _RECEPTIVE_FIELDS.get(net)
    if cached is not None:
        return cached
    multiple = size_multiple(net)
    probe = copy.deepcopy(net).to(device="cpu", dtype=torch.float64).eval()
    _replace_relus(probe)
    generator = torch.Generator().manual_seed(0)
    length = max(64, 8 * multiple)
    while True:
        reaches = [_probe_reach(probe, length, axis, multiple, generator) for axis in (0, 1) for _ in range(2)]
        if not any(touches_end for _, touches_end in reaches):
            break
        length = _grow(length)
    field = 2 * max(reach for reach, _ in reaches) + 1
    _RECEPTIVE_FIELDS[net] = field
    return field


def _probe_reach(
    probe: nn.Module, length: int, axis: int, multiple: int, generator: torch.Generator
) -> tuple[int, bool]:
    """Upper bound on how far along ``axis`` any pixel of a grid-aligned block of output pixels reaches,
    and whether the window touches an end of the random input (``length`` long, 4 grid steps wide)."""
    width = 4 * multiple
    first = (length // 2) // multiple * multiple
    shape = (length, width) if axis == 0 else (width, length)
    image = torch.randn(1, 1, *shape, dtype=torch.float64, generator=generator, requires_grad=True)
    weights = torch.rand(multiple, dtype=torch.float64, generator=generator) + 0.5
    with torch.enable_grad():
        output = probe(image)[0, 0]
        block = output[first : first + multiple, width // 2] if axis == 0 else output[width // 2, first : first + multiple]
        (block * weights).sum().backward()
    profile = image.grad[0, 0].abs().sum(dim=1 - axis)
    reached = torch.nonzero(profile).flatten()
    if reached.numel() == 0:
        raise ValueError("receptive_field: the output does not depend on the input (all-zero gradient)")
    low, high = int(reached.min()), int(reached.max())
    # The block's first pixel may need all of [low, ...] and its last all of [..., high].
    reach = max(first + multiple - 1 - low, high - first)
    return reach, low == 0 or high == length - 1


def _grow(size: int) -> int:
    if size >= 8192:
        raise ValueError(f"receptive_field: the window still fills a {size}x{size} input; is the network local?")
    return size * 2


def _replace_relus(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, (nn.ReLU, nn.LeakyReLU, nn.ReLU6)):
            setattr(module, name, nn.Identity())
        else:
            _replace_relus(child)


def halo_size(net: nn.Module) -> int:
    """Pixels of context each tile carries on every side: ceil(rf / 2) rounded up to the pooling grid."""
    multiple = size_multiple(net)
    return math.ceil(math.ceil(receptive_field(net) / 2) / multiple) * multiple


@dataclasses.dataclass(frozen=True)
class AxisTiling:
    """How one image axis is cut: ``count`` tiles of ``tile`` pixels whose central ``core`` is kept."""

    length: int
    core: int
    halo: int
    count: int

    @property
    def tile(self) -> int:
        return self.core + 2 * self.halo

    @property
    def pad_after(self) -> int:
        """Reflect padding after the image so the last tile is complete (padding before is ``halo``)."""
        return self.count * self.core + self.halo - self.length


def plan_axis(length: int, max_tile: int, halo: int, multiple: int) -> AxisTiling:
    """Cut ``length`` pixels into as few tiles of at most ``max_tile`` (halo included) as possible.

    The core is then shrunk to the smallest multiple of the pooling grid that still covers the axis,
    so a 1080-pixel axis with 512-pixel tiles uses three 360-pixel cores rather than 448 + 448 + 184
    padded up to 448 (which would waste a third of the computation).
    """
    max_core = (max_tile // multiple) * multiple - 2 * halo
    if max_core < multiple:
        raise ConfigError(
            f"predict tile_size {max_tile} leaves no room for the network's halo of {halo} px on each side; "
            f"use a tile_size of at least {2 * halo + multiple} (ideally >= {4 * halo})"
        )
    count = math.ceil(length / max_core)
    core = math.ceil(math.ceil(length / count) / multiple) * multiple
    return AxisTiling(length=length, core=core, halo=halo, count=count)


def resolve_tile_size(
    settings: PredictSettings,
    device: torch.device,
    halo: int,
    *,
    multiple: int = 1,
    image_shape: tuple[int, ...] | None = None,
) -> int:
    """The configured tile size; else, on a GPU, one tile for the whole image of ``image_shape`` when
    that tile's side is at most WHOLE_IMAGE_TILE_MAX; else the device default (never less than 4 halos,
    so most work is kept)."""
    if settings.tile_size is not None:
        return settings.tile_size
    if device.type == "cuda" and image_shape:
        whole = max(math.ceil(length / multiple) * multiple for length in image_shape) + 2 * halo
        if whole <= WHOLE_IMAGE_TILE_MAX:
            return whole
    return max(DEFAULT_TILE_SIZE.get(device.type, DEFAULT_TILE_SIZE["cuda"]), 4 * halo)
