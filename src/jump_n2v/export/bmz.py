"""Export a trained model folder as a BioImage Model Zoo package (bioimage.io model spec 0.5, a zip).

The package is what CAREamics' ``export_to_bmz`` writes for its N2V models, so the same model runs in
Fiji (deepImageJ), ilastik, napari (bioimageio plug-ins) and ``bioimageio.core``:

* weights twice: ``pytorch_state_dict`` with the architecture's source (``jump_n2v/n2v/model.py``, which
  needs only torch) and its keyword arguments, and ``torchscript`` (traced; what deepImageJ runs);
* the input is normalised with the model's mean and standard deviation (``fixed_zero_mean_unit_variance``
  preprocessing) and the output brought back to image units (``scale_linear`` postprocessing with gain
  std and offset mean), so consumers feed raw pixels and get denoised pixels in the same units;
* y and x sizes are any multiple of 2**depth from 8 grid steps up, and the output declares a halo of
  the network's receptive field, so a tiling consumer crops what it cannot predict exactly;
* test tensors are a centre crop of a real image (by default the first validation image the model
  recorded in model.json, else its first training image; reflect-padded when it is smaller than the
  package's minimum input of twice the halo) and the network's output on it;
* sample tensors (the same crop and output as 2-D TIFFs), README.md (documentation), a before/after
  cover, and model.json and training_log.csv as attachments.

Validation (``bioimageio.core.test_model``: the spec checks, then each weight format run on the test
input, compared with the test output, and run at several input sizes and batch sizes) runs on the
CPU and needs no network: the package refers to no remote file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import tifffile
import torch

from jump_n2v.plumbing.atomic import atomic_output
from jump_n2v.n2v import load_trained
from jump_n2v.predict.tiling import halo_size

MODEL_SOURCE = Path(__file__).resolve().parents[1] / "n2v" / "model.py"
TEST_TILE = 256  # side of the test tensors, at most (smaller images give smaller tensors)
CITATIONS = {
    "n2v": ("Krull, Buchholz, Jug: Noise2Void - Learning Denoising from Single Noisy Images (CVPR 2019)", "10.1109/CVPR.2019.00223"),
    "n2v2": ("Höck et al.: N2V2 - Fixing Noise2Void Checkerboard Artifacts (ECCV BIC workshop 2022)", "10.48550/arXiv.2211.08512"),
}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _recorded_image(data: dict | None, model_json: Path) -> np.ndarray:
    """The first validation (else training) image the model recorded, read from its Zarr array."""
    from jump_n2v.plumbing.ngff import open_channel_array

    data = data or {}
    pairs = data.get("validation_images") or data.get("train_images") or []
    arrays = data.get("arrays") or []
    if not pairs or not arrays:
        raise ValueError(f"{model_json} records no training images; pass a test image (--image)")
    array_index, row = (int(v) for v in pairs[0])
    location = arrays[array_index]
    try:
        array = open_channel_array(location)
    except Exception as error:  # zarr raises several types for a missing store
        raise ValueError(
            f"cannot open {location}, the array {model_json} was trained on (paths are relative to where "
            f"training ran); pass a test image (--image) instead: {error}"
        ) from error
    return np.asarray(array[row])


def _test_crop(image: np.ndarray, multiple: int, minimum: int) -> np.ndarray:
    """A centre crop of at most TEST_TILE pixels a side, each side a multiple of ``multiple``; a side
    shorter than ``minimum`` (the smallest input the package accepts) is reflect-padded up to it."""
    if image.ndim != 2:
        raise ValueError(f"a test image must be 2-D, got shape {image.shape}")
    sides = [min(TEST_TILE, side) // multiple * multiple for side in image.shape]
    top, left = ((side - crop) // 2 for side, crop in zip(image.shape, sides))
    crop = np.asarray(image[top : top + sides[0], left : left + sides[1]], dtype=np.float32)
    padding = [(0, max(minimum - side, 0)) for side in crop.shape]
    return np.ascontiguousarray(np.pad(crop, padding, mode="reflect") if any(p for _, p in padding) else crop)


def _write_cover(path: Path, before: np.ndarray, after: np.ndarray) -> None:
    """raw | denoised side by side (2:1), both with the raw image's 1-99.8 percentile contrast."""
    from matplotlib.image import imsave

    low, high = np.percentile(before, [1, 99.8])
    pair = np.clip((np.concatenate([before, after], axis=1) - low) / max(high - low, 1e-12), 0, 1)
    imsave(path, pair, cmap="gray", vmin=0, vmax=1)


