"""Tiled Noise2Void prediction of single images and of whole (images, Y, X) Zarr arrays.

Tiling is exact crop-and-stitch (as CAREamics' tile writer does, without blending): every tile carries a
halo of at least the network's receptive radius on each side, tile origins sit on the 2**depth pooling
grid, and only each tile's centre ("core") is kept. The result therefore equals the network applied
once to the whole image after reflect padding (``halo`` pixels on the top and left, enough on the
bottom and right to reach the tile grid), to float rounding; tests/test_predict.py checks this.

A whole array is denoised as one dask array computation (:func:`predict_array`): read with
``da.from_zarr`` in blocks of whole images, each block tiled as above and run through the network
(tiles of the block's images sharing forward passes, one pass per device at a time), and stored with
``da.store`` chunk by chunk, on dask's threaded scheduler, so memory is bounded by a few blocks and
one tile batch, never by the plate.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import os
import threading
import time
import uuid
import weakref
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import dask.array as da
import numpy as np
import torch
import zarr
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from jump_n2v.atomic import atomic_output
from jump_n2v.dtypes import integer_bounds
from jump_n2v.settings import ConfigError, PredictSettings
from jump_n2v.devices import resolve_device, resolve_precision
from jump_n2v.ngff import create_channel_array, open_channel_array, set_channel_attributes

DEFAULT_TILE_SIZE = {"cpu": 512, "cuda": 1024}
# On a GPU with tile_size null an image whose side (halos included) is at most this is one tile: a
# 1080 x 1080 field is one 1144 x 1144 tile instead of 4 of 604 (12% instead of 25% of the work spent
# on halos). Estimated, not measured (no GPU here): the default U-Net holds about 128 float32
# channels per pixel at full resolution at its peak, ~2 GiB for a 2048 x 2048 tile, so batch_size 4
# such tiles fit a 16 GiB GPU.
WHOLE_IMAGE_TILE_MAX = 2048
# Progress lines are logged at most this often (seconds), plus one when the array is done.
PROGRESS_INTERVAL_S = 5.0
# Forward passes run on one thread per device (see device_thread), one at a time: torch already uses
# the job's cores (or the whole GPU) for one pass, so concurrent passes would oversubscribe the CPU
# (or the GPU's memory), while reading, padding, encoding and writing run on the other workers beside
# it. One thread rather than a lock taken by whichever worker has a batch: malloc keeps an arena per
# thread, and CPU activations freed on every worker's thread held +250 MB RSS with 2 workers.
_DEVICE_THREADS: dict[tuple[str, int], ThreadPoolExecutor] = {}
_DEVICE_THREADS_GUARD = threading.Lock()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _as_settings(settings: PredictSettings | Mapping[str, Any] | None) -> PredictSettings:
    return settings if isinstance(settings, PredictSettings) else PredictSettings.from_dict(settings)


# --------------------------------------------------------------------------------------------------
# Receptive field and tiling geometry

_RECEPTIVE_FIELDS: "weakref.WeakKeyDictionary[nn.Module, int]" = weakref.WeakKeyDictionary()


def device_thread(device: torch.device) -> ThreadPoolExecutor:
    """The thread that runs every forward pass on ``device`` (one per device and process)."""
    index = device.index if device.index is not None else (torch.cuda.current_device() if device.type == "cuda" else 0)
    with _DEVICE_THREADS_GUARD:
        if (device.type, index) not in _DEVICE_THREADS:
            _DEVICE_THREADS[device.type, index] = ThreadPoolExecutor(
                1, thread_name_prefix=f"jump-n2v-predict-{device.type}{index}"
            )
        return _DEVICE_THREADS[device.type, index]


def _size_multiple(net: nn.Module) -> int:
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
    multiple = _size_multiple(net)
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
    multiple = _size_multiple(net)
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


# --------------------------------------------------------------------------------------------------
# One image

# The 8 symmetries of the square as (forward, inverse) transforms of (..., Y, X) tensors.
_DIHEDRAL: list[tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]] = []
for _k in range(4):
    _DIHEDRAL.append((lambda t, k=_k: torch.rot90(t, k, (-2, -1)), lambda t, k=_k: torch.rot90(t, -k, (-2, -1))))
    _DIHEDRAL.append(
        (
            lambda t, k=_k: torch.rot90(torch.flip(t, (-1,)), k, (-2, -1)),
            lambda t, k=_k: torch.flip(torch.rot90(t, -k, (-2, -1)), (-1,)),
        )
    )
del _k


def inference_copy(net: nn.Module, device: torch.device) -> nn.Module:
    """An eval-mode copy of ``net`` on ``device`` made faster for inference, computing the same function.

    Each convolution directly followed by batch norm (inside an ``nn.Sequential``) gets the norm folded
    into its weights, and the copy uses the channels-last memory layout. Measured on the 2-core CPU
    (depth 2, 32 filters, 4 tiles of 424 px): 1.3x from folding, 1.6x from channels-last, 2.0x together.
    The caller's network is left untouched.
    """
    inference = copy.deepcopy(net).eval()
    for module in inference.modules():
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            for first, second in zip(names, names[1:]):
                conv, norm = module._modules[first], module._modules[second]
                if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d) and norm.track_running_stats:
                    module._modules[first] = fuse_conv_bn_eval(conv, norm)
                    module._modules[second] = nn.Identity()
    return inference.to(device).to(memory_format=torch.channels_last)


@dataclasses.dataclass
class _TiledImage:
    """One image on its way through the network: its reflect-padded pixels (in the source dtype, half
    the memory of float32 for uint16; normalised tile by tile as they are batched) are cut into tiles
    whose cores fill ``output`` (normalised units, allocated with the first tile); ``padded`` is dropped
    once every tile ran. ``raw`` is kept only for the posterior step."""

    raw: np.ndarray | None
    shape: tuple[int, int]
    mean: np.float32
    std: np.float32
    rows: AxisTiling
    cols: AxisTiling
    padded: np.ndarray | None
    tiles_left: int
    output: np.ndarray | None = None

    @property
    def tile_shape(self) -> tuple[int, int]:
        return self.rows.tile, self.cols.tile

    def origins(self) -> list[tuple[int, int]]:
        return [(r * self.rows.core, c * self.cols.core) for r in range(self.rows.count) for c in range(self.cols.count)]


class _Runner:
    """A network ready to denoise batches of tiles on one device at one precision.

    Images go through in three steps that may run on different threads: :meth:`prepare` (normalise,
    pad), :meth:`run` (tiles of consecutive images share forward passes of up to ``batch_size``
    tiles) and :meth:`finish` (back to intensity units, posterior step).
    """

    def __init__(self, net: nn.Module, settings: PredictSettings, posterior: Any = None) -> None:
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.autocast_dtype = resolve_precision(settings.precision, self.device)
        self.net = inference_copy(net, self.device)
        self.multiple = _size_multiple(net)
        self.halo = halo_size(net)
        self.batch_size = settings.batch_size
        self.tta = settings.tta
        # The posterior step (jump_n2v.n2v.posterior.Posterior) mixes the raw pixel back in.
        self.posterior = posterior if settings.posterior == "auto" else None
        self.device_thread = device_thread(self.device)
        # Pinned host batches, one per worker thread: several threads fill batches while one runs.
        self._local = threading.local()

    def __dask_tokenize__(self) -> tuple[str, int]:
        # dask names tasks by hashing their arguments, which for a plain object means pickling it: the
        # network, on every graph built. The runner is used in this process only (threaded scheduler).
        return ("jump-n2v-runner", id(self))

    def __getstate__(self) -> None:
        raise TypeError("a prediction runner holds the network: it is not pickled into "
                        "tasks (predict_array runs dask's threaded scheduler in this process)")

    def tile_size(self, image_shape: tuple[int, int]) -> int:
        return resolve_tile_size(self.settings, self.device, self.halo, multiple=self.multiple, image_shape=image_shape)

    def plan(self, image_shape: tuple[int, int]) -> tuple[AxisTiling, AxisTiling]:
        """Row and column tiling of an image of ``image_shape``."""
        tile_size = self.tile_size(image_shape)
        return tuple(plan_axis(length, tile_size, self.halo, self.multiple) for length in image_shape)  # type: ignore[return-value]

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _host_batch(self, count: int, tile_shape: tuple[int, int]) -> np.ndarray:
        """Host memory for one batch of tiles. On CUDA a page-locked (pinned) buffer reused by the calling
        thread, so the copy to the GPU is one asynchronous DMA without the driver's staging copy
        (unmeasured: no GPU here). It can be refilled once :meth:`forward` returned, because that waits
        for the result on the host."""
        if self.device.type != "cuda":
            return np.empty((count, *tile_shape), dtype=np.float32)
        pinned = getattr(self._local, "pinned", None)
        if pinned is None or tuple(pinned.shape[1:]) != tile_shape or pinned.shape[0] < count:
            pinned = self._local.pinned = torch.empty(
                (max(count, self.batch_size), *tile_shape), dtype=torch.float32, pin_memory=True
            )
        return pinned[:count].numpy()

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """Network output for a (B, Ty, Tx) float32 batch, averaged over the 8 symmetries with TTA."""
        tensor = torch.from_numpy(batch).unsqueeze(1)
        tensor = tensor.to(self.device, non_blocking=self.device.type == "cuda")
        tensor = tensor.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), self._autocast():
            if not self.tta:
                output = self.net(tensor).float()
            else:
                output = torch.zeros_like(tensor, dtype=torch.float32)
                for transform, inverse in _DIHEDRAL:
                    transformed = transform(tensor).contiguous(memory_format=torch.channels_last)
                    output += inverse(self.net(transformed).float())
                output /= len(_DIHEDRAL)
        return output[:, 0].cpu().numpy()

    def prepare(self, image: np.ndarray, mean: float, std: float) -> _TiledImage:
        """Normalise and reflect pad one 2-D image for tiling."""
        if image.ndim != 2:
            raise ValueError(f"denoise_image expects one 2-D image, got shape {image.shape}")
        if not (np.isfinite(mean) and np.isfinite(std) and std > 0):
            raise ValueError(f"denoise_image: normalisation needs a finite mean and a positive std, got {mean}, {std}")
        height, width = image.shape
        if height == 0 or width == 0:
            raise ValueError(f"denoise_image: empty image of shape {image.shape}")
        rows, cols = self.plan((height, width))
        pixels = np.asarray(image)
        if pixels.dtype.kind not in "uif":
            pixels = pixels.astype(np.float32)
        padded = np.pad(pixels, ((self.halo, rows.pad_after), (self.halo, cols.pad_after)), mode="reflect")
        raw = image if self.posterior is not None else None
        return _TiledImage(
            raw, (height, width), np.float32(mean), np.float32(std), rows, cols, padded, rows.count * cols.count
        )

    def run(self, images: Iterable[_TiledImage]) -> Iterator[_TiledImage]:
        """The prepared ``images`` with their ``output`` filled, in order, each as soon as its last tile ran.

        Tiles are queued across images and sent ``batch_size`` at a time (a batch holds one tile shape:
        the queue is flushed when the shape changes), so besides the caller's own at most
        ceil(batch_size / tiles per image) + 1 images are held here.
        """
        queue: deque[tuple[_TiledImage, int, int]] = deque()
        waiting: deque[_TiledImage] = deque()
        for image in images:
            if queue and queue[0][0].tile_shape != image.tile_shape:
                while queue:
                    self._run_batch(queue)
            waiting.append(image)
            queue.extend((image, y, x) for y, x in image.origins())
            while len(queue) >= self.batch_size:
                self._run_batch(queue)
            while waiting and waiting[0].tiles_left == 0:
                yield waiting.popleft()
        while queue:
            self._run_batch(queue)
        yield from waiting

    def _run_batch(self, queue: deque[tuple[_TiledImage, int, int]]) -> None:
        tiles = [queue.popleft() for _ in range(min(self.batch_size, len(queue)))]
        tile_y, tile_x = tiles[0][0].tile_shape
        batch = self._host_batch(len(tiles), (tile_y, tile_x))
        for slot, (image, y, x) in zip(batch, tiles):
            # The same float32 operations as normalising the whole image before padding.
            slot[...] = image.padded[y : y + tile_y, x : x + tile_x]
            slot -= image.mean
            slot /= image.std
        result = self.device_thread.submit(self.forward, batch).result()
        halo = self.halo
        for (image, y, x), tile in zip(tiles, result):
            # Tile (y, x) in padded coordinates has its core at image coordinates (y, x).
            height, width = image.shape
            if image.output is None:
                image.output = np.empty(image.shape, dtype=np.float32)
            keep_y, keep_x = min(image.rows.core, height - y), min(image.cols.core, width - x)
            image.output[y : y + keep_y, x : x + keep_x] = tile[halo : halo + keep_y, halo : halo + keep_x]
            image.tiles_left -= 1
            if image.tiles_left == 0:
                image.padded = None

    def finish(self, image: _TiledImage, mean: float, std: float) -> np.ndarray:
        """The denoised image in the input's intensity units (float32), posterior step applied."""
        output = image.output
        output *= np.float32(std)
        output += np.float32(mean)
        if self.posterior is not None:
            output = self.posterior.apply(image.raw, output)
        return output

    def denoise_many(self, images: Iterable[np.ndarray], mean: float, std: float) -> Iterator[np.ndarray]:
        """Denoised ``images`` in order; tiles of consecutive images share forward passes."""
        prepared = (self.prepare(image, mean, std) for image in images)
        for image in self.run(prepared):
            yield self.finish(image, mean, std)

    def denoise(self, image: np.ndarray, mean: float, std: float) -> np.ndarray:
        return next(self.denoise_many([image], mean, std))


