"""Downstream segmentation: nuclei segmented on raw, denoised and clean images, scored against true nuclei."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
import zarr
from scipy import ndimage

from jump_n2v.demo import DemoSpec, render_site_with_labels, write_demo_manifest, write_demo_plate
from jump_n2v.qc.downstream import (
    downstream_worse,
    match_objects,
    object_features,
    plate_scores,
    read_downstream,
    run_downstream,
    segment_nuclei,
)
from jump_n2v.qc import build_report
from jump_n2v.qc.figures import segmentation_figure
from jump_n2v.qc.files import QCInputError
from jump_n2v.settings import QCSettings


def demo_dna(spec: DemoSpec, sites: int, seed: int):
    """(clean DNA image in ADU, true labels, photons) of ``sites`` demo sites."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(sites):
        photons, truth = render_site_with_labels(spec, rng)
        out.append((spec.gain * photons["DNA"] + spec.offset, truth, photons["DNA"]))
    return out


def test_segmenter_finds_separate_disks_exactly():
    yy, xx = np.mgrid[0:128, 0:128]
    truth = np.zeros((128, 128), dtype=np.uint16)
    for label, (cy, cx) in enumerate([(30, 30), (30, 90), (90, 40), (95, 100)], start=1):
        truth[np.hypot(yy - cy, xx - cx) < 12] = label
    image = 100 + 200.0 * (truth > 0)
    image[60:63, 60:63] = 300.0  # a 9 px speck: no nucleus
    match = match_objects(segment_nuclei(image), truth)
    assert (match["matched"], match["found_nuclei"], match["f1"]) == (4, 4, 1.0)


def test_segmenter_recovers_the_demo_nuclei_on_the_clean_image():
    # 8 cells per 256 px site: 0.95 over 12 sites. The demo's default 14 crowd more nuclei on top of each
    # other, which the watershed keeps together (0.86); docs/benchmarks.md 'Downstream segmentation'.
    tp = total = 0
    for clean, truth, _ in demo_dna(DemoSpec(size=256, cells_per_site=8), sites=6, seed=2):
        match = match_objects(segment_nuclei(clean), truth)
        tp, total = tp + match["matched"], total + match["true_nuclei"] + match["found_nuclei"]
    assert 2 * tp / total > 0.9


def test_match_objects_counts_one_to_one_matches_at_iou_half():
    truth = np.zeros((40, 60), dtype=np.uint16)
    truth[0:10, 0:10], truth[20:30, 0:10], truth[0:10, 30:40] = 1, 2, 3
    predicted = np.zeros_like(truth, dtype=np.int32)
    predicted[0:10, 0:10] = 7  # exact: IoU 1
    predicted[20:30, 2:12] = 8  # shifted by 2: IoU 80 / 120 = 0.67
    predicted[0:10, 35:45] = 9  # shifted by 5: IoU 50 / 150 = 0.33, no match
    predicted[30:35, 50:55] = 4  # a false positive
    match = match_objects(predicted, truth)
    assert sorted((p, t) for p, t, _ in match["pairs"]) == [(7, 1), (8, 2)]
    assert (match["true_nuclei"], match["found_nuclei"], match["matched"], match["count_error"]) == (3, 4, 2, 1)
    assert match["f1"] == pytest.approx(2 * 2 / (3 + 4))
    assert dict((p, iou) for p, _, iou in match["pairs"])[8] == pytest.approx(80 / 120)


def test_object_features_measure_mean_area_and_texture():
    labels = np.zeros((30, 30), dtype=np.int32)
    labels[2:12, 2:12], labels[15:25, 15:27] = 1, 2
    labels[2:7, 7:12] = 0  # an L: its bounding box holds background, which the texture must leave out
    image = np.full((30, 30), 10.0)
    image[labels == 1] = 50.0  # flat
    checker = (np.indices((10, 12)).sum(axis=0) % 2) * 100.0
    image[15:25, 15:27] = checker  # alternating pixels: the largest GLCM contrast
    features = object_features(labels, image)
    assert features.loc[1, "mean_intensity"] == 50.0 and features.loc[2, "mean_intensity"] == 50.0
    assert features.loc[1, "area"] == 75 and features.loc[2, "area"] == 120
    assert features.loc[1, "texture_contrast"] == 0.0
    assert features.loc[2, "texture_contrast"] > 100


def scores_table(f1_raw, f1_denoised, r_raw=0.9, r_denoised=0.9):
    rows = []
    for source, f1, r in (("raw", f1_raw, r_raw), ("denoised", f1_denoised, r_denoised), ("clean", 1.0, 1.0)):
        rows.append({"source": source, "f1": f1, "r_mean_intensity": 0.99, "r_area": 0.9, "r_texture_contrast": r})
    return pd.DataFrame(rows)


def test_downstream_worse_compares_denoised_with_raw_within_the_tolerances():
    assert not downstream_worse(scores_table(0.90, 0.89), 0.02, 0.05)
    assert downstream_worse(scores_table(0.90, 0.87), 0.02, 0.05)
    assert not downstream_worse(scores_table(0.90, 0.95, r_raw=0.80, r_denoised=0.76), 0.02, 0.05)
    assert downstream_worse(scores_table(0.90, 0.95, r_raw=0.80, r_denoised=0.70), 0.02, 0.05)


