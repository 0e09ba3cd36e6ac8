"""Export of a trained model as a BioImage Model Zoo package, validated by bioimageio.core's own test."""

from __future__ import annotations

import json
import shutil
import zipfile

import numpy as np
import pytest
import torch
import yaml
import zarr

from conftest import TINY_N2V
from jump_n2v.cli import main
from jump_n2v.export.bmz import export_bmz, validate_bmz
from jump_n2v.n2v import N2VSettings, load_trained, train_channel
from jump_n2v.predict.runner import denoise_image

torch.set_num_threads(1)


@pytest.fixture(scope="module", params=["n2v", "n2v2"])
def model_dir(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"bmz-{request.param}")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:96, 0:80]
    images = np.stack([500 + 200 * np.sin(xx / 4.0) * np.cos(yy / 5.0) + rng.normal(0, 40, yy.shape) for _ in range(3)])
    array = zarr.create_array(store=str(root / "raw.zarr"), shape=images.shape, chunks=(1, 96, 80), dtype="uint16")
    array[:] = images.astype(np.uint16)
    train_channel([str(root / "raw.zarr")], N2VSettings.from_dict({**TINY_N2V, "variant": request.param}), root / "DNA")
    return root / "DNA"


def test_package_passes_bioimageio_test_model_on_cpu(model_dir, tmp_path):
    result = export_bmz(model_dir, tmp_path / "DNA.zip")
    assert result["status"] == "passed", result["details"]
    # No warning either (FAIR fields, README sections), but the tolerance notes of the output comparison
    # and the missing GitHub maintainer, which only an upload to the zoo needs and only the user can name.
    expected = ("Reproduce test outputs", "`maintainers`")
    assert [line for line in result["details"] if not any(text in line for text in expected)] == []
    # The package validates on its own too (as a user would run `bioimageio test DNA.zip`).
    assert validate_bmz(tmp_path / "DNA.zip")["status"] == "passed"

    with zipfile.ZipFile(tmp_path / "DNA.zip") as package:
        names = set(package.namelist())
        rdf = yaml.safe_load(package.read("rdf.yaml"))
        test_input = np.load(package.open("test_input.npy"))
    assert {"rdf.yaml", "model.py", "weights_state_dict.pt", "weights_torchscript.pt", "model.json", "cover.png"} <= names
    assert set(rdf["weights"]) == {"pytorch_state_dict", "torchscript"}
    trained = load_trained(model_dir)
    # (the spec adds ensure_dtype steps around these)
    preprocessing = {step["id"]: step.get("kwargs") for step in rdf["inputs"][0]["preprocessing"]}
    postprocessing = {step["id"]: step.get("kwargs") for step in rdf["outputs"][0]["postprocessing"]}
    assert preprocessing["fixed_zero_mean_unit_variance"] == pytest.approx({"mean": trained.mean, "std": trained.std})
    assert postprocessing["scale_linear"] == pytest.approx({"gain": trained.std, "offset": trained.mean})
    # The test input is a crop of the model's recorded validation image, in raw units.
    assert test_input.shape[:2] == (1, 1) and test_input.shape[2] % 4 == 0 and test_input.max() > 100


def test_packaged_torchscript_denoises_like_the_package(model_dir, tmp_path):
    """What deepImageJ runs: the TorchScript weights between the packaged normalisation steps."""
    export_bmz(model_dir, tmp_path / "DNA.zip", test=False)
    with zipfile.ZipFile(tmp_path / "DNA.zip") as package:
        package.extractall(tmp_path / "unzipped")
    net = torch.jit.load(str(tmp_path / "unzipped" / "weights_torchscript.pt"))
    trained = load_trained(model_dir)
    image = np.load(tmp_path / "unzipped" / "test_input.npy")[0, 0]
    with torch.inference_mode():
        scripted = net(torch.from_numpy((image - trained.mean) / trained.std)[None, None].float())[0, 0].numpy()
    np.testing.assert_allclose(scripted * trained.std + trained.mean, np.load(tmp_path / "unzipped" / "test_output.npy")[0, 0],
                               rtol=1e-4, atol=1e-3 * trained.std)
    # jump-n2v's own tiled prediction agrees away from the border (zero padding vs reflect padding there).
    tiled = denoise_image(trained.net, image, trained.mean, trained.std, {"device": "cpu"})
    assert np.corrcoef(tiled[16:-16, 16:-16].ravel(), (scripted * trained.std + trained.mean)[16:-16, 16:-16].ravel())[0, 1] > 0.99


def test_cli_exports_with_a_given_test_image(model_dir, tmp_path):
    import tifffile

    image = np.random.default_rng(1).normal(500, 40, (100, 92)).astype(np.float32)
    tifffile.imwrite(tmp_path / "site.tif", image)
    assert main(["export-bmz", str(model_dir), str(tmp_path / "out.zip"), "--image", str(tmp_path / "site.tif"),
                 "--name", "DNA denoiser", "--author", "A. Biologist", "--no-test"]) == 0
    with zipfile.ZipFile(tmp_path / "out.zip") as package:
        rdf = yaml.safe_load(package.read("rdf.yaml"))
        assert np.load(package.open("test_input.npy")).shape == (1, 1, 100, 92)
    assert rdf["name"] == "DNA denoiser" and rdf["authors"] == [{"name": "A. Biologist"}]


def test_a_model_whose_training_arrays_are_gone_needs_a_test_image(model_dir, tmp_path):
    moved = tmp_path / "DNA"
    shutil.copytree(model_dir, moved)
    metadata = json.loads((moved / "model.json").read_text())
    metadata["data"]["arrays"] = [str(tmp_path / "gone.zarr")]
    (moved / "model.json").write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match="pass a test image"):
        export_bmz(moved, tmp_path / "x.zip", test=False)
    assert not (tmp_path / "x.zip").exists()