def denoise_image(
    net: nn.Module,
    image_2d: np.ndarray,
    mean: float,
    std: float,
    settings: PredictSettings | Mapping[str, Any] | None = None,
    *,
    posterior: Any = None,
) -> np.ndarray:
    """Denoise one 2-D image of any size with overlapping tiles; returns float32 in the input's units.

    The image is normalised with ``(x - mean) / std``, reflect padded, cut into tiles of at most
    ``tile_size`` pixels (halo included, origins on the 2**depth grid) that go through ``net`` (put in
    eval mode, moved to the device) ``batch_size`` at a time, and each tile's core is pasted back.
    With ``tta`` every tile is predicted in the 8 flips/rotations and the results are averaged.
    ``posterior`` (the trained model's :class:`~jump_n2v.n2v.posterior.Posterior`) is applied to the
    result unless the settings say ``posterior: none``.
    """
    return _Runner(net, _as_settings(settings), posterior).denoise(image_2d, mean, std)


# --------------------------------------------------------------------------------------------------
# Whole arrays


def output_dtype_for(source_dtype: np.dtype, output_dtype: str) -> np.dtype:
    if output_dtype == "float32":
        return np.dtype(np.float32)
    source_dtype = np.dtype(source_dtype)
    if source_dtype.kind not in "uif":
        raise ValueError(f"output_dtype input: cannot write denoised images as source dtype {source_dtype}")
    return source_dtype


