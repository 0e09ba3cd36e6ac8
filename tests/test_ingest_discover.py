"""discover_plate: the per-site index from patterns, LoadData tables and Phenix names, without reading pixels."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pandas as pd
import pytest

from jump_n2v.ingest.discover import (
    DiscoveryError,
    channel_sources,
    discover_plate,
    ground_truth_index,
    normalise_well,
    read_index,
    well_from_row_column,
    write_index,
)

CHANNELS = ["DNA", "ER", "RNA"]


def touch(path: Path) -> Path:
    """An empty file: discovery must never open it, so it need not be a TIFF."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def loaddata_rows(folder_name: str, plate: str, wells_sites, channels=CHANNELS) -> list[dict]:
    rows = []
    for well, site in wells_sites:
        row = {"Metadata_Source": "source_1", "Metadata_Plate": plate, "Metadata_Well": well, "Metadata_Site": site}
        for channel in channels:
            row[f"FileName_Orig{channel}"] = f"{plate}_{well}_s{site}_{channel}.tiff"
            row[f"PathName_Orig{channel}"] = folder_name
        rows.append(row)
    return rows


def test_hyperstack_pattern_index_is_sorted_by_row_column_and_site(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for well, site in [("B01", 1), ("A10", 2), ("A02", 10), ("A02", 2), ("A10", 1)]:
        touch(tmp_path / "raw" / "P1" / f"{well}_s{site}.tif")
    touch(tmp_path / "raw" / "P1" / "notes.txt")
    touch(tmp_path / "raw" / "P2" / "A01_s1.tif")  # another plate's folder
    table = discover_plate("P1", {"format": "hyperstack", "pattern": "raw/{plate}/{well}_s{site}.tif"}, CHANNELS)
    assert list(table.columns) == ["image", "plate", "well", "site", "source_DNA", "source_ER", "source_RNA"]
    assert list(zip(table.well, table.site)) == [("A02", 2), ("A02", 10), ("A10", 1), ("A10", 2), ("B01", 1)]
    assert table.image.tolist() == [0, 1, 2, 3, 4]
    assert (table.plate == "P1").all()
    assert table.source_DNA.tolist() == table.source_RNA.tolist()  # one file holds every channel
    assert table.source_DNA[0] == os.path.join("raw", "P1", "A02_s2.tif")


def test_hyperstack_wells_are_normalised(tmp_path):
    touch(tmp_path / "site-b3-4.tif")
    table = discover_plate("P", {"format": "hyperstack", "pattern": str(tmp_path / "site-{well}-{site}.tif")}, ["DNA"])
    assert (table.well[0], table.site[0]) == ("B03", 4)


def test_hyperstack_ground_truth_uses_its_own_pattern(tmp_path):
    touch(tmp_path / "raw" / "A01_s1.tif")
    touch(tmp_path / "clean" / "A01_s1.tif")
    cfg = {"format": "hyperstack", "pattern": str(tmp_path / "raw/{well}_s{site}.tif"),
           "ground_truth": str(tmp_path / "clean/{well}_s{site}.tif")}
    assert "clean" in discover_plate("P", cfg, ["DNA"], ground_truth=True).source_DNA[0]
    assert "raw" in discover_plate("P", cfg, ["DNA"]).source_DNA[0]


def test_ground_truth_rows_take_the_raw_image_ids_of_the_same_well_and_site(tmp_path):
    for well, site in [("A01", 1), ("A01", 2), ("B01", 1)]:
        touch(tmp_path / "raw" / f"{well}_s{site}.tif")
    for well, site in [("A01", 2), ("B01", 1)]:  # no reference for A01 site 1
        touch(tmp_path / "clean" / f"{well}_s{site}.tif")
    cfg = {"format": "hyperstack", "pattern": str(tmp_path / "raw/{well}_s{site}.tif"),
           "ground_truth": str(tmp_path / "clean/{well}_s{site}.tif")}
    raw = discover_plate("P", cfg, ["DNA"])
    clean = ground_truth_index(raw, "P", cfg, ["DNA"])
    assert clean.image.tolist() == [1, 2]
    assert [Path(p).parent.name for p in clean.source_DNA] == ["clean", "clean"]
    touch(tmp_path / "clean" / "C01_s1.tif")
    with pytest.raises(DiscoveryError, match="C01 site 1"):
        ground_truth_index(raw, "P", cfg, ["DNA"])


def test_pattern_with_an_unknown_field_is_refused(tmp_path):
    with pytest.raises(DiscoveryError, match="unknown field \\{channel\\}"):
        discover_plate("P", {"format": "hyperstack", "pattern": "x/{well}_{site}_{channel}.tif"}, ["DNA"])


def test_pattern_matching_nothing_says_so(tmp_path):
    with pytest.raises(DiscoveryError, match="matched no files"):
        discover_plate("P", {"format": "hyperstack", "pattern": str(tmp_path / "{well}_s{site}.tif")}, ["DNA"])


def test_pattern_literal_text_with_glob_characters_is_literal(tmp_path):
    touch(tmp_path / "run[1]" / "A01_s1.tif")
    touch(tmp_path / "run1" / "A01_s1.tif")
    table = discover_plate("P", {"format": "hyperstack", "pattern": str(tmp_path / "run[1]/{well}_s{site}.tif")}, ["DNA"])
    assert table.source_DNA.tolist() == [str(tmp_path / "run[1]" / "A01_s1.tif")]


def test_duplicate_well_and_site_is_refused(tmp_path):
    touch(tmp_path / "A1_s1.tif")
    touch(tmp_path / "A01_s1.tif")
    with pytest.raises(DiscoveryError, match="well A01 site 1"):
        discover_plate("P", {"format": "hyperstack", "pattern": str(tmp_path / "{well}_s{site}.tif")}, ["DNA"])


def test_full_plate_is_indexed_from_names_alone(tmp_path):
    # 384 wells x 9 sites of empty files: indexing must not open them.
    for row in "ABCDEFGHIJKLMNOP":
        for column in range(1, 25):
            for site in range(1, 10):
                (tmp_path / f"{row}{column:02d}_s{site}.tif").touch()
    table = discover_plate("P", {"format": "hyperstack", "pattern": str(tmp_path / "{well}_s{site}.tif")}, CHANNELS)
    assert len(table) == 3456
    assert (table.well.iloc[0], table.well.iloc[-1]) == ("A01", "P24")


def test_loaddata_filename_pathname_with_relative_folder_containing_spaces(tmp_path):
    plate_folder = "BR00117035 images__2021"
    rows = loaddata_rows(plate_folder, "BR00117035", [("A02", 1), ("A01", 2), ("A01", 1)])
    rows += loaddata_rows(plate_folder, "BR00117036", [("A01", 1)])  # another plate in the same table
    csv = tmp_path / "load data" / "load_data.csv"
    csv.parent.mkdir()
    pd.DataFrame(rows).to_csv(csv, index=False)
    table = discover_plate("BR00117035", {"format": "loaddata", "load_data": str(csv)}, CHANNELS)
    assert list(zip(table.well, table.site)) == [("A01", 1), ("A01", 2), ("A02", 1)]
    assert table.source_ER[1] == str(tmp_path / "load data" / plate_folder / "BR00117035_A01_s2_ER.tiff")


def test_loaddata_absolute_pathname_is_kept(tmp_path):
    rows = loaddata_rows(str(tmp_path / "images"), "P1", [("C03", 4)], ["DNA"])
    csv = tmp_path / "ld.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    table = discover_plate("P1", {"format": "loaddata", "load_data": str(csv)}, ["DNA"])
    assert table.source_DNA[0] == str(tmp_path / "images" / "P1_C03_s4_DNA.tiff")


def test_loaddata_url_columns_file_urls_and_plain_paths(tmp_path):
    rows = [
        {"Metadata_Plate": "P1", "Metadata_Well": "A01", "Metadata_Site": 1,
         "URL_OrigDNA": "file://" + str(tmp_path / "my%20images" / "a.tiff"), "URL_OrigER": "images/b.tiff"},
    ]
    csv = tmp_path / "ld.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    table = discover_plate("P1", {"format": "loaddata", "load_data": str(csv)}, ["DNA", "ER"])
    assert table.source_DNA[0] == str(tmp_path / "my images" / "a.tiff")
    assert table.source_ER[0] == str(tmp_path / "images" / "b.tiff")


def test_loaddata_urls_other_than_s3_are_refused_clearly(tmp_path):
    # s3:// is read (tests/test_storage.py); other schemes are refused before any work.
    rows = [{"Metadata_Plate": "P1", "Metadata_Well": "A01", "Metadata_Site": 1,
             "URL_OrigDNA": "gs://some-bucket/cpg0016-jump/a.tiff",
             "URL_OrigER": "s3://cellpainting-gallery/cpg0016-jump/a.tiff"}]
    csv = tmp_path / "ld.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    with pytest.raises(DiscoveryError, match="gs:// URLs are not supported"):
        discover_plate("P1", {"format": "loaddata", "load_data": str(csv)}, ["DNA"])
    table = discover_plate("P1", {"format": "loaddata", "load_data": str(csv)}, ["ER"])
    assert table.source_ER[0] == "s3://cellpainting-gallery/cpg0016-jump/a.tiff"


@pytest.mark.parametrize("suffix", [".csv.gz", ".parquet"])
def test_loaddata_gzip_and_parquet_give_the_same_index_as_csv(tmp_path, suffix):
    frame = pd.DataFrame(loaddata_rows("imgs", "P1", [("B02", 2), ("B02", 1)]))
    frame.to_csv(tmp_path / "ld.csv", index=False)
    if suffix == ".csv.gz":
        with gzip.open(tmp_path / "ld.csv.gz", "wt") as handle:
            frame.to_csv(handle, index=False)
    else:
        frame.to_parquet(tmp_path / "ld.parquet")
    expected = discover_plate("P1", {"format": "loaddata", "load_data": str(tmp_path / "ld.csv")}, CHANNELS)
    table = discover_plate("P1", {"format": "loaddata", "load_data": str(tmp_path / f"ld{suffix}")}, CHANNELS)
    pd.testing.assert_frame_equal(table, expected)


def test_loaddata_brightfield_is_an_optional_channel(tmp_path):
    frame = pd.DataFrame(loaddata_rows("imgs", "P1", [("A01", 1)], ["DNA", "Brightfield"]))
    frame.to_csv(tmp_path / "ld.csv", index=False)
    cfg = {"format": "loaddata", "load_data": str(tmp_path / "ld.csv")}
    assert "source_Brightfield" not in discover_plate("P1", cfg, ["DNA"]).columns
    assert discover_plate("P1", cfg, ["DNA", "Brightfield"]).source_Brightfield[0].endswith("Brightfield.tiff")


def test_loaddata_channel_without_columns_names_the_table_and_its_columns(tmp_path):
    csv = tmp_path / "ld.csv"
    pd.DataFrame(loaddata_rows("imgs", "P1", [("A01", 1)], ["DNA"])).to_csv(csv, index=False)
    with pytest.raises(DiscoveryError) as caught:
        discover_plate("P1", {"format": "loaddata", "load_data": str(csv)}, ["DNA", "Mito"])
    message = str(caught.value)
    assert str(csv) in message and "Mito" in message and "FileName_OrigDNA" in message


def test_loaddata_without_rows_for_the_plate_lists_the_plates_it_has(tmp_path):
    csv = tmp_path / "ld.csv"
    pd.DataFrame(loaddata_rows("imgs", "P1", [("A01", 1)]) + loaddata_rows("imgs", "P7", [("A01", 1)])).to_csv(
        csv, index=False
    )
    with pytest.raises(DiscoveryError, match=r"no rows for plate 'P2'.*\['P1', 'P7'\]") as caught:
        discover_plate("P2", {"format": "loaddata", "load_data": str(csv)}, CHANNELS)
    assert str(csv) in str(caught.value)


def test_loaddata_duplicate_site_is_refused(tmp_path):
    csv = tmp_path / "ld.csv"
    pd.DataFrame(loaddata_rows("imgs", "P1", [("A01", 1), ("A1", 1)])).to_csv(csv, index=False)
    with pytest.raises(DiscoveryError, match="appear more than once.*well A01 site 1"):
        discover_plate("P1", {"format": "loaddata", "load_data": str(csv)}, CHANNELS)


def test_loaddata_empty_filename_becomes_an_empty_source(tmp_path):
    rows = loaddata_rows("imgs", "P1", [("A01", 1), ("A01", 2)], ["DNA"])
    rows[1]["FileName_OrigDNA"] = ""
    csv = tmp_path / "ld.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    table = discover_plate("P1", {"format": "loaddata", "load_data": str(csv)}, ["DNA"])
    assert table.source_DNA[1] == ""  # the split reports it as a bad image
    assert channel_sources(table, "DNA") == [table.source_DNA[0]]
    table.to_csv(tmp_path / "index.csv", index=False)
    assert channel_sources(pd.read_csv(tmp_path / "index.csv"), "DNA") == [table.source_DNA[0]]


def test_phenix_names_map_row_column_field_and_channel_numbers(tmp_path):
    for row, column, field in [(1, 1, 1), (1, 1, 2), (10, 3, 1)]:
        for ch in (1, 2, 3):
            for plane in (1, 2):
                touch(tmp_path / "Images" / f"r{row:02d}c{column:02d}f{field:02d}p{plane:02d}-ch{ch}sk1fk1fl1.tiff")
    touch(tmp_path / "Index.idx.xml")
    cfg = {"format": "phenix", "directory": str(tmp_path), "channel_numbers": {"DNA": 3, "ER": 1}}
    table = discover_plate("P", cfg, ["DNA", "ER"])
    assert list(zip(table.well, table.site)) == [("A01", 1), ("A01", 2), ("J03", 1)]
    assert table.source_DNA[2] == str(tmp_path / "Images" / "r10c03f01p01-ch3sk1fk1fl1.tiff")
    assert table.source_ER[0].endswith("r01c01f01p01-ch1sk1fk1fl1.tiff")
    second_plane = discover_plate("P", cfg, ["DNA", "ER"], ingest={"phenix_plane": 2})
    assert second_plane.source_DNA[0].endswith("r01c01f01p02-ch3sk1fk1fl1.tiff")


def test_phenix_missing_channel_file_is_left_empty_for_the_split(tmp_path):
    touch(tmp_path / "r01c01f01p01-ch1sk1fk1fl1.tiff")
    touch(tmp_path / "r01c01f01p01-ch2sk1fk1fl1.tiff")
    touch(tmp_path / "r01c01f02p01-ch1sk1fk1fl1.tiff")
    cfg = {"format": "phenix", "directory": str(tmp_path), "channel_numbers": {"DNA": 1, "ER": 2}}
    table = discover_plate("P", cfg, ["DNA", "ER"])
    assert table.source_ER.tolist() == [str(tmp_path / "r01c01f01p01-ch2sk1fk1fl1.tiff"), ""]


def test_phenix_without_matching_files_says_what_it_looked_for(tmp_path):
    touch(tmp_path / "r01c01f01p02-ch1sk1fk1fl1.tiff")
    cfg = {"format": "phenix", "directory": str(tmp_path), "channel_numbers": {"DNA": 1}}
    with pytest.raises(DiscoveryError, match="plane p01.*planes present: \\[2\\]"):
        discover_plate("P", cfg, ["DNA"])


def test_index_round_trips_through_csv(tmp_path):
    csv = tmp_path / "ld.csv"
    pd.DataFrame(loaddata_rows("imgs", "P1", [("A01", 1), ("A01", 2)])).to_csv(csv, index=False)
    table = discover_plate("P1", {"format": "loaddata", "load_data": str(csv)}, CHANNELS)
    write_index(table, tmp_path / "out" / "index.csv")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["index.csv"]  # no temporary left behind
    pd.testing.assert_frame_equal(read_index(tmp_path / "out" / "index.csv"), table)


def test_channel_sources_are_unique_and_optionally_existing(tmp_path):
    present = touch(tmp_path / "A01_s1.tif")
    table = pd.DataFrame({"image": [0, 1, 2], "plate": "P", "well": ["A01", "A01", "A02"], "site": [1, 1, 1],
                          "source_DNA": [str(present), str(present), str(tmp_path / "gone.tif")]})
    assert channel_sources(table, "DNA") == [str(present), str(tmp_path / "gone.tif")]
    assert channel_sources(table, "DNA", existing_only=True) == [str(present)]
    with pytest.raises(DiscoveryError, match="no channel 'ER'"):
        channel_sources(table, "ER")


@pytest.mark.parametrize("text, well", [("A1", "A01"), ("a01", "A01"), ("P24", "P24"), ("AF48", "AF48"), ("B003", "B03")])
def test_well_names_are_normalised(text, well):
    assert normalise_well(text) == well


def test_phenix_rows_past_z_use_two_letters():
    assert well_from_row_column(1, 1) == "A01"
    assert well_from_row_column(26, 48) == "Z48"
    assert well_from_row_column(32, 2) == "AF02"


def test_loaddata_index_records_each_sites_row_in_the_table(tmp_path):
    rows = loaddata_rows("imgs", "P1", [("B02", 1)]) + loaddata_rows("imgs", "P2", [("A01", 1)])
    rows += loaddata_rows("imgs", "P1", [("A01", 2)])
    csv = tmp_path / "ld.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    table = discover_plate("P1", {"format": "loaddata", "load_data": str(csv)}, CHANNELS)
    assert list(zip(table.well, table.site, table.load_data_row)) == [("A01", 2, 2), ("B02", 1, 0)]
    write_index(table, tmp_path / "index.csv")
    assert read_index(tmp_path / "index.csv").load_data_row.tolist() == [2, 0]


def test_listing_digest_changes_when_a_site_file_is_added_or_removed(tmp_path):
    from jump_n2v.ingest import listing_digest

    images = tmp_path / "Images"
    images.mkdir()
    (images / "r02c02f01p01-ch1sk1fk1fl1.tiff").touch()
    phenix = {"format": "phenix", "directory": str(tmp_path), "channel_numbers": {"DNA": 1}}
    before = listing_digest("P1", phenix)
    (images / "notes.txt").touch()  # not an image name: the index would not change
    assert listing_digest("P1", phenix) == before
    (images / "r02c02f02p01-ch1sk1fk1fl1.tiff").touch()
    added = listing_digest("P1", phenix)
    assert added != before
    (images / "r02c02f02p01-ch1sk1fk1fl1.tiff").unlink()
    assert listing_digest("P1", phenix) == before
    hyperstack = {"format": "hyperstack", "pattern": str(tmp_path / "{well}_s{site}.tif")}
    empty = listing_digest("P1", hyperstack)
    (tmp_path / "B02_s1.tif").touch()
    assert listing_digest("P1", hyperstack) != empty
    assert listing_digest("P1", {"format": "loaddata", "load_data": "x.csv"}) is None


def test_loaddata_columns_differing_only_in_case_are_ambiguous_and_named(tmp_path):
    rows = loaddata_rows(str(tmp_path / "images"), "P1", [("C03", 4)], ["DNA"])
    for row in rows:
        row["FileName_OrigDna"], row["PathName_OrigDna"] = row["FileName_OrigDNA"], row["PathName_OrigDNA"]
    csv = tmp_path / "load_data.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    with pytest.raises(DiscoveryError, match="column FileName_OrigdNA is ambiguous: FileName_OrigDNA and FileName_OrigDna"):
        discover_plate("P1", {"format": "loaddata", "load_data": str(csv)}, ["dNA"])
    assert discover_plate("P1", {"format": "loaddata", "load_data": str(csv)}, ["DNA"])["source_DNA"].str.endswith("_DNA.tiff").all()


def test_loaddata_empty_pathname_is_an_error_naming_the_row_and_column_not_a_file_beside_the_table(tmp_path):
    # The split read a same-named image beside the table when the folder cell was empty.
    rows = loaddata_rows(str(tmp_path / "images"), "P1", [("A01", 1), ("A01", 2)], ["DNA"])
    rows[1]["PathName_OrigDNA"] = ""
    csv = tmp_path / "ld.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    touch(tmp_path / rows[1]["FileName_OrigDNA"])  # a different image of that name beside the table
    with pytest.raises(DiscoveryError, match=r"ld\.csv, data row 2, column PathName_OrigDNA: empty, while "
                       r"FileName_OrigDNA names 'P1_A01_s2_DNA\.tiff'"):
        discover_plate("P1", {"format": "loaddata", "load_data": str(csv)}, ["DNA"])
    skipped = discover_plate("P1", {"format": "loaddata", "load_data": str(csv)}, ["DNA"], ingest={"on_bad_image": "skip"})
    assert skipped.source_DNA.tolist() == [str(tmp_path / "images" / "P1_A01_s1_DNA.tiff"), ""]  # the split rejects it


def test_loaddata_relative_paths_are_taken_from_base_folder_after_the_path_map(tmp_path):
    # The real pe2loaddata table names its images relative to the sdist's root ("tests/data/Version5/images/").
    from real_fields import load_data_table, sdist_root

    table_csv = load_data_table("Version5")
    text = pd.read_csv(table_csv).PathName_OrigRNA[0]
    assert text == "tests/data/Version5/images/"
    plate = pd.read_csv(table_csv).Metadata_Plate[0]
    real_image = sdist_root() / text / pd.read_csv(table_csv).FileName_OrigRNA[0]

    by_default = discover_plate(plate, {"format": "loaddata", "load_data": str(table_csv)}, ["RNA"])
    assert by_default.source_RNA[0] == str(table_csv.parent / text / real_image.name)  # the table's folder
    based = discover_plate(plate, {"format": "loaddata", "load_data": str(table_csv), "base_folder": str(sdist_root())}, ["RNA"])
    assert based.source_RNA[0] == str(real_image) and real_image.is_file()
    # A path_map written for the table's own text applies before any resolution.
    mapped = discover_plate(plate, {"format": "loaddata", "load_data": str(table_csv),
                                    "path_map": {"tests/data/": f"{sdist_root()}/tests/data/"}}, ["RNA"])
    assert mapped.source_RNA[0] == str(real_image)
    mirror = tmp_path / "mirror"
    mapped_relative = discover_plate(plate, {"format": "loaddata", "load_data": str(table_csv), "base_folder": str(mirror),
                                             "path_map": {"tests/data/Version5/": "v5/"}}, ["RNA"])
    assert mapped_relative.source_RNA[0] == str(mirror / "v5" / "images" / real_image.name)


def test_loaddata_urls_follow_the_same_path_map_then_base_folder_rule(tmp_path):
    rows = [{"Metadata_Plate": "P1", "Metadata_Well": "A01", "Metadata_Site": 1, "URL_OrigDNA": "images/a.tiff",
             "URL_OrigER": "s3://bucket/x/b.tiff"}]
    csv = tmp_path / "ld.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    cfg = {"format": "loaddata", "load_data": str(csv), "base_folder": str(tmp_path / "base"),
           "path_map": {"s3://bucket/": f"{tmp_path}/mirror/"}}
    table = discover_plate("P1", cfg, ["DNA", "ER"])
    assert table.source_DNA[0] == str(tmp_path / "base" / "images" / "a.tiff")
    assert table.source_ER[0] == str(tmp_path / "mirror" / "x" / "b.tiff")
