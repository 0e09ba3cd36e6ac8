"""A synthetic Cell Painting plate with known ground truth, for the demo and the tests.

Each site is a field of cells drawn from one seeded random layout, rendered in the five Cell Painting
channels with the structure each stain shows: DNA (nuclei), ER (reticular texture around nuclei),
RNA (nucleoli and cytoplasmic speckles), AGP (cell borders and actin fibres), Mito (small puncta in
the cytoplasm). The clean image is in camera units (ADU); the raw image adds Poisson shot noise and
Gaussian read noise, i.e. ``raw = gain * Poisson(clean_photons) + offset + N(0, read_noise)``,
rounded to uint16. Both are written as ImageJ CYX hyperstacks with channel labels.

``hazards: true`` adds what real plates hold on a fraction of their sites and what a denoiser's
normalisation must survive: ``debris`` objects per site, bright in every channel (``debris_brightness``
times each channel's peak), and ``saturated_cells`` cells per site so bright in DNA that the camera
clips them at 65,535 (the clean reference is clipped the same way). Off by default, so the demo plate
stays as it was.

``pixel_mixing: box2x2`` then averages every 2 x 2 block of neighbours (a half-pixel shift, as real
Opera Phenix exports show: noise lag-1 autocorrelation about 0.5 in x and y, about 0 at lag 2); the
clean reference is mixed the same way, so it stays the expectation of the raw image.

Each site's true nuclei are written too, as a uint16 label image in a ``nuclei_labels`` folder beside
its clean image (one label per cell; see :func:`nucleus_labels`), for the downstream segmentation check
(``jump_n2v.qc.downstream``). They are the unmixed nuclei: pixel mixing moves edges by half a pixel.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage

from jump_n2v.plumbing.atomic import atomic_output

DEMO_CHANNELS = ("DNA", "ER", "RNA", "AGP", "Mito")


@dataclass(frozen=True)
class DemoSpec:
    """What the demo plate looks like; every field is recorded in the plate's manifest."""

    wells: tuple[str, ...] = ("B02", "B03", "C02")
    sites: int = 2
    size: int = 256
    cells_per_site: int = 14
    gain: float = 2.0  # ADU per photon
    offset: float = 100.0  # camera baseline, ADU
    read_noise: float = 3.0  # ADU, Gaussian
    # Peak photon counts per channel: dim stains at Cell Painting exposure times are a few tens.
    peak_photons: dict = field(default_factory=lambda: {"DNA": 120.0, "ER": 40.0, "RNA": 30.0, "AGP": 35.0, "Mito": 25.0})
    background_photons: float = 4.0
    pixel_mixing: str = "none"  # or "box2x2"
    seed: int = 7
    hazards: bool = False
    debris: int = 3  # per site, with hazards
    debris_brightness: float = 40.0  # times each channel's peak photons
    saturated_cells: int = 1  # per site, with hazards: DNA clipped at the camera's maximum

    def __post_init__(self) -> None:
        if self.pixel_mixing not in PIXEL_MIXING:
            raise ValueError(f"pixel_mixing must be one of {', '.join(PIXEL_MIXING)}, got {self.pixel_mixing!r}")


PIXEL_MIXING = ("none", "box2x2")
# The DNA stain is the cells' nucleus ellipses smoothed with this sigma (px); a nucleus is where it exceeds NUCLEUS_LEVEL.
NUCLEUS_SMOOTHING = 1.2
NUCLEUS_LEVEL = 0.3


def mix_pixels(image: np.ndarray, kind: str) -> np.ndarray:
    """``image`` after the acquisition's pixel mixing: each pixel the mean of a 2 x 2 block (box2x2)."""
    if kind == "none":
        return image
    return ndimage.uniform_filter(np.asarray(image, dtype=np.float64), size=2, mode="reflect")


