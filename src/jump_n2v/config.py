"""Configuration: the config file and its plate sheet, validated, and settings resolved per channel.

The schema (``workflow/schemas/config.schema.yaml``, the package's ``schemas`` folder) is the single
source of defaults; :mod:`jump_n2v.settings` validates each section. Settings are resolved per
(experiment, channel) in this order, later winning: schema defaults, the top-level ``settings``, the
experiment's ``settings``, the experiment's ``channel_settings[channel]``.

Plates are listed in one place only, the plate sheet the config names (``plates: config/plates.tsv``),
one row per plate, validated against ``workflow/schemas/plates.schema.yaml``. Validating a config reads
the sheet into ``config["experiments"][name]["plates"]`` (plate name -> that plate's entry, with the
experiment's storage, path_map, channel_numbers and demo settings it uses), which the workflow and the
package read.
"""

from __future__ import annotations

import copy
import csv
from pathlib import Path
from typing import Any, Mapping

import jsonschema
import yaml

from jump_n2v.settings import (
    PLATES_SCHEMA_PATH,
    SECTION_PROBLEMS,
    SECTIONS,
    ConfigError,
    channel_problems,
    describe_error,
    load_schema,
    resolve_section,
)

# The sheet column each format reads its images from.
LOCATION_COLUMN = {"hyperstack": "pattern", "loaddata": "load_data", "phenix": "directory"}
# Experiment settings that describe how its plates are read, and the formats whose plate entries carry them.
PLATE_SOURCE_KEYS = {"storage": set(LOCATION_COLUMN), "path_map": {"loaddata"}, "channel_numbers": {"phenix"}}


def _fill_defaults(validator_class, schema: dict):
    """A validator class that also writes schema defaults into the instance (as Snakemake's validate does).

    Settings sections are left sparse: filling them per layer would let a default written into an
    experiment's settings override a value set at the top level. resolve_section fills them instead.
    """
    validate_properties = validator_class.VALIDATORS["properties"]
    sparse = [schema["definitions"][section]["properties"] for section in SECTIONS]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict) and not any(properties is section for section in sparse):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def validate_config(config: dict) -> dict:
    """Validate ``config`` in place against the schema, filling defaults; return it.

    Raises ConfigError naming the offending key path, plus cross-field checks the schema cannot express.
    """
    for name, experiment in (config.get("experiments") or {}).items():
        if isinstance(experiment, dict) and "plates" in experiment:
            raise ConfigError(
                f"experiments/{name}/plates: plates are listed in the plate sheet, not in the YAML; name it at the "
                "top level (plates: config/plates.tsv) with one row per plate (see config/README.md)"
            )
    schema = load_schema()
    validator = _fill_defaults(jsonschema.Draft202012Validator, schema)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda error: list(error.absolute_path))
    if errors:
        raise ConfigError("invalid configuration:\n" + "\n".join(f"  {_describe(error)}" for error in errors[:10]))
    for experiment_name in config["experiments"]:
        _check_channel_names(config, experiment_name)
    plates = read_plate_sheet(config["plates"])
    for experiment_name in config["experiments"]:
        if not any(row["experiment"] == experiment_name for row in plates):
            raise ConfigError(f"experiments/{experiment_name}: the plate sheet {config['plates']} has no row for it")
    for row in plates:
        experiment = config["experiments"].get(row["experiment"])
        if experiment is None:
            raise ConfigError(
                f"plate sheet {config['plates']} line {row['line']} (plate {row['plate']}), column experiment: "
                f"{row['experiment']!r} is not one of the config's experiments {list(config['experiments'])}"
            )
        experiment.setdefault("plates", {})[row["plate"]] = _plate_entry(row, experiment)
    for experiment_name in config["experiments"]:
        _check_experiment(config, experiment_name)
    return config


def _channel_spelling(key: str, channels: list[str], where: str) -> str | None:
    """The experiment's channel ``key`` names: itself, else its unique case-insensitive match."""
    if key in channels:
        return key
    folded = [channel for channel in channels if channel.casefold() == key.casefold()]
    if len(folded) > 1:
        raise ConfigError(f"{where}: {key!r} is ambiguous: channels {' and '.join(folded)} differ only in case")
    return folded[0] if folded else None


def _respell_keys(mapping: dict, channels: list[str], where: str, *, required: bool) -> None:
    """Rename ``mapping``'s channel keys (in place) to the spelling in ``channels`` ("dna" -> "DNA")."""
    for key in list(mapping):
        spelling = _channel_spelling(key, channels, where)
        if spelling is None:
            if required:
                raise ConfigError(f"{where}: {key!r} is not one of the experiment's channels {channels}")
            continue
        if spelling != key:
            if spelling in mapping:
                raise ConfigError(f"{where}: {key!r} and {spelling!r} name the same channel")
            mapping[spelling] = mapping.pop(key)


