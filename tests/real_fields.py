"""The real Opera Phenix sites shipped in the pe2loaddata 0.2.0 sdist (fetched by tests/fetch_real_fields.sh).

Version1: a sparse 1080 x 1080 site with one very bright debris object (DNA, ER, RNA, AGP, Mito, brightfield).
Version5: a confluent 1080 x 1080 site (RNA, ER, AGP, Mito, brightfield, DPC).
Version7: a 2160 x 2160 binning-1 site (seven channels).
Each version folder holds ``images/`` and a LoadData CSV whose paths are relative to the sdist's root.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

SDIST_ROOT = Path(__file__).parent / ".cache" / "pe2loaddata-0.2.0"
VERSIONS = ("Version1", "Version5", "Version7")


def sdist_root() -> Path:
    """The unpacked sdist, or an error telling how to fetch it (``make test`` does)."""
    if not (SDIST_ROOT / ".complete").exists():
        raise FileNotFoundError(
            f"{SDIST_ROOT} is missing: run tests/fetch_real_fields.sh (make test runs it) to fetch the real Phenix sites"
        )
    return SDIST_ROOT


def load_data_table(version: str) -> Path:
    """The LoadData CSV of one version (paths in it are relative to :func:`sdist_root`)."""
    (table,) = sorted((sdist_root() / "tests" / "data" / version).glob("load_data*.csv"))
    return table


def site_channels(version: str) -> dict[str, Path]:
    """Channel name -> image file of the version's one site, as its LoadData table names them."""
    row = pd.read_csv(load_data_table(version)).iloc[0]
    channels = {}
    for column in row.index:
        match = re.fullmatch(r"FileName_Orig(\w+)", column)
        if match:
            name = match.group(1)
            channels[name] = sdist_root() / str(row[f"PathName_Orig{name}"]) / str(row[column])
    return channels
