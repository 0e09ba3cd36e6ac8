"""The single-image notebook runs top to bottom (nbclient, a real kernel) on a tiny synthetic image."""

from __future__ import annotations

import sys

import nbformat
import pytest
from nbclient import NotebookClient

from workflow_copy import REPO

NOTEBOOK = REPO / "docs" / "single_image.ipynb"

TINY_PARAMETERS = """IMAGE_PATH = None
PLANE = None
CLEAN_PATH = None
WORK_DIR = "single_image_run"
EXAMPLE_SIZE = 64
N2V = {"epochs": 2, "steps_per_epoch": 10, "patch_size": 32, "batch_size": 4, "base_filters": 8,
       "validation_patches": 8, "device": "cpu"}
PREDICT = {"tile_size": 128, "device": "cpu"}
import torch; torch.set_num_threads(1)
"""


def test_single_image_notebook_runs_and_reports_qc(tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    parameters = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(parameters) == 1, "the notebook needs exactly one cell tagged 'parameters'"
    parameters[0].source = TINY_PARAMETERS
    # The kernel is this interpreter (the test venv's ipykernel), started in tmp_path.
    client = NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}},
                            kernel_manager_kwargs={"kernel_cmd": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]})
    client.execute()

    run = tmp_path / "single_image_run"
    for name in ("model/model.pt", "model/model.json", "model/training_curve.png", "denoised.tif", "panels.png"):
        assert (run / name).stat().st_size > 0, name
    outputs = "\n".join(
        str(output.get("text", "")) + str(output.get("data", {}).get("text/plain", ""))
        for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])
    )
    assert "psnr_gain_db" in outputs and "noise_sigma_raw" in outputs and "QC flags:" in outputs
    images = sum("image/png" in output.get("data", {}) for cell in notebook.cells if cell.cell_type == "code"
                 for output in cell.get("outputs", []))
    assert images == 2  # the training curve and the panels


def test_notebook_is_stored_without_outputs():
    """Outputs are made by running it; a stored run would go stale and bloat the repository."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None
