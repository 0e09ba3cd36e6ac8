"""Atomic outputs: write beside the final path, rename into place only when complete.

An interrupted job therefore leaves at most a ``.tmp-*`` sibling, never a file or Zarr directory that
looks finished, and the next write of the same output removes such leftovers (gigabytes for a plate's
Zarr array). A writer holds a lock (``.tmp-*.lock``, see jump_n2v.plumbing.locks) while it writes, so only
leftovers of writers that are gone are removed, never a temporary another live process is filling.
Works for files and directories (Zarr stores) alike.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Iterator

from jump_n2v.plumbing.locks import release, try_lock


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
    remove_leftovers(final)
    temporary = final.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{final.name}")
    guard = _guard(temporary)
    try:
        writing = try_lock(guard)  # a fresh name: nobody else holds it
    except OSError:
        writing = None  # e.g. no inode left: the write itself will say why
    try:
        try:
            yield temporary
        except BaseException as error:
            full = _disk_full(error, final.parent)  # before the removal frees the space
            _remove(temporary)
            if full:
                raise DiskFullError(final, error) from error
            raise
        if not temporary.exists():
            raise FileNotFoundError(f"atomic_output: nothing was written to {temporary} for {final}")
        if final.is_dir() and not final.is_symlink():
            # os.replace cannot replace a non-empty directory: move the old one aside first.
            old = final.with_name(f".old-{temporary.name.removeprefix('.tmp-')}")
            os.replace(final, old)
            os.replace(temporary, final)
            shutil.rmtree(old)
        else:
            os.replace(temporary, final)
    finally:
        guard.unlink(missing_ok=True)
        if writing is not None:
            release(writing)


# Below this many free bytes a failed write is taken for a full disk (torch's checkpoint writer
# reports ENOSPC as "unexpected pos", without an errno).
FULL_DISK_FREE_BYTES = 1 << 20


class DiskFullError(OSError):
    """No space (or quota) left while writing an output; names the output and its filesystem."""

    def __init__(self, final: Path, cause: BaseException) -> None:
        free = _free_bytes(final.parent)
        super().__init__(
            errno.ENOSPC,
            f"No space left on device while writing {final} ({free if free is not None else '?'} bytes free "
            f"in {final.parent}; the partial output was removed, nothing there looks finished). Free "
            f"space there (or point the config's results folder elsewhere) and rerun. Cause: "
            f"{type(cause).__name__}: {cause}",
        )
        self.filename = str(final)

    def __str__(self) -> str:
        return self.strerror


def _free_bytes(folder: Path) -> int | None:
    try:
        stats = os.statvfs(folder)
    except OSError:
        return None
    return stats.f_bavail * stats.f_frsize


def _disk_full(error: BaseException, folder: Path) -> bool:
    if not isinstance(error, (OSError, RuntimeError)):
        return False  # e.g. KeyboardInterrupt: not a write failure
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        error = error.__cause__ or error.__context__
    free = _free_bytes(folder)
    return free is not None and free < FULL_DISK_FREE_BYTES


def _guard(temporary: Path) -> Path:
    return temporary.with_name(temporary.name + ".lock")


def remove_leftovers(final: str | os.PathLike) -> list[Path]:
    """Remove the ``.tmp-*`` / ``.old-*`` siblings that interrupted writes of ``final`` left behind
    (only this output's, and only those whose writer no longer holds its lock); return them."""
    final = Path(final)
    pattern = re.compile(rf"^\.(tmp|old)-[0-9a-f]{{8}}-{re.escape(final.name)}(\.lock)?$")
    removed = []
    try:
        siblings = sorted(path for path in final.parent.iterdir() if pattern.match(path.name))
    except FileNotFoundError:
        return removed
    # Outputs first, then lock files left without a writer.
    for path in [p for p in siblings if not p.name.endswith(".lock")]:
        guard = _guard(path.with_name(".tmp-" + path.name.split("-", 1)[1]))
        held = try_lock(guard) if guard.exists() else None
        if guard.exists() and held is None:
            continue  # a live writer (this host or another) is still filling it
        try:
            _remove(path)
            removed.append(path)
        finally:
            if held is not None:
                guard.unlink(missing_ok=True)
                release(held)
    for guard in [p for p in siblings if p.name.endswith(".lock") and p.exists()]:
        held = try_lock(guard)
        if held is not None:
            guard.unlink(missing_ok=True)
            release(held)
    return removed


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_output(path) as temporary:
        temporary.write_text(text)