def _readme(name: str, trained, halo: int) -> str:
    settings = trained.settings
    training = trained.record.training
    best_val_loss = float("nan") if training.best_val_loss is None else training.best_val_loss
    return f"""# {name}

A Noise2Void ({settings.variant.upper()}) denoiser for one Cell Painting channel, trained with
[jump-n2v](README) on noisy images alone (self-supervised: no clean images were needed).

- Network: U-Net, depth {settings.depth}, {settings.base_filters} base filters{", N2V2 (max-blur-pool, no top skip)" if settings.variant == "n2v2" else ""}.
- Input: one 2-D image of the channel the model was trained on, in its raw units; sides a multiple
  of {2 ** settings.depth}. Normalisation (mean {trained.mean:.6g}, std {trained.std:.6g}, from the training
  images) and its inverse are part of the package, so the output is in the input's units.
- Tiling: the output declares a halo of {halo} pixels (the network's receptive field); tiles that
  overlap by twice the halo give the whole-image result.
- Training: {training.steps} steps, best validation loss {best_val_loss:.4g}
  at epoch {training.best_epoch}; the full settings, data split and versions are in the attached model.json.

N2V assumes pixel-wise independent, zero-mean noise. Noise correlated between neighbouring pixels
(e.g. from binning or demosaicing) stays in the output; check the residual (raw - denoised) for structure.
Apply the model only to images of the same channel, microscope and acquisition settings.

## Validation

The package was tested with bioimageio.core's `test_model` on the CPU when it was exported: both
weight formats reproduce the test output (a crop of one of the model's validation images) within
1e-3. Denoising quality was checked by jump-n2v's QC (noise level, residual structure, and PSNR/SSIM
where a clean reference exists), reported per plate and channel in the workflow's report.
"""


def _package_files(trained, raw: np.ndarray, work_dir: Path, name: str, halo: int) -> dict[str, Path]:
    """The package's files under ``work_dir``: test tensors (``raw`` and the network's output on it), both
    weight formats, the architecture's source, cover, README and sample TIFFs; name -> path."""
    net = trained.net
    with torch.inference_mode():
        normalised = torch.from_numpy((raw - np.float32(trained.mean)) / np.float32(trained.std))[None, None]
        output = (net(normalised) * trained.std + trained.mean).numpy().astype(np.float32)
        with warnings.catch_warnings():
            # torch deprecates TorchScript, but it is the format deepImageJ (DJL) and Java consumers run.
            warnings.simplefilter("ignore", DeprecationWarning)
            traced = torch.jit.trace(net, normalised)
    files = {
        "input": work_dir / "test_input.npy", "output": work_dir / "test_output.npy",
        "torchscript": work_dir / "weights_torchscript.pt", "state_dict": work_dir / "weights_state_dict.pt",
        "architecture": work_dir / "model.py", "cover": work_dir / "cover.png", "readme": work_dir / "README.md",
        "sample_input": work_dir / "sample_input.tif", "sample_output": work_dir / "sample_output.tif",
    }
    np.save(files["input"], raw[None, None])
    np.save(files["output"], output)
    traced.save(str(files["torchscript"]))
    torch.save(net.state_dict(), files["state_dict"])
    shutil.copyfile(MODEL_SOURCE, files["architecture"])
    _write_cover(files["cover"], raw, output[0, 0])
    tifffile.imwrite(files["sample_input"], raw, photometric="minisblack")
    tifffile.imwrite(files["sample_output"], output[0, 0], photometric="minisblack")
    files["readme"].write_text(_readme(name, trained, halo))
    return files


