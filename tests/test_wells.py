"""One well-name parser (jump_n2v.plumbing.wells) for ingest's normalised names and QC's plate positions."""

from __future__ import annotations

import pytest

from jump_n2v.ingest.discover import normalise_well as ingest_normalise_well
from jump_n2v.ingest.discover import well_from_row_column
from jump_n2v.qc.figures import parse_well as qc_parse_well
from jump_n2v.plumbing.wells import normalise_well, parse_well, row_label, well_name


def test_ingest_and_qc_use_the_one_parser():
    assert ingest_normalise_well is normalise_well and qc_parse_well is parse_well


# ingest's former normalise_well: case, zero-padding and spaces
@pytest.mark.parametrize("text, well", [("A1", "A01"), ("a01", "A01"), ("P24", "P24"), ("AF48", "AF48"), ("B003", "B03"), (" c7 ", "C07")])
def test_well_names_are_normalised(text, well):
    assert normalise_well(text) == well


# QC's former parse_well: zero-based plate positions, 1536-well two-letter rows
@pytest.mark.parametrize("well, position", [("A01", (0, 0)), ("p24", (15, 23)), ("B3", (1, 2)), ("AF48", (31, 47)), ("AA01", (26, 0)), ("B003", (1, 2))])
def test_parse_well_gives_zero_based_row_and_column(well, position):
    assert parse_well(well) == position


@pytest.mark.parametrize("text", ["r1c1", "A", "01", "A0", "ABC1", "A1x", ""])
def test_a_non_well_name_is_refused_naming_it(text):
    with pytest.raises(ValueError, match="not a well name"):
        parse_well(text)
    with pytest.raises(ValueError, match="not a well name"):
        normalise_well(text)


def test_names_and_positions_round_trip():
    for row in (0, 15, 25, 26, 31):
        for column in (0, 23, 47):
            assert parse_well(well_name(row, column)) == (row, column)
    assert [row_label(row) for row in (0, 25, 26, 31)] == ["A", "Z", "AA", "AF"]
    assert well_from_row_column(32, 2) == "AF02"
