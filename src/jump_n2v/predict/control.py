"""The control model's prediction of QC's sample of a plate channel (``qc/<channel>/control.zarr``).

Only ``qc.control_images`` seeded images are denoised (:func:`jump_n2v.plumbing.rows.choose_rows`
with ``qc.seed``), each exactly as the main prediction denoises it (:func:`denoise_image`, the same
predict settings, the posterior step, the output dtype); their ids are the store's ``image_ids``, so
QC matches them with the main model's rows (:mod:`jump_n2v.qc.disagreement`).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

import numpy as np

from jump_n2v.n2v.trained import TrainedModel
from jump_n2v.plumbing.atomic import atomic_output
from jump_n2v.plumbing.ngff import create_channel_array, open_channel_array
from jump_n2v.plumbing.rows import choose_rows
from jump_n2v.predict.arrays import output_dtype_for, to_output_dtype
from jump_n2v.predict.runner import TileRunner
from jump_n2v.settings import PredictSettings


def predict_control(
    control: TrainedModel,
    raw: str | os.PathLike,
    out_path: str | os.PathLike,
    settings: PredictSettings | Mapping[str, Any] | None,
    *,
    images: int,
    seed: int,
    attrs: Mapping[str, Any] | None = None,
    log: logging.Logger | None = None,
) -> list[str]:
    """Denoise ``images`` seeded rows of the raw channel store ``raw`` with ``control`` into a new channel
    store at ``out_path`` (atomically); its attributes are the raw's, ``image_ids`` of those rows,
    ``output_dtype`` and ``attrs``. Returns the image ids."""
    settings = PredictSettings.of(settings)
    try:
        source = open_channel_array(raw)
    except Exception as error:  # zarr raises several types for a missing/corrupt store
        raise ValueError(f"cannot open raw Zarr array {raw}: {error}") from error
    ids = source.attrs.get("image_ids")
    if source.ndim != 3 or ids is None or len(ids) != source.shape[0]:
        raise ValueError(f"{raw}: expected an (images, Y, X) channel array with one image_ids entry per row")
    rows = choose_rows(source.shape[0], images, seed)
    dtype = output_dtype_for(source.dtype, settings.output_dtype)
    runner = TileRunner(control.net, settings, control.posterior)
    with atomic_output(out_path) as temporary:
        target = create_channel_array(
            temporary, shape=(len(rows),) + tuple(source.shape[1:]), chunks=(1,) + tuple(source.shape[1:]), dtype=dtype,
            attributes={**dict(source.attrs), "image_ids": [ids[row] for row in rows],
                        "output_dtype": settings.output_dtype, **dict(attrs or {})},
        )
        for position, row in enumerate(rows):
            denoised = runner.denoise(np.asarray(source[row]), control.mean, control.std)
            target[position] = to_output_dtype(denoised, dtype)
    if log is not None:
        log.info("control model denoised %d QC image(s) of %s into %s", len(rows), raw, out_path)
    return [str(ids[row]) for row in rows]
