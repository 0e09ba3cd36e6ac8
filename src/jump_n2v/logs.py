"""Logging for rule scripts and the CLI: progress lines go to the rule's log file."""

from __future__ import annotations

import logging
import sys


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
