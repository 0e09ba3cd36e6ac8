"""Tiled prediction: exactness against whole-image prediction, receptive field, TTA, dtypes, memory,
atomicity and settings."""

from __future__ import annotations

import json
import logging
import math
import pickle
import threading
import tracemalloc

import numpy as np
import pytest
import torch
import zarr

from jump_n2v.settings import ConfigError, ExportSettings, PredictSettings
from jump_n2v.n2v.model import build_unet
from jump_n2v.plumbing.ngff import open_channel_array
from jump_n2v.predict.arrays import predict_array, to_output_dtype
from jump_n2v.predict.runner import TileRunner, denoise_image
from jump_n2v.predict.tiling import halo_size, plan_axis, receptive_field, resolve_tile_size

torch.set_num_threads(1)

MEAN, STD = 100.0, 20.0


def make_net(depth: int, variant: str, base_filters: int = 4, seed: int = 0) -> torch.nn.Module:
    """A random, input-sensitive network in eval mode whose BatchNorm running statistics matter."""
    torch.manual_seed(seed)
    net = build_unet(depth, base_filters, variant)
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d) and module.weight.shape[1] > 1 or module is net.head:
            # Variance-preserving weights: with PyTorch's default init a deep random U-Net's output
            # hardly depends on its input, which would make the comparisons below weak.
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return net.eval()


