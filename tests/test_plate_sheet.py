"""The plate sheet: one row per plate, validated by workflow/schemas/plates.schema.yaml, errors naming
the sheet's line and column; and a two-plate experiment listed in a sheet run through the workflow."""


import pandas as pd
import pytest
import yaml

from jump_n2v.config import ConfigError, load_config, read_plate_sheet, validate_config, write_plate_sheet
from conftest import run_snakemake, tiny_experiment
from workflow_copy import copy_workflow

HYPERSTACK = {"experiment": "exp", "plate": "P1", "format": "hyperstack", "pattern": "raw/{well}_s{site}.tif"}
LOADDATA = {"experiment": "exp", "plate": "P2", "format": "loaddata", "load_data": "tables/P2/load_data.csv"}


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def config_with(rows, name="plates.tsv", **experiment):
    write_plate_sheet(name, rows)
    return {"plates": name, "experiments": {"exp": {"channels": ["DNA", "ER"], **experiment}}}


def write_raw_sheet(text, name="plates.tsv"):
    with open(name, "w") as handle:
        handle.write(text)
    return {"plates": name, "experiments": {"exp": {"channels": ["DNA", "ER"]}}}


def test_plates_become_entries_with_the_experiments_source_settings():
    rows = [HYPERSTACK, LOADDATA]
    config = validate_config(config_with(rows, storage={"retries": 1}, path_map={"s3://b/": "/mirror/"}))
    plates = config["experiments"]["exp"]["plates"]
    assert list(plates) == ["P1", "P2"]
    assert plates["P1"] == {"format": "hyperstack", "pattern": "raw/{well}_s{site}.tif",
                            "storage": {"anonymous": True, "profile": None, "endpoint_url": None, "region": None,
                                        "retries": 1, "connect_timeout": 10, "read_timeout": 60, "concurrency": 16}}
    # path_map rewrites LoadData tables only, so only the LoadData plate carries it.
    assert plates["P2"]["load_data"] == "tables/P2/load_data.csv" and plates["P2"]["path_map"] == {"s3://b/": "/mirror/"}
    assert "path_map" not in plates["P1"]


def test_a_csv_sheet_reads_like_a_tsv_and_empty_cells_are_absent():
    write_raw_sheet("experiment,plate,format,pattern,load_data,ground_truth\n"
                    "exp,P1,hyperstack,raw/{well}_s{site}.tif,,clean/{well}_s{site}.tif\n\n"
                    "exp,P2,loaddata,,t.csv,\n", name="plates.csv")
    rows = read_plate_sheet("plates.csv")
    assert rows == [
        {"line": 2, **HYPERSTACK, "ground_truth": "clean/{well}_s{site}.tif"},
        {"line": 4, "experiment": "exp", "plate": "P2", "format": "loaddata", "load_data": "t.csv"},
    ]


def test_demo_plates_of_an_experiment_get_successive_seeds():
    rows = [{**HYPERSTACK, "plate": plate, "ground_truth": "clean/{well}_s{site}.tif"} for plate in ("A", "B")]
    config = validate_config(config_with(rows, demo={"sites": 1, "seed": 3}))
    plates = config["experiments"]["exp"]["plates"]
    assert (plates["A"]["demo"]["seed"], plates["B"]["demo"]["seed"]) == (3, 4)
    assert plates["A"]["demo"]["sites"] == 1 and plates["A"]["demo"]["size"] == 256


@pytest.mark.parametrize(
    "text, message",
    [
        ("experiment\tplate\tformat\tpattern\nexp\tP1\tzip\tx\n",
         "plates.tsv line 2 (plate P1), column format: 'zip' is not one of ['hyperstack', 'loaddata', 'phenix']"),
        ("experiment\tplate\tformat\tpattern\nexp\tP1\thyperstack\traw/{well}_s{site}.tif\nexp\tP2\tloaddata\t\n",
         "plates.tsv line 3 (plate P2), column load_data: is empty; format loaddata needs it"),
        ("experiment\tplate\tformat\npp\tP1\thyperstack\n",
         "plates.tsv line 2 (plate P1), column pattern: is empty; format hyperstack needs it"),
        ("experiment\tplate\tformat\tpattern\nexp\t\thyperstack\tx{well}{site}\n", "plates.tsv line 2, column plate: is empty"),
        ("experiment\tplate\tformat\tpattern\nexp\tPlate 1\thyperstack\tx{well}{site}\n",
         "plates.tsv line 2 (plate Plate 1), column plate: 'Plate 1' does not match"),
        ("experiment\tplate\tformat\tpattern\nexp\tP1\thyperstack\traw/{well}.tif\n",
         "plates.tsv line 2 (plate P1), column pattern: 'raw/{well}.tif' lacks the field {site}"),
        ("experiment\tplate\tformat\tpattern\tload_data\nexp\tP1\thyperstack\tr/{well}_{site}\tt.csv\n",
         "plates.tsv line 2 (plate P1), column load_data: format hyperstack reads pattern; leave load_data empty"),
        ("experiment\tplate\tformat\tpatern\nexp\tP1\thyperstack\tx\n", "unknown column(s) ['patern']"),
        ("experiment plate format\nexp P1 hyperstack\n", "a TSV separates them with tabs"),
        ("experiment\tformat\tpattern\nexp\thyperstack\tx\n", "no column(s) ['plate'] in its header line"),
        ("experiment\tplate\tformat\tpattern\nexp\tP1\thyperstack\tx/{well}_{site}\nexp\tP1\thyperstack\ty/{well}_{site}\n",
         "plates.tsv line 3 (plate P1): experiment exp lists plate P1 twice (lines 2 and 3)"),
        ("experiment\tplate\tformat\tpattern\nexp\tP1\thyperstack\tx/{well}_{site}\textra\n", "line 2: more cells than"),
        ("experiment\tplate\tformat\tpattern\n", "lists no plates"),
        ("experiment\tplate\tformat\tpattern\nexp\tP1\thyperstack\tx/{well}_{site}\nlab\tP2\thyperstack\tx/{well}_{site}\n",
         "plates.tsv line 3 (plate P2), column experiment: 'lab' is not one of the config's experiments ['exp']"),
        ("experiment\tplate\tformat\tpattern\nlab\tP1\thyperstack\tx/{well}_{site}\n",
         "experiments/exp: the plate sheet plates.tsv has no row for it"),
    ],
)
def test_sheet_errors_name_the_line_and_the_column(text, message):
    config = write_raw_sheet(text)
    with pytest.raises(ConfigError) as error:
        validate_config(config)
    assert message in str(error.value)