def _check_channel_names(config: dict, name: str) -> None:
    """Channel names unambiguous; channel keys in the experiment's settings spelled as in its channels."""
    experiment = config["experiments"][name]
    channels = experiment["channels"]
    for index, channel in enumerate(channels):
        twins = [other for other in channels[index + 1:] if other.casefold() == channel.casefold()]
        if twins:
            raise ConfigError(
                f"experiments/{name}/channels: {channel} and {twins[0]} differ only in case; channel names "
                "match file labels and LoadData columns without regard to case, so they would be ambiguous"
            )
    _respell_keys(experiment.get("channel_settings", {}), channels, f"experiments/{name}/channel_settings", required=True)
    if "channel_numbers" in experiment:
        _respell_keys(experiment["channel_numbers"], channels, f"experiments/{name}/channel_numbers", required=False)


def _check_experiment(config: dict, name: str) -> None:
    experiment = config["experiments"][name]
    channels = experiment["channels"]
    storage = experiment.get("storage") or {}
    if storage.get("profile") and storage.get("anonymous", True):
        raise ConfigError(f"experiments/{name}/storage: a profile is used only with anonymous: false")
    formats = {plate["format"] for plate in experiment["plates"].values()}
    if experiment.get("path_map") and "loaddata" not in formats:
        raise ConfigError(f"experiments/{name}/path_map: only LoadData plates have table paths to rewrite, "
                          "and the experiment has none")
    if "phenix" in formats:
        missing = [c for c in channels if c not in experiment.get("channel_numbers", {})]
        if missing:
            raise ConfigError(f"experiments/{name}/channel_numbers: its phenix plates need a ch number for channel(s) {missing}")
    # Per-channel settings must resolve cleanly (catches e.g. a patch size off the U-Net grid).
    for channel in channels:
        resolved = channel_settings(config, name, channel)
        problems = [problem for section, check in SECTION_PROBLEMS.items() for problem in check(resolved[section])]
        problems += channel_problems(resolved)
        if problems:
            raise ConfigError(f"experiments/{name}: channel {channel}: " + "; ".join(problems))


def _describe(error: jsonschema.ValidationError) -> str:
    """A schema error of the config: where it is, and for a setting what it must be (settings.describe_error)."""
    path = list(error.absolute_path)
    for index, part in enumerate(path):
        in_settings_layer = index > 0 and (path[index - 1] == "settings" or (index > 1 and path[index - 2] == "channel_settings"))
        if part in SECTIONS and in_settings_layer:
            return f"{_where(path[:index])}: {describe_error(error, part, path[index + 1:])}"
    return f"{'/'.join(str(part) for part in path) or '<top level>'}: {error.message}"


def _where(path: list) -> str:
    """A settings layer's place in the config: settings, experiments/E/settings or experiments/E: channel C."""
    if len(path) >= 4 and path[-2] == "channel_settings":
        return f"{'/'.join(str(part) for part in path[:-2])}: channel {path[-1]}"
    return "/".join(str(part) for part in path)


def channel_settings(config: Mapping, experiment: str, channel: str) -> dict[str, dict[str, Any]]:
    """All settings sections resolved for one (experiment, channel)."""
    try:
        exp = config["experiments"][experiment]
    except KeyError:
        raise ConfigError(f"no experiment {experiment!r} in the configuration") from None
    if channel not in exp["channels"]:
        raise ConfigError(f"experiment {experiment!r} has no channel {channel!r}; channels: {exp['channels']}")
    layers = [config.get("settings") or {}, exp.get("settings") or {}, (exp.get("channel_settings") or {}).get(channel) or {}]
    return {section: resolve_section(section, *(layer.get(section) for layer in layers)) for section in SECTIONS}


def experiment_settings(config: Mapping, experiment: str, section: str) -> dict[str, Any]:
    """One settings section for a whole experiment (channel overrides do not apply), e.g. for indexing."""
    exp = config["experiments"][experiment]
    return resolve_section(section, (config.get("settings") or {}).get(section), (exp.get("settings") or {}).get(section))


def load_config(path: str | Path) -> dict:
    """Read a YAML config file and validate it."""
    path = Path(path)
    try:
        with open(path) as handle:
            config = yaml.safe_load(handle) or {}
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error}") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from error
    try:
        return validate_config(config)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def demo_settings(plate_cfg: Mapping) -> dict[str, Any] | None:
    """The plate's ``demo`` block with schema defaults filled in, or None for a real plate."""
    if "demo" not in plate_cfg:
        return None
    properties = load_schema()["definitions"]["demo"]["properties"]
    resolved = {key: copy.deepcopy(spec["default"]) for key, spec in properties.items()}
    resolved.update(plate_cfg["demo"])
    return resolved


