"""The experiment HTML report: self-contained, with every section, flags highlighted, PSNR only with a reference."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
import zarr
from PIL import Image
from scipy import ndimage

from jump_n2v.settings import resolve_section
from jump_n2v.training_log import loss_curves
from jump_n2v.qc import build_report, load_model_info, read_rejects, run_channel_qc, summarize, write_experiment_report
from jump_n2v.qc.files import QCInputError

SIZE = 64


class ReportParser(HTMLParser):
    """Collects <img> sources, element ids, and the header cells of the summary table."""

    def __init__(self):
        super().__init__()
        self.image_sources, self.ids, self.summary_headers = [], set(), []
        self._table_stack, self._in_header_cell = [], False
        self.external_references = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "img":
            self.image_sources.append(attrs.get("src", ""))
        if tag in ("link", "script") and (attrs.get("href") or attrs.get("src")):
            self.external_references.append(attrs.get("href") or attrs.get("src"))
        if tag == "table":
            self._table_stack.append(attrs.get("id"))
        if tag == "th" and self._table_stack and self._table_stack[-1] == "summary":
            self._in_header_cell = True
            self.summary_headers.append("")

    def handle_endtag(self, tag):
        if tag == "table" and self._table_stack:
            self._table_stack.pop()
        if tag == "th":
            self._in_header_cell = False

    def handle_data(self, data):
        if self._in_header_cell:
            self.summary_headers[-1] += data


def parse(path):
    parser = ReportParser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def write_plate(root, plate, denoise, with_clean):
    rng = np.random.default_rng(len(plate))
    spots = np.zeros((3, SIZE, SIZE))
    spots[:, rng.integers(0, SIZE, 8), rng.integers(0, SIZE, 8)] = 1.0
    clean = 100.0 + 2000.0 * ndimage.gaussian_filter(spots, (0, 4, 4)) / ndimage.gaussian_filter(spots, (0, 4, 4)).max()
    raw = np.clip(clean + rng.normal(0, 40, clean.shape), 0, None).astype(np.uint16)
    ids = [0, 1, 2]  # index.csv image ids, as the split writes them
    stacks = {"raw": (raw, "uint16"), "denoised": (denoise(raw.astype(np.float64), clean), "float32")}
    if with_clean:
        stacks["clean"] = (clean, "uint16")
    for name, (data, dtype) in stacks.items():
        array = zarr.create_array(store=str(root / plate / name / "DNA.zarr"), shape=data.shape, chunks=(1, SIZE, SIZE), dtype=dtype)
        array[:] = data.astype(dtype)
        array.attrs.update(image_ids=ids, plate=plate, channel="DNA", experiment="E1", dtype_range=[0, 65535])
    pd.DataFrame({"image": ids, "plate": plate, "well": ["B02", "B03", "C02"], "site": 1}).to_csv(root / plate / "index.csv", index=False)


def write_model(model_dir):
    model_dir.mkdir(parents=True)
    training = {"best_val_loss": 0.0123, "best_epoch": 4, "epochs_run": 5, "steps": 50, "seconds": 3.5, "stopped_early": False}
    info = {"settings": {}, "normalization": {"mean": 900.0, "std": 400.0}, "training": training, "seed": 42, "versions": {"torch": "2.13.0"}}
    (model_dir / "model.json").write_text(json.dumps(info))
    epochs = np.arange(1, 6)
    pd.DataFrame(
        {"epoch": epochs, "step": epochs * 10, "train_loss": 0.1 / epochs, "val_loss": 0.12 / epochs, "learning_rate": 1e-3, "seconds": epochs * 0.7}
    ).to_csv(model_dir / "training_log.csv", index=False)
    loss_curves(model_dir / "training_log.csv", model_dir / "training_curve.png")  # what training draws from its log


def build_example(tmp_path, plates):
    """plates: name -> (denoiser, with_clean). Runs QC and writes the report; returns its path and summary."""
    root = tmp_path / "results" / "E1"
    tables, artifacts, models = [], [], {}
    model_dir = root / "models" / "all-plates" / "DNA"
    write_model(model_dir)
    for plate, (denoise, with_clean) in plates.items():
        write_plate(root, plate, denoise, with_clean)
        qc_dir = root / plate / "qc" / "DNA"
        tables.append(
            run_channel_qc(
                root / plate / "raw" / "DNA.zarr",
                root / plate / "denoised" / "DNA.zarr",
                qc_dir,
                clean=root / plate / "clean" / "DNA.zarr" if with_clean else None,
                index=root / plate / "index.csv",
                qc_settings={"panel_sites": 1, "crop_size": 32},
            )
        )
        models[(plate, "DNA")] = load_model_info(model_dir)
        artifacts.append(
            {
                "plate": plate,
                "channel": "DNA",
                "panels_png": qc_dir / "panels.png",
                "plate_map_png": qc_dir / "plate_map.png",
                "curve_png": model_dir / "training_curve.png",  # as the workflow's report rule passes it
                "model_json": model_dir / "model.json",
            }
        )
    summary = summarize(tables, models=models)
    (root / "P1" / "rejects").mkdir(parents=True, exist_ok=True)
    (root / "P1" / "rejects" / "DNA.csv").write_text("file,problem\nimages/P1_D04_1.tif,truncated TIFF <strip 3>\n")
    settings = {"DNA": {section: resolve_section(section) for section in ("n2v", "predict", "qc")}}
    out = root / "report" / "report.html"
    build_report("E1", summary, artifacts, settings, {"jump-n2v": "0.1.0", "numpy": np.__version__}, read_rejects([root / "P1" / "rejects" / "DNA.csv"]), out)
    return out, summary


def oracle(raw, clean):
    return clean


def halving(raw, clean):
    return 0.5 * raw


@pytest.fixture(scope="module")
def good_and_bad_report(tmp_path_factory):
    """P1 denoised perfectly (with a clean reference), P2 by halving the raw image (no reference)."""
    return build_example(tmp_path_factory.mktemp("report"), {"P1": (oracle, True), "P2": (halving, False)})


def test_report_is_self_contained_with_every_section_and_embedded_figures(good_and_bad_report):
    out, _ = good_and_bad_report
    parsed = parse(out)
    assert {"flags-section", "summary-section", "definitions", "channel-DNA", "settings-section", "versions-section", "rejects-section", "summary", "settings", "versions", "rejects"} <= parsed.ids
    # Three figures per plate, embedded as lossless WebP: the very pixels of the PNGs QC wrote.
    assert len(parsed.image_sources) == 6
    root = out.parents[1]
    curve = root / "models" / "all-plates" / "DNA" / "training_curve.png"
    written = [path for plate in ("P1", "P2") for path in (root / plate / "qc" / "DNA" / "panels.png", root / plate / "qc" / "DNA" / "plate_map.png", curve)]
    for source, png in zip(parsed.image_sources, written):
        assert source.startswith("data:image/webp;base64,")
        with Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))) as embedded, Image.open(png) as original:
            assert embedded.format == "WEBP"
            np.testing.assert_array_equal(np.asarray(embedded.convert("RGB")), np.asarray(original.convert("RGB")))
    assert parsed.external_references == []
    text = out.read_text(encoding="utf-8")
    assert "clean reference image's max − min" in text  # the PSNR/SSIM data range is stated
    assert "truncated TIFF &lt;strip 3&gt;" in text  # rejects listed, escaped
    assert re.search(r"n2v\.patch_size</td><td[^>]*>64<", text)  # resolved settings
    assert re.search(r"jump-n2v</td><td[^>]*>0\.1\.0<", text)  # versions
    assert "0.0123" in text  # the model's best validation loss


def test_report_highlights_the_flags_of_a_structure_removing_denoiser(good_and_bad_report):
    out, summary = good_and_bad_report
    flags = summary.set_index("plate")["flags"]
    assert flags["P1"] == [] and "residual_structure" in flags["P2"]
    text = out.read_text(encoding="utf-8")
    flagged_rows = re.findall(r'<tr class="flagged">(.*?)</tr>', text)
    assert len(flagged_rows) == 1 and ">P2<" in flagged_rows[0]
    assert '<span class="flag">residual_structure</span>' in flagged_rows[0]
    assert 'class="bad"' in flagged_rows[0]
    assert re.search(r'<ul id="flags">.*P2 / DNA.*residual_structure.*threshold 0\.1', text)


def test_report_has_psnr_columns_only_when_a_reference_exists(tmp_path):
    without, _ = build_example(tmp_path / "a", {"P1": (oracle, False)})
    headers = parse(without).summary_headers
    assert headers and not [header for header in headers if "PSNR" in header or "SSIM" in header]
    assert "No plate has a clean reference" in without.read_text(encoding="utf-8")
    with_reference, _ = build_example(tmp_path / "b", {"P1": (oracle, True)})
    assert {"PSNR raw (dB)", "PSNR denoised (dB)", "PSNR gain (dB)", "SSIM denoised"} <= set(parse(with_reference).summary_headers)


def test_report_says_when_nothing_was_flagged(tmp_path):
    out, _ = build_example(tmp_path, {"P1": (oracle, True)})
    assert "no-flags" in parse(out).ids


def test_report_names_a_missing_figure(tmp_path):
    summary = pd.DataFrame({"plate": ["P1"], "channel": ["DNA"], "n_images": [1], "flags": [[]]})
    with pytest.raises(QCInputError, match="gone.png"):
        build_report("E1", summary, [{"plate": "P1", "channel": "DNA", "panels_png": tmp_path / "gone.png"}], {}, {}, None, tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


def test_read_rejects_takes_plate_and_channel_from_the_path(tmp_path):
    path = tmp_path / "P7" / "rejects" / "Mito.csv"
    path.parent.mkdir(parents=True)
    path.write_text("file,problem\na.tif,unreadable\nb.tif,wrong shape\n")
    table = read_rejects([path])
    assert list(table.columns) == ["plate", "channel", "file", "problem"]
    assert set(table["plate"]) == {"P7"} and set(table["channel"]) == {"Mito"} and len(table) == 2


def test_read_rejects_names_a_table_without_the_problem_column(tmp_path):
    path = tmp_path / "P1" / "rejects" / "DNA.csv"
    path.parent.mkdir(parents=True)
    path.write_text("file\na.tif\n")
    with pytest.raises(QCInputError, match="DNA.csv.*problem"):
        read_rejects([path])


def test_write_experiment_report_builds_tables_and_report_from_the_qc_folders(good_and_bad_report):
    first_report, _ = good_and_bad_report
    root = first_report.parents[1]  # results/E1
    model_dir = root / "models" / "all-plates" / "DNA"
    settings = {"DNA": {"qc": resolve_section("qc", {"residual_structure_threshold": 0.2})}}
    out = root / "again" / "report.html"
    summary = write_experiment_report(
        "E1",
        [root / plate / "qc" / "DNA" / "metrics.csv" for plate in ("P1", "P2")],
        {("P1", "DNA"): model_dir, ("P2", "DNA"): model_dir},
        settings,
        [root / "P1" / "rejects" / "DNA.csv"],
        root / "again" / "summary.csv",
        root / "again" / "summary.parquet",
        out,
        versions={"jump-n2v": "0.1.0"},
    )
    assert list(summary["plate"]) == ["P1", "P2"] and list(summary["best_val_loss"]) == [0.0123, 0.0123]
    assert pd.read_csv(root / "again" / "summary.csv")["flags"].fillna("").tolist()[1].startswith("residual_structure")
    assert pd.read_parquet(root / "again" / "summary.parquet")["n_images"].tolist() == [3, 3]
    parsed = parse(out)
    # panels, plate map, shared model's loss curve, per plate; and the noise model across plates
    assert len(parsed.image_sources) == 7
    assert "threshold 0.2" in out.read_text(encoding="utf-8")
    # The noise model fitted by the QC stage is in the summary and in its own table; these model.json
    # files record no blind-spot decision, which the report says.
    assert {"noise-model-section", "noise-models", "noise-model-trends"} <= parsed.ids
    assert summary["noise_gain"].notna().all() and summary["noise_read_sd"].notna().all()
    assert (summary["blind_spot_mode"] == "not recorded").all()
    assert "not recorded" in out.read_text(encoding="utf-8")


def test_the_noise_model_table_says_which_fit_it_shows_and_shows_the_training_fit_beside_it(good_and_bad_report):
    # QC fits its own noise model (qc.noise_model_images raw images of the plate), while the posterior uses
    # the one training fitted and recorded in model.json; the report showed only QC's and did not say so.
    first_report, _ = good_and_bad_report
    root = first_report.parents[1]
    model_dir = root / "models" / "with-noise-model" / "DNA"
    shutil.copytree(root / "models" / "all-plates" / "DNA", model_dir)
    info = json.loads((model_dir / "model.json").read_text())
    training_fit = json.loads((root / "P1" / "qc" / "DNA" / "noise_model.json").read_text())
    training_fit.update(gain=7.25, read_variance=16.0)
    info.update(noise_model=training_fit, training_data={"images": 8})
    (model_dir / "model.json").write_text(json.dumps(info))
    out = root / "two-fits" / "report.html"
    summary = write_experiment_report(
        "E1",
        [root / plate / "qc" / "DNA" / "metrics.csv" for plate in ("P1", "P2")],
        {("P1", "DNA"): model_dir, ("P2", "DNA"): root / "models" / "all-plates" / "DNA"},
        {"DNA": {"qc": resolve_section("qc")}},
        [],
        root / "two-fits" / "summary.csv",
        root / "two-fits" / "summary.parquet",
        out,
        versions={"jump-n2v": "0.1.0"},
    ).set_index("plate")
    # QC fitted its model to all 3 images of each plate (fewer than qc.noise_model_images = 16).
    assert summary["noise_model_images"].tolist() == [3, 3]
    assert (summary.loc["P1", "training_noise_gain"], summary.loc["P1", "training_noise_read_sd"]) == (7.25, 4.0)
    assert summary.loc["P1", "training_noise_images"] == 8
    assert np.isnan(summary.loc["P2", "training_noise_gain"])  # its model.json records no noise model
    text = out.read_text(encoding="utf-8")
    table = text[text.index('id="noise-models"'):]
    table = table[: table.index("</table>")]
    assert "QC fit: raw images" in table and "training fit (posterior): gain" in table and "7.25" in table
    assert "The posterior step and the blind spot use the fit training made on its training images" in text


def test_rejected_images_raise_a_flag_for_their_plate_and_channel(good_and_bad_report):
    # A split that left images out (on_bad_image: skip) used to pass the report without a flag.
    first_report, _ = good_and_bad_report
    root = first_report.parents[1]
    model_dir = root / "models" / "all-plates" / "DNA"
    out = root / "flagged" / "report.html"
    summary = write_experiment_report(
        "E1",
        [root / plate / "qc" / "DNA" / "metrics.csv" for plate in ("P1", "P2")],
        {("P1", "DNA"): model_dir, ("P2", "DNA"): model_dir},
        {"DNA": {"qc": resolve_section("qc")}},
        [root / "P1" / "rejects" / "DNA.csv"],  # one image of P1 / DNA left out
        root / "flagged" / "summary.csv",
        root / "flagged" / "summary.parquet",
        out,
        versions={"jump-n2v": "0.1.0"},
    )
    flags = dict(zip(summary["plate"], summary["flags"]))
    assert "rejected_images" in flags["P1"] and "rejected_images" not in flags["P2"]
    assert summary.set_index("plate")["n_rejected"].to_dict() == {"P1": 1, "P2": 0}
    text = out.read_text(encoding="utf-8")
    flags_section = text[text.index('id="flags-section"'):text.index('id="summary-section"')]
    assert "<b>P1 / DNA</b>: <span class=\"flag\">rejected_images</span>" in flags_section


def test_the_tiff_exports_clipping_is_counted_in_the_summary(good_and_bad_report):
    first_report, _ = good_and_bad_report
    root = first_report.parents[1]
    model_dir = root / "models" / "all-plates" / "DNA"
    exported = root / "P1" / "denoised_tiff" / "DNA"
    exported.mkdir(parents=True)
    pd.DataFrame({"image": [0, 1], "well": ["A01", "A01"], "site": [1, 2], "file": ["a.tiff", "b.tiff"],
                  "pixels": [100, 100], "clipped_low": [3, 0], "clipped_high": [0, 1]}).to_csv(exported / "clipping.csv", index=False)
    summary = write_experiment_report(
        "E1",
        [root / plate / "qc" / "DNA" / "metrics.csv" for plate in ("P1", "P2")],
        {("P1", "DNA"): model_dir, ("P2", "DNA"): model_dir},
        {"DNA": {"qc": resolve_section("qc")}},
        [],
        root / "clipping" / "summary.csv",
        root / "clipping" / "summary.parquet",
        root / "clipping" / "report.html",
        versions={"jump-n2v": "0.1.0"},
        export_dirs={("P1", "DNA"): exported},  # P2 was not exported
    ).set_index("plate")
    assert (summary.loc["P1", "export_clipped_low"], summary.loc["P1", "export_clipped_high"]) == (3, 1)
    assert summary.loc["P1", "export_clipped_fraction"] == 4 / 200
    assert np.isnan(summary.loc["P2", "export_clipped_fraction"])
    assert "share of pixels clipped" in (root / "clipping" / "report.html").read_text(encoding="utf-8")


def test_a_plate_unlike_its_training_data_is_flagged_in_the_report(good_and_bad_report):
    # The predict step's training_check.json files (jump_n2v.n2v.similarity.check_array), as written.
    first_report, _ = good_and_bad_report
    root = first_report.parents[1]
    model_dir = root / "models" / "all-plates" / "DNA"
    moved = {"change": 0.71, "tolerance": 0.35, "training": [0.0], "sample": [1.0], "moved": True}
    checks = []
    for plate, statistics in (("P1", {"intensity": moved}), ("P2", {})):
        path = root / plate / "denoised" / "DNA.training_check.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"plate": plate, "channel": "DNA", "comparable": True, "statistics": statistics,
                                    "moved": list(statistics), "notes": []}))
        checks.append(path)
    out = root / "unlike" / "report.html"
    summary = write_experiment_report(
        "E1",
        [root / plate / "qc" / "DNA" / "metrics.csv" for plate in ("P1", "P2")],
        {("P1", "DNA"): model_dir, ("P2", "DNA"): model_dir},
        {"DNA": {"qc": resolve_section("qc")}},
        [],
        root / "unlike" / "summary.csv",
        root / "unlike" / "summary.parquet",
        out,
        versions={"jump-n2v": "0.1.0"},
        training_checks=checks,
    ).set_index("plate")
    assert "unlike_training_data" in summary.loc["P1", "flags"] and "unlike_training_data" not in summary.loc["P2", "flags"]
    assert summary.loc["P1", "training_check_moved"] == "intensity 0.71 (tolerance 0.35)"
    text = out.read_text(encoding="utf-8")
    flags_section = text[text.index('id="flags-section"'):text.index('id="summary-section"')]
    assert "<b>P1 / DNA</b>: <span class=\"flag\">unlike_training_data</span>" in flags_section
    assert "<dt>unlike training data</dt>" in text


def tiny_png(path, value=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 12, 3), value, dtype=np.uint8)).save(path)
    return path


def test_names_from_the_data_are_escaped_in_the_page(tmp_path):
    # Plate, channel, file and problem texts come from users' tables; the template autoescapes them.
    plate, channel = "P<script>alert(1)</script>", "DNA&ER"
    summary = pd.DataFrame({"plate": [plate], "channel": [channel], "n_images": [1], "flags": [["rejected_images"]]})
    artifacts = [{"plate": plate, "channel": channel, "panels_png": tiny_png(tmp_path / "panels.png")}]
    rejects = pd.DataFrame({"plate": [plate], "channel": [channel], "file": ["<img src=x onerror=alert(2)>.tif"], "problem": ["a & b"]})
    out = tmp_path / "report.html"
    build_report("E<1>&", summary, artifacts, {channel: {"qc": resolve_section("qc")}}, {"jump-n2v": "0.1.0"}, rejects, out)
    text = out.read_text(encoding="utf-8")
    assert "<script>" not in text and "<img src=x" not in text
    assert "P&lt;script&gt;alert(1)&lt;/script&gt;" in text and "DNA&amp;ER" in text and "a &amp; b" in text
    assert "<title>jump-n2v QC report: E&lt;1&gt;&amp;</title>" in text
    assert 'id="channel-DNA&amp;ER"' in text and 'href="#channel-DNA&amp;ER"' in text
    assert len(parse(out).image_sources) == 1  # the page still parses, with its one figure


def test_only_example_plates_embed_figures_and_the_rest_are_linked(tmp_path):
    # The report used to embed three figures for every plate and channel: its size grew with the plates.
    plates = [f"P{number}" for number in range(1, 7)]
    flags = [[] for _ in plates]
    flags[4] = ["bias"]  # P5 is flagged, so it is one of the example plates
    summary = pd.DataFrame({"plate": plates, "channel": "DNA", "n_images": 1, "flags": flags})
    artifacts = []
    for plate in plates:
        qc = tmp_path / "results" / plate / "qc" / "DNA"
        artifacts.append({"plate": plate, "channel": "DNA", "panels_png": tiny_png(qc / "panels.png"), "plate_map_png": tiny_png(qc / "plate_map.png")})
    out = tmp_path / "results" / "report" / "report.html"
    build_report("E1", summary, artifacts, {}, {}, None, out)
    text = out.read_text(encoding="utf-8")
    assert len(parse(out).image_sources) == 2 * 3  # panels and plate map of three plates
    embedded = [plate for plate in plates if f'alt="{plate} DNA panels_png"' in text]
    assert embedded == ["P1", "P2", "P5"]
    links = re.findall(r'<a href="([^"#]+)">', text)
    assert links == [f"../{plate}/qc/DNA/{name}" for plate in ("P3", "P4", "P6") for name in ("panels.png", "plate_map.png")]
    assert all((out.parent / link).is_file() for link in links)
    assert "example plate(s) of 6" in text


def test_a_long_rejects_list_is_cut_and_counted(tmp_path):
    rejects = pd.DataFrame({"plate": "P1", "channel": ["DNA"] * 250 + ["ER"] * 50, "file": [f"f{i}.tif" for i in range(300)], "problem": "unreadable"})
    summary = pd.DataFrame({"plate": ["P1"], "channel": ["DNA"], "n_images": [1], "flags": [[]]})
    out = tmp_path / "report.html"
    build_report("E1", summary, [], {}, {}, rejects, out)
    text = out.read_text(encoding="utf-8")
    assert "Rejected images (300)" in text
    assert "f199.tif" in text and "f200.tif" not in text  # the first 200 listed
    assert re.search(r"<td class=\"text\">DNA</td><td>250</td>", text) and re.search(r"<td class=\"text\">ER</td><td>50</td>", text)


def test_a_figure_taller_than_webp_allows_is_embedded_as_png(tmp_path):
    tall = tmp_path / "panels.png"
    Image.fromarray(np.zeros((16384, 2, 3), dtype=np.uint8)).save(tall)
    summary = pd.DataFrame({"plate": ["P1"], "channel": ["DNA"], "n_images": [1], "flags": [[]]})
    out = tmp_path / "report.html"
    build_report("E1", summary, [{"plate": "P1", "channel": "DNA", "panels_png": tall}], {}, {}, None, out)
    (source,) = parse(out).image_sources
    assert source == "data:image/png;base64," + base64.b64encode(tall.read_bytes()).decode("ascii")
