"""Numeric type helpers: the integer ranges that ingest records and prediction, QC and export honour (numpy only)."""

from __future__ import annotations

import numpy as np


def integer_bounds(dtype: np.dtype) -> tuple[float, float]:
    """The integer dtype's range as floats that cast back inside it.

    float32 cannot hold 2**31 - 1 (it rounds up to 2**31, which wraps to the minimum of int32), so
    32-bit outputs are clipped in float64; for 64-bit integers even float64 rounds the maximum up, so
    the bound steps down to the largest float64 below it.
    """
    info = np.iinfo(dtype)
    work = np.float64 if np.dtype(dtype).itemsize >= 4 else np.float32
    low, high = work(info.min), work(info.max)
    if int(high) > info.max:
        high = np.nextafter(high, work(-np.inf))
    return float(low), float(high)


def integer_range(dtype: np.dtype) -> list[int] | None:
    """An integer dtype's [min, max], exactly (the ``dtype_range`` a channel array records); None for floats."""
    dtype = np.dtype(dtype)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return [int(info.min), int(info.max)]
    return None