def read_plate_sheet(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a plate sheet (TSV, or CSV for a .csv file), validated against plates.schema.yaml.

    Each row is a dict of its non-empty cells plus ``line`` (its line in the file, the header being
    line 1). Errors name the file, the line, the plate and the column.
    """
    path = Path(path)
    schema = load_schema(PLATES_SCHEMA_PATH)
    columns = set(schema["properties"])
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle, delimiter="," if path.suffix.lower() == ".csv" else "\t")
            header = [name.strip() for name in reader.fieldnames or []]
            unknown = [name for name in header if name not in columns]
            if unknown:
                raise ConfigError(f"plate sheet {path}: unknown column(s) {unknown}; the columns are {sorted(columns)} "
                                  f"(a TSV separates them with tabs)")
            missing = [name for name in schema["required"] if name not in header]
            if missing:
                raise ConfigError(f"plate sheet {path}: no column(s) {missing} in its header line")
            rows = []
            for record in reader:
                if None in record:
                    raise ConfigError(f"plate sheet {path} line {reader.line_num}: more cells than the header's columns")
                cells = {name.strip(): (value or "").strip() for name, value in record.items()}
                if any(cells.values()):
                    rows.append({"line": reader.line_num, **{name: value for name, value in cells.items() if value}})
    except OSError as error:
        raise ConfigError(f"cannot read plate sheet {path}: {error}") from error
    except csv.Error as error:
        raise ConfigError(f"plate sheet {path} is not a valid table: {error}") from error
    if not rows:
        raise ConfigError(f"plate sheet {path} lists no plates")
    validator = jsonschema.Draft202012Validator(schema)
    seen: dict[tuple[str, str], int] = {}
    for row in rows:
        cells = {name: value for name, value in row.items() if name != "line"}
        where = f"plate sheet {path} line {row['line']}" + (f" (plate {row['plate']})" if "plate" in row else "")
        for error in sorted(validator.iter_errors(cells), key=lambda error: list(error.absolute_path)):
            if error.validator == "required":
                absent = [name for name in error.validator_value if name not in cells]
                problem = f"is empty; format {cells.get('format')} needs it" if "format" in cells and absent[0] != "format" else "is empty"
                raise ConfigError(f"{where}, column {absent[0]}: {problem}")
            column = error.absolute_path[0] if error.absolute_path else "?"
            raise ConfigError(f"{where}, column {column}: {error.message}")
        for column in set(LOCATION_COLUMN.values()) - {LOCATION_COLUMN[row["format"]]}:
            if column in row:
                raise ConfigError(f"{where}, column {column}: format {row['format']} reads {LOCATION_COLUMN[row['format']]}; "
                                  f"leave {column} empty")
        if "base_folder" in row and row["format"] != "loaddata":
            raise ConfigError(f"{where}, column base_folder: only a LoadData table's relative image paths are "
                              f"taken from a base folder; leave it empty for format {row['format']}")
        if row["format"] == "hyperstack":
            for field in ("{well}", "{site}"):
                if field not in row["pattern"]:
                    raise ConfigError(f"{where}, column pattern: {row['pattern']!r} lacks the field {field}")
        key = (row["experiment"], row["plate"])
        if key in seen:
            raise ConfigError(f"{where}: experiment {key[0]} lists plate {key[1]} twice (lines {seen[key]} and {row['line']})")
        seen[key] = row["line"]
    return rows


def write_plate_sheet(path: str | Path, rows: list[Mapping[str, Any]]) -> Path:
    """Write ``rows`` (dicts of sheet columns) as a plate sheet (TSV, or CSV for a .csv path), e.g.
    to list a source's plates from a script; the columns are those the rows use, in the schema's order."""
    path = Path(path)
    order = list(load_schema(PLATES_SCHEMA_PATH)["properties"])
    used = {name for row in rows for name in row}
    unknown = sorted(used - set(order))
    if unknown:
        raise ConfigError(f"plate sheet {path}: unknown column(s) {unknown}; the columns are {order}")
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, [name for name in order if name in used],
                                delimiter="," if path.suffix.lower() == ".csv" else "\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


def _plate_entry(row: Mapping[str, Any], experiment: Mapping[str, Any]) -> dict[str, Any]:
    """A sheet row as the plate entry the workflow and package read: its cells (format, location,
    ground_truth) and the experiment's plate source settings; a demo experiment's plates get their seeds."""
    plate = {key: value for key, value in row.items() if key not in ("line", "experiment", "plate")}
    for key, formats in PLATE_SOURCE_KEYS.items():
        if key in experiment and plate["format"] in formats:
            plate[key] = copy.deepcopy(experiment[key])
    if "demo" in experiment:
        where = f"experiments/{row['experiment']}/demo"
        if plate["format"] != "hyperstack" or "ground_truth" not in plate:
            raise ConfigError(f"{where}: its plates are generated as hyperstacks, so line {row['line']} (plate {row['plate']}) "
                              "needs format hyperstack, a pattern and a ground_truth pattern")
        demo = demo_settings({"demo": experiment["demo"]})
        demo["seed"] += len(experiment.get("plates") or {})
        plate["demo"] = demo
    return plate
