"""Exclusive writer locks: a second writer of the same output fails at once, naming the first.

The lock is ``flock`` on a small file beside what is written, holding the writer's host, pid,
working directory and start time. The kernel releases it when the holder exits for any reason
(``kill -9`` and node loss included, once the file server notices), so a lock is never stale; a
leftover lock file is only a name. Works across hosts on NFS (Linux maps flock to POSIX locks there)
and on local filesystems.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
from pathlib import Path
from typing import Iterator


class WriterLockedError(RuntimeError):
    """Another process holds the writer lock; the message names it."""


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process (it has not written its name yet)"
    return (f"pid {info.get('pid')} on host {info.get('host')}, started {info.get('started')}, "
            f"working directory {info.get('cwd')}")


def try_lock(path: str | os.PathLike) -> int | None:
    """Open ``path`` (created if missing) and lock it without waiting: its descriptor, or None when
    another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def release(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


@contextlib.contextmanager
def writer_lock(path: str | os.PathLike, what: str, log: str | os.PathLike | None = None) -> Iterator[None]:
    """Hold the exclusive writer lock ``path`` while the block runs; raise WriterLockedError at once
    (naming the holder's host, pid, start time and working directory) when another process has it.
    ``what`` names the output for the message (e.g. "model folder results/e/models/P1/DNA").

    ``log`` is the job's log file; open it only inside the block. Snakemake deletes a job's log
    before the job starts, so a job refused here would leave the holder writing to a log nobody can
    read: the holder keeps a second name for its log beside the lock (``<lock>.log``, a hard link),
    and a refused job puts the holder's log back at ``log`` before it fails, its own error going
    to its stderr (shown by Snakemake, or in the cluster job's output)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = try_lock(path)
    if fd is None:
        fd = os.open(path, os.O_RDONLY)
        try:
            holder = _holder(fd)
        finally:
            os.close(fd)
        kept = _restore_holder_log(path, log) if log is not None else None
        raise WriterLockedError(
            f"{what} is being written by another run: {holder} (lock {path}"
            + (f"; its log is {kept}" if kept else "")
            + "). Two runs must not write the same results folder at once; wait for that run or stop it."
        )
    try:
        info = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "cwd": os.getcwd(),
            "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        }
        # On a full disk the holder goes unnamed rather than the job failing here: its own write then
        # fails naming the output it was writing.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        if log is not None:
            _keep_log(path, log)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        if log is not None:
            with contextlib.suppress(OSError):
                os.unlink(_holder_log(path))
        release(fd)


def _holder_log(lock: Path) -> Path:
    return lock.with_suffix(".log")


def _keep_log(lock: Path, log: str | os.PathLike) -> None:
    """Give the holder's ``log`` (created empty if missing) a second name beside the lock."""
    link = _holder_log(lock)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(link)
    # A filesystem without hard links, or a full one: the log is not kept twice (the job still runs).
    with contextlib.suppress(OSError):
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        Path(log).touch()
        os.link(log, link)


def _restore_holder_log(lock: Path, log: str | os.PathLike) -> Path | None:
    """Put the holder's log back at ``log`` (what a refused job's Snakemake deleted); its path, or None
    when the holder keeps no log."""
    link = _holder_log(lock)
    temporary = Path(f"{log}.tmp-{os.getpid()}")
    try:
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        os.link(link, temporary)
    except OSError:
        return None
    os.replace(temporary, log)
    return Path(log)


MODEL_LOCK_NAME = ".writer.lock"


def model_folder_lock(model_dir: str | os.PathLike, log: str | os.PathLike | None = None) -> contextlib.AbstractContextManager:
    """The writer lock of a model folder (training writes checkpoint.pt and the outputs there)."""
    return writer_lock(Path(model_dir) / MODEL_LOCK_NAME, f"model folder {model_dir}", log)


def output_lock(output: str | os.PathLike, log: str | os.PathLike | None = None) -> contextlib.AbstractContextManager:
    """The writer lock of one job output (a Zarr store, an export folder), ``.<name>.writer.lock``
    beside it: two runs sharing a results folder must not both write it, one replacing the other's."""
    output = Path(output)
    return writer_lock(output.parent / f".{output.name}.writer.lock", str(output), log)