def test_plate_scores_pool_counts_and_correlate_features_over_matched_nuclei():
    images = pd.DataFrame({
        "plate": "P", "channel": "DNA", "source": ["raw", "raw"], "true_nuclei": [4, 6], "found_nuclei": [5, 3],
        "matched": [4, 3],
    })
    reference = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    objects = pd.DataFrame({
        "plate": "P", "source": "raw", "mean_intensity": 2 * reference + 1, "reference_mean_intensity": reference,
        "area": reference[::-1], "reference_area": reference, "texture_contrast": 5.0, "reference_texture_contrast": reference,
    })
    row = plate_scores(images, objects).iloc[0]
    assert (row["true_nuclei"], row["found_nuclei"], row["matched"]) == (10, 8, 7)
    assert row["f1"] == pytest.approx(14 / 18) and row["count_error_relative"] == pytest.approx(-0.2)
    assert row["r_mean_intensity"] == pytest.approx(1.0) and row["r_area"] == pytest.approx(-1.0)
    assert np.isnan(row["r_texture_contrast"])  # a constant feature has no correlation


def write_plate(tmp_path, denoise):
    """A demo plate's DNA channel as the split writes it (raw, denoised, clean Zarr arrays and index.csv)
    and its manifest; ``denoise(raw, clean, rng)`` makes the denoised images."""
    spec = DemoSpec(wells=("B02", "B03"), sites=2, size=256, seed=4)
    manifest = write_demo_plate(str(tmp_path / "raw/{well}_s{site}.tif"), str(tmp_path / "clean/{well}_s{site}.tif"), spec, plate="P")
    write_demo_manifest(manifest, tmp_path / "demo_manifest.json")
    raw = np.stack([tifffile.imread(entry["raw"])[0] for entry in manifest["files"]])
    clean = np.stack([tifffile.imread(entry["clean"])[0] for entry in manifest["files"]]).astype(np.float64)
    denoised = denoise(raw.astype(np.float64), clean, np.random.default_rng(0))
    ids = list(range(len(raw)))
    for name, data in (("raw", raw), ("denoised", denoised.astype(np.float32)), ("clean", clean.astype(np.float32))):
        array = zarr.create_array(store=str(tmp_path / f"{name}.zarr"), shape=data.shape, chunks=(1, 256, 256), dtype=data.dtype)
        array[:] = data
        array.attrs.update(image_ids=ids, plate="P", channel="DNA", experiment="E")
    index = pd.DataFrame({"image": ids, "plate": "P", "well": [e["well"] for e in manifest["files"]], "site": [e["site"] for e in manifest["files"]]})
    index.to_csv(tmp_path / "index.csv", index=False)
    return [tmp_path / f"{name}.zarr" for name in ("raw", "denoised", "clean")] + [tmp_path / "index.csv", tmp_path / "demo_manifest.json"]


@pytest.mark.parametrize(("denoise", "worse"), [
    (lambda raw, clean, rng: ndimage.gaussian_filter(raw, (0, 4, 4)), True),
    (lambda raw, clean, rng: clean + rng.normal(0, 1.0, clean.shape), False),
], ids=["blurred", "clean-plus-noise"])
def test_a_denoised_plate_that_segments_worse_than_raw_is_flagged(tmp_path, denoise, worse):
    inputs = write_plate(tmp_path, denoise)
    table = run_downstream(*inputs, tmp_path / "qc", crop_size=64)
    assert sorted(table["source"].unique()) == ["clean", "denoised", "raw"] and len(table) == 4 * 3
    assert (tmp_path / "qc" / "downstream.png").stat().st_size > 0
    scores = plate_scores(*read_downstream(tmp_path / "qc" / "downstream.csv"))
    qc = QCSettings.from_dict(None)  # the schema's tolerances
    assert downstream_worse(scores, qc.downstream_f1_tolerance, qc.downstream_correlation_tolerance) is worse


def test_missing_labels_are_named(tmp_path):
    inputs = write_plate(tmp_path, lambda raw, clean, rng: clean)
    (tmp_path / "clean" / "nuclei_labels" / "B03_s2.tif").unlink()
    with pytest.raises(QCInputError, match="B03_s2.tif"):
        run_downstream(*inputs, tmp_path / "qc")


def test_report_shows_raw_and_denoised_side_by_side_and_marks_the_flagged_plate(tmp_path):
    labels = np.zeros((64, 64), dtype=np.int32)
    labels[10:30, 10:30] = 1
    image = 100.0 + 50 * (labels > 0)
    segmentation_figure({"raw": image, "denoised": image, "clean": image}, {s: labels for s in ("raw", "denoised", "clean")},
                        labels, tmp_path / "downstream.png", crop_size=32, title="P1")
    downstream = {(plate, "DNA"): {"scores": scores_table(0.9, f1).assign(plate=plate, images=2, true_nuclei=10, found_nuclei=9,
                                                                         count_error_relative=-0.1),
                                   "figure": tmp_path / "downstream.png"}
                  for plate, f1 in (("P1", 0.91), ("P2", 0.6))}
    summary = pd.DataFrame({"plate": ["P1", "P2"], "channel": "DNA", "n_images": 2, "flags": [[], ["downstream_worse"]]})
    build_report("E", summary, [], {}, {}, None, tmp_path / "report.html", downstream=downstream)
    html = (tmp_path / "report.html").read_text()
    assert 'id="downstream-section"' in html and html.count("data:image/webp") == 2
    section = html[html.index('id="downstream-section"'):html.index('id="settings-section"')]
    assert "<th>raw</th><th>denoised</th><th>clean</th>" in section
    assert section.index("P1 / DNA") < section.index("P2 / DNA")
    assert '<span class="flag">downstream_worse</span>' in section[section.index("P2 / DNA"):]
    assert '<span class="flag">downstream_worse</span>' not in section[:section.index("P2 / DNA")]
