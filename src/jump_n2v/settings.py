"""Settings: the schema's sections as typed, validated records, checked in one place.

The workflow's JSON schema (``workflow/schemas/config.schema.yaml``) is the single source of every
setting's type, range and default: Snakemake validates the config file against it, and every section
that enters the package passes through :func:`validated_section`, which fills the schema's defaults,
validates against the same schema and adds the few checks a schema cannot express (a patch size on
the U-Net's grid, an odd window, a tile that leaves room for the network's halo). Errors name the
setting, what it must be and what it got. The typed records (:class:`IngestSettings`,
:class:`PredictSettings`, :class:`QCSettings`, :class:`ExportSettings`; the ``n2v`` section's
:class:`jump_n2v.n2v.training.N2VSettings`, whose values are masking types) have exactly the schema's
fields, a test keeps them so.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from pathlib import Path
from typing import Any, ClassVar, Mapping, TypeVar

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "config.schema.yaml"
PLATES_SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "plates.schema.yaml"
SECTIONS = ("ingest", "n2v", "predict", "qc", "export")

# The smallest predict tile_size per (variant, depth): twice the network's halo plus one pooling grid
# step (jump_n2v.predict's plan_axis). The halo is measured from the architecture by halo_size, which
# does not depend on base_filters; tests/test_predict.py checks these against it. Kept here so the
# configuration is checked when the workflow is parsed, without importing torch.
MIN_TILE_SIZE = {
    ("n2v", 1): 26, ("n2v", 2): 68, ("n2v", 3): 136, ("n2v", 4): 272, ("n2v", 5): 544,
    ("n2v2", 1): 30, ("n2v2", 2): 76, ("n2v2", 3): 152, ("n2v2", 4): 304, ("n2v2", 5): 608,
}


class ConfigError(ValueError):
    """The configuration is invalid; the message says where and why."""


@functools.cache
def load_schema(path: Path = SCHEMA_PATH) -> dict:
    with open(path) as handle:
        return yaml.safe_load(handle)


def _section_schema(section: str) -> dict:
    if section not in SECTIONS:
        raise ConfigError(f"unknown settings section {section!r}; expected one of {', '.join(SECTIONS)}")
    return load_schema()["definitions"][section]


def section_defaults(section: str) -> dict[str, Any]:
    """Defaults of one settings section (``ingest``, ``n2v``, ``predict``, ``qc`` or ``export``)."""
    properties = _section_schema(section)["properties"]
    return {key: copy.deepcopy(spec["default"]) for key, spec in properties.items() if "default" in spec}


def resolve_section(section: str, *overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """Defaults of ``section`` updated by each mapping in ``overrides`` in turn; unknown keys are errors."""
    resolved = section_defaults(section)
    known = set(_section_schema(section)["properties"])
    for override in overrides:
        for key, value in (override or {}).items():
            if key not in known:
                owner = _owner(key)
                hint = f" ({owner})" if owner else ""
                raise ConfigError(f"unknown {section} setting {key!r}{hint}; known: {', '.join(sorted(known))}")
            resolved[key] = copy.deepcopy(value)
    return resolved


# -- what a setting must be, in words ---------------------------------------------------------------


def expectation(spec: Mapping[str, Any]) -> str:
    """What a value of the schema ``spec`` must be, in words ("an integer >= 1", "one of a, b")."""
    if "title" in spec:  # the schema's own words where a pattern would say too little
        return spec["title"]
    if "enum" in spec:
        return "one of " + ", ".join(str(choice) for choice in spec["enum"])
    if "oneOf" in spec:
        return " or ".join(expectation(alternative) for alternative in spec["oneOf"])
    types = spec.get("type", [])
    types = [types] if isinstance(types, str) else list(types)
    nullable = "null" in types
    types = [kind for kind in types if kind != "null"]
    words = {"integer": "an integer", "number": "a number", "boolean": "true or false", "string": "a string",
             "array": "a list", "object": "a mapping"}
    text = " or ".join(words.get(kind, kind) for kind in types) or "a value"
    if spec.get("type") == "object" and spec.get("required"):
        text = f"a mapping with {', '.join(spec['required'])}"
    bounds = []
    if "minimum" in spec and "maximum" in spec:
        bounds.append(f"from {spec['minimum']} to {spec['maximum']}")
    elif "minimum" in spec:
        bounds.append(f">= {spec['minimum']}")
    elif "maximum" in spec:
        bounds.append(f"<= {spec['maximum']}")
    if "exclusiveMinimum" in spec:
        bounds.append(f"above {spec['exclusiveMinimum']}")
    if "exclusiveMaximum" in spec:
        bounds.append(f"below {spec['exclusiveMaximum']}")
    if bounds:
        text += " " + " and ".join(bounds)
    return f"null or {text}" if nullable else text


def describe_error(error: jsonschema.ValidationError, section: str, key_path: list) -> str:
    """One line for a schema error inside a settings section: the setting, what it must be, what it got."""
    if not key_path:
        return f"{section}: {error.message}{_elsewhere_hint(section, error)}"
    key = str(key_path[0])
    spec = _section_schema(section)["properties"].get(key)
    where = "/".join(str(part) for part in key_path)
    if spec is None:
        return f"{section} {where}: {error.message}"
    return f"{section} {key} must be {expectation(spec)}, got {error.instance!r} [{where}: {error.message}]"


def _owner(key: str) -> str:
    """Which sections ``key`` is a setting of, as a phrase ("export_tiff is an export setting",
    "device is an n2v or predict setting"); "" if none."""
    owners = [section for section in SECTIONS if key in _section_schema(section)["properties"]]
    if not owners:
        return ""
    return f"{key} is a{'n' if owners[0][0] in 'aeiou' else ''} {' or '.join(owners)} setting"


def _elsewhere_hint(section: str, error: jsonschema.ValidationError) -> str:
    """For unknown keys that are settings of another section, where they belong."""
    if error.validator != "additionalProperties" or not isinstance(error.instance, Mapping):
        return ""
    known = set(_section_schema(section)["properties"])
    return "".join(f"; {_owner(key)}" for key in error.instance if key not in known and _owner(key))


def schema_errors(section: str, resolved: Mapping[str, Any]) -> list[str]:
    """The section's schema errors, each described by :func:`describe_error`."""
    validator = jsonschema.Draft202012Validator(_section_schema(section))
    errors = sorted(validator.iter_errors(dict(resolved)), key=lambda error: list(error.absolute_path))
    return [describe_error(error, section, list(error.absolute_path)) for error in errors]


