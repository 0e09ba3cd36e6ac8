"""The N2V U-Net and its N2V2 variant (Höck et al. 2022), in PyTorch.

The layout follows CAREamics' UNet (depth 2 and 32 base filters give ~334k parameters) so that the
benchmarks compare like with like. Two deliberate differences keep tiled prediction exact:
upsampling is bilinear with ``align_corners=False`` (translation-equivariant on the 2**depth grid,
unlike ``align_corners=True``) and every convolution is zero-padded "same", so a tile with a halo
at least the receptive field reproduces the whole-image result.

With ``baseline_radius`` r > 0 the network predicts a correction to a fixed baseline, the mean of the
ring of pixels at distance exactly r (Chebyshev) around each pixel. Training sets r one beyond the blind
spot, so the baseline never reads a pixel whose noise the blind spot hides. Why: the masked-pixel MSE
of a heavy-tailed image (one debris object 40 times brighter than the cells) is dominated by the
object's few patches, and a network that has not yet learnt to pass intensities through shifted the
background of the real Version1 site by +35 % and the object by +47 % after 100 steps; predicting a
correction to a local mean, which keeps every intensity where it is, brought both within 2 % at the
same budget (docs/benchmarks.md 'Intensities preserved on a sparse real field').
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class ConvBlock(nn.Module):
    """Two 3x3 convolutions, each followed by batch norm and ReLU."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, 3, padding=1),
            nn.BatchNorm2d(mid_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid_channels, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class MaxBlurPool(nn.Module):
    """N2V2's anti-aliased downsampling: 2x2 max with stride 1, then a binomial blur with stride 2."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        kernel_1d = torch.tensor([1.0, 2.0, 1.0])
        kernel = torch.outer(kernel_1d, kernel_1d)
        kernel = kernel / kernel.sum()
        self.register_buffer("kernel", kernel.expand(channels, 1, 3, 3).contiguous())
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Pad right/bottom by one so the stride-1 max keeps the size and the grid stays aligned.
        x = F.max_pool2d(F.pad(x, (0, 1, 0, 1), mode="replicate"), kernel_size=2, stride=1)
        x = F.pad(x, (1, 1, 1, 1), mode="reflect")
        return F.conv2d(x, self.kernel, stride=2, groups=self.channels)


class UNet(nn.Module):
    """N2V U-Net on single-channel images; ``n2v2=True`` gives the N2V2 architecture."""

    def __init__(self, depth: int = 2, base_filters: int = 32, n2v2: bool = False, baseline_radius: int = 0) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"U-Net depth must be >= 1, got {depth}")
        if base_filters < 1:
            raise ValueError(f"U-Net base_filters must be >= 1, got {base_filters}")
        if baseline_radius < 0:
            raise ValueError(f"U-Net baseline_radius must be >= 0, got {baseline_radius}")
        self.depth = depth
        self.base_filters = base_filters
        self.n2v2 = n2v2
        self.baseline_radius = baseline_radius
        # Not persistent: it follows from baseline_radius, and weights files stay the same as without it.
        self.register_buffer("ring", ring_kernel(baseline_radius) if baseline_radius else None, persistent=False)

        widths = [base_filters * 2**level for level in range(depth)]
        self.encoders = nn.ModuleList()
        self.pools = nn.ModuleList()
        in_channels = 1
        for width in widths:
            self.encoders.append(ConvBlock(in_channels, width, width))
            self.pools.append(MaxBlurPool(width) if n2v2 else nn.MaxPool2d(2))
            in_channels = width
        self.bottleneck = ConvBlock(widths[-1], widths[-1] * 2, widths[-1])

        self.decoders = nn.ModuleList()
        for level in reversed(range(depth)):
            skip = not (n2v2 and level == 0)  # N2V2 drops the top-level skip connection
            in_channels = widths[level] * 2 if skip else widths[level]
            out_channels = widths[level - 1] if level > 0 else widths[0]
            self.decoders.append(ConvBlock(in_channels, widths[level], out_channels))
        self.head = nn.Conv2d(widths[0], 1, 1)
        if baseline_radius:
            # An untrained network then predicts the baseline itself, not the baseline plus noise.
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    @property
    def size_multiple(self) -> int:
        """Input height and width must be multiples of this (2**depth)."""
        return 2**self.depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.ring is None:
            return self.correction(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            half = self.ring.shape[-1] // 2
            padded = F.pad(x.to(torch.promote_types(x.dtype, torch.float32)), (half,) * 4, mode="replicate")
            return F.conv2d(padded, self.ring) + self.correction(x)

    def correction(self, x: torch.Tensor) -> torch.Tensor:
        """The U-Net's own output (the whole prediction without a baseline)."""
        skips = []
        for encoder, pool in zip(self.encoders, self.pools):
            x = encoder(x)
            skips.append(x)
            x = pool(x)
        x = self.bottleneck(x)
        for decoder, level in zip(self.decoders, reversed(range(self.depth))):
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            if not (self.n2v2 and level == 0):
                x = torch.cat([x, skips[level]], dim=1)
            x = decoder(x)
        # The 1x1 output layer runs in fp32 even under autocast: in bf16 the output keeps 8
        # significant bits, i.e. tens of counts at 38,000 once de-normalised.
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.head(x.to(torch.promote_types(x.dtype, torch.float32)))


# The baseline averages this many rings of pixels, from baseline_radius outwards.
BASELINE_RINGS = 3


def ring_kernel(radius: int) -> torch.Tensor:
    """Weights averaging the pixels at Chebyshev distance ``radius`` to ``radius + BASELINE_RINGS - 1``:
    a square window with the centre square of side ``2 radius - 1`` left out."""
    outer = radius + BASELINE_RINGS - 1
    size = 2 * outer + 1
    kernel = torch.ones(size, size)
    inner = radius - 1
    kernel[outer - inner : outer + inner + 1, outer - inner : outer + inner + 1] = 0.0
    return (kernel / kernel.sum()).reshape(1, 1, size, size)


def build_unet(depth: int, base_filters: int, variant: str, baseline_radius: int = 0) -> UNet:
    """The network for an N2V ``variant`` ("n2v" or "n2v2"); ``baseline_radius`` see :class:`UNet`."""
    if variant not in ("n2v", "n2v2"):
        raise ValueError(f"unknown N2V variant {variant!r}: expected 'n2v' or 'n2v2'")
    return UNet(depth=depth, base_filters=base_filters, n2v2=variant == "n2v2", baseline_radius=baseline_radius)
