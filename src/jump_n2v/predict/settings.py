"""The ``predict`` section of the configuration, validated: PredictSettings."""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

from jump_n2v.config import ConfigError, resolve_section

_DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


@dataclasses.dataclass(frozen=True)
class PredictSettings:
    """The ``predict`` section of the configuration (see workflow/schemas/config.schema.yaml)."""

    tile_size: int | None
    batch_size: int
    tta: bool
    posterior: str
    output_dtype: str
    precision: str
    device: str
    export_tiff: bool
    export_layout: str
    export_dtype: str
    export_ome_zarr: bool
    training_check_images: int
    training_check_patches: int
    training_check_seed: int
    training_check_gain_ratio: float
    training_check_read_sd: float
    training_check_lag1: float
    training_check_intensity: float
    training_check_loss_ratio: float
    workers: int | None = None

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any] | None = None) -> "PredictSettings":
        """Fill schema defaults into ``settings`` and validate them; raises ConfigError naming the field."""
        resolved = resolve_section("predict", settings)
        tile_size = resolved["tile_size"]
        if tile_size is not None and (not _is_int(tile_size) or tile_size < 32):
            raise ConfigError(f"predict tile_size must be null or an integer >= 32, got {tile_size!r}")
        if not _is_int(resolved["batch_size"]) or resolved["batch_size"] < 1:
            raise ConfigError(f"predict batch_size must be an integer >= 1, got {resolved['batch_size']!r}")
        workers = resolved["workers"]
        if workers is not None and (not _is_int(workers) or workers < 1):
            raise ConfigError(f"predict workers must be null or an integer >= 1, got {workers!r}")
        for count, minimum in (("training_check_images", 1), ("training_check_patches", 1), ("training_check_seed", 0)):
            if not _is_int(resolved[count]) or resolved[count] < minimum:
                raise ConfigError(f"predict {count} must be an integer >= {minimum}, got {resolved[count]!r}")
        for tolerance, above in (("training_check_gain_ratio", 1), ("training_check_read_sd", 0), ("training_check_lag1", 0),
                                 ("training_check_intensity", 0), ("training_check_loss_ratio", 1)):
            value = resolved[tolerance]
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > above:
                raise ConfigError(f"predict {tolerance} must be a number above {above}, got {value!r}")
        for flag in ("tta", "export_tiff", "export_ome_zarr"):
            if not isinstance(resolved[flag], bool):
                raise ConfigError(f"predict {flag} must be true or false, got {resolved[flag]!r}")
        choices = {
            "output_dtype": ("float32", "input"),
            "posterior": ("auto", "none"),
            "precision": ("auto", "fp32", "bf16", "fp16"),
            "export_layout": ("flat", "mirror"),
            "export_dtype": ("source", "float32"),
        }
        for field, allowed in choices.items():
            if resolved[field] not in allowed:
                raise ConfigError(f"predict {field} must be one of {', '.join(allowed)}, got {resolved[field]!r}")
        if not isinstance(resolved["device"], str) or not _DEVICE_PATTERN.match(resolved["device"]):
            raise ConfigError(f"predict device must be auto, cpu, cuda or cuda:N, got {resolved['device']!r}")
        return cls(**resolved)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _as_settings(settings: PredictSettings | Mapping[str, Any] | None) -> PredictSettings:
    return settings if isinstance(settings, PredictSettings) else PredictSettings.from_dict(settings)
