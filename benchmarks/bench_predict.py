"""Prediction throughput of jump_n2v.predict, against CAREamics 0.3.5's tiled prediction and the machine's peak.

Measures, for the default model (N2V U-Net, depth 2, 32 base filters, random weights: speed does not
depend on them):

* the machine's dense matmul peak (fp32, and bf16 on CUDA) on the threads torch uses;
* the network's cost in FLOP per pixel (counted by torch's FlopCounterMode on the model itself);
* ``denoise_image`` on one synthetic ``--size`` x ``--size`` image: Mpx/s of output, the FLOP rate that
  implies (useful work only: tile halos are overhead) and its fraction of the peak;
* CAREamics 0.3.5 ``CAREamist.predict`` on the same image with the same architecture, tile size, tile
  overlap (twice our halo, so both crop the same margin) and batch size, run in the benchmark venv
  ``.venv-bench`` (see benchmarks/requirements-bench.txt) in a subprocess; skipped with a note when
  that venv or CAREamics is missing;
* with ``--sites N``: ``predict_array`` end to end (Zarr in, Zarr out) on N synthetic uint16
  1080 x 1080 sites, and the time that extrapolates to one JUMP plate channel (3,456 sites);
* with ``--identity``: the same with the U-Net swapped for an identity module that keeps the U-Net's
  halo and size multiple (same tiles, same padding, same batches), so the figure is the pipeline's
  own overhead (reading, decoding, normalising, tiling, pasting, rounding, encoding, writing). A GPU
  run's expected rate follows from it: 1 / (1 / network_rate + 1 / overhead_rate), where
  network_rate is the network alone on the GPU, unless the overhead runs beside the network on other
  cores (then the lower of the two rates).

Examples (from the repository root):
    .venv/bin/python benchmarks/bench_predict.py --size 1024 --repeats 3
    .venv/bin/python benchmarks/bench_predict.py --size 1024 --sites 4
    .venv/bin/python benchmarks/bench_predict.py --identity --sites 32 --threads 1 --careamics skip
    python benchmarks/bench_predict.py --device cuda --precision bf16 --batch-size 16 --sites 200 --careamics skip
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from careamics_compat import stub_torchvision

REPO = Path(__file__).resolve().parents[1]
BENCH_VENV_PYTHON = REPO / ".venv-bench" / "bin" / "python"
PLATE_SITES = 3456  # one JUMP plate: 384 wells x 9 sites
SITE_SIZE = 1080


def synthetic_image(size: int, seed: int = 0) -> np.ndarray:
    """Blobs on a background with Poisson-Gaussian noise, in uint16-like units."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    clean = 300 + 700 * (np.sin(yy / 23.0) * np.cos(xx / 17.0)) ** 2
    return (rng.poisson(clean) + rng.normal(0, 20, clean.shape)).astype(np.float32)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int) -> float:
    """Dense matmul rate in GFLOP/s (best of several), the practical peak for this dtype and device."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(5):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        repeats = 20 if device.type == "cuda" else 2
        for _ in range(repeats):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - start) / repeats)
    return 2 * n**3 / best / 1e9


def flops_per_pixel(net: torch.nn.Module) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        net(torch.zeros(1, 1, 256, 256))
    return counter.get_total_flops() / 256**2


def unet():
    from jump_n2v.n2v.model import build_unet

    torch.manual_seed(0)
    return build_unet(2, 32, "n2v").eval()


class IdentityNet(torch.nn.Module):
    """Returns its input; declares the U-Net's depth and size multiple so tiles are cut alike."""

    def __init__(self, like: torch.nn.Module) -> None:
        super().__init__()
        self.depth = like.depth
        self.size_multiple = like.size_multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


NETWORK = "unet"  # set by main(): "unet" or "identity"


def default_net():
    net = unet()
    if NETWORK == "unet":
        return net
    from jump_n2v.predict import tiling as predict

    identity = IdentityNet(net)
    # An identity's measured receptive field is one pixel; give it the U-Net's so halos and tiles match.
    predict._RECEPTIVE_FIELDS[identity] = predict.receptive_field(net)
    return identity