def _smooth_noise(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return (noise - noise.mean()) / (noise.std() + 1e-12)


def render_site(spec: DemoSpec, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Clean photon-count images (float64) of one site, one per channel."""
    return render_site_with_labels(spec, rng)[0]


def nucleus_labels(nucleus_images: list[np.ndarray], nucleus_mask: np.ndarray) -> np.ndarray:
    """True nucleus label image (uint16, 0 background, cell ``i`` labelled ``i + 1``): each pixel of the
    rendered ``nucleus_mask`` belongs to the cell whose smoothed ellipse contributes most to it there
    (ties to the lower cell number). ``nucleus_images`` are each cell's ellipse times its brightness, before
    the renderer's Gaussian smoothing; their smoothed sum is the DNA stain the mask was cut from."""
    if not nucleus_images:
        return np.zeros(nucleus_mask.shape, dtype=np.uint16)
    smoothed = np.stack([ndimage.gaussian_filter(image, NUCLEUS_SMOOTHING) for image in nucleus_images])
    return np.where(nucleus_mask, smoothed.argmax(axis=0) + 1, 0).astype(np.uint16)


def render_site_with_labels(spec: DemoSpec, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """:func:`render_site`'s images and the site's true nucleus labels (:func:`nucleus_labels`). The
    labels draw no random numbers, so the images are the same as without them. Debris (``hazards``) is no
    nucleus and stays background; a saturated cell is still its own nucleus."""
    size = spec.size
    shape = (size, size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    centres = rng.uniform(0.08 * size, 0.92 * size, size=(spec.cells_per_site, 2))

    # Cells are the Voronoi regions of the centres, cut off at a random radius around each.
    distances = np.stack([np.hypot(yy - cy, xx - cx) for cy, cx in centres])
    owner = distances.argmin(axis=0)
    nearest = distances.min(axis=0)
    cell_radius = size / np.sqrt(spec.cells_per_site) * 0.55
    cytoplasm = ndimage.gaussian_filter((nearest < cell_radius).astype(float), 1.5)

    nuclei = np.zeros(shape)
    nucleoli = np.zeros(shape)
    each_nucleus = []
    for index, (cy, cx) in enumerate(centres):
        radius_y, radius_x = rng.uniform(0.3, 0.45, size=2) * cell_radius
        angle = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = (dy * np.cos(angle) + dx * np.sin(angle)) / radius_y
        v = (-dy * np.sin(angle) + dx * np.cos(angle)) / radius_x
        inside = (u**2 + v**2) < 1.0
        each_nucleus.append(inside * rng.uniform(0.7, 1.0))
        nuclei += each_nucleus[-1]
        for _ in range(rng.integers(1, 4)):
            ny, nx = cy + rng.normal(0, radius_y / 3), cx + rng.normal(0, radius_x / 3)
            nucleoli += np.exp(-((yy - ny) ** 2 + (xx - nx) ** 2) / (2 * rng.uniform(1.5, 3.0) ** 2))
        del index
    nuclei = ndimage.gaussian_filter(nuclei, NUCLEUS_SMOOTHING)
    nucleus_mask = nuclei > NUCLEUS_LEVEL
    cytoplasm_only = cytoplasm * (1 - ndimage.gaussian_filter(nucleus_mask.astype(float), 2.0))

    # DNA: nuclei with chromatin texture.
    dna = nuclei * (0.8 + 0.2 * _smooth_noise(rng, shape, 1.5))
    # ER: a reticular network (ridges of band-passed noise) dense around the nucleus.
    ridges = np.abs(_smooth_noise(rng, shape, 3.0))
    er = cytoplasm_only * np.exp(-ridges * 2.5) * (0.5 + 0.5 * ndimage.gaussian_filter(nuclei, 8) / (nuclei.max() + 1e-9))
    # RNA: nucleoli plus diffuse cytoplasmic signal and speckles.
    speckles = ndimage.gaussian_filter((rng.random(shape) > 0.985).astype(float), 1.0) * 4
    rna = 0.9 * nucleoli / (nucleoli.max() + 1e-9) + 0.35 * cytoplasm_only + 0.3 * speckles * cytoplasm_only
    # AGP: bright cell borders (Voronoi edges) plus oriented actin fibres.
    border = ndimage.gaussian_filter((ndimage.maximum_filter(owner, 3) != ndimage.minimum_filter(owner, 3)).astype(float), 1.0)
    fibres = np.clip(ndimage.gaussian_filter(rng.standard_normal(shape), (0.8, 6.0)) * 3, 0, None)
    agp = cytoplasm * (1.2 * border / (border.max() + 1e-9) + 0.4 * fibres / (fibres.max() + 1e-9))
    # Mito: small puncta and short tubules in the cytoplasm.
    puncta = ndimage.gaussian_filter((rng.random(shape) > 0.97).astype(float), (1.0, 1.6))
    mito = cytoplasm_only * puncta / (puncta.max() + 1e-9)

    images = {"DNA": dna, "ER": er, "RNA": rna, "AGP": agp, "Mito": mito}
    photons = {}
    for name, image in images.items():
        image = np.clip(image, 0, None)
        image = image / (image.max() + 1e-12)
        photons[name] = spec.background_photons + spec.peak_photons[name] * image
    if spec.hazards:
        _add_hazards(spec, rng, photons, nuclei)
    return photons, nucleus_labels(each_nucleus, nucleus_mask)


def _add_hazards(spec: DemoSpec, rng: np.random.Generator, photons: dict, nuclei: np.ndarray) -> None:
    """Debris (compact blobs ``debris_brightness`` times each channel's peak, in every channel) and
    saturated cells (nuclei whose DNA signal alone exceeds the camera's range), added in place."""
    size = spec.size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    debris = np.zeros((size, size))
    for _ in range(spec.debris):
        cy, cx = rng.uniform(0.05 * size, 0.95 * size, size=2)
        radius = rng.uniform(0.015, 0.03) * size + 1.5
        debris = np.maximum(debris, 1.0 / (1.0 + np.exp((np.hypot(yy - cy, xx - cx) - radius) / 0.7)))
    for name in photons:
        photons[name] += spec.debris_brightness * spec.peak_photons[name] * debris
    if spec.saturated_cells:
        labels, count = ndimage.label(nuclei > NUCLEUS_LEVEL)
        picked = rng.choice(np.arange(1, count + 1), size=min(spec.saturated_cells, count), replace=False) if count else []
        # Twice the photons that reach the camera's maximum, so the cell's core clips.
        full_scale = 2.0 * (65535 - spec.offset) / spec.gain
        for label in picked:
            photons["DNA"] += full_scale * ndimage.gaussian_filter((labels == label).astype(float), 1.0)


def _write_hyperstack(path: Path, planes: list[np.ndarray], labels: list[str]) -> None:
    with atomic_output(path) as temporary:
        tifffile.imwrite(
            temporary,
            np.stack(planes),
            imagej=True,
            metadata={"axes": "CYX", "Labels": labels, "unit": "um"},
            resolution=(1 / 0.6, 1 / 0.6),  # 0.6 um pixels, as a 20x Phenix with binning 2
            compression="zlib",
        )


def nucleus_labels_path(clean_path: str | Path) -> Path:
    """Where the true nucleus labels of the site whose clean image is ``clean_path`` go: a
    ``nuclei_labels`` folder beside it, same file name (a subfolder, so no pattern of the plate's
    raw or clean images matches them)."""
    clean_path = Path(clean_path)
    return clean_path.parent / "nuclei_labels" / clean_path.name


def _write_labels(path: Path, labels: np.ndarray) -> None:
    with atomic_output(path) as temporary:
        tifffile.imwrite(temporary, labels, resolution=(1 / 0.6, 1 / 0.6), compression="zlib")


def write_demo_plate(raw_pattern: str, clean_pattern: str, spec: DemoSpec = DemoSpec(), plate: str = "DemoPlate") -> dict:
    """Write raw (uint16) and clean (float32) hyperstacks for every (well, site), and each site's true
    nucleus labels (uint16 YX, :func:`nucleus_labels`, at :func:`nucleus_labels_path`); return the
    manifest (each file entry names its ``raw``, ``clean`` and ``nuclei_labels``).

    ``raw_pattern``/``clean_pattern`` contain ``{well}`` and ``{site}`` (and optionally ``{plate}``).
    """
    rng = np.random.default_rng(spec.seed)
    files = []
    for well in spec.wells:
        for site in range(1, spec.sites + 1):
            photons, labels = render_site_with_labels(spec, rng)
            clean_planes, raw_planes = [], []
            for name in DEMO_CHANNELS:
                expected = photons[name]
                # The camera clips at 65,535 (a saturated cell): the clean reference, the raw image's
                # expectation, is clipped too.
                clean = np.minimum(mix_pixels(spec.gain * expected + spec.offset, spec.pixel_mixing), 65535)
                clean_planes.append(clean.astype(np.float32))
                counts = rng.poisson(expected)
                noisy = spec.gain * counts + spec.offset + rng.normal(0, spec.read_noise, expected.shape)
                noisy = mix_pixels(noisy, spec.pixel_mixing)
                raw_planes.append(np.clip(np.rint(noisy), 0, 65535).astype(np.uint16))
            fields = {"plate": plate, "well": well, "site": site}
            raw_path = Path(raw_pattern.format(**fields))
            clean_path = Path(clean_pattern.format(**fields))
            _write_hyperstack(raw_path, raw_planes, list(DEMO_CHANNELS))
            _write_hyperstack(clean_path, clean_planes, list(DEMO_CHANNELS))
            labels_path = nucleus_labels_path(clean_path)
            _write_labels(labels_path, labels)
            files.append({"well": well, "site": site, "raw": str(raw_path), "clean": str(clean_path),
                          "nuclei_labels": str(labels_path)})
    return {"plate": plate, "channels": list(DEMO_CHANNELS), "spec": asdict(spec), "files": files}


def write_demo_manifest(manifest: dict, path: str | Path) -> None:
    with atomic_output(path) as temporary:
        temporary.write_text(json.dumps(manifest, indent=2))
