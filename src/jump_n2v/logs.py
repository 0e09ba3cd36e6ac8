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
        stream = open(log_path, "a", buffering=1)
        sys.stderr = stream
    else:
        stream = sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    logger.addHandler(handler)
    return logger
