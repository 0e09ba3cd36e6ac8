"""Blind-spot masking: the network never sees a masked pixel's own value."""

import numpy as np
import pytest
import torch

from jump_n2v.n2v.masking import (
    STRUCT_RANDOM_RANGE,
    BlindRegion,
    StructMask,
    dihedral,
    neighbourhood_region,
    mask_batch,
    masked_mse,
    replacement_offsets,
    stratification_cell_size,
)

torch.set_num_threads(1)

VARIANTS = [
    ("uniform", None),
    ("median", None),
    ("uniform", StructMask("row", 5)),
    ("median", StructMask("column", 7)),
]


def _mask(batch, seed, replacement="uniform", struct_mask=None, masked_fraction=0.01, roi_size=5, transforms=None):
    generator = torch.Generator().manual_seed(seed)
    return mask_batch(
        batch, masked_fraction=masked_fraction, roi_size=roi_size, replacement=replacement,
        region=struct_mask, transforms=transforms, generator=generator,
    )


def test_cell_size_follows_the_masked_fraction():
    assert stratification_cell_size(0.002) == 22
    assert stratification_cell_size(0.25) == 2
    assert stratification_cell_size(0.01) == 10
    assert stratification_cell_size(0.05, hidden=9) == 13


@pytest.mark.parametrize("region", [None, BlindRegion.from_offsets([(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]), StructMask("row", 5)])
def test_the_masked_fraction_is_the_fraction_of_pixels_hidden_whatever_the_region(region):
    # A 3 x 3 region's blind spots packed as densely as lone pixels' hid 9x the pixels: at 5 % the
    # network saw 45 % replaced input, and 2 x 2-mixed AGP lost 2.8 dB (docs/benchmarks.md 'Masked fraction').
    batch = torch.randn(4, 1, 104, 104)
    masked, mask = _mask(batch, 3, struct_mask=region, masked_fraction=0.05)
    hidden = float((masked != batch).float().mean())
    assert 0.035 < hidden < 0.07, hidden  # 5 % of the pixels, up to the grid cell's rounding (4 px: 6.25 %)


@pytest.mark.parametrize("replacement,struct_mask", VARIANTS)
def test_blind_spots_never_see_their_own_value(replacement, struct_mask):
    batch = torch.randn(3, 1, 40, 36)
    _, mask = _mask(batch, 7, replacement, struct_mask)
    # Put a unique marker at every blind spot: positions depend only on the seed, not on values.
    markers = 1000.0 + torch.arange(int(mask.sum()), dtype=torch.float32)
    marked = batch.clone()
    marked[mask] = markers
    masked, mask_again = _mask(marked, 7, replacement, struct_mask)
    assert torch.equal(mask, mask_again)
    assert not torch.any(masked[mask] == markers)

    # And a blind spot's masked input does not depend on its own value: change one spot at a time
    # (a neighbouring spot's value may legitimately be the replacement).
    for plane, channel, y, x in torch.nonzero(mask).tolist():
        changed = marked.clone()
        changed[plane, channel, y, x] = -5000.0
        masked_changed, _ = _mask(changed, 7, replacement, struct_mask)
        assert masked_changed[plane, channel, y, x] == masked[plane, channel, y, x]


def test_every_stratification_cell_holds_exactly_one_blind_spot():
    batch = torch.zeros(4, 1, 64, 70)
    _, mask = _mask(batch, 3, masked_fraction=0.002)  # 22-pixel cells, cut at the bottom/right edge
    counts = np.zeros((4, 3, 4), dtype=int)
    for plane, _, y, x in torch.nonzero(mask).tolist():
        counts[plane, y // 22, x // 22] += 1
    # Whole cells hold exactly one; cells cut by the border hold at most one (a spot drawn outside the
    # patch is dropped, which keeps the per-pixel rate uniform).
    assert (counts[:, :2, :3] == 1).all()
    assert (counts <= 1).all()


@pytest.mark.parametrize("side", [68, 112])
def test_every_pixel_is_a_blind_spot_equally_often(side):
    # 22-pixel cells: 68 = 3 * 22 + 2 and 112 = 5 * 22 + 2 leave 2-pixel strips at the bottom and right.
    batch = torch.zeros(400, 1, side, side)
    _, mask = _mask(batch, 8, masked_fraction=0.002)
    frequency = mask.float().mean(dim=(0, 1)).numpy()
    expected = 1 / 22**2
    assert frequency.mean() == pytest.approx(expected, rel=0.05)
    # Per-row and per-column rates (400 * side draws each): the edge strips are no longer favoured.
    for profile in (frequency.mean(axis=1), frequency.mean(axis=0)):
        assert profile.max() < 1.6 * expected
        assert profile[-2:].mean() < 1.3 * expected


def test_masks_are_reproducible_with_the_same_seed_and_differ_with_another():
    batch = torch.randn(2, 1, 32, 32)
    first, first_mask = _mask(batch, 11)
    again, again_mask = _mask(batch, 11)
    other, other_mask = _mask(batch, 12)
    assert torch.equal(first, again) and torch.equal(first_mask, again_mask)
    assert not torch.equal(first_mask, other_mask)


def _window_values(plane: np.ndarray, y: int, x: int, offsets) -> np.ndarray:
    """The window around (y, x) by the documented rule: an offset leaving the patch is mirrored."""
    height, width = plane.shape
    values = []
    for dy, dx in zip(*offsets):
        sy = y + dy if 0 <= y + dy < height else y - dy
        sx = x + dx if 0 <= x + dx < width else x - dx
        values.append(plane[sy, sx])
    return np.array(values)


@pytest.mark.parametrize("struct_mask", [None, StructMask("row", 3)])
def test_n2v2_replacement_is_the_median_of_the_window_without_its_centre(struct_mask):
    batch = torch.randn(2, 1, 30, 30)
    masked, mask = _mask(batch, 5, "median", struct_mask, roi_size=7)
    offsets = [o.numpy() for o in replacement_offsets(7, struct_mask)]
    for plane, _, y, x in torch.nonzero(mask).tolist():
        expected = np.median(_window_values(batch[plane, 0].numpy(), y, x, offsets))
        assert masked[plane, 0, y, x].item() == pytest.approx(expected, abs=1e-6)


def test_n2v_replacement_is_a_neighbour_inside_the_window():
    height, width, roi = 30, 26, 5
    # Unique pixel values reveal where each replacement came from.
    batch = torch.arange(2 * height * width, dtype=torch.float32).reshape(2, 1, height, width)
    masked, mask = _mask(batch, 9, "uniform", roi_size=roi)
    for plane, _, y, x in torch.nonzero(mask).tolist():
        source = int(masked[plane, 0, y, x].item())
        source_plane, rest = divmod(source, height * width)
        source_y, source_x = divmod(rest, width)
        assert source_plane == plane
        assert (source_y, source_x) != (y, x)
        assert abs(source_y - y) <= roi // 2 and abs(source_x - x) <= roi // 2


def test_n2v_replacement_draws_every_neighbour_of_the_window():
    batch = torch.arange(64 * 64, dtype=torch.float32).reshape(1, 1, 64, 64).expand(200, 1, 64, 64)
    masked, mask = _mask(batch.contiguous(), 1, "uniform", masked_fraction=0.002, roi_size=3)
    offsets = set()
    for plane, _, y, x in torch.nonzero(mask).tolist():
        source_y, source_x = divmod(int(masked[plane, 0, y, x].item()), 64)
        offsets.add((source_y - y, source_x - x))
    assert offsets == {(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)} - {(0, 0)}


@pytest.mark.parametrize("axis", ["row", "column"])
def test_struct_mask_randomises_the_line_through_each_blind_spot(axis):
    height, width, span = 40, 44, 5
    batch = torch.full((2, 1, height, width), 10.0)
    struct_mask = StructMask(axis, span)
    masked, mask = _mask(batch, 4, "uniform", struct_mask)
    expected_line = torch.zeros_like(mask)
    for plane, _, y, x in torch.nonzero(mask).tolist():
        for dy, dx in struct_mask.line_offsets():
            if 0 <= y + dy < height and 0 <= x + dx < width:
                expected_line[plane, 0, y + dy, x + dx] = True
    line = expected_line & ~mask
    low, high = STRUCT_RANDOM_RANGE
    assert line.any()
    assert torch.all((masked[line] >= low) & (masked[line] <= high))
    untouched = ~expected_line & ~mask
    assert torch.all(masked[untouched] == 10.0)
    # The blind spots take a neighbour's value (10 here), never a random line value.
    assert torch.all(masked[mask] == 10.0)


def test_struct_line_pixels_are_not_used_as_replacement_sources():
    offsets_y, offsets_x = replacement_offsets(5, StructMask("row", 5))
    assert not torch.any(offsets_y == 0)  # the whole centre row is the line
    offsets_y, offsets_x = replacement_offsets(5, StructMask("column", 3))
    assert not torch.any((offsets_x == 0) & (offsets_y.abs() <= 1))
    assert len(offsets_y) == 25 - 3


def test_a_2d_region_is_randomised_and_left_out_of_the_replacement_window():
    region = neighbourhood_region("square")  # the 8 neighbours, as for 2 x 2 box-mixed noise
    assert len(region.offsets) == 8
    height, width = 40, 44
    batch = 1000.0 + torch.arange(2 * height * width, dtype=torch.float32).reshape(2, 1, height, width)
    masked, mask = _mask(batch, 4, "uniform", region, roi_size=5)
    low, high = STRUCT_RANDOM_RANGE
    region_pixels = torch.zeros_like(mask)
    for plane, _, y, x in torch.nonzero(mask).tolist():
        for dy, dx in region.offsets:
            if 0 <= y + dy < height and 0 <= x + dx < width:
                region_pixels[plane, 0, y + dy, x + dx] = True
        # The replacement is an original value from outside the region: a ring pixel of the window.
        source = int(masked[plane, 0, y, x].item() - 1000.0)
        source_y, source_x = divmod(source % (height * width), width)
        assert max(abs(source_y - y), abs(source_x - x)) == 2
    ring = region_pixels & ~mask
    assert ring.any()
    assert torch.equal(masked[~ring & ~mask], batch[~ring & ~mask])
    # Region pixels copy original values from 2 px away (outside the region) of one of their spots.
    spots = torch.nonzero(mask).tolist()
    for plane, _, y, x in torch.nonzero(ring).tolist():
        source = int(masked[plane, 0, y, x].item() - 1000.0) % (height * width)
        source_y, source_x = divmod(source, width)
        assert any(
            p == plane and max(abs(sy - source_y), abs(sx - source_x)) == 2 and max(abs(sy - y), abs(sx - x)) == 1
            for p, _, sy, sx in spots
        )
    random_fill = BlindRegion.from_offsets(region.offsets, fill="random")
    masked_random, _ = _mask(batch, 4, "uniform", random_fill, roi_size=5)
    assert torch.all((masked_random[ring] >= low) & (masked_random[ring] <= high))
    offsets_y, offsets_x = replacement_offsets(5, region)
    assert len(offsets_y) == 25 - 9 and torch.all(torch.maximum(offsets_y.abs(), offsets_x.abs()) == 2)


def _undo(patch: np.ndarray, transform: int) -> np.ndarray:
    """The inverse of dihedral(., transform)."""
    patch = np.rot90(patch, -(transform % 4), axes=(-2, -1))
    return patch[..., ::-1] if transform >= 4 else patch


@pytest.mark.parametrize("transform", range(8))
def test_the_region_turns_with_a_flipped_or_rotated_patch(transform):
    # Row-correlated (streak) noise in the image: the line mask must cover the image's row through
    # each blind spot whatever the patch's orientation, else rotated patches show the streak.
    size = 48
    image = 1000.0 + np.arange(size * size, dtype=np.float32).reshape(size, size)
    assert np.array_equal(_undo(dihedral(image, transform), transform), image)
    patches = torch.from_numpy(np.ascontiguousarray(np.stack([dihedral(image, transform)] * 6)))[:, None]
    struct = StructMask("row", 5)
    masked, mask = _mask(patches, 2, "uniform", struct, masked_fraction=0.01,
                         transforms=torch.full((6,), transform))
    low, high = STRUCT_RANDOM_RANGE
    for plane in range(6):
        back = _undo(masked[plane, 0].numpy(), transform)
        spots = np.argwhere(_undo(mask[plane, 0].numpy(), transform))
        assert len(spots)
        for y, x in spots:
            for dy, dx in struct.line_offsets():
                if 0 <= x + dx < size:
                    assert low <= back[y + dy, x + dx] <= high, (y, x, dy, dx)
            source_y, source_x = divmod(int(back[y, x] - 1000.0), size)
            assert source_y != y or abs(source_x - x) > 2  # never drawn from the streak


def test_region_offsets_follow_the_patch_transform():
    row = StructMask("row", 3).region()
    assert row.transformed(0) == row and row.transformed(4) == row
    column = StructMask("column", 3).region()
    assert {row.transformed(t) for t in (1, 3, 5, 7)} == {column}
    diagonal = BlindRegion.from_offsets([(1, 1)])
    assert {o for t in range(8) for o in diagonal.transformed(t).offsets} == {(1, 1), (-1, -1), (1, -1), (-1, 1)}
    assert BlindRegion.from_offsets([(0, 0), (0, 1), (0, 1)]).offsets == ((0, 1),)


def test_masked_mse_averages_over_the_blind_spots_only():
    target = torch.zeros(1, 1, 4, 4)
    prediction = torch.full((1, 1, 4, 4), 100.0)
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    mask[0, 0, 1, 2] = mask[0, 0, 3, 3] = True
    prediction[mask] = torch.tensor([1.0, 3.0])
    assert masked_mse(prediction, target, mask).item() == pytest.approx((1 + 9) / 2)


def test_bad_masking_arguments_are_refused():
    with pytest.raises(ValueError, match="odd"):
        StructMask("row", 4)
    with pytest.raises(ValueError, match="axis"):
        StructMask("diagonal", 3)
    with pytest.raises(ValueError, match="roi_size"):
        mask_batch(torch.zeros(1, 1, 8, 8), masked_fraction=0.1, roi_size=11)
    with pytest.raises(ValueError, match="replacement"):
        mask_batch(torch.zeros(1, 1, 8, 8), masked_fraction=0.1, roi_size=3, replacement="mean")
    with pytest.raises(ValueError, match="transforms"):
        mask_batch(torch.zeros(2, 1, 8, 8), masked_fraction=0.1, roi_size=3, transforms=torch.zeros(3))
    with pytest.raises(ValueError, match="window"):
        mask_batch(torch.zeros(1, 1, 8, 8), masked_fraction=0.1, roi_size=3, region=neighbourhood_region("square"))
    with pytest.raises(ValueError, match="centre"):
        BlindRegion(((0, 0),))
