"""Seeded training patches from (images, Y, X) Zarr arrays, one array per plate.

The images chosen for training and validation (at most ``train_images`` per plate) are decoded once
and held in memory when they fit in ``memory_mb``; a batch is then one vectorised gather of its patch
windows, with no decompression per patch (decoding a whole 1080 x 1080 chunk for each 64 x 64 patch is
what starves a GPU). When they do not fit, a batch reads exactly its patch windows from the arrays
(``array[image, y:y+P, x:x+P]``), so memory stays bounded however large ``train_images`` is. Either way
reader threads run ahead of training, and what a batch contains depends only on the seed and the
epoch, never on thread timing or the loader mode, so training is reproducible and a run resumed at an
epoch boundary draws the same patches as an uninterrupted one.

Normalisation statistics are streamed over the training images one row block at a time. Patches are
normalised robustly: offset by the median of the training pixels and scaled by the standard deviation
of those pixels winsorised at their 1st and 99th percentiles (:data:`WINSOR_PERCENT`). Two failures
bound that choice. The mean and standard deviation let one debris object on the real Version1 site (0.5 %
of the pixels, 40 times brighter than the cells) set the scale: ER's standard deviation 2,288 ADU where
the background's spread is 151 squeezed the background into 0.07 normalised units. The median absolute
deviation, the fix that followed, measures only the background on a sparse stain (more than half its
pixels): synthetic DNA's scale became its noise, 3 ADU where the nuclei span 22, and at 400 steps the
network alone fell 5.5 dB below the raw image on 2 x 2-mixed noise (docs/benchmarks.md 'Normalisation
scale'). Winsorised at 1 %, the scale follows the cells' contrast and not an object under 1 % of the field.
"""

from __future__ import annotations

import collections
import concurrent.futures
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Iterator, Sequence

import numpy as np

from jump_n2v.n2v.masking import dihedral

# Independent random streams, all derived from the one seed (numpy SeedSequence entropy lists).
_SELECTION_STREAM = 1
_SPLIT_STREAM = 2
_VALIDATION_STREAM = 3
_TRAINING_STREAM = 4

# Columns of a patch plan row.
PLAN_COLUMNS = ("array", "image", "y", "x", "transform")


def array_location(array: Any) -> str:
    """Where a Zarr array lives (its store folder and path), for messages and provenance."""
    store = getattr(array, "store", None)
    root = getattr(store, "root", None)
    path = getattr(array, "path", "") or ""
    if root is not None:
        return str(Path(root) / path) if path else str(root)
    name = getattr(array, "name", None) or "array"
    return f"<{type(store).__name__ if store is not None else type(array).__name__}>:{name}"


@dataclass(frozen=True)
class Normalization:
    """The affine normalisation ``(x - mean) / std`` of the training pixels, in the source units.

    ``mean`` and ``std`` are the offset and the scale applied (the names every model folder has used);
    with ``method`` "median_winsorised" they are the pixels' median and the standard deviation of the pixels
    clipped to their 1st and 99th percentiles, with "median_mad" (models trained before) the median and
    1.4826 x the median absolute deviation, with "mean_std" (models trained before that) their mean and
    standard deviation. ``pixel_mean`` and ``pixel_std`` are recorded
    either way.
    """

    mean: float
    std: float
    method: str = "mean_std"
    pixel_mean: float | None = None
    pixel_std: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The model.json ``normalization`` record."""
        return {"mean": self.mean, "std": self.std, "method": self.method, "pixel_mean": self.pixel_mean, "pixel_std": self.pixel_std}


# Percent of the training pixels at each end clipped before the scale is taken: an object on under 1 %
# of a field (Version1's debris: 0.5 %) cannot set it.
WINSOR_PERCENT = 1.0
# Float images: the median and the scale come from this many pixels of the training images (a seeded sample).
ROBUST_SAMPLE_PIXELS = 2**22


def weighted_quantiles(values: np.ndarray, counts: np.ndarray, fractions: Sequence[float]) -> list[float]:
    """The values below which each of ``fractions`` of the (``counts``-weighted) values lie: the lower one
    at a tie, exact. One sort for all of them."""
    order = np.argsort(values, kind="stable")
    ordered, cumulative = values[order], np.cumsum(counts[order])
    total = int(cumulative[-1])
    ranks = [min(int(math.floor(fraction * (total - 1))), total - 1) for fraction in fractions]
    return [float(ordered[np.searchsorted(cumulative, rank + 1)]) for rank in ranks]


def median_and_winsorised_std(values: np.ndarray, counts: np.ndarray | None = None) -> tuple[float, float]:
    """The (weighted) median of ``values`` and the standard deviation of the values clipped to their
    :data:`WINSOR_PERCENT` and 100 - :data:`WINSOR_PERCENT` percentiles. ``counts`` weighs each value (a histogram)."""
    values = np.asarray(values, dtype=np.float64)
    counts = np.ones(values.shape, dtype=np.int64) if counts is None else np.asarray(counts, dtype=np.int64)
    low, median, high = weighted_quantiles(values, counts, (WINSOR_PERCENT / 100, 0.5, 1 - WINSOR_PERCENT / 100))
    clipped = np.clip(values, low, high)
    weights = counts.astype(np.float64)
    centre = float(np.average(clipped, weights=weights))
    return median, math.sqrt(float(np.average(np.square(clipped - centre), weights=weights)))


def _check_array(array: Any, name: str, patch_size: int) -> None:
    shape = tuple(getattr(array, "shape", ()))
    if len(shape) != 3:
        raise ValueError(f"{name}: expected a 3-D array (images, Y, X), got shape {shape}")
    dtype = np.dtype(array.dtype)
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise ValueError(f"{name}: unsupported dtype {dtype}; expected an integer or float type")
    images, height, width = shape
    if images == 0:
        raise ValueError(f"{name}: the array holds no images")
    if height < patch_size or width < patch_size:
        raise ValueError(
            f"{name}: images are {height}x{width} pixels, smaller than the training patch_size "
            f"{patch_size}; lower n2v.patch_size to at most {min(height, width)} (a multiple of 2**depth)"
        )


def _add_counts(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Two histograms with the same origin, summed (the shorter one padded with zeros)."""
    if len(first) < len(second):
        first, second = second, first
    first = first.copy()
    first[: len(second)] += second
    return first


