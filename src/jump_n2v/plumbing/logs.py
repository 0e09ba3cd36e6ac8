"""Logging for rule scripts and the CLI: progress lines go to the rule's log file."""

from __future__ import annotations

import logging
import sys
import threading
import time

# Progress lines are logged at most this often (seconds), plus one when the count is complete.
PROGRESS_INTERVAL_S = 5.0


def rule_logger(log_path: str | None, name: str = "jump_n2v") -> logging.Logger:
    """A logger writing timestamped lines to ``log_path`` (and stderr when no path is given).

    Inside a rule, stderr is redirected to the same file so that a traceback ends up in the log.
    """
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    logger.handlers.clear()
    logger.propagate = False
    if log_path:
        stream = _FallbackStream(open(log_path, "a", buffering=1), sys.stderr)
        sys.stderr = stream
    else:
        stream = sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    logger.addHandler(handler)
    return logger


class _FallbackStream:
    """Writes to the log file, or to the job's own stderr when the log cannot be written (a full
    disk), so the error that stopped the job is never lost with an empty log."""

    def __init__(self, primary, fallback) -> None:
        self.primary, self.fallback, self.failed = primary, fallback, False

    def write(self, text: str) -> int:
        if not self.failed:
            try:
                written = self.primary.write(text)
                self.primary.flush()
                return written
            except OSError as error:
                self.failed = True
                self.fallback.write(f"cannot write the log file {self.primary.name} ({error}); logging here instead\n")
        written = self.fallback.write(text)
        self.fallback.flush()
        return written

    def flush(self) -> None:
        for stream in (self.primary, self.fallback):
            try:
                stream.flush()
            except OSError:
                pass

    def __getattr__(self, name):
        return getattr(self.primary, name)


class Progress:
    """A count of finished items toward ``total`` that any thread may add to, logged as ``line % (done,
    total, rate)`` at most every ``interval_s`` seconds and once when the count is complete.

    ``rate`` is the work done per second since the count began, in units of ``work_unit``: with
    ``work_per_item`` the pixels of one image and ``work_unit`` 1e6, megapixels per second. No ``log``:
    nothing is logged.
    """

    def __init__(
        self,
        total: int,
        log: logging.Logger | None,
        line: str,
        *,
        work_per_item: float = 1,
        work_unit: float = 1,
        interval_s: float = PROGRESS_INTERVAL_S,
    ) -> None:
        self.total, self.log, self.line = total, log, line
        self.work_per_item, self.work_unit, self.interval_s = work_per_item, work_unit, interval_s
        self.done = 0
        self.start = self.last = time.perf_counter()
        self.lock = threading.Lock()

    def add(self, items: int) -> None:
        with self.lock:
            self.done += items
            now = time.perf_counter()
            if self.log is None or (now - self.last < self.interval_s and self.done < self.total):
                return
            self.last = now
            rate = self.done * self.work_per_item / self.work_unit / max(now - self.start, 1e-9)
            self.log.info(self.line, self.done, self.total, rate)
