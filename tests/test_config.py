import copy
import dataclasses
from pathlib import Path

import pytest
import yaml

from jump_n2v.config import ConfigError, channel_settings, load_config, validate_config, write_plate_sheet
from jump_n2v.settings import (
    ExportSettings,
    IngestSettings,
    PredictSettings,
    QCSettings,
    load_schema,
    resolve_section,
    section_defaults,
    validated_section,
)

REPO_ROOT = Path(__file__).resolve().parents[1]

P1 = {"experiment": "exp", "plate": "P1", "format": "hyperstack", "pattern": "raw/{well}_s{site}.tif"}


@pytest.fixture(autouse=True)
def sheet(tmp_path, monkeypatch):
    """Each test runs in its own folder holding the plate sheet plates.tsv (one hyperstack plate P1)."""
    monkeypatch.chdir(tmp_path)
    return write_plate_sheet(tmp_path / "plates.tsv", [P1])


def minimal_config():
    return {"plates": "plates.tsv", "experiments": {"exp": {"channels": ["DNA", "ER"]}}}


def test_shipped_configs_are_valid(monkeypatch):
    # Their paths are relative to the folder Snakemake runs in: the repository root.
    monkeypatch.chdir(REPO_ROOT)
    for path in [REPO_ROOT / "config" / "config.yaml", REPO_ROOT / "tests" / "data" / "tiny_config.yaml"]:
        config = load_config(path)
        assert config["experiments"]
        assert all(experiment["plates"] for experiment in config["experiments"].values())


def test_defaults_are_filled_from_the_schema():
    config = validate_config(minimal_config())
    assert config["results"] == "results"
    assert config["experiments"]["exp"]["train_on"] == "plate"
    n2v = channel_settings(config, "exp", "DNA")["n2v"]
    assert n2v == section_defaults("n2v")
    assert n2v["depth"] == 2 and n2v["base_filters"] == 32 and n2v["masked_fraction"] == 0.05


def test_channel_override_wins_over_experiment_and_global_settings():
    config = minimal_config()
    config["settings"] = {"n2v": {"epochs": 5, "seed": 1}}
    config["experiments"]["exp"]["settings"] = {"n2v": {"epochs": 7}}
    config["experiments"]["exp"]["channel_settings"] = {"ER": {"n2v": {"variant": "n2v2"}}}
    validate_config(config)
    dna = channel_settings(config, "exp", "DNA")["n2v"]
    er = channel_settings(config, "exp", "ER")["n2v"]
    assert (dna["epochs"], dna["seed"], dna["variant"]) == (7, 1, "n2v")
    assert (er["epochs"], er["seed"], er["variant"]) == (7, 1, "n2v2")


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda c: c["experiments"]["exp"].update(channels=[]), "channels"),
        (lambda c: c.update(settings={"n2v": {"patch_size": 70}}), "multiple of 2**depth"),
        (lambda c: c.update(settings={"n2v": {"variant": "n3v"}}), "variant"),
        (lambda c: c.update(settings={"n2v": {"learning_rat": 0.1}}), "learning_rat"),
        (lambda c: c["experiments"]["exp"].update(channel_settings={"Mito": {}}), "Mito"),
        (lambda c: c.pop("plates"), "'plates' is a required property"),
    ],
)
def test_invalid_config_is_rejected_with_a_message_naming_the_problem(mutate, message):
    config = minimal_config()
    mutate(config)
    with pytest.raises(ConfigError, match=None) as error:
        validate_config(config)
    assert message in str(error.value)


def test_unknown_setting_in_an_override_is_an_error():
    with pytest.raises(ConfigError, match="unknown predict setting 'tiles'"):
        resolve_section("predict", {"tiles": 3})


def test_config_file_errors_name_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    bad = copy.deepcopy(minimal_config())
    bad["experiments"]["exp"]["train_on"] = "well"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match=str(path)):
        load_config(path)


