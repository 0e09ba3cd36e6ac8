"""The files QC reads and writes, each with a clear error naming the file.

From the other stages: model.json, training_check.json and the TIFF export's clipping.csv; its own:
noise_model.json and the metrics and summary tables.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from jump_n2v.plumbing.atomic import atomic_output
from jump_n2v.model_record import ModelRecord, ModelRecordError
from jump_n2v.noise import NoiseModel, SiteNoiseModels


class QCInputError(ValueError):
    """An input of the QC stage is unusable; the message names the file and the problem."""


def _read_json(path: Path, what: str) -> Any:
    """The JSON document at ``path``; QCInputError naming the file (``what`` says which kind) otherwise."""
    try:
        return json.loads(path.read_text())
    except OSError as error:
        raise QCInputError(f"cannot read {what}{path}: {error}") from error
    except json.JSONDecodeError as error:
        raise QCInputError(f"{path} is not valid JSON: {error}") from error


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """A model folder and its model.json record, as QC's summary and report read them."""

    model_dir: str
    record: ModelRecord


def load_model_info(model_dir: str | os.PathLike) -> ModelInfo:
    """The model.json record of a model directory; QCInputError naming the file if it is unusable."""
    try:
        return ModelInfo(str(model_dir), ModelRecord.read(Path(model_dir)))
    except (OSError, ModelRecordError) as error:
        raise QCInputError(f"cannot use the model's {Path(model_dir) / 'model.json'}: {error}") from error


def read_noise_model(path: str | os.PathLike) -> NoiseModel:
    """A ``noise_model.json`` written by the QC stage; a clear error naming the file otherwise."""
    path = Path(path)
    try:
        return NoiseModel.from_dict(json.loads(path.read_text()))
    except OSError as error:
        raise QCInputError(f"cannot read noise model {path}: {error}") from error
    except (json.JSONDecodeError, ValueError, TypeError) as error:
        raise QCInputError(f"{path} is not a noise model: {error}") from error


def write_noise_model(model: NoiseModel, path: str | os.PathLike) -> None:
    """``noise_model.json`` (atomically), as :func:`read_noise_model` reads it."""
    with atomic_output(path) as temporary:
        Path(temporary).write_text(json.dumps(model.to_dict(), indent=2))


def read_site_noise_models(path: str | os.PathLike) -> SiteNoiseModels:
    """A plate's ``noise_models.json`` (:func:`jump_n2v.qc.run_plate_noise_models`); a clear error naming the file otherwise."""
    path = Path(path)
    content = _read_json(path, "the plate's noise models ")
    try:
        return SiteNoiseModels.from_dict(content)
    except (ValueError, TypeError, AttributeError) as error:
        raise QCInputError(f"{path} is not a plate's noise models: {error}") from error


def write_site_noise_models(site: SiteNoiseModels, path: str | os.PathLike) -> None:
    """``noise_models.json`` (atomically), as :func:`read_site_noise_models` reads it."""
    with atomic_output(path) as temporary:
        Path(temporary).write_text(json.dumps(site.to_dict(), indent=2))


def read_export_clipping(clipping_csv: str | os.PathLike) -> dict[str, int]:
    """Totals of a TIFF export's per-image clipping table (``denoised_tiff/<channel>/clipping.csv``)."""
    try:
        table = pd.read_csv(clipping_csv)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise QCInputError(f"cannot read the export's clipping table {clipping_csv}: {error}") from error
    missing = {"pixels", "clipped_low", "clipped_high"} - set(table.columns)
    if missing:
        raise QCInputError(f"{clipping_csv}: not an export clipping table, missing {sorted(missing)}")
    return {column: int(table[column].sum()) for column in ("pixels", "clipped_low", "clipped_high")}


def read_training_check(path: str | os.PathLike) -> dict[str, Any]:
    """A ``denoised/<channel>.training_check.json`` the predict step wrote
    (:func:`jump_n2v.n2v.similarity.check_array`); a clear error naming the file otherwise."""
    path = Path(path)
    check = _read_json(path, "the training-data check ")
    if not isinstance(check, dict) or not isinstance(check.get("moved"), list) or not check.get("plate") or not check.get("channel"):
        raise QCInputError(f"{path} is not a training-data check (needs plate, channel and a 'moved' list)")
    return check


def write_table(table: pd.DataFrame, csv_path: str | os.PathLike, parquet_path: str | os.PathLike | None = None) -> None:
    """Write ``table`` as CSV (and parquet), each atomically. List cells (``flags``) become
    ``;``-joined strings in the CSV and stay lists in parquet."""
    as_text = table.copy()
    for column in as_text.columns:
        if as_text[column].map(lambda value: isinstance(value, (list, tuple))).any():
            as_text[column] = as_text[column].map(lambda value: ";".join(value) if isinstance(value, (list, tuple)) else value)
    with atomic_output(csv_path) as temporary:
        as_text.to_csv(temporary, index=False)
    if parquet_path is not None:
        with atomic_output(parquet_path) as temporary:
            table.to_parquet(temporary, index=False)
