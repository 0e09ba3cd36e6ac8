"""Fixtures shared by test modules: a real S3-compatible server (moto's standalone server) on 127.0.0.1."""

import pytest

from s3_server import moto_server


@pytest.fixture(scope="session")
def s3_endpoint():
    """The endpoint URL of a moto S3 server started for this test session (stopped at its end)."""
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture
def pinned_torch():
    """One training trajectory per CPU for a test that trains: one thread and deterministic algorithms
    (the settings' seed does the rest). Another CPU's float kernels still round differently, so such
    a test asserts what holds for any honest trajectory, never one run's numbers."""
    import torch

    previous = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    yield
    torch.set_num_threads(previous[0])
    torch.use_deterministic_algorithms(previous[1])
