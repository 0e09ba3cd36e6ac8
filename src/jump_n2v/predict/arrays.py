"""Denoising whole (images, Y, X) Zarr arrays into new channel stores, as one dask array computation.

The source is read with ``da.from_zarr`` in blocks of whole images, each block tiled and run through the
network by a TileRunner (tiles of the block's images sharing forward passes, one pass per device at a
time), and stored with ``da.store`` chunk by chunk, on dask's threaded scheduler, so memory is bounded by
a few blocks and one tile batch, never by the plate.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping

import dask.array as da
import numpy as np
import torch
import zarr
from torch import nn

from jump_n2v.plumbing.atomic import atomic_output
from jump_n2v.plumbing.dtypes import integer_bounds
from jump_n2v.plumbing.logs import Progress
from jump_n2v.plumbing.ngff import create_channel_array, open_channel_array, set_channel_attributes
from jump_n2v.predict.runner import TileRunner
from jump_n2v.settings import PredictSettings
from jump_n2v.predict.tiling import AxisTiling


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
    range), coded with the channel stores' codec (jump_n2v.plumbing.ngff.CHANNEL_CODEC). Its attributes are the
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
    settings = PredictSettings.of(settings)
    source = _open_source(src)
    if source.ndim != 3:
        raise ValueError(f"{_describe(src)}: expected an (images, Y, X) array, got shape {source.shape}")
    count, height, width = source.shape
    dtype = output_dtype_for(source.dtype, settings.output_dtype)
    runner = TileRunner(net, settings, posterior)
    workers = num_workers if num_workers is not None else settings.workers or torch.get_num_threads()
    plan = _plan_blocks(runner, source, workers)
    progress = Progress(count, log, "denoised %d/%d images (%.2f Mpx/s)", work_per_item=height * width,
                        work_unit=1e6)
    if log is not None:
        _log_plan(log, runner, plan, source, src, posterior)

    start = time.perf_counter()
    with atomic_output(dst_path) as temporary:
        target = _create_output(temporary, source, dtype, {"output_dtype": settings.output_dtype, **dict(attrs or {})})
        if count:
            denoised = denoise_graph(runner, source, mean, std, dtype, plan.images_per_block)
            store_graph(denoised, _ProgressTarget(target, progress), plan.workers)
    return _summary(runner, plan, source.shape, time.perf_counter() - start)


@dataclasses.dataclass(frozen=True)
class _BlockPlan:
    """How predict_array cuts its work: each image's tiles, dask blocks of whole images, worker threads."""

    tile_size: int
    rows: AxisTiling
    cols: AxisTiling
    images_per_block: int
    workers: int

    @property
    def tiles_per_image(self) -> int:
        return self.rows.count * self.cols.count


def _plan_blocks(runner: TileRunner, source: zarr.Array, workers: Any) -> _BlockPlan:
    """The tiling of ``source``'s images, blocks of whole images that fill forward passes, and the
    ``workers`` threads that run them (checked here)."""
    count, height, width = source.shape
    tile_size = runner.tile_size((max(height, 1), max(width, 1)))
    rows, cols = runner.plan((max(height, 1), max(width, 1)))
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"predict_array: num_workers must be an integer >= 1, got {workers!r}")
    per_block = images_per_block(rows.count * cols.count, runner.batch_size, source.chunks[0], count)
    return _BlockPlan(tile_size, rows, cols, per_block, workers)


def _log_plan(
    log: logging.Logger, runner: TileRunner, plan: _BlockPlan, source: zarr.Array, src: Any, posterior: Any
) -> None:
    count, height, width = source.shape
    log.info(
        "denoising %d images of %dx%d from %s on %s: %d tiles of %dx%d per image (halo %d), batch %d%s; "
        "dask blocks of %d images on %d threads",
        count, height, width, _describe(src), runner.device, plan.tiles_per_image, plan.rows.tile, plan.cols.tile,
        runner.halo, runner.batch_size, ", 8-fold TTA" if runner.tta else "", plan.images_per_block, plan.workers,
    )
    log.info("posterior step: %s", "applied" if runner.posterior is not None else (
        "off (predict posterior: none)" if posterior is not None else "none fitted for this model"))


def _create_output(path: Path, source: zarr.Array, dtype: np.dtype, attrs: Mapping[str, Any]) -> zarr.Array:
    """An empty channel array shaped and chunked like ``source``, with its attributes plus ``attrs``."""
    # write_empty_chunks: zarr would otherwise compare every chunk with the fill value before writing
    # it (1.8 ms of CPU per 1080 x 1080 float32 field, a tenth of the pipeline's cost per field).
    target = create_channel_array(
        path, shape=source.shape, chunks=source.chunks, dtype=dtype, fill_value=0,
        config={"write_empty_chunks": True},
    )
    set_channel_attributes(target, {**dict(source.attrs), **attrs})
    return target


def _summary(runner: TileRunner, plan: _BlockPlan, shape: tuple[int, ...], seconds: float) -> dict[str, Any]:
    count, height, width = shape
    megapixels = count * height * width / 1e6
    return {
        "images": count,
        "megapixels": megapixels,
        "seconds": seconds,
        "mpx_per_s": megapixels / seconds if seconds > 0 else float("nan"),
        "tile_size": plan.tile_size,
        "tile_shape": [plan.rows.tile, plan.cols.tile],
        "tiles_per_image": plan.tiles_per_image,
        "halo": runner.halo,
        "batch": runner.batch_size,
        "images_per_block": plan.images_per_block,
        "workers": plan.workers,
    }


def images_per_block(tiles_per_image: int, batch_size: int, chunk_images: int, count: int) -> int:
    """Images per dask block: enough whole images that their tiles fill a forward pass of ``batch_size``
    tiles (4 whole-field tiles on a GPU; one image of 9 tiles on the CPU), rounded up to whole source
    chunks so blocks never share a chunk, and no more than the array holds."""
    wanted = math.ceil(batch_size / max(tiles_per_image, 1))
    return max(1, min(math.ceil(wanted / chunk_images) * chunk_images, count))


def denoise_graph(
    runner: TileRunner, source: zarr.Array, mean: float, std: float, dtype: np.dtype, per_block: int
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

    def __init__(self, runner: TileRunner, mean: float, std: float, dtype: np.dtype) -> None:
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

    def __init__(self, array: zarr.Array, progress: Progress) -> None:
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
