"""Patch sampling: chosen images held in memory within a budget, else lazy window reads with flat
memory; both modes give the same patches; everything is seeded."""

import tracemalloc

import numpy as np
import pytest
import zarr

from jump_n2v.n2v.sampling import PatchSampler

PATCH = 16


def _write_array(path, images, height=48, width=40, dtype="uint16", chunks=None, seed=0):
    rng = np.random.default_rng(seed)
    data = rng.integers(100, 4000, size=(images, height, width)).astype(dtype)
    array = zarr.create_array(
        store=str(path), shape=data.shape, chunks=chunks or (1, height, width), dtype=dtype
    )
    array[:] = data
    return zarr.open_array(str(path), mode="r"), data


class CountingArray:
    """A read-only array that records every region read from it."""

    def __init__(self, array):
        self.array = array
        self.shape = array.shape
        self.dtype = array.dtype
        self.chunks = array.chunks
        self.reads = []

    def __getitem__(self, selection):
        values = np.asarray(self.array[selection])
        self.reads.append((selection[0], values.shape))
        return values


LAZY = {"memory_mb": 0}  # no image fits: every batch reads its windows from the arrays


@pytest.fixture(params=["in memory", "lazy"])
def mode(request):
    """Loader mode options: the behaviour under test must hold in both."""
    return {} if request.param == "in memory" else LAZY


def _sampler(arrays, **overrides):
    options = dict(
        patch_size=PATCH, train_images=100, validation_fraction=0.25, validation_patches=6,
        augment=True, seed=5,
    )
    options.update(overrides)
    return PatchSampler(arrays, **options)


def test_lazy_batches_read_only_their_patch_windows(tmp_path):
    array, _ = _write_array(tmp_path / "a.zarr", images=6)
    counting = CountingArray(array)
    sampler = _sampler([counting], **LAZY)
    assert not sampler.in_memory
    counting.reads.clear()
    batches = list(sampler.batches(sampler.epoch_plan(0, steps=3, batch_size=4)))
    assert [b.shape for b in batches] == [(4, 1, PATCH, PATCH)] * 3
    assert len(counting.reads) == 12
    assert all(shape == (PATCH, PATCH) for _, shape in counting.reads)
    train_images = {image for _, image in sampler.train_images}
    assert {image for image, _ in counting.reads} <= train_images


def test_validation_patches_come_from_held_out_images_only(tmp_path):
    array, _ = _write_array(tmp_path / "a.zarr", images=8)
    counting = CountingArray(array)
    sampler = _sampler([counting], validation_fraction=0.25, **LAZY)
    assert len(sampler.validation_images) == 2
    assert not set(sampler.validation_images) & set(sampler.train_images)
    assert len(sampler.train_images) + len(sampler.validation_images) == 8
    window_reads = [image for image, shape in counting.reads if shape == (PATCH, PATCH)]
    assert len(window_reads) == 6
    assert set(window_reads) <= {image for _, image in sampler.validation_images}
    assert sampler.validation.shape == (6, 1, PATCH, PATCH)


def test_lazy_memory_stays_flat_when_the_number_of_images_grows_fourfold(tmp_path):
    peaks = []
    for images in (8, 32):
        array, _ = _write_array(tmp_path / f"{images}.zarr", images=images, height=128, width=128)
        tracemalloc.start()
        sampler = _sampler([array], patch_size=32, validation_patches=4, **LAZY)
        for _ in sampler.batches(sampler.epoch_plan(0, steps=2, batch_size=4)):
            pass
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    whole_array_growth = (32 - 8) * 128 * 128 * 2
    assert peaks[1] - peaks[0] < whole_array_growth / 4, peaks


def test_the_same_seed_gives_the_same_patches(tmp_path, mode):
    array, _ = _write_array(tmp_path / "a.zarr", images=6)
    first, second = _sampler([array], **mode), _sampler([array], **mode)
    other = _sampler([array], seed=6, **mode)
    plan = first.epoch_plan(3, steps=2, batch_size=5)
    assert np.array_equal(plan, second.epoch_plan(3, steps=2, batch_size=5))
    assert not np.array_equal(plan, first.epoch_plan(4, steps=2, batch_size=5))
    assert not np.array_equal(plan, other.epoch_plan(3, steps=2, batch_size=5))
    assert np.array_equal(
        np.concatenate(list(first.batches(plan))), np.concatenate(list(second.batches(plan)))
    )
    assert np.array_equal(first.validation, second.validation)
    assert first.train_images == second.train_images


