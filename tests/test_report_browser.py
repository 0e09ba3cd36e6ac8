"""The HTML report in a real headless Chromium: it loads, no image is broken, a screenshot can be taken.

Chromium is driven from its command line: a copy of the report gets a small script that writes the
count of images and of broken images (not complete, or naturalWidth 0) into the DOM on load, and
``--dump-dom`` prints the DOM for us to read back. Needs the Debian package ``chromium``.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from PIL import Image

from jump_n2v.qc import build_report, run_channel_qc, summarize
from jump_n2v.training_log import loss_curves

CHROMIUM = Path("/usr/bin/chromium")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs headless Chromium at /usr/bin/chromium (apt-get install chromium)"),
]

IMAGE_CHECK = """<pre id="qc-browser-check"></pre><script>
window.addEventListener("load", function () {
  var images = Array.from(document.images);
  var broken = images.filter(function (image) { return !image.complete || image.naturalWidth === 0; });
  document.getElementById("qc-browser-check").textContent =
    JSON.stringify({images: images.length, broken: broken.length, title: document.title});
});
</script>
</body>"""

BROKEN_IMAGE = '<img src="data:image/png;base64,AAAAbm90IGEgcG5n" alt="deliberately broken">'


def run_chromium(profile: Path, *arguments: str) -> str:
    """Run headless Chromium with a throwaway profile and no network side-traffic; return stdout."""
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=10000",
        *arguments,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"chromium failed ({result.returncode}): {result.stderr[-2000:]}"
    return result.stdout


def image_check(report: Path, profile: Path, extra_html: str = "") -> dict:
    """Load a copy of ``report`` carrying the image-check script; return what the script found."""
    checked = report.with_name(f"checked-{report.name}")
    checked.write_text(report.read_text(encoding="utf-8").replace("</body>", extra_html + IMAGE_CHECK), encoding="utf-8")
    dom = run_chromium(profile, "--dump-dom", checked.as_uri())
    match = re.search(r'<pre id="qc-browser-check">([^<]*)</pre>', dom)
    assert match and match.group(1), f"the check script did not run; DOM starts: {dom[:500]!r}"
    return json.loads(match.group(1))


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """A one-plate report with panels, plate map and loss curves."""
    root = tmp_path_factory.mktemp("browser")
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:64, 0:64]
    signal = 300.0 + 1500.0 * np.exp(-((y - 30) ** 2 + (x - 20) ** 2) / 80.0)
    ids = [0, 1, 2]  # index.csv image ids, as the split writes them
    raw = np.clip(signal + rng.normal(0, 50, (3, 64, 64)), 0, None)
    for name, data, dtype in (("raw", raw, "uint16"), ("denoised", np.broadcast_to(signal, raw.shape), "float32")):
        array = zarr.create_array(store=str(root / f"{name}.zarr"), shape=raw.shape, chunks=(1, 64, 64), dtype=dtype)
        array[:] = data.astype(dtype)
        array.attrs.update(image_ids=ids, plate="P1", channel="DNA", experiment="E1")
    pd.DataFrame({"image": ids, "plate": "P1", "well": ["A01", "A01", "B05"], "site": [1, 2, 1]}).to_csv(root / "index.csv", index=False)
    model_dir = root / "model"
    model_dir.mkdir()
    epochs = np.arange(1, 8)
    pd.DataFrame(
        {"epoch": epochs, "step": epochs * 5, "train_loss": 1 / epochs, "val_loss": 1.1 / epochs, "learning_rate": 1e-3, "seconds": epochs}
    ).to_csv(model_dir / "training_log.csv", index=False)
    loss_curves(model_dir / "training_log.csv", model_dir / "training_curve.png")  # what training draws from its log
    table = run_channel_qc(root / "raw.zarr", root / "denoised.zarr", root / "qc", index=root / "index.csv", qc_settings={"panel_sites": 1, "crop_size": 32})
    artifacts = [{"plate": "P1", "channel": "DNA", "panels_png": root / "qc" / "panels.png", "plate_map_png": root / "qc" / "plate_map.png", "curve_png": model_dir / "training_curve.png"}]
    out = root / "report.html"
    build_report("E1", summarize([table]), artifacts, {"DNA": {"qc": {"panel_sites": 1}}}, {"jump-n2v": "0.1.0"}, None, out)
    return out


def test_report_loads_in_chromium_with_no_broken_image(report, tmp_path):
    found = image_check(report, tmp_path / "profile")
    assert found == {"images": 3, "broken": 0, "title": "jump-n2v QC report: E1"}


def test_the_image_check_detects_a_broken_image(report, tmp_path):
    found = image_check(report, tmp_path / "profile", extra_html=BROKEN_IMAGE)
    assert found["images"] == 4 and found["broken"] == 1


def test_report_screenshot_is_a_non_empty_png(report, tmp_path):
    screenshot = tmp_path / "report.png"
    run_chromium(tmp_path / "profile", "--window-size=1280,2400", f"--screenshot={screenshot}", report.as_uri())
    data = screenshot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    # Not blank: text and figures give many distinct colours, and the embedded WebP figures (grey
    # panels) put mid-grey pixels on a white page.
    with Image.open(screenshot) as shot:
        pixels = np.asarray(shot.convert("RGB")).reshape(-1, 3)
    assert shot.size == (1280, 2400)
    assert len(np.unique(pixels, axis=0)) > 200
    assert (pixels != 255).any(axis=1).mean() > 0.05