def bench_ours(image: np.ndarray, settings: dict, repeats: int) -> dict:
    from jump_n2v.predict.runner import TileRunner, denoise_image
    from jump_n2v.settings import PredictSettings
    from jump_n2v.predict.tiling import plan_axis

    net = default_net()
    resolved = PredictSettings.from_dict(settings)
    runner = TileRunner(net, resolved)  # for the resolved tile size and halo only
    denoise_image(net, image, 0.0, 1.0, resolved)  # warm-up: receptive field, oneDNN kernels
    seconds = []
    for _ in range(repeats):
        if runner.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        denoise_image(net, image, float(image.mean()), float(image.std()), resolved)
        if runner.device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds)
    tile_size = runner.tile_size(image.shape)
    plans = [plan_axis(length, tile_size, runner.halo, runner.multiple) for length in image.shape]
    processed = plans[0].count * plans[0].tile * plans[1].count * plans[1].tile
    return {
        "seconds": median, "all_seconds": seconds, "mpx_per_s": image.size / median / 1e6,
        "processed_mpx_per_s": processed / median / 1e6, "tiles": plans[0].count * plans[1].count,
        "tile_shape": [plans[0].tile, plans[1].tile], "tile_size": tile_size, "halo": runner.halo, "batch_size": resolved.batch_size,
        "device": str(runner.device), "autocast": str(runner.autocast_dtype),
    }


