"""Atomic outputs: write beside the final path, rename into place only when complete.

An interrupted job therefore leaves at most a ``.tmp-*`` sibling, never a file or Zarr directory that
looks finished. Works for files and directories (Zarr stores) alike.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_output(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; on success move it to ``final`` (replacing it).

    On any exception the temporary path is removed and ``final`` is left as it was.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = final.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{final.name}")
    try:
        yield temporary
    except BaseException:
        _remove(temporary)
        raise
    if not temporary.exists():
        raise FileNotFoundError(f"atomic_output: nothing was written to {temporary} for {final}")
    if final.is_dir() and not final.is_symlink():
        # os.replace cannot replace a non-empty directory: move the old one aside first.
        old = final.with_name(f".old-{uuid.uuid4().hex[:8]}-{final.name}")
        os.replace(final, old)
        os.replace(temporary, final)
        shutil.rmtree(old)
    else:
        os.replace(temporary, final)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_output(path) as temporary:
        temporary.write_text(text)