@pytest.mark.parametrize(
    "settings, message",
    [
        # Each used to pass validation and fail only in the job that uses it (after training).
        ({"predict": {"tile_size": 64}}, "predict tile_size 64 leaves no room for the halo of the n2v network of depth 2; use at least 68"),
        ({"n2v": {"depth": 3}, "predict": {"tile_size": 128}}, "use at least 136"),
        ({"predict": {"device": "gpu"}}, "channel ER: predict device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
        ({"n2v": {"device": "cuda0"}}, "channel ER: n2v device must be auto, cpu, cuda or cuda:N, got 'cuda0'"),
    ],
)
def test_settings_that_would_fail_after_training_are_rejected_when_the_config_is_read(settings, message):
    config = minimal_config()
    config["experiments"]["exp"]["channel_settings"] = {"ER": copy.deepcopy(settings)}
    with pytest.raises(ConfigError) as error:
        validate_config(config)
    assert message in str(error.value)


def test_tile_size_at_the_halo_minimum_and_known_devices_are_accepted():
    config = minimal_config()
    config["settings"] = {"predict": {"tile_size": 68, "device": "cuda:1"}, "n2v": {"device": "cpu"}}
    config["experiments"]["exp"]["channel_settings"] = {"ER": {"n2v": {"variant": "n2v2"}, "predict": {"tile_size": 76}}}
    validate_config(config)


def test_channel_names_in_settings_match_ignoring_case_when_unambiguous(sheet):
    write_plate_sheet(sheet, [P1, {"experiment": "exp", "plate": "P2", "format": "phenix", "directory": "d"}])
    config = minimal_config()
    config["experiments"]["exp"]["channel_settings"] = {"dna": {"n2v": {"epochs": 3}}}
    config["experiments"]["exp"]["channel_numbers"] = {"dna": 1, "Er": 2}
    validate_config(config)
    assert channel_settings(config, "exp", "DNA")["n2v"]["epochs"] == 3
    assert config["experiments"]["exp"]["plates"]["P2"]["channel_numbers"] == {"DNA": 1, "ER": 2}


def test_channel_names_differing_only_in_case_are_refused():
    config = minimal_config()
    config["experiments"]["exp"]["channels"] = ["DNA", "dna"]
    with pytest.raises(ConfigError, match="channels: DNA and dna differ only in case"):
        validate_config(config)


@pytest.mark.parametrize("record", [IngestSettings, PredictSettings, QCSettings, ExportSettings])
def test_typed_settings_have_exactly_the_schema_fields_and_its_defaults(record):
    properties = load_schema()["definitions"][record.section]["properties"]
    assert sorted(field.name for field in dataclasses.fields(record)) == sorted(properties)
    assert record.from_dict().to_dict() == {key: spec["default"] for key, spec in properties.items()}


@pytest.mark.parametrize(
    "section, override, message",
    [
        ("ingest", {"max_rejected_fraction": 1.5}, "ingest max_rejected_fraction must be a number from 0 to 1, got 1.5"),
        ("qc", {"crop_size": 8}, "qc crop_size must be an integer >= 16, got 8"),
        ("export", {"export_layout": "tree"}, "export export_layout must be one of flat, mirror, got 'tree'"),
        ("n2v", {"patch_size": 60, "depth": 3}, "n2v patch_size 60 is not a multiple of 2**depth = 8"),
    ],
)
def test_every_section_is_validated_by_one_layer_whose_errors_name_the_setting(section, override, message):
    with pytest.raises(ConfigError) as error:
        validated_section(section, override)
    assert message in str(error.value)


def test_a_setting_written_in_the_wrong_section_is_told_where_it_belongs():
    config = minimal_config()
    config["settings"] = {"predict": {"export_tiff": True}}
    with pytest.raises(ConfigError) as error:
        validate_config(config)
    assert "export_tiff is an export setting" in str(error.value)


def test_the_schema_ships_inside_the_package():
    # A non-editable install has no workflow/ folder beside it: the package must carry its schemas.
    import jump_n2v.settings as settings

    assert Path(settings.SCHEMA_PATH).is_relative_to(Path(settings.__file__).parent)
    assert (REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml").resolve() == Path(settings.SCHEMA_PATH).resolve()