def write_sites(path: str, sites: int) -> "zarr.Array":
    """``sites`` synthetic uint16 1080 x 1080 sites, one chunk each, coded as split writes the raw store
    (Blosc LZ4, byte shuffle), so old and new prediction code read the same source."""
    import zarr
    from zarr.codecs import BloscCodec

    source = zarr.create_array(
        store=path, shape=(sites, SITE_SIZE, SITE_SIZE), chunks=(1, SITE_SIZE, SITE_SIZE), dtype=np.uint16,
        compressors=[BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")],
    )
    base = np.clip(synthetic_image(SITE_SIZE), 0, 65535).astype(np.uint16)
    for site in range(sites):
        source[site] = np.roll(base, 37 * site, axis=1)
    return source


def bench_plate(args, settings: dict) -> dict:
    import resource

    from jump_n2v.predict.arrays import predict_array
    from jump_n2v.predict.runner import denoise_image

    with tempfile.TemporaryDirectory(prefix="bench-predict-", dir=args.workdir) as work:
        started = time.perf_counter()
        write_sites(f"{work}/raw.zarr", args.sites)
        writing_source = time.perf_counter() - started
        net = default_net()
        # Warm-up on one site so one-off costs (receptive field, kernel selection) are not extrapolated.
        denoise_image(net, synthetic_image(SITE_SIZE), 500.0, 200.0, settings)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        cpu_started = time.process_time()
        summary = predict_array(
            net, 500.0, 200.0, f"{work}/raw.zarr", f"{work}/denoised.zarr", settings, num_workers=args.workers
        )
        # CPU seconds of all the process's threads: Mpx per CPU second is the rate per fully used core,
        # which a loaded machine does not change (much), unlike the wall-clock rate.
        summary["cpu_seconds"] = time.process_time() - cpu_started
        summary["mpx_per_cpu_s"] = summary["megapixels"] / summary["cpu_seconds"]
        files = [path for path in Path(work, "denoised.zarr").rglob("*") if path.is_file()]
        summary["files_written"] = len(files)
        summary["bytes_written"] = sum(path.stat().st_size for path in files)
    summary["source_seconds"] = writing_source
    # Peak RSS of the process (MiB): before prediction (source written, model warm) and at the end.
    summary["peak_rss_mib_before"] = rss_before
    summary["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    summary["mpx_per_s_per_thread"] = summary["mpx_per_s"] / args.threads
    summary["plate_channel_seconds"] = PLATE_SITES * SITE_SIZE**2 / 1e6 / summary["mpx_per_s"]
    return summary


def bench_stages(args, settings: dict) -> dict:
    """CPU milliseconds per 1080 x 1080 field for each step of a block's way through predict_array, run
    one after the other on this thread with the functions the graph runs (the median over ``--stages``
    fields): the chunk file's read and decode, zarr's whole read; padding; tiling and pasting; the
    network; back to intensity units; the output's encode and write, zarr's whole write."""
    import numcodecs

    from jump_n2v.plumbing.ngff import CHANNEL_CODEC, create_channel_array
    from jump_n2v.predict.arrays import output_dtype_for, to_output_dtype
    from jump_n2v.predict.runner import TileRunner
    from jump_n2v.settings import PredictSettings

    resolved = PredictSettings.from_dict(settings)
    runner = TileRunner(default_net(), resolved)
    dtype = output_dtype_for(np.uint16, resolved.output_dtype)
    forward_seconds = []
    forward = runner.forward

    def timed_forward(batch):
        started = time.process_time()
        result = forward(batch)
        forward_seconds.append(time.process_time() - started)
        return result

    runner.forward = timed_forward
    steps: dict[str, list[float]] = {}

    def timed(step, function, *arguments):
        # CPU time of the whole process (zarr codes chunks on its own threads), not wall time: the
        # machine may be loaded.
        started = time.process_time()
        result = function(*arguments)
        steps.setdefault(step, []).append(1e3 * (time.process_time() - started))
        return result

    with tempfile.TemporaryDirectory(prefix="bench-stages-", dir=args.workdir) as work:
        source = write_sites(f"{work}/raw.zarr", args.stages)
        target = create_channel_array(f"{work}/out.zarr", shape=source.shape, chunks=source.chunks, dtype=dtype,
                                      fill_value=0, config={"write_empty_chunks": True})  # as predict_array
        blosc_raw = numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE, typesize=2)
        if hasattr(CHANNEL_CODEC, "cname"):  # Blosc, the default
            out_codec = numcodecs.Blosc(cname=CHANNEL_CODEC.cname.value, clevel=CHANNEL_CODEC.clevel,
                                        shuffle=numcodecs.Blosc.SHUFFLE, typesize=np.dtype(dtype).itemsize)
        else:  # --output-codec zstd
            out_codec = numcodecs.Zstd(level=CHANNEL_CODEC.level)
        numcodecs.blosc.use_threads = False
        for site in range(args.stages):
            chunk_file = Path(work, "raw.zarr", "c", str(site), "0", "0")
            encoded = timed("read (chunk file)", chunk_file.read_bytes)
            timed("decode (Blosc LZ4)", blosc_raw.decode, encoded)
            image = timed("zarr read = read + decode + zarr", source.__getitem__, site)
            prepared = timed("pad (reflect)", runner.prepare, image, 500.0, 200.0)
            forward_seconds.clear()
            done = timed("tile + network + paste", lambda: list(runner.run([prepared])))
            steps.setdefault("network (identity: ~0)", []).append(1e3 * sum(forward_seconds))
            denoised = timed("back to intensities + convert", lambda: to_output_dtype(runner.finish(done[0], 500.0, 200.0), dtype))
            frame = timed("encode (output codec)", out_codec.encode, denoised)
            timed("write (file)", Path(work, f"frame-{site}").write_bytes, frame)
            timed("zarr write = encode + write + zarr", target.__setitem__, site, denoised)
    medians = {step: statistics.median(values) for step, values in steps.items()}
    medians["tile + paste"] = medians["tile + network + paste"] - medians["network (identity: ~0)"]
    return medians


# -- CAREamics (run inside .venv-bench) ------------------------------------------------------------


def careamics_worker(args) -> None:
    """Time CAREamist.predict on the benchmark image; prints one JSON line."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    stub_torchvision()
    import careamics
    from careamics import CAREamist
    from careamics.config import create_advanced_n2v_config

    torch.set_num_threads(args.threads)
    image = synthetic_image(args.size)
    config = create_advanced_n2v_config(
        "bench", data_type="array", axes="YX", patch_size=[64, 64], batch_size=8, num_epochs=1,
        model_params={"depth": 2, "num_channels_init": 32}, num_workers=0, logger="none",
    )
    with tempfile.TemporaryDirectory(prefix="bench-careamics-") as work:
        careamist = CAREamist(config, work_dir=work, enable_progress_bar=False)
        parameters = sum(p.numel() for p in careamist.model.parameters())
        overlap = (2 * args.halo, 2 * args.halo)

        def predict():
            return careamist.predict(
                image, data_type="array", axes="YX", tile_size=(args.tile_size, args.tile_size),
                tile_overlap=overlap, batch_size=args.batch_size,
            )

        predict()  # warm-up
        seconds = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            predictions, _ = predict()
            seconds.append(time.perf_counter() - start)
        shape = list(np.asarray(predictions[0]).squeeze().shape)
        device = str(next(careamist.model.parameters()).device)
    median = statistics.median(seconds)
    print(json.dumps({
        "version": careamics.__version__, "parameters": parameters, "seconds": median, "all_seconds": seconds,
        "mpx_per_s": image.size / median / 1e6, "output_shape": shape, "tile_overlap": overlap[0], "device": device,
    }))


def bench_careamics(args, tile_size: int, halo: int) -> dict | str:
    if args.careamics == "skip":
        return "skipped (--careamics skip)"
    if not BENCH_VENV_PYTHON.exists():
        return f"skipped: {BENCH_VENV_PYTHON} not found (see benchmarks/requirements-bench.txt)"
    command = [
        str(BENCH_VENV_PYTHON), __file__, "--careamics-worker", "--size", str(args.size), "--tile-size", str(tile_size),
        "--halo", str(halo), "--batch-size", str(args.batch_size), "--repeats", str(args.repeats),
        "--threads", str(args.threads),
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        return "skipped: CAREamics run failed: " + " | ".join(tail)
    return json.loads(lines[-1])


# -- main -----------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024, help="side of the benchmark image")
    parser.add_argument("--tile-size", type=int, default=None, help="default: the package's (512 CPU; GPU: whole "
                        "images up to 2048 px, else 1024)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--tta", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--sites", type=int, default=0, help="also run predict_array on this many 1080x1080 sites "
                        "and extrapolate to a 3,456-site plate channel")
    parser.add_argument("--workers", type=int, default=None, help="predict_array's num_workers (default: its own)")
    parser.add_argument("--workdir", default=None, help="folder for the temporary Zarr stores (default: the system's)")
    parser.add_argument("--stages", type=int, default=0, help="also time each step of predict_array on this many "
                        "1080x1080 sites, one after the other on one thread (ms per field)")
    parser.add_argument("--identity", action="store_true", help="an identity network with the U-Net's halo "
                        "instead of the U-Net: the pipeline's own overhead")
    parser.add_argument("--careamics", choices=["auto", "skip"], default="auto")
    parser.add_argument("--output-codec", choices=["default", "zstd"], default="default", help="zstd: write the "
                        "denoised store with zarr's former default (zstd level 0) instead of the channel stores' codec, "
                        "to tell the codec's share of the pipeline's cost from the graph's")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--careamics-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--halo", type=int, default=32, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.careamics_worker:
        careamics_worker(args)
        return 0

    global NETWORK
    NETWORK = "identity" if args.identity else "unet"
    if args.output_codec == "zstd":
        from zarr.codecs import ZstdCodec

        from jump_n2v.plumbing import ngff

        ngff.CHANNEL_CODEC = ZstdCodec(level=0)
    if args.identity:
        args.careamics = "skip"
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else args.device.replace("auto", "cpu"))
    settings = {"tile_size": args.tile_size, "batch_size": args.batch_size, "device": str(device),
                "precision": args.precision, "tta": args.tta}
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?") \
        if os.path.exists("/proc/cpuinfo") else "?"
    results: dict = {
        "machine": {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": args.threads, "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                    "load_average_1min": os.getloadavg()[0]},
    }
    peak_fp32 = matmul_peak(device, torch.float32, 2048 if device.type == "cpu" else 8192)
    results["peak_gflops_fp32"] = peak_fp32
    if device.type == "cuda":
        results["peak_gflops_bf16"] = matmul_peak(device, torch.bfloat16, 8192)
    results["network"] = NETWORK
    mflop = flops_per_pixel(unet()) / 1e6
    results["mflop_per_pixel"] = mflop

    image = synthetic_image(args.size)
    ours = bench_ours(image, settings, args.repeats)
    # Mpx/s x MFLOP/px = TFLOP/s.
    ours["gflops_useful"] = ours["mpx_per_s"] * mflop * 1e3
    ours["gflops_executed"] = ours["processed_mpx_per_s"] * mflop * 1e3
    peak = results["peak_gflops_bf16"] if "bf16" in ours["autocast"] and device.type == "cuda" else peak_fp32
    ours["fraction_of_peak"] = ours["gflops_useful"] / peak
    ours["executed_fraction_of_peak"] = ours["gflops_executed"] / peak
    results["jump_n2v"] = ours
    # CAREamics (Lightning, accelerator "auto") runs on the GPU when its venv's torch sees one.
    results["careamics"] = bench_careamics(args, ours["tile_size"], ours["halo"])
    if args.sites:
        results["plate"] = bench_plate(args, settings)
    if args.stages:
        results["stages_ms_per_field"] = bench_stages(args, settings)

    print(f"machine: {results['machine']}")
    print(f"peak (matmul): {peak_fp32:.1f} GFLOP/s fp32" + (f", {results['peak_gflops_bf16']:.1f} GFLOP/s bf16" if "peak_gflops_bf16" in results else ""))
    print(f"model cost: {mflop:.3f} MFLOP per output pixel (depth 2, 32 filters)")
    if args.identity:
        print("network: identity with the U-Net's halo (FLOP figures below do not apply: overhead only)")
    print(f"jump_n2v denoise_image {args.size}x{args.size}: {ours['mpx_per_s']:.3f} Mpx/s "
          f"({ours['seconds']:.2f} s median of {args.repeats}; tile_size {ours['tile_size']} -> {ours['tiles']} tiles "
          f"of {ours['tile_shape'][0]}x{ours['tile_shape'][1]}, halo {ours['halo']}, batch {ours['batch_size']}, "
          f"{ours['device']}, autocast {ours['autocast']})\n"
          f"  = {ours['gflops_useful']:.1f} GFLOP/s useful ({100 * ours['fraction_of_peak']:.1f}% of peak), "
          f"{ours['gflops_executed']:.1f} GFLOP/s executed incl. halos ({100 * ours['executed_fraction_of_peak']:.1f}% of peak)")
    care = results["careamics"]
    if isinstance(care, dict):
        print(f"CAREamics {care['version']} predict on {care.get('device', '?')} (tile {ours['tile_size']}, overlap {care['tile_overlap']}, "
              f"batch {args.batch_size}): {care['mpx_per_s']:.3f} Mpx/s ({care['seconds']:.2f} s) -> "
              f"jump_n2v is {ours['mpx_per_s'] / care['mpx_per_s']:.2f}x as fast; CAREamics reaches "
              f"{care['mpx_per_s'] * mflop * 1e3:.1f} GFLOP/s useful ({100 * care['mpx_per_s'] * mflop * 1e3 / peak_fp32:.1f}% of peak)")
    else:
        print(f"CAREamics: {care}")
    if args.sites:
        plate = results["plate"]
        hours = plate["plate_channel_seconds"] / 3600
        print(f"predict_array on {args.sites} sites of {SITE_SIZE}x{SITE_SIZE}: {plate['mpx_per_s']:.3f} Mpx/s "
              f"({plate['mpx_per_s_per_thread']:.3f} per torch thread; {plate['seconds']:.1f} s) -> one plate channel ({PLATE_SITES} sites): "
              f"{plate['plate_channel_seconds']:.0f} s = {hours:.2f} h; 5 channels: {5 * hours:.2f} h")
        print(f"  {plate['cpu_seconds']:.2f} CPU s: {plate['mpx_per_cpu_s']:.3g} Mpx per CPU second (per fully used core)")
        if "files_written" in plate:
            print(f"  {plate['files_written']} files ({plate['bytes_written'] / 1e9:.2f} GB) written; peak RSS "
                  f"{plate['peak_rss_mib_before']:.0f} MiB before prediction, {plate['peak_rss_mib']:.0f} MiB after; "
                  f"writing the source took {plate['source_seconds']:.1f} s")
    if args.stages:
        print(f"steps one after the other, CPU ms per {SITE_SIZE}x{SITE_SIZE} field (median of {args.stages}):")
        for step, milliseconds in results["stages_ms_per_field"].items():
            print(f"  {step}: {milliseconds:.2f}")
    if device.type == "cuda":
        results["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        print(f"peak GPU memory: {results['peak_gpu_memory_gib']:.2f} GiB")
    results["load_average_1min_after"] = os.getloadavg()[0]
    print(f"load average (1 min): {results['machine']['load_average_1min']:.2f} before, {results['load_average_1min_after']:.2f} after")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
