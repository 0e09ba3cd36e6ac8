"""The effect of denoising downstream: nuclei segmented on raw, denoised and clean images, scored
against the true nuclei (plates with true nucleus labels: the demo plates).

One fixed, standard method segments every image (:func:`segment_nuclei`: Gaussian smoothing, Otsu
threshold, holes filled, small objects removed, distance-transform watershed to split touching nuclei),
so the only thing that differs between the raw, the denoised and the clean image of a site is the image.
Per image and source:

* ``f1``: predicted objects matched one-to-one to true nuclei at IoU >= 0.5 (with IoU above 0.5 a
  predicted object can overlap at most one true nucleus that much, so the matching is unique);
  ``f1 = 2 TP / (2 TP + FP + FN)``;
* ``count_error``: predicted objects - true nuclei.

Per plate and source (:func:`plate_scores`): ``f1`` pooled over the plate's images, ``count_error_relative``
= (objects found - true nuclei) / true nuclei, and for each of ``FEATURES`` (mean intensity, area, GLCM
contrast) the Pearson correlation, over the plate's matched objects, between the feature measured on
the source image within the predicted object and the same feature measured on the clean image within
the matched true nucleus (the reference a perfect segmentation of a noise-free image would give).
A denoised plate that segments worse than raw is flagged ``downstream_worse`` (:func:`downstream_worse`).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import tifffile
from scipy import ndimage
from skimage import feature, filters, measure, segmentation

from jump_n2v.qc.channel import array_image_ids, open_zarr, well_site_by_image
from jump_n2v.qc.figures import segmentation_figure
from jump_n2v.qc.files import QCInputError, write_table

# Segmentation, in pixels (made for nuclei of 5-20 px radius: the demo plates and 20x Cell Painting sites).
SMOOTHING_SIGMA = 1.5  # Gaussian smoothing before the threshold
CLIP_PERCENTILE = 99.5  # Otsu's threshold is computed with the brightest 0.5 % clipped (debris, saturated cells)
MIN_NUCLEUS_AREA = 20  # objects smaller than this are removed
SEED_MIN_DISTANCE = 5  # watershed seeds (distance-transform maxima) at least this far apart
MATCH_IOU = 0.5
TEXTURE_LEVELS = 16  # grey levels of the GLCM, over the image's 0.5-99.5 percentile range
FEATURES = ("mean_intensity", "area", "texture_contrast")
SOURCES = ("raw", "denoised", "clean")
SITE_COLUMNS = ("experiment", "plate", "channel", "image", "well", "site")
OBJECT_COLUMNS = (*SITE_COLUMNS, "source", "label", "true_label", "iou", *FEATURES, *(f"reference_{name}" for name in FEATURES))


def segment_nuclei(image: np.ndarray) -> np.ndarray:
    """Label image (int32, 0 background) of the nuclei in a DNA image, by the module's fixed method."""
    smoothed = ndimage.gaussian_filter(np.asarray(image, dtype=np.float64), SMOOTHING_SIGMA)
    clipped = np.minimum(smoothed, np.percentile(smoothed, CLIP_PERCENTILE))
    if not clipped.max() > clipped.min():
        return np.zeros(smoothed.shape, dtype=np.int32)
    mask = ndimage.binary_fill_holes(smoothed > filters.threshold_otsu(clipped))
    components = measure.label(mask)
    mask = (np.bincount(components.ravel()) >= MIN_NUCLEUS_AREA)[components] & mask
    distance = ndimage.gaussian_filter(ndimage.distance_transform_edt(mask), 1.0)
    peaks = feature.peak_local_max(distance, min_distance=SEED_MIN_DISTANCE, labels=measure.label(mask), exclude_border=False)
    markers = np.zeros(mask.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return segmentation.watershed(-distance, markers, mask=mask).astype(np.int32)


def match_objects(predicted: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """Predicted objects matched to true ones at IoU >= ``MATCH_IOU``: counts, ``f1``, ``count_error``
    and ``pairs`` (predicted label, true label, IoU) of the matches."""
    if predicted.shape != truth.shape:
        raise ValueError(f"predicted labels {predicted.shape} and true labels {truth.shape} differ in shape")
    predicted, truth = np.asarray(predicted, dtype=np.int64), np.asarray(truth, dtype=np.int64)
    pred_ids, true_ids = np.unique(predicted[predicted > 0]), np.unique(truth[truth > 0])
    overlap = (predicted > 0) & (truth > 0)
    pairs, intersections = np.unique(np.stack([predicted[overlap], truth[overlap]]), axis=1, return_counts=True)
    pred_area = np.bincount(predicted.ravel())
    true_area = np.bincount(truth.ravel())
    matches = []
    for (pred_label, true_label), intersection in zip(pairs.T, intersections):
        iou = intersection / (pred_area[pred_label] + true_area[true_label] - intersection)
        if iou >= MATCH_IOU:
            matches.append((int(pred_label), int(true_label), float(iou)))
    tp, n_pred, n_true = len(matches), len(pred_ids), len(true_ids)
    return {
        "true_nuclei": n_true, "found_nuclei": n_pred, "matched": tp, "count_error": n_pred - n_true,
        "f1": 2 * tp / (n_pred + n_true) if n_pred + n_true else 1.0, "pairs": matches,
    }


def _glcm_contrast(region: np.ndarray, levels: np.ndarray) -> float:
    """GLCM contrast (distance 1, horizontal and vertical, symmetric) of pixel pairs inside the region."""
    inside = np.where(region, levels, 0).astype(np.uint8)
    glcm = feature.graycomatrix(inside, distances=[1], angles=[0, np.pi / 2], levels=TEXTURE_LEVELS + 1, symmetric=True)
    glcm = glcm[1:, 1:]  # level 0 is outside the object
    if (glcm.sum(axis=(0, 1)) == 0).any():
        return math.nan
    return float(feature.graycoprops(glcm, "contrast").mean())


def object_features(labels: np.ndarray, image: np.ndarray) -> pd.DataFrame:
    """``FEATURES`` of every object of ``labels`` measured on ``image``, indexed by label."""
    image = np.asarray(image, dtype=np.float64)
    low, high = np.percentile(image, (0.5, 99.5))
    scaled = (np.clip(image, low, high) - low) / (high - low) if high > low else np.zeros_like(image)
    levels = 1 + np.minimum((scaled * TEXTURE_LEVELS).astype(np.int64), TEXTURE_LEVELS - 1)
    labels = np.asarray(labels, dtype=np.int64)
    basic = measure.regionprops_table(labels, image, properties=("label", "area", "intensity_mean"))
    texture = measure.regionprops_table(labels, levels, properties=("label",), extra_properties=(_glcm_contrast,))
    return pd.DataFrame({
        "mean_intensity": basic["intensity_mean"], "area": basic["area"].astype(np.float64),
        "texture_contrast": texture["_glcm_contrast"],
    }, index=pd.Index(basic["label"], name="label"))


def evaluate_site(images: Mapping[str, np.ndarray], truth: np.ndarray) -> tuple[list[dict], list[dict], dict[str, np.ndarray]]:
    """Each source image of one site (``images``: source -> image, ``clean`` among them) segmented and
    scored against ``truth``: (one row per source, one row per matched object, source -> labels)."""
    reference = object_features(truth, images["clean"])
    rows, objects, segmented = [], [], {}
    for source, image in images.items():
        segmented[source] = segment_nuclei(image)
        match = match_objects(segmented[source], truth)
        features = object_features(segmented[source], image)
        rows.append({"source": source, **{k: v for k, v in match.items() if k != "pairs"}})
        for pred_label, true_label, iou in match["pairs"]:
            objects.append({
                "source": source, "label": pred_label, "true_label": true_label, "iou": iou,
                **{name: features.at[pred_label, name] for name in FEATURES},
                **{f"reference_{name}": reference.at[true_label, name] for name in FEATURES},
            })
    return rows, objects, segmented


def read_truth_labels(manifest: str | os.PathLike) -> dict[tuple[str, int], Path]:
    """(well, site) -> the true nucleus label image of a demo plate's manifest (demo_manifest.json)."""
    try:
        files = json.loads(Path(manifest).read_text())["files"]
        return {(str(entry["well"]), int(entry["site"])): Path(entry["nuclei_labels"]) for entry in files}
    except OSError as error:
        raise QCInputError(f"cannot read the demo manifest {manifest}: {error}") from error
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise QCInputError(f"{manifest}: not a demo manifest with nuclei_labels per file ({error!r}); "
                           "regenerate the demo plate") from error


def _read_labels(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    try:
        labels = tifffile.imread(path)
    except (OSError, ValueError) as error:
        raise QCInputError(f"cannot read the true nucleus labels {path}: {error}") from error
    if labels.shape != shape or labels.dtype.kind not in "ui":
        raise QCInputError(f"{path}: true nucleus labels must be integer {shape}, got {labels.dtype} {labels.shape}")
    return labels


def plate_downstream(
    raw: str | os.PathLike, denoised: str | os.PathLike, clean: str | os.PathLike,
    index: str | os.PathLike, manifest: str | os.PathLike,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Every image of one plate's nuclei channel (its raw, denoised and clean Zarr arrays) segmented and
    scored against the true labels the demo ``manifest`` lists, images matched by ``index``.

    Returns (one row per image and source, one row per matched object, the first image's images and
    labels for the figure).
    """
    arrays = {source: open_zarr(path, source) for source, path in (("raw", raw), ("denoised", denoised), ("clean", clean))}
    rows_of = {source: {image: row for row, image in enumerate(array_image_ids(array, where))}
               for source, (array, where) in arrays.items()}
    index_table = well_site_by_image(index)
    truth_files = read_truth_labels(manifest)
    raw_array, raw_where = arrays["raw"]
    identity = {key: raw_array.attrs.get(key) for key in ("experiment", "plate", "channel")}
    images_rows, object_rows, example = [], [], {}
    for image in rows_of["raw"]:
        missing = [arrays[source][1] for source in SOURCES if image not in rows_of[source]]
        if missing or image not in index_table.index:
            raise QCInputError(f"image {image!r} of {raw_where} is missing from {missing or index}")
        well, site = str(index_table.at[image, "well"]), int(index_table.at[image, "site"])
        if (well, site) not in truth_files:
            raise QCInputError(f"{manifest}: no true nucleus labels for well {well} site {site}")
        truth = _read_labels(truth_files[(well, site)], raw_array.shape[1:])
        images = {source: np.asarray(arrays[source][0][rows_of[source][image]]) for source in SOURCES}
        rows, objects, segmented = evaluate_site(images, truth)
        where = {**identity, "image": image, "well": well, "site": site}
        images_rows += [{**where, **row} for row in rows]
        object_rows += [{**where, **row} for row in objects]
        if not example:
            example = {"images": images, "labels": segmented, "truth": truth, "title": f"{identity['plate']} {well} site {site}"}
    return pd.DataFrame.from_records(images_rows), pd.DataFrame.from_records(object_rows, columns=OBJECT_COLUMNS), example


def _pearson(x: pd.Series, y: pd.Series) -> float:
    """Pearson r of two columns; NaN with fewer than 3 objects or a constant column."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return math.nan
    return float(np.corrcoef(x, y)[0, 1])


def plate_scores(images: pd.DataFrame, objects: pd.DataFrame) -> pd.DataFrame:
    """One row per (plate, source): images, true and found nuclei, ``count_error_relative``, pooled
    ``f1`` and ``r_<feature>`` for each of ``FEATURES`` (see the module's description)."""
    rows = []
    for (plate, source), group in images.groupby(["plate", "source"], sort=False):
        true, found, matched = group["true_nuclei"].sum(), group["found_nuclei"].sum(), group["matched"].sum()
        row = {
            "plate": plate, "channel": group["channel"].iloc[0], "source": source, "images": len(group),
            "true_nuclei": int(true), "found_nuclei": int(found), "matched": int(matched),
            "count_error_relative": (found - true) / true if true else math.nan,
            "f1": 2 * matched / (true + found) if true + found else 1.0,
        }
        matched_objects = objects[(objects["plate"] == plate) & (objects["source"] == source)]
        for name in FEATURES:
            row[f"r_{name}"] = _pearson(matched_objects[name], matched_objects[f"reference_{name}"])
        rows.append(row)
    return pd.DataFrame.from_records(rows)


def downstream_worse(scores: pd.DataFrame, f1_tolerance: float, correlation_tolerance: float) -> bool:
    """Whether the denoised plate segments worse than raw (``scores``: :func:`plate_scores` of one
    plate): its F1 more than ``f1_tolerance`` below raw's, or any feature correlation more than
    ``correlation_tolerance`` below raw's (a correlation that is NaN on either side is not compared)."""
    by_source = scores.set_index("source")
    raw, denoised = by_source.loc["raw"], by_source.loc["denoised"]
    if denoised["f1"] < raw["f1"] - f1_tolerance:
        return True
    return any(denoised[f"r_{name}"] < raw[f"r_{name}"] - correlation_tolerance for name in FEATURES)


def run_downstream(
    raw: str | os.PathLike, denoised: str | os.PathLike, clean: str | os.PathLike,
    index: str | os.PathLike, manifest: str | os.PathLike, out_dir: str | os.PathLike, crop_size: int = 128,
) -> pd.DataFrame:
    """:func:`plate_downstream` of one plate into ``out_dir``: downstream.csv (per image and source),
    downstream_objects.csv (per matched object) and downstream.png (raw | denoised | clean outlines on a
    crop of the first site). Returns the per-image table."""
    images, objects, example = plate_downstream(raw, denoised, clean, index, manifest)
    out_dir = Path(out_dir)
    write_table(images, out_dir / "downstream.csv")
    write_table(objects, out_dir / "downstream_objects.csv")
    segmentation_figure(example["images"], example["labels"], example["truth"], out_dir / "downstream.png",
                        crop_size=crop_size, title=example["title"])
    return images


def read_downstream(csv: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A plate's downstream.csv and the downstream_objects.csv beside it."""
    csv = Path(csv)
    tables = []
    for path, needed in ((csv, {"plate", "channel", "source", "true_nuclei", "found_nuclei", "matched"}),
                         (csv.parent / "downstream_objects.csv", set(OBJECT_COLUMNS))):
        try:
            table = pd.read_csv(path, dtype={"plate": str, "channel": str, "image": str, "well": str})
        except (OSError, pd.errors.ParserError) as error:
            raise QCInputError(f"cannot read the downstream table {path}: {error}") from error
        if needed - set(table.columns):
            raise QCInputError(f"{path}: not a downstream table, missing {sorted(needed - set(table.columns))}")
        tables.append(table)
    return tables[0], tables[1]
