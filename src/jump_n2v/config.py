"""Configuration: validation against the workflow's JSON schema, defaults, per-channel resolution.

The schema (``workflow/schemas/config.schema.yaml``) is the single source of defaults. Settings are
resolved per (experiment, channel) in this order, later winning: schema defaults, the top-level
``settings``, the experiment's ``settings``, the experiment's ``channel_settings[channel]``.
"""

from __future__ import annotations

import copy
import functools
import re
from pathlib import Path
from typing import Any, Mapping

import jsonschema
import yaml

SECTIONS = ("ingest", "n2v", "predict", "qc")
REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"


# The smallest predict tile_size per (variant, depth): twice the network's halo plus one pooling grid
# step (predict.plan_axis). The halo is measured from the architecture by predict.halo_size, which
# does not depend on base_filters; tests/test_predict.py checks these against it. Kept here so the
# configuration is checked when the workflow is parsed, without importing torch.
MIN_TILE_SIZE = {
    ("n2v", 1): 26, ("n2v", 2): 68, ("n2v", 3): 136, ("n2v", 4): 272, ("n2v", 5): 544,
    ("n2v2", 1): 30, ("n2v2", 2): 76, ("n2v2", 3): 152, ("n2v2", 4): 304, ("n2v2", 5): 608,
}


DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class ConfigError(ValueError):
    """The configuration is invalid; the message says where and why."""


@functools.cache
def load_schema() -> dict:
    with open(SCHEMA_PATH) as handle:
        return yaml.safe_load(handle)


def section_defaults(section: str) -> dict[str, Any]:
    """Defaults of one settings section (``ingest``, ``n2v``, ``predict`` or ``qc``)."""
    if section not in SECTIONS:
        raise ConfigError(f"unknown settings section {section!r}; expected one of {', '.join(SECTIONS)}")
    properties = load_schema()["definitions"][section]["properties"]
    return {key: copy.deepcopy(spec["default"]) for key, spec in properties.items() if "default" in spec}


def resolve_section(section: str, *overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """Defaults of ``section`` updated by each mapping in ``overrides`` in turn; unknown keys are errors."""
    resolved = section_defaults(section)
    known = set(load_schema()["definitions"][section]["properties"])
    for override in overrides:
        for key, value in (override or {}).items():
            if key not in known:
                raise ConfigError(f"unknown {section} setting {key!r}; known: {', '.join(sorted(known))}")
            resolved[key] = copy.deepcopy(value)
    return resolved


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
    schema = load_schema()
    validator = _fill_defaults(jsonschema.Draft202012Validator, schema)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda error: list(error.absolute_path))
    if errors:
        lines = []
        for error in errors[:10]:
            where = "/".join(str(part) for part in error.absolute_path) or "<top level>"
            lines.append(f"  {where}: {error.message}")
        raise ConfigError("invalid configuration:\n" + "\n".join(lines))
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


def _check_experiment(config: dict, name: str) -> None:
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
    for plate_name, plate in experiment["plates"].items():
        if "channel_numbers" in plate:
            _respell_keys(plate["channel_numbers"], channels, f"experiments/{name}/plates/{plate_name}/channel_numbers",
                          required=False)
    for plate_name, plate in experiment["plates"].items():
        where = f"experiments/{name}/plates/{plate_name}"
        required = {"hyperstack": "pattern", "loaddata": "load_data", "phenix": "directory"}[plate["format"]]
        if required not in plate:
            raise ConfigError(f"{where}: format {plate['format']} needs '{required}'")
        if plate["format"] == "hyperstack":
            for field in ("{well}", "{site}"):
                if field not in plate["pattern"]:
                    raise ConfigError(f"{where}/pattern: {plate['pattern']!r} lacks the field {field}")
        if "demo" in plate and (plate["format"] != "hyperstack" or "ground_truth" not in plate):
            raise ConfigError(f"{where}: a demo plate needs format hyperstack, a pattern and a ground_truth pattern")
        storage = plate.get("storage") or {}
        if storage.get("profile") and storage.get("anonymous", True):
            raise ConfigError(f"{where}/storage: a profile is used only with anonymous: false")
        if plate.get("path_map") and plate["format"] != "loaddata":
            raise ConfigError(f"{where}/path_map: only LoadData plates have table paths to rewrite")
        if plate["format"] == "phenix":
            missing = [c for c in channels if c not in plate.get("channel_numbers", {})]
            if missing:
                raise ConfigError(f"{where}/channel_numbers: no ch number for channel(s) {missing}")
    # Per-channel settings must resolve cleanly (catches e.g. a patch size off the U-Net grid).
    for channel in channels:
        resolved = channel_settings(config, name, channel)
        n2v, predict = resolved["n2v"], resolved["predict"]
        for section, settings in (("n2v", n2v), ("predict", predict)):
            if not DEVICE_PATTERN.match(str(settings["device"])):
                raise ConfigError(
                    f"experiments/{name}: channel {channel}: {section} device must be auto, cpu, cuda or cuda:N, "
                    f"got {settings['device']!r}"
                )
        smallest = MIN_TILE_SIZE[(n2v["variant"], n2v["depth"])]
        if predict["tile_size"] is not None and predict["tile_size"] < smallest:
            raise ConfigError(
                f"experiments/{name}: channel {channel}: predict tile_size {predict['tile_size']} leaves no room "
                f"for the halo of the {n2v['variant']} network of depth {n2v['depth']}; use at least "
                f"{smallest} (better 2-4x that, so most of each tile is kept), or null for the default"
            )
        if n2v["patch_size"] % 2 ** n2v["depth"]:
            raise ConfigError(
                f"experiments/{name}: channel {channel}: n2v patch_size {n2v['patch_size']} is not a "
                f"multiple of 2**depth = {2 ** n2v['depth']}"
            )
        if n2v["roi_size"] % 2 == 0:
            raise ConfigError(f"experiments/{name}: channel {channel}: n2v roi_size must be odd")
        struct = n2v["struct_mask"]
        if struct is not None and struct["span"] % 2 == 0:
            raise ConfigError(f"experiments/{name}: channel {channel}: n2v struct_mask span must be odd")


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
    properties = load_schema()["definitions"]["plate"]["properties"]["demo"]["properties"]
    resolved = {key: copy.deepcopy(spec["default"]) for key, spec in properties.items()}
    resolved.update(plate_cfg["demo"])
    return resolved
