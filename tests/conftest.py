"""What the test modules share: the tiny plate's config and the tiny n2v settings, a private tiny
workflow copy, snakemake's runner and job-list parser, demo sites through the demo camera, the S3 server
and pinned torch fixtures, and the markers that tell unit tests from the rest.

Test modules import the constants and helpers here by name (``from conftest import TINY_CONFIG``), as they
import tests/workflow_copy.py: pytest puts tests/ on sys.path (the default "prepend" import mode).

Markers (declared in pyproject.toml): a unit test is one with none of slow, workflow, s3, slurm, browser
or cellprofiler (``make test-unit`` runs those only; ``make test`` runs everything). A test that asks for the
S3 server (``s3_endpoint``, directly or through another fixture) is marked s3 here, so it never needs saying.
"""

import contextlib
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import ndimage

from jump_n2v.demo import DemoSpec, render_site
from s3_server import moto_server
from workflow_copy import REPO, copy_workflow

# The tiny demo plate (4 sites of 64x64, 2 channels, a few training steps) the end-to-end tests run;
# TINY_PLATES is its plate sheet, relative to the folder snakemake runs in (the config names it so).
TINY_CONFIG = REPO / "tests" / "data" / "tiny_config.yaml"
TINY_PLATES = "tests/data/tiny_plates.tsv"

# n2v settings small enough to train in a second on a CPU; a test that needs others states only the
# difference: {**TINY_N2V, "epochs": 4}.
TINY_N2V = dict(patch_size=16, batch_size=4, base_filters=4, epochs=1, steps_per_epoch=3, validation_patches=8, device="cpu")


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path) -> tuple[int, int]:
    """(width, height) from a PNG's header, after checking the signature."""
    data = Path(path).read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def tiny_config() -> dict:
    """The tiny config (tests/data/tiny_config.yaml), read afresh: the caller may change it."""
    with open(TINY_CONFIG) as handle:
        return yaml.safe_load(handle)


def tiny_experiment() -> dict:
    """The tiny config's one experiment ("tiny": channels, demo plate, settings), read afresh."""
    return tiny_config()["experiments"]["tiny"]


def tiny_workflow(workdir: Path, paths) -> Path:
    """The repository's ``paths`` copied into ``workdir``, with the tiny config as config/config.yaml
    and its plate sheet where it names it: a plain ``snakemake`` there runs the tiny plate."""
    copy_workflow(workdir, [*paths, TINY_PLATES])
    (workdir / "config").mkdir(exist_ok=True)
    shutil.copy2(TINY_CONFIG, workdir / "config" / "config.yaml")
    return workdir


def run_snakemake(*args: str, cwd=None, timeout: float | None = None) -> subprocess.CompletedProcess:
    """``snakemake *args`` (this interpreter's) in ``cwd``, unbuffered, its output captured as text; the
    caller checks the return code (``result.args`` is the command)."""
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})


JOB_HEADER = re.compile(r"^(?:local)?(?:rule|checkpoint) (?P<rule>\w+):$")


def job_blocks(output: str) -> list[tuple[str, dict]]:
    """(rule, {field: value}) for each job block snakemake printed."""
    blocks, rule, fields = [], None, {}
    for line in output.splitlines() + [""]:
        header = JOB_HEADER.match(line)
        if header or not line.startswith("    "):
            if rule is not None:
                blocks.append((rule, fields))
            rule, fields = (header.group("rule") if header else None), {}
            continue
        field, _, value = line.strip().partition(": ")
        fields[field] = value
    return blocks


def demo_camera(spec: DemoSpec, photons: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """What the demo's camera reads from ``photons`` (float, not yet rounded): gain x Poisson counts +
    offset + Gaussian read noise."""
    return spec.gain * rng.poisson(photons) + spec.offset + rng.normal(0, spec.read_noise, photons.shape)


def demo_sites(spec: DemoSpec, sites: int, channel: str, *, box: bool = False, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Raw uint16 and clean images of one demo stain, ``sites`` sites drawn from ``seed``; ``box`` mixes
    the noisy image with a 2 x 2 box after the camera (the clean one too, so it stays the mean of the raw)."""
    rng = np.random.default_rng(seed)
    raws, cleans = [], []
    for _ in range(sites):
        photons = render_site(spec, rng)[channel]
        noisy = demo_camera(spec, photons, rng)
        clean = spec.gain * photons + spec.offset
        if box:
            noisy, clean = ndimage.uniform_filter(noisy, 2, mode="reflect"), ndimage.uniform_filter(clean, 2, mode="reflect")
        raws.append(np.clip(np.rint(noisy), 0, 65535).astype(np.uint16))
        cleans.append(clean)
    return raws, cleans


@contextlib.contextmanager
def torch_pinned():
    """One thread and deterministic algorithms inside the block (see ``pinned_torch``); torch's own
    settings back after it."""
    import torch

    previous = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(previous[0])
        torch.use_deterministic_algorithms(previous[1])


def pytest_collection_modifyitems(items):
    for item in items:
        if "s3_endpoint" in item.fixturenames:
            item.add_marker(pytest.mark.s3)


@pytest.fixture(scope="session")
def s3_endpoint():
    """The endpoint URL of a moto S3 server started for this test session (stopped at its end)."""
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture
def pinned_torch():
    """One training trajectory per CPU for a test that trains: one thread and deterministic algorithms
    (the settings' seed does the rest). Another CPU's float kernels still round differently, so such
    a test asserts what holds for any honest trajectory, never one run's numbers. A module-scoped
    fixture that trains uses ``with torch_pinned():`` instead."""
    with torch_pinned():
        yield