def noisy_image(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (MEAN + 30 * np.sin(yy / 7.0) * np.cos(xx / 5.0) + rng.normal(0, STD, shape)).astype(np.float32)


def net_on_padded(net: torch.nn.Module, padded: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return net(torch.from_numpy(np.ascontiguousarray(padded))[None, None])[0, 0].numpy()


def whole_image_reference(net: torch.nn.Module, image: np.ndarray) -> np.ndarray:
    """The network applied once to the whole image, reflect padded by the halo on the top and left and
    to the next multiple of 2**depth plus the halo on the bottom and right, cropped back."""
    halo, multiple = halo_size(net), net.size_multiple
    height, width = image.shape
    pad_y = math.ceil(height / multiple) * multiple - height + halo
    pad_x = math.ceil(width / multiple) * multiple - width + halo
    padded = np.pad((image - MEAN) / STD, ((halo, pad_y), (halo, pad_x)), mode="reflect")
    return net_on_padded(net, padded)[halo : halo + height, halo : halo + width] * STD + MEAN


NETS = {(depth, variant): make_net(depth, variant) for depth in (2, 3) for variant in ("n2v", "n2v2")}


@pytest.mark.parametrize("depth,variant", sorted(NETS))
@pytest.mark.parametrize("shape", [(77, 130), (200, 201), (21, 34)])
@pytest.mark.parametrize("extra_tile", [2, 9, 40])
def test_tiled_prediction_equals_whole_image_prediction(depth, variant, shape, extra_tile):
    net = NETS[depth, variant]
    halo, multiple = halo_size(net), net.size_multiple
    # Small cores (3 grid steps: many tiles and partial batches), middling ones, and one bigger than most images.
    tile_size = 2 * halo + multiple + extra_tile * multiple
    image = noisy_image(shape)
    settings = {"tile_size": tile_size, "batch_size": 3, "device": "cpu"}
    tiled = denoise_image(net, image, MEAN, STD, settings)
    reference = whole_image_reference(net, image)
    assert tiled.dtype == np.float32 and tiled.shape == shape
    # Several tiles really were used unless the image fits in one.
    assert plan_axis(shape[1], tile_size, halo, multiple).count >= (2 if shape[1] > tile_size - 2 * halo else 1)
    np.testing.assert_allclose(tiled, reference, rtol=0, atol=1e-4 * STD)


@pytest.mark.parametrize("depth,variant", [(2, "n2v"), (2, "n2v2"), (3, "n2v")])
def test_output_pixel_ignores_input_farther_than_halo(depth, variant):
    net = NETS[depth, variant]
    halo, multiple = halo_size(net), net.size_multiple
    size = 2 * halo + 8 * multiple
    image = noisy_image((size, size), seed=1)
    centre = size // 2
    reference = net_on_padded(net, image)
    for dy, dx in [(halo + 1, 0), (-halo - 1, 0), (0, halo + 1), (0, -halo - 1), (halo + 1, -halo - 1)]:
        perturbed = image.copy()
        perturbed[centre + dy, centre + dx] += 1000.0
        changed = net_on_padded(net, perturbed)
        assert changed[centre, centre] == pytest.approx(reference[centre, centre], abs=1e-6)
    # The measurement is not vacuous: near inputs do change the pixel ...
    perturbed = image.copy()
    perturbed[centre + 1, centre - 1] += 1000.0
    assert abs(net_on_padded(net, perturbed)[centre, centre] - reference[centre, centre]) > 1e-5
    # ... and the receptive field is not inflated: a row of inputs one grid step inside the computed
    # reach still moves some output pixel of the grid block at the centre.
    reach = receptive_field(net) // 2
    perturbed = image.copy()
    perturbed[centre + reach - multiple, :] += 1000.0
    block = slice(centre, centre + multiple)
    assert np.abs(net_on_padded(net, perturbed)[block, block] - reference[block, block]).max() > 1e-4


def test_receptive_field_is_measured_from_the_architecture():
    # CAREamics quotes ~52 px for the depth-2 U-Net; deeper nets see roughly twice as far per level.
    assert 52 <= receptive_field(NETS[2, "n2v"]) <= 52 + 2 * 4
    assert receptive_field(NETS[3, "n2v"]) > 2 * receptive_field(NETS[2, "n2v"])
    # N2V2's blur pooling widens the window.
    assert receptive_field(NETS[2, "n2v2"]) > receptive_field(NETS[2, "n2v"])
    for net in NETS.values():
        halo = halo_size(net)
        assert halo % net.size_multiple == 0 and halo >= math.ceil(receptive_field(net) / 2)


@pytest.mark.parametrize("depth,variant", [(2, "n2v"), (2, "n2v2")])
def test_tta_output_is_the_mean_of_the_eight_transformed_predictions(depth, variant):
    net = NETS[depth, variant]
    halo, multiple = halo_size(net), net.size_multiple
    image = noisy_image((61, 90), seed=2)
    tta = denoise_image(net, image, MEAN, STD, {"tile_size": 2 * halo + 4 * multiple, "tta": True, "device": "cpu"})
    height, width = image.shape
    padded = np.pad(
        (image - MEAN) / STD,
        ((halo, math.ceil(height / multiple) * multiple - height + halo), (halo, math.ceil(width / multiple) * multiple - width + halo)),
        mode="reflect",
    )
    predictions = []
    for k in range(4):
        for flip in (False, True):
            transformed = np.rot90(padded[:, ::-1] if flip else padded, k)
            back = np.rot90(net_on_padded(net, transformed), -k)
            predictions.append(back[:, ::-1] if flip else back)
    expected = np.mean(predictions, axis=0)[halo : halo + height, halo : halo + width] * STD + MEAN
    np.testing.assert_allclose(tta, expected, rtol=0, atol=1e-4 * STD)
    # TTA really differs from a single orientation (the net is not symmetric).
    plain = denoise_image(net, image, MEAN, STD, {"tile_size": 2 * halo + 4 * multiple, "device": "cpu"})
    assert np.abs(plain - tta).max() > 1e-3


def write_source(path, images: np.ndarray, chunks=None, attrs=None) -> zarr.Array:
    array = zarr.create_array(
        store=str(path), shape=images.shape, chunks=chunks or (1, *images.shape[1:]), dtype=images.dtype
    )
    array[:] = images
    array.attrs.update(attrs or {"channel": "DNA", "image_ids": [f"img{i}" for i in range(len(images))]})
    return array


def test_predict_array_matches_denoise_image_and_keeps_layout(tmp_path, caplog):
    net = NETS[2, "n2v"]
    images = np.stack([noisy_image((70, 90), seed=s) for s in range(3)]).astype(np.float32)
    # Chunked in spatial tiles: blocks must still be whole images, or tile borders would show.
    source = write_source(tmp_path / "raw.zarr", images, chunks=(1, 32, 48), attrs={"channel": "DNA", "plate": "P1"})
    settings = {"tile_size": 96, "device": "cpu"}
    with caplog.at_level(logging.INFO, logger="predict-test"):
        summary = predict_array(
            net, MEAN, STD, tmp_path / "raw.zarr", tmp_path / "denoised.zarr", settings,
            attrs={"model": "model.json"}, log=logging.getLogger("predict-test"),
        )
    output = open_channel_array(str(tmp_path / "denoised.zarr"), mode="r")
    assert output.shape == source.shape and output.chunks == source.chunks and output.dtype == np.float32
    assert dict(output.attrs) == {"channel": "DNA", "plate": "P1", "output_dtype": "float32", "model": "model.json"}
    for index, image in enumerate(images):
        np.testing.assert_allclose(output[index], denoise_image(net, image, MEAN, STD, settings), rtol=0, atol=1e-4)
    assert summary["images"] == 3 and summary["halo"] == halo_size(net) and summary["tile_size"] == 96
    assert summary["megapixels"] == pytest.approx(3 * 70 * 90 / 1e6) and summary["mpx_per_s"] > 0
    assert "denoised 3/3 images" in caplog.text


class Stretch(torch.nn.Module):
    """A pointwise "denoiser" that triples contrast, so predictions leave the uint16 range on both ends."""

    depth = 2
    size_multiple = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 3 * x


def test_output_dtype_input_gives_clipped_uint16(tmp_path):
    rng = np.random.default_rng(3)
    images = rng.integers(0, 65536, size=(2, 40, 50), dtype=np.uint16)
    write_source(tmp_path / "raw.zarr", images)
    mean, std = 30000.0, 5000.0
    common = {"tile_size": 64, "device": "cpu"}
    predict_array(Stretch(), mean, std, tmp_path / "raw.zarr", tmp_path / "as_input.zarr", {**common, "output_dtype": "input"})
    predict_array(Stretch(), mean, std, tmp_path / "raw.zarr", tmp_path / "as_float.zarr", common)
    as_input = open_channel_array(str(tmp_path / "as_input.zarr"), mode="r")
    as_float = open_channel_array(str(tmp_path / "as_float.zarr"), mode="r")[:]
    np.testing.assert_allclose(as_float, 3.0 * images - 2 * mean, rtol=1e-6, atol=0.05)
    assert as_input.dtype == np.uint16 and as_input.attrs["output_dtype"] == "input"
    assert as_float.min() < 0 and as_float.max() > 65535
    np.testing.assert_array_equal(as_input[:], np.clip(np.rint(as_float), 0, 65535).astype(np.uint16))


@pytest.mark.parametrize("dtype", [np.int8, np.uint16, np.int32, np.uint32, np.int64, np.uint64])
def test_integer_output_saturates_at_the_dtype_range_instead_of_wrapping(dtype):
    # float32 rounds 2**31 - 1 up to 2**31, which wrapped to -2**31 (and 2**32 - 1 to 0) when cast.
    info = np.iinfo(dtype)
    far = np.array([-1e30, 1e30, float(info.max) * 4, float(info.min) * 4 - 10, 7.4], dtype=np.float32)
    cast = to_output_dtype(far, dtype)
    assert cast.dtype == dtype
    low, high, above, below, middle = cast.tolist()
    # 64-bit maxima are not floats: they saturate at the largest float64 below the maximum.
    slack = 2048 if np.dtype(dtype).itemsize == 8 else 0
    assert (low, below, middle) == (info.min, info.min, 7)
    assert info.max - slack <= high == above <= info.max


def test_bf16_autocast_keeps_the_output_layer_and_denormalisation_in_fp32():
    # A bright pixel (~38,000 counts, normalisation std 400) comes out of a bf16 head with 8
    # significant bits: ~50 counts off. The head runs in fp32, so only the features' rounding is left.
    # Prediction's own runner under CPU autocast rounds as CUDA's bf16 does.
    torch.manual_seed(0)
    net = build_unet(2, 16, "n2v").eval()
    mean, std = 2000.0, 400.0
    with torch.no_grad():
        net.head.bias += (38000 - mean) / std
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert net(torch.zeros(1, 1, 32, 32)).dtype == torch.float32
    image = np.random.default_rng(0).normal(38000, 300, size=(96, 96)).astype(np.float32)
    settings = PredictSettings.from_dict({"device": "cpu", "tile_size": 96})
    fp32 = TileRunner(net, settings).denoise(image, mean, std)
    runner = TileRunner(net, settings)
    runner.autocast_dtype = torch.bfloat16
    mixed = runner.denoise(image, mean, std)
    assert mixed.dtype == np.float32
    assert np.abs(mixed - fp32).max() < 15.0  # counts; 52 with a bf16 head (benchmarks/bench_precision.py)


def test_tiles_of_several_images_share_forward_passes_with_unchanged_results():
    # Shapes whose tilings differ (tile count, partial edge tiles, a one-tile image, a shorter tile for
    # the 13-row image) in one stream: a batch of 5 mixes tiles of consecutive images of one tile shape,
    # so edge tiles of one image sit beside inner tiles of the next.
    net = NETS[2, "n2v"]
    halo, multiple = halo_size(net), net.size_multiple
    tile_size = 2 * halo + 3 * multiple
    shapes = [(30, 40), (30, 40), (25, 41), (21, 34), (13, 40), (30, 40), (12, 12), (30, 40)]
    images = [noisy_image(shape, seed=index) for index, shape in enumerate(shapes)]
    batched = TileRunner(net, PredictSettings.from_dict({"tile_size": tile_size, "batch_size": 5, "device": "cpu"}))
    batch_sizes = []
    forward = batched.forward
    batched.forward = lambda batch: batch_sizes.append(len(batch)) or forward(batch)
    together = list(batched.denoise_many(images, MEAN, STD))
    single = TileRunner(net, PredictSettings.from_dict({"tile_size": tile_size, "batch_size": 1, "device": "cpu"}))
    assert len(together) == len(images)
    for image, result in zip(images, together):
        assert result.shape == image.shape and result.dtype == np.float32
        np.testing.assert_allclose(result, single.denoise(image, MEAN, STD), rtol=0, atol=1e-4 * STD)
        np.testing.assert_allclose(result, whole_image_reference(net, image), rtol=0, atol=1e-4 * STD)
    tiles = [math.prod(plan.count for plan in batched.plan(image.shape)) for image in images]
    assert sum(batch_sizes) == sum(tiles) and max(batch_sizes) == 5
    # Fewer passes than one per image and tile-batch: passes really spanned images.
    assert len(batch_sizes) < sum(math.ceil(count / 5) for count in tiles)


def test_predict_array_batches_across_images_and_chunks(tmp_path):
    net = NETS[2, "n2v"]
    images = np.stack([noisy_image((40, 52), seed=s) for s in range(7)]).astype(np.float32)
    write_source(tmp_path / "raw.zarr", images, chunks=(3, 40, 52))  # the last chunk is partial
    settings = {"tile_size": 2 * halo_size(net) + 6 * net.size_multiple, "batch_size": 4, "device": "cpu"}
    summary = predict_array(net, MEAN, STD, tmp_path / "raw.zarr", tmp_path / "denoised.zarr", settings, num_workers=2)
    output = open_channel_array(str(tmp_path / "denoised.zarr"), mode="r")
    assert summary["tiles_per_image"] == 6 and output.chunks == (3, 40, 52)
    for index, image in enumerate(images):
        np.testing.assert_allclose(output[index], denoise_image(net, image, MEAN, STD, settings), rtol=0, atol=1e-4)


def test_whole_field_is_one_tile_on_a_gpu_unless_too_large():
    defaults = PredictSettings.from_dict({})
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    whole = resolve_tile_size(defaults, cuda, 32, multiple=4, image_shape=(1080, 1080))
    assert whole == 1144
    assert [plan_axis(1080, whole, 32, 4).count] * 2 == [1, 1]
    assert resolve_tile_size(defaults, cuda, 32, multiple=4, image_shape=(1080, 1082)) == 1084 + 64
    # Larger fields fall back to 1024-px tiles; the CPU keeps 512; a configured size always wins.
    assert resolve_tile_size(defaults, cuda, 32, multiple=4, image_shape=(2160, 2160)) == 1024
    assert resolve_tile_size(defaults, cpu, 32, multiple=4, image_shape=(1080, 1080)) == 512
    configured = PredictSettings.from_dict({"tile_size": 256})
    assert resolve_tile_size(configured, cuda, 32, multiple=4, image_shape=(1080, 1080)) == 256


def _peak_numpy_bytes(tmp_path, name: str, count: int) -> int:
    images = np.stack([noisy_image((256, 256), seed=s) for s in range(count)]).astype(np.uint16)
    write_source(tmp_path / f"{name}.zarr", images)
    net = make_net(2, "n2v", base_filters=2)
    settings = {"tile_size": 128, "batch_size": 2, "device": "cpu"}
    predict_array(net, MEAN, STD, tmp_path / f"{name}.zarr", tmp_path / f"{name}-warmup.zarr", settings)
    tracemalloc.start()
    try:
        predict_array(net, MEAN, STD, tmp_path / f"{name}.zarr", tmp_path / f"{name}-out.zarr", settings)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_peak_memory_does_not_grow_with_the_number_of_images(tmp_path):
    image_bytes = 256 * 256 * 4  # one float32 image
    few = _peak_numpy_bytes(tmp_path, "few", 2)
    many = _peak_numpy_bytes(tmp_path, "many", 8)
    # Holding the extra 6 images (as input or output) would add >= 6 image_bytes.
    assert many - few < 2 * image_bytes, (few, many)
    # And the peak itself is a handful of images (padded copy, normalised copy, output), not the plate.
    assert many < 12 * image_bytes, many


class FailsOnThirdImage(torch.nn.Module):
    """Wraps a net; raises when it sees the third image, which the test marks with a huge value."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        self.depth = net.depth

    @property
    def size_multiple(self) -> int:
        return self.net.size_multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.max() > 1e5:
            raise RuntimeError("simulated failure on the third image")
        return self.net(x)


def test_interrupted_prediction_leaves_no_output(tmp_path):
    images = np.stack([noisy_image((40, 40), seed=s) for s in range(5)])
    images[2, 10, 10] = 1e9
    write_source(tmp_path / "raw.zarr", images)
    destination = tmp_path / "denoised.zarr"
    with pytest.raises(RuntimeError, match="third image"):
        predict_array(FailsOnThirdImage(NETS[2, "n2v"]), MEAN, STD, tmp_path / "raw.zarr", destination, {"device": "cpu"})
    assert not destination.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["raw.zarr"]


def test_default_settings_come_from_the_schema():
    settings = PredictSettings.from_dict({})
    assert ExportSettings.from_dict({}) == ExportSettings(
        export_tiff=False, export_layout="flat", export_dtype="source", export_ome_zarr=False
    )
    assert settings == PredictSettings(
        tile_size=None, batch_size=4, workers=None, tta=False, posterior="auto", output_dtype="float32", precision="auto",
        device="auto", training_check_images=4, training_check_patches=256, training_check_seed=0, training_check_gain_ratio=2.0,
        training_check_read_sd=0.1, training_check_lag1=0.2, training_check_intensity=0.35, training_check_loss_ratio=2.25,
    )


@pytest.mark.parametrize(
    "override,message",
    [
        ({"tile_sise": 256}, "unknown predict setting 'tile_sise'"),
        ({"tile_size": 16}, "tile_size must be null or an integer >= 32"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"output_dtype": "uint8"}, "output_dtype must be one of float32, input"),
        ({"device": "gpu"}, "device must be auto, cpu, cuda or cuda:N"),
        ({"tta": "yes"}, "tta must be true or false"),
        ({"posterior": "always"}, "posterior must be one of auto, none"),
        ({"training_check_images": 0}, "training_check_images must be an integer >= 1"),
        ({"training_check_gain_ratio": 1.0}, "training_check_gain_ratio must be a number above 1"),
        ({"training_check_lag1": "0.2"}, "training_check_lag1 must be a number above 0"),
    ],
)
def test_bad_settings_are_rejected_with_the_field_named(override, message):
    with pytest.raises(ConfigError, match=message):
        PredictSettings.from_dict(override)


def test_bad_export_settings_are_rejected_with_the_field_named():
    with pytest.raises(ConfigError, match="export_ome_zarr must be true or false"):
        ExportSettings.from_dict({"export_ome_zarr": 1})
    with pytest.raises(ConfigError, match="unknown predict setting 'export_tiff' \\(export_tiff is an export setting\\)"):
        PredictSettings.from_dict({"export_tiff": True})


def test_tile_too_small_for_the_halo_is_rejected():
    net = NETS[2, "n2v"]
    with pytest.raises(ConfigError, match=r"tile_size 64 leaves no room for the network's halo"):
        denoise_image(net, noisy_image((100, 100)), MEAN, STD, {"tile_size": 64, "device": "cpu"})


def test_odd_axis_lengths_are_cut_into_few_grid_aligned_tiles():
    plan = plan_axis(1080, 512, 32, 4)
    assert (plan.count, plan.core, plan.tile) == (3, 360, 424)
    assert plan.count * plan.core >= 1080 and plan.core % 4 == 0
    small = plan_axis(21, 512, 32, 4)
    assert (small.count, small.core, small.pad_after) == (1, 24, 35)


@pytest.mark.parametrize("variant, depth", [("n2v", 1), ("n2v2", 1), ("n2v", 2), ("n2v2", 2)])
def test_config_minimum_tile_size_is_what_the_network_needs(variant, depth):
    # Config validation checks tile_size against this table without torch; it must match the halo
    # that prediction measures (deeper networks: benchmarks would take minutes here).
    from jump_n2v.settings import MIN_TILE_SIZE

    net = build_unet(depth, 32, variant)
    smallest = MIN_TILE_SIZE[(variant, depth)]
    assert smallest == 2 * halo_size(net) + 2**depth
    plan_axis(1000, smallest, halo_size(net), 2**depth)
    with pytest.raises(ConfigError):
        plan_axis(1000, smallest - 1, halo_size(net), 2**depth)


# --------------------------------------------------------------------------------------------------
# The dask graph (issue 19)


def test_predict_array_is_a_dask_graph_built_around_one_network_copy(tmp_path, monkeypatch):
    import dask.array as da

    from jump_n2v.predict import runner

    net = NETS[2, "n2v"]
    images = np.stack([noisy_image((40, 52), seed=s) for s in range(5)]).astype(np.float32)
    write_source(tmp_path / "raw.zarr", images)
    stored, copies, pickled, forward_threads = [], [], [], set()
    real_store, real_copy = da.store, runner.inference_copy

    def spy_store(sources, targets, **kwargs):
        stored.append((sources, kwargs))
        return real_store(sources, targets, **kwargs)

    def counting_copy(module, device):
        copies.append(module)
        return real_copy(module, device)

    def refuse_pickle(self):
        pickled.append(self)
        raise TypeError("pickled")

    real_forward, real_prepare = runner.TileRunner.forward, runner.TileRunner.prepare
    prepare_threads = set()

    def recording_forward(self, batch):
        forward_threads.add(threading.current_thread().name)
        return real_forward(self, batch)

    def recording_prepare(self, *args):
        prepare_threads.add(threading.current_thread().name)
        return real_prepare(self, *args)

    monkeypatch.setattr(da, "store", spy_store)
    monkeypatch.setattr(runner, "inference_copy", counting_copy)
    monkeypatch.setattr(runner.TileRunner, "__getstate__", refuse_pickle)
    monkeypatch.setattr(runner.TileRunner, "forward", recording_forward)
    monkeypatch.setattr(runner.TileRunner, "prepare", recording_prepare)
    halo, multiple = halo_size(net), net.size_multiple
    # One whole-image tile per image and 2 tiles per pass: blocks of 2 images (the last one partial).
    settings = {"tile_size": 2 * halo + 14 * multiple, "batch_size": 2, "device": "cpu"}
    summary = predict_array(net, MEAN, STD, tmp_path / "raw.zarr", tmp_path / "out.zarr", settings, num_workers=2)
    (sources, kwargs), = stored
    assert isinstance(sources, da.Array) and sources.numblocks == (3, 1, 1) and sources.chunks[0] == (2, 2, 1)
    assert kwargs["scheduler"] == "threads" and kwargs["pool"]._max_workers == 2
    assert summary["images_per_block"] == 2 and summary["workers"] == 2 and summary["tiles_per_image"] == 1
    # The network was copied for inference once and never pickled into tasks; blocks were read and
    # padded on dask's worker threads, and every forward pass ran on the device's one thread.
    assert len(copies) == 1 and pickled == []
    assert prepare_threads and all(name.startswith("jump-n2v-predict_") for name in prepare_threads)
    assert len(forward_threads) == 1 and forward_threads.pop().startswith("jump-n2v-predict-cpu")
    with pytest.raises(TypeError, match="pickled"):
        pickle.dumps(runner.TileRunner(net, PredictSettings.from_dict(settings)))
    output = open_channel_array(str(tmp_path / "out.zarr"))
    for index, image in enumerate(images):
        np.testing.assert_allclose(output[index], whole_image_reference(net, image), rtol=0, atol=1e-4 * STD)


@pytest.mark.parametrize("depth,variant", [(2, "n2v2"), (3, "n2v")])
@pytest.mark.parametrize("tiles", [1, 3])
def test_predict_array_is_exact_at_image_borders(tmp_path, depth, variant, tiles):
    # Non-trivial networks (N2V2's blur pooling, depth 3), odd image sizes, blocks of several images,
    # one or several tiles per axis: every pixel, the borders included, equals the network applied
    # once to the whole reflect-padded image.
    net = NETS[depth, variant]
    halo, multiple = halo_size(net), net.size_multiple
    shape = (90, 87)
    tile_size = 2 * halo + multiple * math.ceil(max(shape) / tiles / multiple)
    images = np.stack([noisy_image(shape, seed=10 + s) for s in range(3)]).astype(np.float32)
    write_source(tmp_path / "raw.zarr", images)
    settings = {"tile_size": tile_size, "batch_size": 2 * tiles * tiles, "device": "cpu"}
    summary = predict_array(net, MEAN, STD, tmp_path / "raw.zarr", tmp_path / "out.zarr", settings, num_workers=2)
    assert summary["tiles_per_image"] == tiles * tiles and summary["images_per_block"] == 2
    output = open_channel_array(str(tmp_path / "out.zarr"))[:]
    border = np.ones(shape, dtype=bool)
    border[halo:-halo, halo:-halo] = False
    for image, denoised in zip(images, output):
        reference = whole_image_reference(net, image)
        np.testing.assert_allclose(denoised, reference, rtol=0, atol=1e-4 * STD)
        # The comparison can see a wrong boundary: edge-repeating ("symmetric") padding moves the border.
        after = [math.ceil(length / multiple) * multiple - length + halo for length in shape]
        padded = np.pad((image - MEAN) / STD, ((halo, after[0]), (halo, after[1])), mode="symmetric")
        symmetric = net_on_padded(net, padded)[halo : halo + shape[0], halo : halo + shape[1]] * STD + MEAN
        assert np.abs(symmetric - reference)[border].max() > 1e-2 * STD


@pytest.mark.parametrize("workers", [0, -1, 1.5, "4", True])
def test_workers_setting_is_validated(workers):
    with pytest.raises(ConfigError, match=f"predict workers must be null or an integer >= 1, got {workers!r}"):
        PredictSettings.from_dict({"workers": workers})


def test_workers_default_to_the_job_threads_and_the_setting_is_used(tmp_path):
    assert PredictSettings.from_dict({}).workers is None
    assert PredictSettings.from_dict({"workers": 3}).workers == 3
    write_source(tmp_path / "raw.zarr", np.stack([noisy_image((20, 24), seed=s) for s in range(2)]))
    common = {"tile_size": 96, "device": "cpu"}
    default = predict_array(Stretch(), MEAN, STD, tmp_path / "raw.zarr", tmp_path / "a.zarr", common)
    assert default["workers"] == torch.get_num_threads()
    configured = predict_array(Stretch(), MEAN, STD, tmp_path / "raw.zarr", tmp_path / "b.zarr", {**common, "workers": 3})
    assert configured["workers"] == 3
    with pytest.raises(ValueError, match="num_workers must be an integer >= 1"):
        predict_array(Stretch(), MEAN, STD, tmp_path / "raw.zarr", tmp_path / "c.zarr", common, num_workers=0)


@pytest.mark.parametrize("output_dtype", ["float32", "input"])
def test_denoised_store_is_coded_with_blosc_lz4_byteshuffle(tmp_path, output_dtype):
    images = np.random.default_rng(5).integers(0, 4000, size=(2, 30, 40), dtype=np.uint16)
    source = write_source(tmp_path / "raw.zarr", images)
    # The source carries zarr's default zstd (stores written before the codec changed): it still reads.
    assert [type(codec).__name__ for codec in source.metadata.codecs] == ["BytesCodec", "ZstdCodec"]
    predict_array(Stretch(), 2000.0, 500.0, tmp_path / "raw.zarr", tmp_path / "out.zarr",
                  {"tile_size": 64, "device": "cpu", "output_dtype": output_dtype})
    output = open_channel_array(str(tmp_path / "out.zarr"))
    bytes_codec, blosc = output.metadata.codecs
    assert type(blosc).__name__ == "BloscCodec"
    assert (blosc.cname.value, blosc.shuffle.value, blosc.clevel) == ("lz4", "shuffle", 5)
    assert blosc.typesize == output.dtype.itemsize
    # And on disk: the chunk's zarr.json entry, as any other Zarr reader sees it.
    metadata = json.loads((tmp_path / "out.zarr" / "0" / "zarr.json").read_text())
    assert metadata["codecs"][1]["name"] == "blosc" and metadata["codecs"][1]["configuration"]["cname"] == "lz4"
    np.testing.assert_allclose(output[:], 3.0 * images - 2 * 2000.0 if output_dtype == "float32"
                               else np.clip(np.rint(3.0 * images - 4000.0), 0, 65535), rtol=0, atol=0.05)