def _tensor_descriptions(trained, files: dict[str, Path], minimum: int, multiple: int, halo: int):
    """The input and output tensor descriptions: y and x any multiple of ``multiple`` from ``minimum``,
    the output with the halo; normalisation in, back to image units out."""
    from bioimageio.spec.model.v0_5 import (
        AxisId, BatchAxis, ChannelAxis, FileDescr, FixedZeroMeanUnitVarianceDescr, FixedZeroMeanUnitVarianceKwargs,
        Identifier, InputTensorDescr, OutputTensorDescr, ParameterizedSize, ScaleLinearDescr, ScaleLinearKwargs,
        SizeReference, SpaceInputAxis, SpaceOutputAxisWithHalo, TensorId,
    )

    size = ParameterizedSize(min=minimum, step=multiple)
    input_axes = [BatchAxis(), ChannelAxis(channel_names=[Identifier("channel")]),
                  SpaceInputAxis(id=AxisId("y"), size=size), SpaceInputAxis(id=AxisId("x"), size=size)]
    output_axes = [BatchAxis(), ChannelAxis(channel_names=[Identifier("channel")])] + [
        SpaceOutputAxisWithHalo(id=AxisId(axis), size=SizeReference(tensor_id=TensorId("input"), axis_id=AxisId(axis)), halo=halo)
        for axis in ("y", "x")
    ]
    inputs = InputTensorDescr(
        id=TensorId("input"), axes=input_axes, test_tensor=FileDescr(source=files["input"]),
        sample_tensor=FileDescr(source=files["sample_input"]),
        preprocessing=[FixedZeroMeanUnitVarianceDescr(kwargs=FixedZeroMeanUnitVarianceKwargs(mean=trained.mean, std=trained.std))],
    )
    outputs = OutputTensorDescr(
        id=TensorId("prediction"), axes=output_axes, test_tensor=FileDescr(source=files["output"]),
        sample_tensor=FileDescr(source=files["sample_output"]),
        postprocessing=[ScaleLinearDescr(kwargs=ScaleLinearKwargs(gain=trained.std, offset=trained.mean))],
    )
    return inputs, outputs


def _weights_description(trained, files: dict[str, Path]):
    """Both weight formats: the state dict with its architecture (source and keyword arguments), and TorchScript."""
    from bioimageio.spec.model.v0_5 import (
        ArchitectureFromFileDescr, Identifier, PytorchStateDictWeightsDescr, TorchscriptWeightsDescr, Version, WeightsDescr,
    )

    settings = trained.settings
    torch_version = Version(torch.__version__.split("+")[0])
    return WeightsDescr(
        pytorch_state_dict=PytorchStateDictWeightsDescr(
            source=files["state_dict"], pytorch_version=torch_version,
            architecture=ArchitectureFromFileDescr(
                source=files["architecture"], sha256=_sha256(files["architecture"]), callable=Identifier("UNet"),
                kwargs={"depth": settings.depth, "base_filters": settings.base_filters, "n2v2": settings.variant == "n2v2",
                        "baseline_radius": trained.net.baseline_radius},
            ),
        ),
        torchscript=TorchscriptWeightsDescr(source=files["torchscript"], pytorch_version=torch_version, parent="pytorch_state_dict"),
    )


