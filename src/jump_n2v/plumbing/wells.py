"""Well names of multi-well plates (bottom layer: no jump_n2v imports), shared by ingest and QC.

A well is one or two row letters and a column number: ``A01``, ``p24``, ``B003``, ``AF48``. Rows run
A..Z, then AA, AB ... (a 1536-well plate has 32 rows, A..AF).
"""

from __future__ import annotations

import re
import string

WELL_PATTERN = re.compile(r"^\s*([A-Za-z]{1,2})0*(\d{1,3})\s*$")


def parse_well(well: str) -> tuple[int, int]:
    """Zero-based (row, column) of a well name: A01 -> (0, 0), p24 -> (15, 23), B003 -> (1, 2),
    AF48 -> (31, 47). Surrounding spaces and zero-padding are ignored; anything else is a ValueError."""
    match = WELL_PATTERN.match(str(well))
    if not match or int(match.group(2)) < 1:
        raise ValueError(f"{well!r} is not a well name (expected a row letter or two and a column number from 1, e.g. B03)")
    letters, number = match.groups()
    row = 0
    for letter in letters.upper():
        row = row * 26 + string.ascii_uppercase.index(letter) + 1
    return row - 1, int(number) - 1


def row_label(row: int) -> str:
    """Row name of a zero-based row: 0 -> A, 25 -> Z, 26 -> AA, 31 -> AF."""
    if row < 0:
        raise ValueError(f"row {row}: rows start at 0")
    label = ""
    row += 1
    while row:
        row, remainder = divmod(row - 1, 26)
        label = string.ascii_uppercase[remainder] + label
    return label


def well_name(row: int, column: int) -> str:
    """Canonical name of a zero-based (row, column): (0, 0) -> A01, (31, 1) -> AF02."""
    if column < 0:
        raise ValueError(f"column {column}: columns start at 0")
    return f"{row_label(row)}{column + 1:02d}"


def normalise_well(well: str) -> str:
    """Canonical well name: 'a1', 'A1', 'A001' -> 'A01'; 1536-well rows 'AA'..'AF' keep two letters."""
    return well_name(*parse_well(well))