# -- checks a schema cannot express -----------------------------------------------------------------


def n2v_problems(n2v: Mapping[str, Any]) -> list[str]:
    """What is wrong with a schema-valid ``n2v`` section as a whole (patch grid, windows, blind region)."""
    problems = []
    patch, depth, roi = n2v["patch_size"], n2v["depth"], n2v["roi_size"]
    if patch % 2 ** depth:
        problems.append(f"n2v patch_size {patch} is not a multiple of 2**depth = {2 ** depth} (depth {depth})")
    if roi % 2 == 0:
        problems.append(f"n2v roi_size must be odd, got {roi}")
    if roi > patch:
        problems.append(f"n2v roi_size {roi} is larger than patch_size {patch}")
    struct = n2v["struct_mask"]
    if struct is not None and struct["span"] % 2 == 0:
        problems.append(f"n2v struct_mask span must be odd, got {struct['span']}")
    if struct is not None and struct["span"] > patch:
        problems.append(f"n2v struct_mask span {struct['span']} is larger than patch_size {patch}")
    return problems + _blind_spot_offset_problems(n2v)


def _blind_spot_offset_problems(n2v: Mapping[str, Any]) -> list[str]:
    offsets = n2v["blind_spot_offsets"]
    if offsets is None:
        return []
    if n2v["blind_spot"] != "region":
        return [f"n2v blind_spot_offsets is set but blind_spot is {n2v['blind_spot']!r}; set blind_spot: region to use them"]
    pairs = {(int(dy), int(dx)) for dy, dx in offsets}
    if (0, 0) in pairs:
        return ["n2v blind_spot_offsets must not contain the centre [0, 0]"]
    reach = max(max(abs(dy), abs(dx)) for dy, dx in pairs)
    if 2 * reach >= n2v["patch_size"]:
        return [f"n2v blind_spot_offsets reach {reach} px, too far for patch_size {n2v['patch_size']}"]
    half = n2v["roi_size"] // 2
    window = {(dy, dx) for dy in range(-half, half + 1) for dx in range(-half, half + 1)} - {(0, 0)}
    if not window - pairs:
        roi = n2v["roi_size"]
        return [f"n2v blind_spot_offsets: the blind-spot region covers the whole {roi}x{roi} window; raise roi_size"]
    return []