def to_output_dtype(denoised: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast float32 network output (in the source's intensity units) to ``dtype``.

    Integer dtypes are rounded to the nearest integer and clipped to the dtype's range (denoising can
    push dark background below 0 or saturated pixels above the maximum); float dtypes are cast.
    """
    dtype = np.dtype(dtype)
    if dtype.kind in "ui":
        low, high = integer_bounds(dtype)
        rounded = np.rint(denoised.astype(np.float64 if dtype.itemsize >= 4 else np.float32))
        np.clip(rounded, low, high, out=rounded)
        return rounded.astype(dtype)
    return denoised.astype(dtype, copy=False)


class _Progress:
    def __init__(self, total: int, pixels_per_image: int, log: logging.Logger | None) -> None:
        self.total, self.pixels_per_image, self.log = total, pixels_per_image, log
        self.done = 0
        self.start = self.last = time.perf_counter()
        self.lock = threading.Lock()

    def add(self, images: int) -> None:
        with self.lock:
            self.done += images
            now = time.perf_counter()
            if self.log is None or (now - self.last < PROGRESS_INTERVAL_S and self.done < self.total):
                return
            self.last = now
            rate = self.done * self.pixels_per_image / 1e6 / max(now - self.start, 1e-9)
            self.log.info("denoised %d/%d images (%.2f Mpx/s)", self.done, self.total, rate)


def predict_array(
    net: nn.Module,
    mean: float,
    std: float,
    src: zarr.Array | str | os.PathLike,
    dst_path: str | os.PathLike,
    settings: PredictSettings | Mapping[str, Any] | None = None,
    *,
    attrs: Mapping[str, Any] | None = None,
    log: logging.Logger | None = None,
    num_workers: int | None = None,
    posterior: Any = None,
) -> dict[str, Any]:
    """Denoise every image of a (images, Y, X) Zarr array into a new channel store at ``dst_path``.

    The output has the source's shape and chunks and dtype float32, or with ``output_dtype: input``
    the source dtype (see :func:`to_output_dtype`: integers are rounded and clipped to the dtype's
    range), coded with the channel stores' codec (jump_n2v.ngff.CHANNEL_CODEC). Its attributes are the
    source's plus ``output_dtype`` and ``attrs``. The store is written atomically: an interrupted run
    leaves nothing at ``dst_path``.

    The work is one dask array computation: ``da.from_zarr`` of the source in blocks of whole images
    (:func:`images_per_block` of them, so a block's tiles fill forward passes of ``batch_size``),
    ``map_blocks`` of the network's tiled application (normalise, reflect pad, cut into overlapping
    tiles whose halo covers the receptive field, forward passes, paste the cores: exactly
    :func:`denoise_image`), and ``da.store`` into the output, whose chunks are the source's, so every
    block writes whole chunks of its own. dask's threaded scheduler runs it on ``num_workers``
    threads (default: the ``workers`` setting, else torch's thread count, which the predict rule sets
    to the job's threads); each thread reads, decodes, pads, converts, encodes and writes its block,
    and hands its batches of tiles to the device's thread, which runs them one at a time. The network is held by one runner
    object that the tasks reference, never copied or pickled into them. dask runs the blocks in order
    with at most ``num_workers`` in flight, so memory is a few blocks whatever the number of images.
    ``posterior`` as in :func:`denoise_image`. Returns a summary (images, megapixels, seconds,
    mpx_per_s, tile_size, tile_shape, tiles_per_image, halo, batch, images_per_block, workers).
    """
    settings = _as_settings(settings)
    source = _open_source(src)
    if source.ndim != 3:
        raise ValueError(f"{_describe(src)}: expected an (images, Y, X) array, got shape {source.shape}")
    count, height, width = source.shape
    dtype = output_dtype_for(source.dtype, settings.output_dtype)
    runner = _Runner(net, settings, posterior)
    tile_size = runner.tile_size((max(height, 1), max(width, 1)))
    rows, cols = runner.plan((max(height, 1), max(width, 1)))
    workers = num_workers if num_workers is not None else settings.workers or torch.get_num_threads()
    if not _is_int(workers) or workers < 1:
        raise ValueError(f"predict_array: num_workers must be an integer >= 1, got {workers!r}")
    per_block = images_per_block(rows.count * cols.count, runner.batch_size, source.chunks[0], count)
    progress = _Progress(count, height * width, log)
    if log is not None:
        log.info(
            "denoising %d images of %dx%d from %s on %s: %d tiles of %dx%d per image (halo %d), batch %d%s; "
            "dask blocks of %d images on %d threads",
            count, height, width, _describe(src), runner.device, rows.count * cols.count, rows.tile, cols.tile,
            runner.halo, runner.batch_size, ", 8-fold TTA" if runner.tta else "", per_block, workers,
        )
        log.info("posterior step: %s", "applied" if runner.posterior is not None else (
            "off (predict posterior: none)" if posterior is not None else "none fitted for this model"))

    start = time.perf_counter()
    with atomic_output(dst_path) as temporary:
        # write_empty_chunks: zarr would otherwise compare every chunk with the fill value before writing
        # it (1.8 ms of CPU per 1080 x 1080 float32 field, a tenth of the pipeline's cost per field).
        target = create_channel_array(
            temporary, shape=source.shape, chunks=source.chunks, dtype=dtype, fill_value=0,
            config={"write_empty_chunks": True},
        )
        set_channel_attributes(target, {**dict(source.attrs), "output_dtype": settings.output_dtype, **dict(attrs or {})})
        if count:
            denoised = denoise_graph(runner, source, mean, std, dtype, per_block)
            store_graph(denoised, _ProgressTarget(target, progress), workers)
    seconds = time.perf_counter() - start
    megapixels = count * height * width / 1e6
    return {
        "images": count,
        "megapixels": megapixels,
        "seconds": seconds,
        "mpx_per_s": megapixels / seconds if seconds > 0 else float("nan"),
        "tile_size": tile_size,
        "tile_shape": [rows.tile, cols.tile],
        "tiles_per_image": rows.count * cols.count,
        "halo": runner.halo,
        "batch": runner.batch_size,
        "images_per_block": per_block,
        "workers": workers,
    }


def images_per_block(tiles_per_image: int, batch_size: int, chunk_images: int, count: int) -> int:
    """Images per dask block: enough whole images that their tiles fill a forward pass of ``batch_size``
    tiles (4 whole-field tiles on a GPU; one image of 9 tiles on the CPU), rounded up to whole source
    chunks so blocks never share a chunk, and no more than the array holds."""
    wanted = math.ceil(batch_size / max(tiles_per_image, 1))
    return max(1, min(math.ceil(wanted / chunk_images) * chunk_images, count))


def denoise_graph(
    runner: "_Runner", source: zarr.Array, mean: float, std: float, dtype: np.dtype, per_block: int
) -> da.Array:
    """The lazy denoised array: ``source`` read in blocks of ``per_block`` whole images, each block
    denoised by ``runner`` (tiles with halos, exact crop-and-stitch) and converted to ``dtype``."""
    count, height, width = source.shape
    raw = da.from_zarr(source, chunks=(per_block, height, width), name=f"jump-n2v-raw-{uuid.uuid4().hex}")
    # An explicit name: dask would otherwise hash the function's arguments to name the tasks.
    return raw.map_blocks(
        _BlockDenoiser(runner, mean, std, dtype), dtype=dtype, meta=np.empty((0, 0, 0), dtype=dtype),
        name=f"jump-n2v-denoise-{uuid.uuid4().hex}",
    )


def store_graph(denoised: da.Array, target: Any, workers: int) -> None:
    """Compute ``denoised`` into ``target`` with dask's threaded scheduler on ``workers`` threads."""
    pool = ThreadPoolExecutor(workers, thread_name_prefix="jump-n2v-predict")
    try:
        # Blocks are whole chunks of the target and no two share one: no lock needed.
        da.store(denoised, target, lock=False, scheduler="threads", pool=pool)
    finally:
        # On a failure dask returns while other blocks may still be writing; they must land before
        # atomic_output deletes the temporary store, or the deletion races with them.
        pool.shutdown(wait=True, cancel_futures=True)


class _BlockDenoiser:
    """The function dask maps over blocks of whole images: the runner's tiled denoising, converted."""

    def __init__(self, runner: "_Runner", mean: float, std: float, dtype: np.dtype) -> None:
        self.runner, self.mean, self.std, self.dtype = runner, mean, std, np.dtype(dtype)

    def __dask_tokenize__(self) -> tuple[str, int]:
        return ("jump-n2v-block-denoiser", id(self))

    def __call__(self, block: np.ndarray) -> np.ndarray:
        runner, mean, std = self.runner, self.mean, self.std
        images = runner.run([runner.prepare(image, mean, std) for image in block])
        if len(block) == 1 and self.dtype == np.float32:  # the usual CPU block: no block buffer
            return runner.finish(next(images), mean, std)[None]
        denoised = np.empty(block.shape, dtype=self.dtype)
        for index, image in enumerate(images):
            denoised[index] = to_output_dtype(runner.finish(image, mean, std), self.dtype)
        return denoised


class _ProgressTarget:
    """The output array as da.store's target: writes a block, then counts its images for the log."""

    def __init__(self, array: zarr.Array, progress: _Progress) -> None:
        self.array, self.progress = array, progress
        self.shape, self.dtype = array.shape, array.dtype

    def __dask_tokenize__(self) -> tuple[str, int]:
        return ("jump-n2v-progress-target", id(self))

    def __setitem__(self, region: tuple[slice, ...], block: np.ndarray) -> None:
        self.array[region] = block
        self.progress.add(len(block))


def _open_source(src: zarr.Array | str | os.PathLike) -> zarr.Array:
    if isinstance(src, zarr.Array):
        return src
    path = Path(src)
    if not path.exists():
        raise FileNotFoundError(f"source Zarr array {path} does not exist")
    try:
        return open_channel_array(path)
    except Exception as error:  # zarr raises several types for a folder that is not an array
        raise ValueError(f"{path} is not a readable Zarr array: {error}") from error


def _describe(src: Any) -> str:
    return str(src) if not isinstance(src, zarr.Array) else f"Zarr array {src.store_path}"