def build_bmz_description(model_dir: str | os.PathLike, work_dir: Path, *, image: np.ndarray | None = None,
                          name: str | None = None, authors: list[str] | None = None):
    """The bioimage.io ``ModelDescr`` of a jump-n2v model folder, its files written under ``work_dir``."""
    from bioimageio.spec.model.v0_5 import Author, CiteEntry, FileDescr, ModelDescr

    model_dir = Path(model_dir)
    model_json = model_dir / "model.json" if model_dir.is_dir() else model_dir
    model_dir = model_json.parent
    trained = load_trained(model_json)
    settings = trained.settings
    multiple = 2**settings.depth
    halo = halo_size(trained.net)
    # The smallest input leaves an interior once the halo is cropped on both sides.
    minimum = max(8 * multiple, (2 * halo // multiple + 1) * multiple)

    source = image if image is not None else _recorded_image(trained.record.data, model_json)
    raw = _test_crop(np.asarray(source), multiple, minimum)
    name = name or f"jump-n2v {settings.variant.upper()} {model_dir.name}"
    files = _package_files(trained, raw, work_dir, name, halo)
    attachments = [FileDescr(source=model_dir / "model.json")]
    if (model_dir / "training_log.csv").exists():
        attachments.append(FileDescr(source=model_dir / "training_log.csv"))
    inputs, outputs = _tensor_descriptions(trained, files, minimum, multiple, halo)
    text, doi = CITATIONS[settings.variant]
    return ModelDescr(
        name=name,
        description=f"Noise2Void ({settings.variant.upper()}) denoising of one Cell Painting channel, trained by jump-n2v.",
        authors=[Author(name=author) for author in (authors or ["jump-n2v authors"])],
        cite=[CiteEntry(text=text, doi=doi)],
        license="MIT",
        documentation=FileDescr(source=files["readme"]),
        covers=[FileDescr(source=files["cover"])],
        tags=["denoising", "noise2void", settings.variant, "cell-painting", "2d", "fluorescence-light-microscopy", "pytorch"],
        inputs=[inputs],
        outputs=[outputs],
        weights=_weights_description(trained, files),
        attachments=attachments,
        # Same tolerance as CAREamics' N2V packages: TorchScript and eager differ at float rounding.
        config={"bioimageio": {"test_kwargs": {"pytorch_state_dict": {"absolute_tolerance": 1e-3, "relative_tolerance": 1e-3},
                                              "torchscript": {"absolute_tolerance": 1e-3, "relative_tolerance": 1e-3}}}},
        version="1.0.0",
    )


def export_bmz(model_dir: str | os.PathLike, out_zip: str | os.PathLike, *, image: np.ndarray | None = None,
               name: str | None = None, authors: list[str] | None = None, test: bool = True,
               log: logging.Logger | None = None) -> dict:
    """Write ``model_dir`` (a jump-n2v model folder) as a BioImage Model Zoo zip at ``out_zip``.

    With ``test`` the package is validated with bioimageio.core's ``test_model`` on the CPU before it
    is moved into place; a failing test raises with the validation summary. Returns
    ``{"path", "status", "details"}`` (details: one line per error or warning of a check).
    """
    from bioimageio.spec import save_bioimageio_package

    out_zip = Path(out_zip)
    with tempfile.TemporaryDirectory(prefix="jump-n2v-bmz-") as work:
        description = build_bmz_description(model_dir, Path(work), image=image, name=name, authors=authors)
        with atomic_output(out_zip) as temporary:
            save_bioimageio_package(description, output_path=temporary)  # the temporary keeps the .zip suffix
            result = {"path": str(out_zip), "status": "not tested", "details": []}
            if test:
                result.update(validate_bmz(temporary))
                if result["status"] != "passed":
                    raise ValueError(f"the BioImage Model Zoo package for {model_dir} failed bioimageio's test_model:\n"
                                     + "\n".join(result["details"]))
    if log is not None:
        log.info("BioImage Model Zoo package %s: test %s", out_zip, result["status"])
    return result


def validate_bmz(package: str | os.PathLike) -> dict:
    """bioimageio.core's ``test_model`` on a package (zip or rdf.yaml), on the CPU: ``{"status", "details"}``."""
    from bioimageio.core import test_model

    summary = test_model(Path(package), devices=["cpu"])
    details = [
        f"{kind} in {detail.name!r} at {'.'.join(map(str, entry.loc))}: {entry.msg}"
        for detail in summary.details
        for kind, entries in (("error", detail.errors), ("warning", detail.warnings))
        for entry in entries
    ]
    return {"status": summary.status, "details": details}