@pytest.mark.parametrize(
    "experiment, rows, message",
    [
        ({"plates": {"P1": {"format": "hyperstack"}}}, [HYPERSTACK],
         "experiments/exp/plates: plates are listed in the plate sheet, not in the YAML"),
        ({"path_map": {"a": "b"}}, [HYPERSTACK], "experiments/exp/path_map: only LoadData plates"),
        ({"storage": {"profile": "lab"}}, [LOADDATA], "experiments/exp/storage: a profile is used only with anonymous: false"),
        ({"channel_numbers": {"DNA": 1}}, [{"experiment": "exp", "plate": "P3", "format": "phenix", "directory": "d"}],
         "experiments/exp/channel_numbers: its phenix plates need a ch number for channel(s) ['ER']"),
        ({"demo": {}}, [HYPERSTACK], "line 2 (plate P1) needs format hyperstack, a pattern and a ground_truth pattern"),
    ],
)
def test_plate_settings_kept_in_the_yaml_are_checked_against_the_sheets_plates(experiment, rows, message):
    with pytest.raises(ConfigError) as error:
        validate_config(config_with(rows, **experiment))
    assert message in str(error.value)


def test_a_missing_sheet_is_named_with_the_config_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"plates": "nowhere.tsv", "experiments": {"exp": {"channels": ["DNA"]}}}))
    with pytest.raises(ConfigError, match=rf"{path}: cannot read plate sheet nowhere.tsv"):
        load_config(path)


def test_write_plate_sheet_refuses_unknown_columns():
    with pytest.raises(ConfigError, match=r"unknown column\(s\) \['well'\]"):
        write_plate_sheet("plates.tsv", [{**HYPERSTACK, "well": "B02"}])


@pytest.mark.slow
@pytest.mark.workflow
def test_a_two_plate_experiment_listed_in_a_sheet_runs_end_to_end(tmp_path):
    # Two synthetic plates, one shared model per channel: the sheet drives the whole workflow.
    copy_workflow(tmp_path, ["Snakefile", "workflow", "src", "envs", "profiles"])
    tiny = tiny_experiment()
    settings = {**tiny["settings"], "predict": {"tile_size": 128}}
    (tmp_path / "config").mkdir()
    write_plate_sheet(tmp_path / "config" / "plates.tsv", [
        {"experiment": "screen", "plate": plate, "format": "hyperstack",
         "pattern": f"resources/{plate}/raw/{{well}}_s{{site}}.tif", "ground_truth": f"resources/{plate}/clean/{{well}}_s{{site}}.tif"}
        for plate in ("PlateA", "PlateB")
    ])
    config = {"results": "results", "plates": "config/plates.tsv", "experiments": {"screen": {
        "channels": ["DNA"], "train_on": "experiment", "demo": {**tiny["demo"], "sites": 1}, "settings": settings}}}
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    result = run_snakemake("--cores", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    results = tmp_path / "results" / "screen"
    summary = pd.read_csv(results / "report" / "summary.csv")
    assert sorted(summary["plate"]) == ["PlateA", "PlateB"]
    assert (results / "models" / "all-plates" / "DNA" / "model.pt").exists()
    raw = {plate: (tmp_path / "resources" / plate / "raw" / "B02_s1.tif").read_bytes() for plate in ("PlateA", "PlateB")}
    assert raw["PlateA"] != raw["PlateB"]  # each plate of a demo experiment has its own seed
    for plate in ("PlateA", "PlateB"):
        assert (results / plate / "denoised" / "DNA.zarr").is_dir()
        assert len(pd.read_csv(results / plate / "index.csv")) == len(tiny["demo"]["wells"])


def test_base_folder_is_a_loaddata_plates_column_and_refused_elsewhere():
    # The folder relative image paths of a LoadData table are taken from (README: the path rule).
    config = validate_config(config_with([{**LOADDATA, "base_folder": "/data/pe2loaddata"}]))
    assert config["experiments"]["exp"]["plates"]["P2"]["base_folder"] == "/data/pe2loaddata"
    with pytest.raises(ConfigError, match=r"line 2 \(plate P1\), column base_folder"):
        validate_config(config_with([{**HYPERSTACK, "base_folder": "/data"}]))