def test_patches_are_normalised_windows_possibly_flipped_or_rotated(tmp_path, mode):
    array, data = _write_array(tmp_path / "a.zarr", images=4)
    sampler = _sampler([array], **mode)
    plan = sampler.epoch_plan(0, steps=1, batch_size=40)
    (batch,) = list(sampler.batches(plan))
    mean, std = sampler.normalization.mean, sampler.normalization.std
    transforms_seen = set()
    for patch, (_, image, y, x, transform) in zip(batch, plan[0]):
        window = (data[image, y : y + PATCH, x : x + PATCH] - mean) / std
        variants = [np.rot90(window, k) for k in range(4)] + [np.rot90(window[:, ::-1], k) for k in range(4)]
        np.testing.assert_allclose(patch[0], variants[transform], rtol=1e-5, atol=1e-5)
        transforms_seen.add(int(transform))
    assert len(transforms_seen) > 4


def test_normalisation_uses_the_training_images_only(tmp_path, mode):
    # Row-block chunks make the statistics merge several blocks per image.
    array, data = _write_array(tmp_path / "a.zarr", images=5, chunks=(1, 16, 40), dtype="float32")
    sampler = _sampler([array], **mode)
    pixels = np.stack([data[image] for _, image in sampler.train_images]).astype(np.float64)
    norm = sampler.normalization
    assert norm.pixel_mean == pytest.approx(pixels.mean(), rel=1e-10)
    assert norm.pixel_std == pytest.approx(pixels.std(), rel=1e-10)
    # The offset and scale applied are the robust ones (all pixels: 5 float images are below the sample cap):
    # the median and the standard deviation of the pixels clipped to their 1st and 99th percentiles.
    ordered = np.sort(pixels.ravel())
    median = ordered[(pixels.size - 1) // 2]
    low, high = ordered[int(0.01 * (pixels.size - 1))], ordered[int(0.99 * (pixels.size - 1))]
    assert norm.method == "median_winsorised"
    assert norm.mean == median
    assert norm.std == pytest.approx(np.clip(pixels, low, high).std(), rel=1e-9)


def test_one_bright_object_does_not_set_the_normalisation_scale(tmp_path, mode):
    # Version1's case: a dim background (700 ADU, noise 30) under one object 40 times brighter on
    # 0.5 % of the pixels. Mean/std normalisation squeezed the background into 0.07 units.
    rng = np.random.default_rng(4)
    data = np.clip(np.rint(rng.normal(700, 30, size=(3, 96, 96))), 0, 65535).astype("uint16")
    data[:, 10:17, 10:17] = 28000
    array = zarr.create_array(store=str(tmp_path / "d.zarr"), shape=data.shape, chunks=(1, 32, 96), dtype="uint16")
    array[:] = data
    norm = _sampler([zarr.open_array(str(tmp_path / "d.zarr"), mode="r")], **mode).normalization
    assert norm.mean == pytest.approx(700, abs=3)
    assert norm.std == pytest.approx(30, rel=0.1)
    assert norm.pixel_std > 40 * norm.std  # what the old normalisation divided by


def test_a_sparse_stains_scale_follows_its_cells_not_its_background_noise(tmp_path, mode):
    # Issue 18: the median absolute deviation of a sparse stain (background on more than half the pixels)
    # is its background noise: synthetic DNA's scale was 3 ADU where nuclei span 22, and at 400 steps the
    # network alone fell 5.5 dB below the raw image on 2 x 2-mixed noise.
    rng = np.random.default_rng(5)
    data = rng.normal(100, 3, size=(3, 96, 96))
    data[:, 20:60, 10:50] += 200  # "nuclei" on 17 % of each field
    data = np.rint(data).astype("uint16")
    array = zarr.create_array(store=str(tmp_path / "s.zarr"), shape=data.shape, chunks=(1, 32, 96), dtype="uint16")
    array[:] = data
    norm = _sampler([zarr.open_array(str(tmp_path / "s.zarr"), mode="r")], **mode).normalization
    assert norm.mean == pytest.approx(100, abs=2)
    assert norm.std == pytest.approx(data.std(), rel=0.05)  # no outliers here: close to the plain std
    assert norm.std > 20 * 3


def test_integer_median_and_winsorised_std_are_exact_from_histograms():
    from jump_n2v.n2v.sampling import median_and_winsorised_std

    values = np.arange(1.0, 201.0)
    values[-1] = 1e6  # one outlier: clipped to the 99th percentile's value
    median, scale = median_and_winsorised_std(values)
    assert median == 100.0
    assert scale == pytest.approx(np.clip(values, 2.0, 198.0).std(), rel=1e-12)
    counts = np.array([1, 5, 1])
    assert median_and_winsorised_std(np.array([1.0, 2.0, 3.0]), counts) == pytest.approx(
        median_and_winsorised_std(np.repeat([1.0, 2.0, 3.0], counts)), rel=1e-12)


def test_images_are_chosen_per_array_and_split_across_arrays(tmp_path, mode):
    first, _ = _write_array(tmp_path / "p1.zarr", images=10)
    second, _ = _write_array(tmp_path / "p2.zarr", images=3, height=20, width=24, seed=1)
    sampler = _sampler([first, second], train_images=4, validation_fraction=0.2, **mode)
    chosen = sampler.train_images + sampler.validation_images
    assert sorted(a for a, _ in chosen) == [0] * 4 + [1] * 3
    assert len(sampler.validation_images) == 1
    # Window positions stay inside each array's own images.
    plan = sampler.epoch_plan(0, steps=10, batch_size=10).reshape(-1, 5)
    smaller = plan[plan[:, 0] == 1]
    assert len(smaller) and (smaller[:, 2] <= 20 - PATCH).all() and (smaller[:, 3] <= 24 - PATCH).all()
    # The image choice of the first plate does not change when a plate is added.
    alone = _sampler([first], train_images=4, validation_fraction=0.2, **mode)
    assert sorted(i for a, i in chosen if a == 0) == sorted(i for _, i in alone.train_images + alone.validation_images)


def test_a_single_image_validates_on_itself(tmp_path, mode):
    array, _ = _write_array(tmp_path / "a.zarr", images=1)
    sampler = _sampler([array], **mode)
    assert sampler.train_images == [(0, 0)] and sampler.validation_images == []
    assert sampler.validation_from_training


def test_images_smaller_than_the_patch_are_refused_naming_the_array(tmp_path):
    array, _ = _write_array(tmp_path / "tiny.zarr", images=2, height=12, width=30)
    with pytest.raises(ValueError, match=r"tiny\.zarr.*12x30.*patch_size 16"):
        _sampler([array])


def test_constant_images_are_refused(tmp_path):
    array = zarr.create_array(store=str(tmp_path / "flat.zarr"), shape=(3, 20, 20), dtype="uint8")
    array[:] = 7
    with pytest.raises(ValueError, match="flat.zarr.*constant"):
        _sampler([array])


def test_in_memory_mode_decodes_each_chosen_image_once_and_reads_nothing_per_batch(tmp_path):
    array, _ = _write_array(tmp_path / "a.zarr", images=6)
    counting = OrthogonalCountingArray(array)
    sampler = _sampler([counting], train_images=4)
    assert sampler.in_memory
    chosen = sorted(image for _, image in sampler.train_images + sampler.validation_images)
    assert counting.orthogonal_reads == [chosen] and counting.reads == []
    for epoch in range(2):
        list(sampler.batches(sampler.epoch_plan(epoch, steps=3, batch_size=4)))
    assert counting.orthogonal_reads == [chosen] and counting.reads == []


def test_both_modes_give_identical_batches_validation_and_statistics(tmp_path):
    first, _ = _write_array(tmp_path / "p1.zarr", images=7)
    second, _ = _write_array(tmp_path / "p2.zarr", images=3, height=20, width=24, seed=1)
    held, lazy = _sampler([first, second], train_images=5), _sampler([first, second], train_images=5, **LAZY)
    assert held.in_memory and not lazy.in_memory
    assert held.normalization == lazy.normalization
    assert np.array_equal(held.validation, lazy.validation)
    plan = held.epoch_plan(2, steps=4, batch_size=9)
    assert np.array_equal(np.concatenate(list(held.batches(plan))), np.concatenate(list(lazy.batches(plan))))


def test_images_over_the_memory_budget_are_read_lazily(tmp_path):
    array, _ = _write_array(tmp_path / "a.zarr", images=6, height=128, width=128)
    per_image_mb = 128 * 128 * 2 / 2**20
    assert _sampler([array], train_images=6, memory_mb=6 * per_image_mb).in_memory
    over = _sampler([array], train_images=6, memory_mb=5.5 * per_image_mb)
    assert not over.in_memory and over.image_bytes == 6 * 128 * 128 * 2


class OrthogonalCountingArray(CountingArray):
    """A Zarr-like array that also records orthogonal (whole-image) selections."""

    def __init__(self, array):
        super().__init__(array)
        self.orthogonal_reads = []
        counting = self

        class _OIndex:
            def __getitem__(self, images):
                counting.orthogonal_reads.append(list(images))
                return np.asarray(counting.array.oindex[images])

        self.oindex = _OIndex()
