"""A private copy of the workflow for tests that run snakemake in their own folder."""

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def copy_workflow(workdir: Path, names) -> None:
    """Copy the named files and folders of the repository into ``workdir``."""
    for name in names:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, workdir / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif source.exists():
            (workdir / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, workdir / name)
