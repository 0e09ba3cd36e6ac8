"""Fixtures shared by test modules: a real S3-compatible server (moto's standalone server) on 127.0.0.1."""

import pytest

from s3_server import moto_server


@pytest.fixture(scope="session")
def s3_endpoint():
    """The endpoint URL of a moto S3 server started for this test session (stopped at its end)."""
    with moto_server() as endpoint:
        yield endpoint