def _histogram_values(histogram: dict[int, np.ndarray], samples: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The (value, count) pairs of integer histograms keyed by their origin, plus float samples (count 1)."""
    values, counts = [], []
    for low, bins in histogram.items():
        present = np.flatnonzero(bins)
        values.append(present.astype(np.float64) + low)
        counts.append(bins[present])
    for sample in samples:
        values.append(sample)
        counts.append(np.ones(sample.size, dtype=np.int64))
    return np.concatenate(values), np.concatenate(counts)


class PatchSampler:
    """Seeded random patches from one or more (images, Y, X) arrays.

    ``train_images`` images are chosen per array (seeded, per array, so adding a plate does not change
    another plate's choice); of all chosen images, ``validation_fraction`` (at least one, when there are
    two or more) are held out, and ``validation_patches`` fixed patches are drawn from them once.
    Patches come out normalised with the training images' median and winsorised std (:class:`Normalization`),
    shaped (B, 1, P, P) float32. ``exclude`` lists (array index, image) pairs never chosen (a control
    model trains on images its main model did not see, :mod:`jump_n2v.n2v.control`).
    """

    def __init__(
        self,
        arrays: Sequence[Any],
        *,
        patch_size: int,
        train_images: int,
        validation_fraction: float,
        validation_patches: int,
        augment: bool,
        seed: int,
        names: Sequence[str] | None = None,
        read_workers: int = 4,
        memory_mb: float = 4096,
        exclude: Collection[tuple[int, int]] = (),
    ) -> None:
        if not arrays:
            raise ValueError("no arrays to sample training patches from")
        self.arrays = list(arrays)
        self.names = list(names) if names is not None else [array_location(a) for a in self.arrays]
        if len(self.names) != len(self.arrays):
            raise ValueError(f"{len(self.names)} names given for {len(self.arrays)} arrays")
        for array, name in zip(self.arrays, self.names):
            _check_array(array, name, patch_size)
        self.patch_size = patch_size
        self.augment = augment
        self.seed = seed
        self.read_workers = max(1, read_workers)
        self.heights = np.array([a.shape[1] for a in self.arrays], dtype=np.int64)
        self.widths = np.array([a.shape[2] for a in self.arrays], dtype=np.int64)

        chosen = self._choose_images(train_images, seed, exclude)
        held_out = 0
        if len(chosen) >= 2:
            held_out = min(len(chosen) - 1, max(1, round(validation_fraction * len(chosen))))
        split_rng = np.random.default_rng([seed, _SPLIT_STREAM])
        validation_rows = set(split_rng.choice(len(chosen), size=held_out, replace=False).tolist())
        self.train_images: list[tuple[int, int]] = [
            image for row, image in enumerate(chosen) if row not in validation_rows
        ]
        self.validation_images: list[tuple[int, int]] = [
            image for row, image in enumerate(chosen) if row in validation_rows
        ]
        # With a single image there is nothing to hold out: validation patches come from that image.
        self.validation_from_training = not self.validation_images
        self._train_pool = np.array(self.train_images, dtype=np.int64).reshape(-1, 2)

        self.image_bytes = sum(
            self.arrays[a].shape[1] * self.arrays[a].shape[2] * np.dtype(self.arrays[a].dtype).itemsize
            for a, _ in chosen
        )
        self.in_memory = self.image_bytes <= memory_mb * 2**20
        # array index -> (decoded chosen images, image id -> row in that stack or -1)
        self._held: dict[int, tuple[np.ndarray, np.ndarray]] = self._hold_images(chosen) if self.in_memory else {}

        self.normalization = self._training_statistics()
        validation_pool = np.array(
            self.validation_images or self.train_images, dtype=np.int64
        ).reshape(-1, 2)
        validation_plan = self._draw_plan(
            np.random.default_rng([seed, _VALIDATION_STREAM]), validation_pool,
            validation_patches, augment=False,
        )
        self.validation = self.read_patches(validation_plan)

    def _choose_images(
        self, train_images: int, seed: int, exclude: Collection[tuple[int, int]]
    ) -> list[tuple[int, int]]:
        """At most ``train_images`` seeded images per array, none of the (array, image) pairs in ``exclude``.

        Without exclusions the draw is the one every model has always been trained on (bit-identical);
        with them each array draws from its remaining images, from the same stream."""
        chosen = []
        for index, array in enumerate(self.arrays):
            rng = np.random.default_rng([seed, _SELECTION_STREAM, index])
            excluded = sorted({int(image) for a, image in exclude if int(a) == index})
            if not excluded:
                count = min(train_images, array.shape[0])
                picked = np.sort(rng.choice(array.shape[0], size=count, replace=False))
            else:
                candidates = np.setdiff1d(np.arange(array.shape[0]), excluded)
                picked = np.sort(rng.choice(candidates, size=min(train_images, len(candidates)), replace=False))
            chosen.extend((index, int(image)) for image in picked)
        if not chosen:
            raise ValueError(
                f"{', '.join(self.names)}: no images left to train on once the {len(exclude)} excluded image(s) are left out"
            )
        return chosen

    def _hold_images(self, chosen: Sequence[tuple[int, int]]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Decode every chosen image once (one Zarr read per image, chunks decoded in parallel)."""
        held = {}
        for array_index in sorted({a for a, _ in chosen}):
            array = self.arrays[array_index]
            images = sorted(image for a, image in chosen if a == array_index)
            rows = np.full(array.shape[0], -1, dtype=np.int64)
            rows[images] = np.arange(len(images))
            stack = np.asarray((array.oindex if hasattr(array, "oindex") else array)[images])
            held[array_index] = (stack, rows)
        return held

    def image(self, array_index: int, image: int) -> np.ndarray:
        """One whole image in its source dtype: the held copy in memory mode, else read from its array."""
        if self.in_memory:
            stack, rows = self._held[array_index]
            return stack[rows[image]]
        return np.asarray(self.arrays[array_index][image])

    # -- statistics ---------------------------------------------------------------------------------

    def _row_blocks(self, array_index: int, image: int) -> Iterator[np.ndarray]:
        """One image as float64 row blocks of a chunk's height (the same blocks in either loader mode)."""
        array = self.arrays[array_index]
        height = array.shape[1]
        chunks = getattr(array, "chunks", None)
        block_rows = int(chunks[1]) if chunks is not None and len(chunks) == 3 else height
        for start in range(0, height, block_rows):
            if self.in_memory:
                stack, rows = self._held[array_index]
                block = stack[rows[image], start : start + block_rows]
            else:
                block = array[image, start : start + block_rows, :]
            yield np.asarray(block, dtype=np.float64)

    def _training_statistics(self) -> Normalization:
        """Median and winsorised standard deviation of all training-image pixels (exact for integer images,
        from a seeded sample for float ones), with their exact mean and std merged block by block (Chan et al.)."""
        count, mean, m2 = 0, 0.0, 0.0
        histogram: dict[int, np.ndarray] = {}
        sample_rng = np.random.default_rng([self.seed, _SELECTION_STREAM, 1 << 20])
        samples = []
        pixels = sum(self.arrays[a].shape[1] * self.arrays[a].shape[2] for a, _ in self.train_images)
        keep = min(1.0, ROBUST_SAMPLE_PIXELS / max(pixels, 1))
        for array_index, image in self.train_images:
            integer = np.issubdtype(np.dtype(self.arrays[array_index].dtype), np.integer)
            for block in self._row_blocks(array_index, image):
                block_count = block.size
                block_mean = float(block.mean())
                block_m2 = float(np.square(block - block_mean).sum())
                delta = block_mean - mean
                total = count + block_count
                mean += delta * block_count / total
                m2 += block_m2 + delta * delta * count * block_count / total
                count = total
                if integer and np.isfinite(block_mean):
                    low = int(block.min())
                    counts = np.bincount((block - low).astype(np.int64).ravel())
                    histogram[low] = counts if low not in histogram else _add_counts(histogram[low], counts)
                else:
                    samples.append(block.ravel()[sample_rng.random(block.size) < keep])
        std = math.sqrt(m2 / count)
        names = ", ".join(sorted({self.names[a] for a, _ in self.train_images}))
        if not (math.isfinite(mean) and math.isfinite(std)):
            raise ValueError(f"{names}: the training images contain NaN or infinite values")
        if std == 0:
            raise ValueError(
                f"{names}: all {len(self.train_images)} training images are constant ({mean}); "
                "there is no signal or noise to learn from"
            )
        values, counts = _histogram_values(histogram, samples)
        median, winsorised = median_and_winsorised_std(values, counts)
        scale = winsorised if winsorised > 0 else std  # 98 % of the pixels share one value: no robust spread
        return Normalization(mean=median, std=scale, method="median_winsorised", pixel_mean=mean, pixel_std=std)

    # -- plans --------------------------------------------------------------------------------------

    def _draw_plan(
        self, rng: np.random.Generator, pool: np.ndarray, count: int, *, augment: bool
    ) -> np.ndarray:
        """``count`` rows (array, image, y, x, transform): uniform image, uniform window position."""
        picks = pool[rng.integers(0, len(pool), size=count)]
        arrays, images = picks[:, 0], picks[:, 1]
        ys = (rng.random(count) * (self.heights[arrays] - self.patch_size + 1)).astype(np.int64)
        xs = (rng.random(count) * (self.widths[arrays] - self.patch_size + 1)).astype(np.int64)
        transforms = rng.integers(0, 8, size=count) if augment else np.zeros(count, dtype=np.int64)
        return np.stack([arrays, images, ys, xs, transforms], axis=1)

    def epoch_plan(self, epoch: int, steps: int, batch_size: int) -> np.ndarray:
        """The training patches of one epoch, shaped (steps, batch_size, 5); a function of seed and epoch."""
        rng = np.random.default_rng([self.seed, _TRAINING_STREAM, epoch])
        plan = self._draw_plan(rng, self._train_pool, steps * batch_size, augment=self.augment)
        return plan.reshape(steps, batch_size, len(PLAN_COLUMNS))

    # -- reading ------------------------------------------------------------------------------------

    def _windows(self, array_index: int, plan: np.ndarray) -> np.ndarray:
        """The raw (n, P, P) windows of ``plan`` rows that all come from one array."""
        size = self.patch_size
        if self.in_memory:
            stack, rows = self._held[array_index]
            windows = np.lib.stride_tricks.sliding_window_view(stack, (size, size), axis=(1, 2))
            return windows[rows[plan[:, 1]], plan[:, 2], plan[:, 3]]
        array = self.arrays[array_index]
        return np.stack([np.asarray(array[image, y : y + size, x : x + size]) for _, image, y, x, _ in plan.tolist()])

    def read_patches(self, plan: np.ndarray) -> np.ndarray:
        """Read, augment and normalise the patches of ``plan`` rows: (len(plan), 1, P, P) float32."""
        size = self.patch_size
        plan = np.asarray(plan, dtype=np.int64).reshape(-1, len(PLAN_COLUMNS))
        out = np.empty((len(plan), 1, size, size), dtype=np.float32)
        for array_index in np.unique(plan[:, 0]).tolist():
            rows = np.flatnonzero(plan[:, 0] == array_index)
            windows = self._windows(array_index, plan[rows])
            transforms = plan[rows, 4]
            for transform in np.unique(transforms).tolist():
                same = transforms == transform
                out[rows[same], 0] = dihedral(windows[same], transform)
        out -= np.float32(self.normalization.mean)
        out *= np.float32(1.0 / self.normalization.std)
        return out

    def batches(self, plan: np.ndarray) -> Iterator[np.ndarray]:
        """Yield the batches of an epoch plan in order while reader threads prepare the next ones."""
        lookahead = self.read_workers + 1
        with concurrent.futures.ThreadPoolExecutor(self.read_workers, "n2v-patches") as pool:
            pending: collections.deque = collections.deque()
            steps = iter(plan)
            try:
                for rows in steps:
                    pending.append(pool.submit(self.read_patches, rows))
                    if len(pending) >= lookahead:
                        break
                while pending:
                    batch = pending.popleft().result()
                    following = next(steps, None)
                    if following is not None:
                        pending.append(pool.submit(self.read_patches, following))
                    yield batch
            finally:
                for future in pending:
                    future.cancel()