def channel_problems(sections: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """What is wrong between the sections of one channel: a predict tile too small for the network's halo."""
    n2v, predict = sections["n2v"], sections["predict"]
    smallest = MIN_TILE_SIZE[(n2v["variant"], n2v["depth"])]
    if predict["tile_size"] is not None and predict["tile_size"] < smallest:
        return [
            f"predict tile_size {predict['tile_size']} leaves no room for the halo of the {n2v['variant']} network "
            f"of depth {n2v['depth']}; use at least {smallest} (better 2-4x that, so most of each tile is kept), "
            "or null for the default"
        ]
    return []


SECTION_PROBLEMS = {"n2v": n2v_problems}


def validated_section(section: str, *layers: Mapping[str, Any] | None) -> dict[str, Any]:
    """``section``'s defaults updated by ``layers``, validated; ConfigError listing every problem."""
    resolved = resolve_section(section, *layers)
    problems = schema_errors(section, resolved)
    if not problems and section in SECTION_PROBLEMS:
        problems = SECTION_PROBLEMS[section](resolved)
    if problems:
        raise ConfigError(f"invalid {section} settings:\n" + "\n".join(f"  {problem}" for problem in problems))
    return resolved


# -- the typed sections ------------------------------------------------------------------------------

SectionType = TypeVar("SectionType", bound="Section")


class Section:
    """A settings section as a frozen record; ``from_dict`` validates it (:func:`validated_section`)."""

    section: ClassVar[str]

    @classmethod
    def from_dict(cls: type[SectionType], *layers: Mapping[str, Any] | None) -> SectionType:
        return cls(**validated_section(cls.section, *layers))

    @classmethod
    def of(cls: type[SectionType], settings: "SectionType | Mapping[str, Any] | None") -> SectionType:
        """``settings`` itself when it is already this record, else the record validated from the mapping."""
        return settings if isinstance(settings, cls) else cls.from_dict(settings)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class IngestSettings(Section):
    """How a plate's images are read and split (the ``ingest`` section)."""

    section: ClassVar[str] = "ingest"
    on_bad_image: str
    max_rejected_fraction: float
    z_projection: str
    z_plane: int | None
    time_point: int
    phenix_plane: int


@dataclasses.dataclass(frozen=True)
class PredictSettings(Section):
    """How a trained model denoises a plate channel (the ``predict`` section)."""

    section: ClassVar[str] = "predict"
    tile_size: int | None
    batch_size: int
    workers: int | None
    tta: bool
    posterior: str
    output_dtype: str
    precision: str
    device: str
    training_check_images: int
    training_check_patches: int
    training_check_seed: int
    training_check_gain_ratio: float
    training_check_read_sd: float
    training_check_lag1: float
    training_check_intensity: float
    training_check_loss_ratio: float


@dataclasses.dataclass(frozen=True)
class QCSettings(Section):
    """What QC measures and when it flags a channel (the ``qc`` section)."""

    section: ClassVar[str] = "qc"
    panel_sites: int
    crop_size: int
    seed: int
    plate_map_metric: str
    noise_model_images: int
    residual_structure_threshold: float
    residual_autocorrelation_threshold: float
    noise_leak_threshold: float
    min_estimated_gain_db: float
    bias_threshold: float
    downstream_f1_tolerance: float
    downstream_correlation_tolerance: float
    control_model: bool
    control_images: int
    model_disagreement_threshold: float


@dataclasses.dataclass(frozen=True)
class ExportSettings(Section):
    """Which denoised copies are written for other tools, and how (the ``export`` section)."""

    section: ClassVar[str] = "export"
    export_tiff: bool
    export_ome_zarr: bool
    export_layout: str
    export_dtype: str
