"""The phantom chest X-ray set: a radiograph-like image rendered from each real Open-i report.

No real chest radiographs ship offline, so we draw them. Each image starts from a real lung
outline (the 517 v7labs lung masks inside the installed ``torchxrayvision`` package; the empty
ones are dropped), placed in a fixed thoracic frame, and adds the anatomy a frontal film shows:
body outline and soft tissue, air-dark lungs with branching vessel markings, posterior and
anterior ribs, clavicles, spine, trachea, heart and mediastinum, diaphragm and gastric bubble.
Then every finding the report's MeSH terms name is drawn where they say (side and zone), with
its extent set by severity, and its pixels kept as a mask and boxes: ground truth for grounding
and segmentation metrics. Last come a slight rotation/shift/scale, exposure and contrast
variation, blur and quantum-like noise.

The physics is a toy: we sum an attenuation map (soft tissue + bone + fluid - air) and expose
it, ``1 - exp(-k * A)``, which gives the radiograph convention (air dark, bone bright) and the
right kind of overlap: a rib crossing an opacity is brighter than either. Side convention: the
patient's left is the image's right.

Speed comes from caching everything that does not depend on the report: mask geometry per
(mask, size), and banks of rib cages, vessel trees and noise textures per size.
"""
from __future__ import annotations

import functools
import io
import json
import threading
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage as ndi
from skimage.morphology import convex_hull_image

from medclip_core.data.findings import FINDINGS
from medclip_core.data.reports import (
    Finding,
    Report,
    load_reports,
    report_splits,
    torchxrayvision_data_file,
)
from medclip_core.errors import MedclipError
from medclip_core.models.embedding_cache import content_digest

# Where the lungs sit in every image before the final jitter (fractions of the image side).
LUNG_BOX = (0.11, 0.09, 0.89, 0.80)  # x0, y0, x1, y1
MIDLINE = 0.5
N_VARIANTS = 6  # how many rib cages / vessel trees / textures each size keeps
ANATOMY = ("lung_right", "lung_left", "heart")  # patient's right/left
# Which archive members make the lung-mask bank, so that no image waits for all of them to be decoded.
LUNG_MASK_LIST = Path(__file__).resolve().parents[2] / "assets" / "phantom" / "lung_masks.json"

# Cardiothoracic ratio drawn for each cardiomegaly severity (normal hearts stay at 0.38-0.47).
CTR_BY_SEVERITY = {"borderline": 0.53, "mild": 0.56, "small": 0.56, "moderate": 0.61,
                   "large": 0.65, "severe": 0.68, None: 0.59}
# Fraction of the lung height an effusion fills, by severity.
EFFUSION_BY_SEVERITY = {"small": 0.12, "mild": 0.14, "borderline": 0.1, "moderate": 0.28,
                        "large": 0.48, "severe": 0.55, None: 0.2}
# Radius scale of opacities and other patches, by severity.
EXTENT_BY_SEVERITY = {"borderline": 0.7, "small": 0.7, "mild": 0.8, "moderate": 1.15,
                      "large": 1.5, "severe": 1.6, None: 1.0}


@dataclass(frozen=True)
class PhantomSample:
    """One rendered image with its report and where each finding was drawn."""

    report: Report
    image: np.ndarray
    masks: dict[str, np.ndarray]
    boxes: dict[str, list[tuple[int, int, int, int]]]
    anatomy: dict[str, np.ndarray] = field(default_factory=dict)  # lung_right, lung_left, heart

    @property
    def labels(self) -> frozenset[str]:
        return self.report.labels


# ---------------------------------------------------------------------------------------------
# Lung masks and their geometry (cached)

def _masks_archive() -> Path:
    return torchxrayvision_data_file("semantic_masks_v7labs_lungs.zip")


def lung_mask_source_digest() -> str:
    """What decides which masks are usable: the archive's member names, sizes and CRCs (read from its
    directory, nothing decoded) and the versions of the libraries that decode and filter them."""
    import PIL
    import scipy
    import skimage

    with zipfile.ZipFile(_masks_archive()) as archive:
        members = sorted((i.filename, i.file_size, i.CRC) for i in archive.infolist() if not i.filename.endswith("/"))
    return content_digest("lung masks", members, PIL.__version__, scipy.__version__, skimage.__version__,
                          np.__version__)


@functools.lru_cache(maxsize=None)  # at most the archive's 517 members, 16 KB each
def _decoded_lungs(name: str) -> np.ndarray | None:
    """Member ``name`` of the mask archive as a bank mask (see :func:`lung_mask_bank`), None when unusable."""
    with zipfile.ZipFile(_masks_archive()) as archive:
        image = Image.open(io.BytesIO(archive.read(name)))
    image.draft("L", (256, 256))  # JPEG: decode at reduced scale, much faster
    image = image.convert("L")
    image.thumbnail((320, 320))
    return _two_lungs(np.asarray(image) > 64)


def scan_usable_lung_masks() -> tuple[str, ...]:
    """Decode every mask of the archive (about 6 s) and name the usable ones, in bank order."""
    with zipfile.ZipFile(_masks_archive()) as archive:
        names = sorted(n for n in archive.namelist() if not n.endswith("/"))
    return tuple(name for name in names if _decoded_lungs(name) is not None)


@functools.lru_cache(maxsize=1)
def usable_lung_mask_names() -> tuple[str, ...]:
    """The archive members that make the bank, in order: read from ``LUNG_MASK_LIST`` (shipped, written
    by ``scripts/release/phantom_lung_masks.py``) when it was made from this very archive with these
    library versions, so that an image needs only its own mask decoded; else scanned."""
    try:
        shipped = json.loads(LUNG_MASK_LIST.read_text())
        if shipped["source"] == lung_mask_source_digest():
            return tuple(shipped["names"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return scan_usable_lung_masks()


def lung_mask_count() -> int:
    return len(usable_lung_mask_names())


def lung_mask(index: int) -> np.ndarray:
    """Mask ``index`` of the bank, decoding only that one archive member (cached)."""
    name = usable_lung_mask_names()[index]
    mask = _decoded_lungs(name)
    if mask is None:
        raise MedclipError(f"The shipped lung-mask list names {name}, which does not decode as two lungs here; "
                           "run scripts/release/phantom_lung_masks.py again.")
    return mask


def lung_mask_bank() -> tuple[np.ndarray, ...]:
    """The usable real lung masks, cropped to the lungs, 128x128, softened edges (uint8 0-255).

    A mask is kept when it shows two whole lungs: its two largest components (thin annotation
    spikes opened away), the smaller at least a quarter of the larger, one on each side, each
    nearly convex (solidity >= 0.8), not cut flat by the film edge. Of the 517 masks, 418 pass;
    82 of those dropped are empty. Rendering decodes only the masks it draws (:func:`lung_mask`).
    """
    return tuple(lung_mask(i) for i in range(lung_mask_count()))


def _two_lungs(mask: np.ndarray) -> np.ndarray | None:
    labels, count = ndi.label(mask)
    if count < 2:
        return None
    sizes = ndi.sum(mask, labels, range(1, count + 1))
    first, second = np.argsort(sizes)[::-1][:2] + 1
    if sizes[second - 1] < 0.25 * sizes[first - 1]:
        return None
    lungs = ndi.binary_fill_holes((labels == first) | (labels == second))
    ys, xs = np.nonzero(lungs)
    crop = lungs[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    soft = np.asarray(Image.fromarray(crop.astype(np.uint8) * 255).resize((128, 128), Image.BILINEAR))
    binary = ndi.binary_opening(soft > 127, structure=np.ones((5, 5)))  # drop thin annotation spikes
    soft = ndi.gaussian_filter(binary.astype(np.float32) * 255, 1.2)
    binary = soft > 127
    halves = binary[:, :64].sum(), binary[:, 64:].sum()
    # a lung cut off by the film edge shows as a long straight run along the crop's border
    flat_edge = max(binary[0].sum(), binary[-1].sum()) > 0.2 * 128 or \
        max(binary[:, 0].sum(), binary[:, -1].sum()) > 0.6 * 128
    if min(halves) < 0.25 * max(halves) or flat_edge or _solidity(binary) < 0.8:
        return None
    return np.round(soft).astype(np.uint8)


def _solidity(mask: np.ndarray) -> float:
    """Lowest area / convex-hull area of the two lungs: ragged or fragmented masks score low."""
    labels, count = ndi.label(mask)
    sizes = ndi.sum(mask, labels, range(1, count + 1))
    return min(float(sizes[k - 1]) / max(float(convex_hull_image(labels == k).sum()), 1.0)
               for k in np.argsort(sizes)[::-1][:2] + 1)


@dataclass(frozen=True)
class LungGeometry:
    """Per-mask geometry at one image size: the two lungs and where their zones lie."""

    right: np.ndarray      # bool, patient's right lung (image left)
    left: np.ndarray       # bool, patient's left lung (image right)
    edge_dist: np.ndarray  # float16 px, distance to the lung edge inside the lungs
    top: dict[str, float]  # side -> apex row (px)
    bottom: np.ndarray     # per column: lowest lung row (px), -1 where no lung

    def lung(self, side: str) -> np.ndarray:
        return self.left if side == "left" else self.right


@functools.lru_cache(maxsize=512)
def lung_geometry(index: int, size: int) -> LungGeometry:
    """Place mask ``index`` of the bank in the lung box of a ``size`` image; split and measure."""
    base = lung_mask(index)
    x0, y0, x1, y1 = (round(v * size) for v in LUNG_BOX)
    placed = np.zeros((size, size), bool)
    resized = Image.fromarray(base).resize((x1 - x0, y1 - y0), Image.BICUBIC)
    placed[y0:y1, x0:x1] = np.asarray(resized) > 127
    labels, count = ndi.label(placed)
    sizes = ndi.sum(placed, labels, range(1, count + 1))
    a, b = np.argsort(sizes)[::-1][:2] + 1
    ca, cb = (np.nonzero(labels == k)[1].mean() for k in (a, b))
    right, left = (labels == a, labels == b) if ca < cb else (labels == b, labels == a)
    edge_dist = ndi.distance_transform_edt(placed)
    rows = np.arange(size)[:, None]
    bottom = np.where(placed.any(0), (placed * rows).max(0), -1)
    top = {side: float(np.nonzero(m.any(1))[0][0]) for side, m in (("right", right), ("left", left))}
    return LungGeometry(right, left, edge_dist.astype(np.float16), top, bottom)


# ---------------------------------------------------------------------------------------------
# Anatomy banks per size (cached): coordinates, noise textures, rib cages, vessel trees, spine

@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised pixel-centre coordinates (x, y) in [0, 1]."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.meshgrid(c, c)


@functools.lru_cache(maxsize=8)
def _textures(size: int) -> np.ndarray:
    """Noise fields (2, N_VARIANTS, size, size), zero mean, unit std: [0] coarse, [1] fine grain."""
    rng = np.random.default_rng(1234 + size)
    out = []
    for sigma in (0.014 * size, 0.004 * size + 0.3):
        for _ in range(N_VARIANTS):
            t = ndi.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), sigma, mode="wrap")
            out.append((t - t.mean()) / t.std())
    return np.stack(out).reshape(2, N_VARIANTS, size, size)


def _rib_curve(t: np.ndarray, y0: float, droop: float) -> np.ndarray:
    """Centre row (normalised) of a posterior rib at lateral distance ``t`` from the spine."""
    return y0 - 0.03 * np.sin(np.pi * np.clip(t, 0, 1) * 0.75) + droop * t ** 2


@functools.lru_cache(maxsize=8)
def _rib_cages(size: int) -> np.ndarray:
    """Rib cages and clavicles (N_VARIANTS, size, size) as bone attenuation."""
    xs, ys = _grid(size)
    rng = np.random.default_rng(99 + size)
    cages = []
    for _ in range(N_VARIANTS):
        cage = np.zeros((size, size), np.float32)
        spacing = rng.uniform(0.062, 0.07)
        first = rng.uniform(0.075, 0.095)
        half_width = rng.uniform(0.40, 0.43)
        for sign in (-1, 1):  # image left (patient right) and right
            t = (xs - MIDLINE) * sign / half_width  # 0 at the spine, 1 at the chest wall
            inside = (t > 0.06) & (t < 1.04)
            for i in range(10):
                thick = (0.011 + 0.0008 * i) * (1 - 0.25 * t)
                centre = _rib_curve(t, first + i * spacing, 0.13 + 0.01 * i)
                d = (ys - centre) / thick
                band = np.clip(1 - d ** 2, 0, 1) ** 0.35 + 0.6 * np.exp(-((d - 0.85) / 0.22) ** 2)
                cage += np.where(inside, band * (0.55 + 0.45 * (1 - t)), 0) * 0.115
                # anterior rib: fainter, from the chest wall sweeping down towards the midline
                ta = np.clip(t, 0.35, 1.0)
                centre_a = first + (i - 0.6) * spacing + 0.03 + 0.16 * (1 - ta) ** 1.3
                da = (ys - centre_a) / (thick * 1.1)
                anterior = (t > 0.38) & (t < 1.0) & (i < 7)
                cage += np.where(anterior, np.clip(1 - da ** 2, 0, 1) ** 0.5, 0) * 0.045
            # clavicle: from the manubrium out and slightly up to the shoulder
            tc = (xs - MIDLINE) * sign / 0.40
            centre_c = 0.11 - 0.03 * tc + 0.03 * np.sin(np.pi * tc) * 0.6 + rng.uniform(-0.01, 0.01)
            dc = (ys - centre_c) / (0.017 * (1.1 - 0.3 * tc))
            clav = np.clip(1 - dc ** 2, 0, 1) ** 0.4 + 0.5 * np.exp(-(np.abs(dc) - 0.9) ** 2 / 0.05)
            cage += np.where((tc > 0.08) & (tc < 0.95), clav, 0) * 0.22
        cages.append(ndi.gaussian_filter(cage, 0.0025 * size))
    return np.stack(cages)


@functools.lru_cache(maxsize=8)
def _vessel_trees(size: int) -> np.ndarray:
    """Branching pulmonary vessel markings (N_VARIANTS, size, size), densest at the hila."""
    rng = np.random.default_rng(7 + size)
    trees = []
    for _ in range(N_VARIANTS):
        acc = np.zeros((size, size), np.float32)
        for sign in (-1, 1):
            hilum = np.array([MIDLINE + sign * 0.1, 0.44 - 0.02 * (sign > 0)])
            # lobar trunks (0 rad = lateral, positive = downward): upper, middle, lower lobes
            stack = [(hilum + rng.normal(0, 0.008, 2), np.deg2rad(a + rng.normal(0, 8)),
                      rng.uniform(0.045, 0.07), 1.0) for a in (-105, -70, -20, 35, 70, 100)]
            while stack:
                start, angle, length, width = stack.pop()
                direction = np.array([np.cos(angle) * sign, np.sin(angle)])
                steps = max(int(length * size * 2), 2)
                t = np.linspace(0, 1, steps)[:, None]
                normal = np.array([-direction[1], direction[0]])
                pts = start + t * direction * length + rng.normal(0, 0.25) * length * (t * (1 - t)) * normal
                cols = np.clip((pts[:, 0] * size).astype(int), 0, size - 1)
                rows = np.clip((pts[:, 1] * size).astype(int), 0, size - 1)
                np.add.at(acc, (rows, cols), width ** 1.3 * (length * size / steps))
                if width > 0.07:
                    straight = rng.uniform(-0.15, 0.15)  # one branch goes on, one turns off
                    turn = rng.uniform(0.45, 0.9) * rng.choice([-1, 1])
                    stack.append((pts[-1], angle + straight, length * rng.uniform(0.75, 0.9), width * 0.8))
                    stack.append((pts[-1], angle + turn, length * rng.uniform(0.6, 0.8), width * rng.uniform(0.55, 0.7)))
        fine = ndi.gaussian_filter(acc, 0.0035 * size + 0.2)
        coarse = ndi.gaussian_filter(acc, 0.01 * size)
        tree = fine + 1.5 * coarse
        trees.append(tree / np.percentile(tree[tree > 0], 99))
    return np.stack(trees)


@functools.lru_cache(maxsize=8)
def _spine(size: int) -> np.ndarray:
    """A straight thoracic spine column at the midline: bodies, pedicles, discs, spinous processes."""
    xs, ys = _grid(size)
    dx = xs - MIDLINE
    level = ys / 0.047
    phase = level - np.floor(level)
    body = np.exp(-(dx / 0.036) ** 6) * (0.75 + 0.25 * np.clip(np.abs(np.sin(np.pi * phase)), 0, 1) ** 0.3)
    disc = np.exp(-((phase - 0.02) / 0.08) ** 2) * np.exp(-(dx / 0.034) ** 6)
    pedicles = sum(np.exp(-(((dx - s * 0.027) / 0.009) ** 2 + ((phase - 0.4) / 0.16) ** 2)) for s in (-1, 1))
    spinous = np.exp(-((dx / 0.008) ** 2 + ((phase - 0.75) / 0.2) ** 2))
    column = 0.22 * body - 0.08 * disc + 0.12 * pedicles + 0.06 * spinous
    return ndi.gaussian_filter(column * (ys > 0.02), 0.002 * size + 0.2).astype(np.float32)


@dataclass(frozen=True)
class _StaticLayers:
    """Attenuation layers that no report changes, per image size."""

    body: np.ndarray         # soft tissue: chest wall, neck, sloping shoulders, abdomen
    mediastinum: np.ndarray  # extra soft tissue between the lungs
    rib_fade: np.ndarray     # 1 inside the body, 0 above the shoulders (no ribs in the air)
    column: np.ndarray       # spine minus the trachea's air, straight
    aorta: tuple[np.ndarray, np.ndarray]     # normal, tortuous: knob + descending aorta
    knob: tuple[np.ndarray, np.ndarray]      # bool masks of the aortic knob
    knob_rim: tuple[np.ndarray, np.ndarray]  # calcified rim of the knob (soft line)
    breasts: np.ndarray      # soft tissue over the lower lateral lungs (scaled per image)


@functools.lru_cache(maxsize=8)
def _static_layers(size: int) -> _StaticLayers:
    xs, ys = _grid(size)
    dx = xs - MIDLINE
    adx = np.abs(dx)
    body_top = -0.03 + 0.1 * _smoothstep((adx - 0.07) / 0.18) + 0.12 * _smoothstep((adx - 0.36) / 0.12)
    half_width = 0.455 + 0.025 * ys
    body = np.clip(1 - (dx / half_width) ** 2, 0, 1) ** 0.3 * _smoothstep((ys - body_top) / 0.03)
    body *= 0.8 + 0.2 * _smoothstep((ys - 0.05) / 0.25)
    mediastinum = _smoothstep((0.07 - np.abs(dx - 0.01)) / 0.04)
    trachea = _smoothstep((0.014 - adx) / 0.006) * _smoothstep((0.34 - ys) / 0.03)
    # breasts: half-discs hanging over the lower lateral lungs with a soft lower edge
    breasts = sum(_smoothstep((1 - ((xs - MIDLINE - s * 0.27) / 0.2) ** 2 - ((ys - 0.62) / 0.16) ** 2) * 3)
                  * _smoothstep((ys - 0.5) / 0.12) for s in (-1, 1))
    aortas, knobs, rims = [], [], []
    for knob_x in (MIDLINE + 0.035, MIDLINE + 0.07):
        dist = ((xs - knob_x) / 0.035) ** 2 + ((ys - 0.28) / 0.03) ** 2
        knob = _smoothstep((1 - dist) * 4)
        path = knob_x - 0.015 + 0.04 * (ys - 0.28)
        descending = _smoothstep((0.02 - np.abs(xs - path)) / 0.01) * (ys > 0.28) * (ys < 0.7)
        rim = (np.abs(dist - 0.8) < 0.12) & (ys < 0.28) & (xs > knob_x - 0.01)
        aortas.append(np.maximum(knob, 0.7 * descending).astype(np.float32))
        knobs.append(knob > 0.4)
        rims.append(ndi.gaussian_filter(rim.astype(np.float32), 0.5))
    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
    return _StaticLayers(f32(0.95 * body), f32(0.1 * mediastinum),
                         f32(_smoothstep((ys - body_top) / 0.05)),
                         f32(0.45 * _spine(size) - 0.1 * trachea), tuple(aortas), tuple(knobs), tuple(rims),
                         f32(breasts))


# ---------------------------------------------------------------------------------------------
# One-time set-up

class _WarmUp:
    """The per-size one-time set-up of the renderer (lung-mask list, anatomy banks), done once per size
    under a lock, so that a request arriving while :func:`warm_up` runs in the background waits for it
    instead of building the same banks a second time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sizes: set[int] = set()

    def is_done(self, size: int) -> bool:
        return size in self._sizes

    def run(self, size: int) -> None:
        if size in self._sizes:
            return
        with self._lock:
            if size in self._sizes:
                return
            usable_lung_mask_names()
            _grid(size), _textures(size), _rib_cages(size), _vessel_trees(size), _static_layers(size)
            self._sizes.add(size)


_WARM_UP = _WarmUp()


def warm_up(size: int = 224) -> None:
    """Build what every rendered image of ``size`` needs (about 2 s the first time, nothing after):
    the app calls it in a background thread at start-up so that the first gallery answers at once."""
    _WARM_UP.run(size)


def is_warm(size: int = 224) -> bool:
    """Whether :func:`warm_up` has finished for ``size`` (the pages say "preparing ... (first use)" until then)."""
    return _WARM_UP.is_done(size)


# ---------------------------------------------------------------------------------------------
# Rendering

def _seed_for(report: Report, seed: int, size: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(report.report_id.encode()), size])


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0, 1)
    return x * x * (3 - 2 * x)


class _Canvas:
    """The attenuation layers and finding masks of one image while it is being drawn."""

    def __init__(self, report: Report, rng: np.random.Generator, size: int):
        self.report, self.rng, self.size = report, rng, size
        self.xs, self.ys = _grid(size)
        self.mesh = " ".join(report.mesh).lower()
        self.geo = lung_geometry(int(rng.integers(lung_mask_count())), size)
        self.variant = int(rng.integers(N_VARIANTS))
        self.textures = _textures(size)
        self.lungs = self.geo.left | self.geo.right
        self.air = self.lungs.astype(np.float32)  # 1 where the lung holds air
        self.extra = np.zeros((size, size), np.float32)  # findings' attenuation
        self.vessel_gain = np.ones((size, size), np.float32)
        self.masks: dict[str, np.ndarray] = {}
        self.labels = report.labels

    # helpers -------------------------------------------------------------------------------
    def texture(self, scale: float = 1.0, fine: bool = False) -> np.ndarray:
        t = self.textures[int(fine), int(self.rng.integers(N_VARIANTS))]
        shift = self.rng.integers(self.size, size=2)
        return np.roll(t, tuple(shift), axis=(0, 1)) * scale

    def sides(self, finding: Finding, default_both: bool = False) -> list[str]:
        if finding.side == "bilateral" or (finding.side is None and default_both):
            return ["right", "left"]
        if finding.side in ("left", "right"):
            return [finding.side]
        if finding.zone in ("lingula", "retrocardiac"):
            return ["left"]
        return [("right", "left")[int(self.rng.integers(2))]]

    def zone(self, side: str, zone: str | None) -> np.ndarray:
        """Pixels of one lung in a named zone (whole lung when the zone is unknown)."""
        lung = self.geo.lung(side)
        top = self.geo.top[side]
        bottom = float(np.nonzero(lung.any(1))[0][-1])
        rel = (self.ys * self.size - top) / max(bottom - top, 1)
        dx = np.abs(self.xs - MIDLINE)
        cols = np.nonzero(lung.any(0))[0]
        medial = np.abs(cols / self.size - MIDLINE).min()
        lateral = np.abs(cols / self.size - MIDLINE).max()
        rel_x = (dx - medial) / max(lateral - medial, 1e-3)  # 0 medial, 1 at the chest wall
        bands = {"upper": (0, 0.38), "middle": (0.32, 0.66), "lower": (0.6, 1.01),
                 "base": (0.7, 1.01), "apex": (0, 0.2), "lingula": (0.45, 0.8),
                 "retrocardiac": (0.6, 1.01), "hilum": (0.3, 0.6)}
        lo, hi = bands.get(zone, (0, 1.01))
        region = lung & (rel >= lo) & (rel < hi)
        if zone in ("lingula", "retrocardiac", "hilum"):
            region &= rel_x < (0.45 if zone != "retrocardiac" else 0.35)
        return region if region.sum() > 12 else lung

    def point_in(self, region: np.ndarray, margin_px: float = 0.0) -> tuple[float, float]:
        """A random pixel (x, y) of ``region`` at least ``margin_px`` inside it when possible."""
        if margin_px > 0:
            inner = region & (self.geo.edge_dist > margin_px)
            region = inner if inner.any() else region
        rows, cols = np.nonzero(region)
        k = int(self.rng.integers(rows.size))
        return (cols[k] + 0.5) / self.size, (rows[k] + 0.5) / self.size

    def mark(self, label: str, mask: np.ndarray) -> None:
        self.masks[label] = self.masks.get(label, np.zeros_like(mask, bool)) | mask

    def blob(self, cx: float, cy: float, rx: float, ry: float, angle: float = 0.0) -> np.ndarray:
        cx, cy, rx, ry = float(cx), float(cy), float(rx), float(ry)  # keep float32 arithmetic
        c, s = float(np.cos(angle)), float(np.sin(angle))
        x, y = self.xs - cx, self.ys - cy
        u = (x * c + y * s) * (1 / rx)
        v = (y * c - x * s) * (1 / ry)
        return u * u + v * v

    def line(self, points: np.ndarray, width_px: float, value: float) -> np.ndarray:
        """Rasterise a polyline (normalised (x, y) points) as a soft line; return its footprint."""
        dense = []
        for a, b in zip(points[:-1], points[1:]):
            n = max(int(np.hypot(*(b - a)) * self.size * 2), 2)
            dense.append(a + np.outer(np.linspace(0, 1, n), b - a))
        pts = np.concatenate(dense)
        acc = np.zeros((self.size, self.size), np.float32)
        cols = np.clip((pts[:, 0] * self.size).astype(int), 0, self.size - 1)
        rows = np.clip((pts[:, 1] * self.size).astype(int), 0, self.size - 1)
        acc[rows, cols] = 1.0
        soft = ndi.gaussian_filter(acc, max(width_px / 2.5, 0.5))
        soft /= max(soft.max(), 1e-6)
        self.extra += value * soft
        return soft > 0.25


def _curve(p0, p1, p2, n: int = 24) -> np.ndarray:
    """Quadratic Bezier through control points (normalised coordinates)."""
    t = np.linspace(0, 1, n)[:, None]
    p0, p1, p2 = (np.asarray(p, np.float32) for p in (p0, p1, p2))
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2


# Finding painters: each draws one finding on the canvas and marks its pixels.

def _draw_effusion(cv: _Canvas, f: Finding) -> None:
    for side in cv.sides(f):
        lung = cv.geo.lung(side)
        rows = np.nonzero(lung.any(1))[0]
        height = rows[-1] - rows[0]
        frac = EFFUSION_BY_SEVERITY.get(f.severity, 0.2) * cv.rng.uniform(0.85, 1.15)
        if "blunted" in f.mesh.lower():
            frac = 0.08
        level = (rows[-1] - frac * height) / cv.size
        cols = np.nonzero(lung.any(0))[0] / cv.size
        lateral_x = cols.min() if side == "right" else cols.max()
        medial_x = cols.max() if side == "right" else cols.min()
        lat = np.clip((cv.xs - medial_x) / (lateral_x - medial_x), 0, 1)
        meniscus = level - 0.45 * frac * height / cv.size * lat ** 2.2  # climbs the chest wall
        fluid = lung & (cv.ys > meniscus)
        gradient = _smoothstep((cv.ys - meniscus) / 0.035)
        cv.extra += np.where(lung, gradient, 0) * 0.08
        cv.air *= 1 - np.where(lung, gradient, 0)
        cv.mark("pleural effusion", fluid)


def _draw_opacity(cv: _Canvas, f: Finding) -> None:
    extent = EXTENT_BY_SEVERITY.get(f.severity, 1.0)
    patchy = any(w in f.mesh.lower() for w in ("patchy", "scattered", "streaky", "interstitial"))
    for side in cv.sides(f):
        region = cv.zone(side, f.zone)
        cx, cy = cv.point_in(region, 0.03 * cv.size)
        r = cv.rng.uniform(0.05, 0.08) * extent
        dist = cv.blob(cx, cy, r, r * cv.rng.uniform(0.7, 1.2), cv.rng.uniform(0, np.pi))
        field_ = 1.0 - dist + 0.45 * cv.texture() * (1.5 if patchy else 1.0)
        lesion = _smoothstep(field_ * 0.9) * cv.geo.lung(side) * (0.9 + 0.1 * cv.texture(fine=True))
        strength = cv.rng.uniform(0.45, 0.75)
        cv.extra += lesion * strength * 0.08
        cv.air *= 1 - strength * lesion
        cv.mark("opacity", lesion > 0.3)


def _draw_atelectasis(cv: _Canvas, f: Finding) -> None:
    for side in cv.sides(f):
        region = cv.zone(side, f.zone or "base")
        cx, cy = cv.point_in(region, 0.02 * cv.size)
        length = cv.rng.uniform(0.07, 0.12) * EXTENT_BY_SEVERITY.get(f.severity, 1.0)
        thickness = cv.rng.uniform(0.008, 0.014)
        angle = cv.rng.uniform(-0.35, 0.25) * (1 if side == "right" else -1)
        band = _smoothstep((1.0 - cv.blob(cx, cy, length, thickness, angle)) * 2)
        band *= cv.geo.lung(side) * (0.85 + 0.15 * cv.texture())
        cv.extra += band * 0.1
        cv.air *= 1 - 0.7 * band
        cv.mark("atelectasis", band > 0.3)


def _draw_nodule(cv: _Canvas, f: Finding) -> None:
    mesh = f.mesh.lower()
    count = int(cv.rng.integers(2, 5)) if "multiple" in mesh else 1
    is_mass = mesh.startswith("mass")
    for side in cv.sides(f):
        for _ in range(count):
            region = cv.zone(side, f.zone)
            cx, cy = cv.point_in(region, 0.03 * cv.size)
            radius = cv.rng.uniform(0.028, 0.045) if is_mass else cv.rng.uniform(0.011, 0.022)
            radius = max(radius, 2.2 / cv.size)
            d = np.sqrt(cv.blob(cx, cy, radius, radius * cv.rng.uniform(0.85, 1.1)))
            profile = np.sqrt(np.clip(1 - d ** 2, 0, 1)) + 0.25 * _smoothstep((1.25 - d) * 4)
            cv.extra += profile * cv.rng.uniform(0.3, 0.38)
            cv.mark("nodule", d < 1.05)


def _draw_granuloma(cv: _Canvas, f: Finding) -> None:
    mesh = f.mesh.lower()
    count = int(cv.rng.integers(2, 5)) if ("multiple" in mesh or "scattered" in mesh) else 1
    for side in cv.sides(f):
        for _ in range(count):
            if f.zone in ("hilum", "mediastinum", "paratracheal") or "lymph" in mesh:
                sign = 1 if side == "left" else -1
                cx = MIDLINE + sign * cv.rng.uniform(0.08, 0.13)
                cy = cv.rng.uniform(0.36, 0.48)
            else:
                cx, cy = cv.point_in(cv.zone(side, f.zone), 0.02 * cv.size)
            radius = max(cv.rng.uniform(0.006, 0.010), 1.4 / cv.size)
            d = np.sqrt(cv.blob(cx, cy, radius, radius))
            cv.extra += np.clip(1.15 - d, 0, 1) ** 0.5 * 0.6
            cv.mark("calcified granuloma", d < 1.6)


def _draw_pneumothorax(cv: _Canvas, f: Finding) -> None:
    extent = {"small": 0.6, "mild": 0.6, "moderate": 1.1, "large": 1.7, "severe": 2.0}.get(f.severity, 1.0)
    for side in cv.sides(f):
        lung = cv.geo.lung(side)
        top = cv.geo.top[side] / cv.size
        rows = np.nonzero(lung.any(1))[0]
        height = (rows[-1] - rows[0]) / cv.size
        rel = np.clip((cv.ys - top) / height, 0, 1)
        # rim of collapsed lung: widest at the apex, tapering down the lateral wall
        rim_px = extent * cv.size * 0.05 * (1.3 - 1.1 * rel) * cv.rng.uniform(0.8, 1.2)
        gap = lung & (cv.geo.edge_dist < rim_px)
        if extent < 1.0:
            gap &= rel < 0.55
        edge = lung & (np.abs(cv.geo.edge_dist - rim_px) < 0.9) & ~gap
        edge &= ndi.binary_dilation(gap, iterations=2)
        cv.vessel_gain *= np.where(gap, 0.0, 1.0)
        cv.air += np.where(gap, 0.25, 0.0)
        cv.extra += ndi.gaussian_filter(edge.astype(np.float32), 0.5) * 0.35
        cv.mark("pneumothorax", gap)


def _draw_edema(cv: _Canvas, f: Finding) -> None:
    extent = EXTENT_BY_SEVERITY.get(f.severity, 1.0)
    haze = np.zeros_like(cv.extra)
    for sign in (-1, 1):
        haze = np.maximum(haze, np.exp(-cv.blob(MIDLINE + sign * 0.14, 0.5, 0.17 * extent, 0.2 * extent)))
    haze *= cv.lungs * (0.8 + 0.2 * cv.texture())
    cv.extra += haze * 0.06
    cv.air *= 1 - 0.45 * haze
    cv.vessel_gain *= 1 + 0.6 * haze
    # Kerley B lines: short horizontal lines reaching the lateral pleura at the bases
    for side, sign in (("right", -1), ("left", 1)):
        lung = cv.geo.lung(side)
        rows = np.nonzero(lung.any(1))[0]
        for _ in range(int(cv.rng.integers(3, 7))):
            y = cv.rng.uniform(0.72, 0.93) * (rows[-1] - rows[0]) + rows[0]
            row = int(y)
            cols = np.nonzero(lung[row])[0]
            if cols.size < 4:
                continue
            x_wall = (cols.max() if sign > 0 else cols.min()) / cv.size
            pts = np.array([[x_wall - sign * 0.035, y / cv.size], [x_wall, y / cv.size]])
            cv.line(pts, 0.9, 0.12)
    cv.mark("edema", haze > 0.25)


def _lung_volume(cv: _Canvas, factor: float, label: str) -> None:
    """Stretch (factor > 1) or shrink the lungs vertically about their apices; flatten domes."""
    geo = cv.geo
    top = min(geo.top.values())
    scale_rows = top + (np.arange(cv.size) - top) / factor
    src = np.clip(scale_rows, 0, cv.size - 1).astype(int)
    new = {}
    for side in ("right", "left"):
        lung = geo.lung(side)[src]
        if factor > 1:  # flat diaphragm: cut the dome at a level line
            rows = np.nonzero(lung.any(1))[0]
            lung &= (np.arange(cv.size) < rows[-1] - 0.35 * (rows[-1] - rows[0]) * 0.12)[:, None]
        new[side] = lung
    changed = (new["right"] | new["left"]) ^ cv.lungs
    cv.geo = LungGeometry(new["right"], new["left"], geo.edge_dist[src], geo.top, geo.bottom)
    cv.lungs = new["right"] | new["left"]
    cv.air = cv.lungs.astype(np.float32) * (1.12 if factor > 1 else 0.92)
    cv.vessel_gain *= 0.75 if factor > 1 else 1.3
    cv.mark(label, cv.lungs if factor > 1 else changed | cv.lungs)


def _draw_elevated_diaphragm(cv: _Canvas, f: Finding) -> None:
    for side in cv.sides(f):
        lung = cv.geo.lung(side)
        rows = np.nonzero(lung.any(1))[0]
        lift = int((rows[-1] - rows[0]) * cv.rng.uniform(0.12, 0.2))
        raised = lung & np.roll(lung, lift, axis=0)
        raised[: rows[0] + lift] = lung[: rows[0] + lift]
        removed = lung & ~raised
        cv.air *= np.where(removed, 0.0, 1.0)
        cv.lungs &= ~removed
        cv.mark("elevated diaphragm", removed)


def _draw_scarring(cv: _Canvas, f: Finding) -> None:
    for side in cv.sides(f):
        region = cv.zone(side, f.zone)
        if "pleura" in f.mesh.lower() and f.zone == "apex" or (f.zone == "apex"):
            cap = region & (cv.geo.edge_dist < 0.02 * cv.size)
            cv.extra += ndi.gaussian_filter(cap.astype(np.float32), 0.7) * 0.3
            cv.mark("scarring", cap)
            continue
        footprint = np.zeros_like(region)
        cx, cy = cv.point_in(region, 0.02 * cv.size)
        for _ in range(int(cv.rng.integers(2, 4))):
            angle = cv.rng.uniform(-0.8, 0.8)
            length = cv.rng.uniform(0.03, 0.06)
            d = np.array([np.cos(angle), np.sin(angle)]) * length
            start = np.array([cx, cy]) + cv.rng.normal(0, 0.01, 2)
            footprint |= cv.line(np.array([start - d, start + d]), 1.2, 0.22)
        cv.mark("scarring", footprint)


def _draw_interstitial(cv: _Canvas, f: Finding) -> None:
    regions = [cv.zone(s, f.zone) for s in cv.sides(f, default_both=True)]
    region = np.logical_or.reduce(regions)
    net = np.abs(cv.texture(fine=True)) < 0.2  # thin contour lines of the noise field: a reticular net
    net = ndi.gaussian_filter(net.astype(np.float32), 0.5) * region
    cv.extra += net * 0.14 * EXTENT_BY_SEVERITY.get(f.severity, 1.0)
    cv.mark("interstitial markings", region)


def _draw_hilar(cv: _Canvas, f: Finding) -> None:
    for side in cv.sides(f, default_both=True):
        sign = 1 if side == "left" else -1
        cx = MIDLINE + sign * cv.rng.uniform(0.1, 0.125)
        lobes = np.zeros_like(cv.extra)
        for dy in (-0.03, 0.0, 0.035):
            d = cv.blob(cx + sign * cv.rng.uniform(0, 0.015), 0.44 + dy, 0.03, 0.025)
            lobes = np.maximum(lobes, _smoothstep((1.2 - d) * 2))
        cv.extra += lobes * 0.3
        cv.mark("hilar prominence", lobes > 0.3)


def _draw_hiatal_hernia(cv: _Canvas, f: Finding) -> None:
    cx, cy = MIDLINE + cv.rng.uniform(0.0, 0.05), cv.rng.uniform(0.63, 0.68)
    r = cv.rng.uniform(0.045, 0.065) * EXTENT_BY_SEVERITY.get(f.severity, 1.0)
    sac = cv.blob(cx, cy, r * 1.2, r) < 1
    level = cy - 0.2 * r
    gas = sac & (cv.ys < level)
    cv.extra += ndi.gaussian_filter(sac.astype(np.float32), 1.0) * 0.15
    cv.extra -= ndi.gaussian_filter(gas.astype(np.float32), 0.6) * 0.35
    cv.mark("hiatal hernia", sac)


def _draw_devices(cv: _Canvas, f: Finding) -> None:
    mesh = f.mesh.lower()
    rng = cv.rng
    if any(k in mesh for k in ("pacemaker", "defibrillator", "implanted medical device", "heart")):
        sign = -1 if f.side == "right" else 1
        cx, cy = MIDLINE + sign * rng.uniform(0.26, 0.32), rng.uniform(0.13, 0.2)
        box = np.maximum(np.abs(cv.xs - cx) / 0.045, np.abs(cv.ys - cy) / 0.032) < 1
        cv.extra += ndi.gaussian_filter(box.astype(np.float32), 0.6) * 1.2
        lead = _curve((cx, cy), (MIDLINE + sign * 0.05, 0.2), (MIDLINE + 0.06, 0.64))
        cv.mark("devices", box | cv.line(lead, 1.6, 0.9))
    elif f.zone == "abdomen" or "breast" in mesh or "axilla" in mesh:
        # surgical clips: a small cluster under the diaphragm or over the breast / axilla
        sign = -1 if f.side == "right" else 1 if f.side == "left" else rng.choice([-1, 1])
        low = f.zone == "abdomen"
        cx = MIDLINE + sign * rng.uniform(0.12, 0.25) if low else MIDLINE + sign * rng.uniform(0.3, 0.38)
        cy = (cv.geo.bottom.max() / cv.size + rng.uniform(0.04, 0.1)) if low else rng.uniform(0.45, 0.65)
        footprint = np.zeros_like(cv.lungs)
        for _ in range(int(rng.integers(2, 6))):
            x, y, a = cx + rng.normal(0, 0.02), cy + rng.normal(0, 0.015), rng.uniform(0, np.pi)
            d = np.array([np.cos(a), np.sin(a)]) * 0.012
            footprint |= cv.line(np.array([[x, y] - d, [x, y] + d]), 1.2, 1.0)
        cv.mark("devices", footprint)
    elif any(k in mesh for k in ("sternotomy", "surgical instruments", "sutures", "clip", "valve")):
        footprint = np.zeros_like(cv.lungs)
        for i in range(int(rng.integers(4, 7))):
            y = 0.3 + i * 0.06
            loop = cv.blob(MIDLINE + rng.normal(0, 0.004), y, 0.02, 0.011, rng.normal(0, 0.2))
            ring = np.abs(loop - 1) < 0.35
            cv.extra += ndi.gaussian_filter(ring.astype(np.float32), 0.5) * 1.1
            footprint |= ring
        cv.mark("devices", footprint)
    elif "trachea" in mesh or "tracheostom" in mesh:
        tube = np.array([[MIDLINE, 0.0], [MIDLINE + 0.003, 0.18], [MIDLINE, 0.27]])
        cv.mark("devices", cv.line(tube, 2.2, 0.55))
    else:  # central venous catheter: from the subclavian vein to the cavoatrial junction
        sign = 1 if f.side == "left" else -1
        entry = (MIDLINE + sign * rng.uniform(0.22, 0.3), rng.uniform(0.1, 0.14))
        path = _curve(entry, (MIDLINE - 0.035, 0.2), (MIDLINE - 0.04, rng.uniform(0.4, 0.5)))
        cv.mark("devices", cv.line(path, 1.3, 0.75))


def _draw_fracture(cv: _Canvas, f: Finding) -> None:
    if f.zone == "spine":
        y = cv.rng.uniform(0.4, 0.7)
        wedge = (np.abs(cv.xs - MIDLINE) < 0.04) & (np.abs(cv.ys - y) < 0.012)
        cv.extra += ndi.gaussian_filter(wedge.astype(np.float32), 0.6) * 0.35
        cv.mark("fracture", wedge)
        return
    for side in cv.sides(f):
        sign = 1 if side == "left" else -1
        i = int(cv.rng.integers(3, 9))
        t = cv.rng.uniform(0.6, 0.9)
        x = MIDLINE + sign * t * 0.415
        y = float(_rib_curve(np.array(t), 0.085 + i * 0.066, 0.13 + 0.01 * i))
        gap = cv.blob(x, y, 0.004, 0.02, 0.2 * sign) < 1
        callus = cv.blob(x, y, 0.018, 0.016) < 1
        cv.extra += ndi.gaussian_filter(callus.astype(np.float32), 1.0) * 0.16
        cv.extra -= ndi.gaussian_filter(gap.astype(np.float32), 0.5) * 0.12
        cv.mark("fracture", callus)


PAINTERS = {
    "pleural effusion": _draw_effusion,
    "opacity": _draw_opacity,
    "atelectasis": _draw_atelectasis,
    "nodule": _draw_nodule,
    "calcified granuloma": _draw_granuloma,
    "pneumothorax": _draw_pneumothorax,
    "edema": _draw_edema,
    "elevated diaphragm": _draw_elevated_diaphragm,
    "scarring": _draw_scarring,
    "interstitial markings": _draw_interstitial,
    "hilar prominence": _draw_hilar,
    "hiatal hernia": _draw_hiatal_hernia,
    "devices": _draw_devices,
    "fracture": _draw_fracture,
}
# Drawn elsewhere because they change anatomy, not add to it: cardiomegaly (heart), hyperinflation
# and low lung volumes (lung shape), scoliosis and degenerative spine (spine), tortuous aorta and
# aortic calcification (aortic knob).


def _heart(cv: _Canvas, ctr: float) -> np.ndarray:
    """Soft heart density for a cardiothoracic ratio ``ctr``, resting on the diaphragm.

    A tilted ellipse whose long axis runs from the great vessels (upper image left) to the apex
    (lower image right), sized so that its horizontal extent is exactly ``ctr`` x thorax width.
    """
    cols = np.nonzero(cv.lungs.any(0))[0]
    thorax = (cols.max() - cols.min()) / cv.size
    width = ctr * thorax
    tilt, aspect = 0.45, 0.85  # radians; short/long axis
    c, s = float(np.cos(tilt)), float(np.sin(tilt))
    semi_long = (width / 2) / np.sqrt(c * c + (aspect * s) ** 2)
    semi_short = aspect * semi_long
    half_height = np.sqrt((semi_long * s) ** 2 + (semi_short * c) ** 2)
    cx = MIDLINE - 0.32 * width + width / 2
    cy = cv.geo.bottom.max() / cv.size - 0.9 * half_height
    # below its centre the silhouette keeps its width down to the diaphragm (no lung under it)
    x, y = cv.xs - float(cx), np.minimum(cv.ys - float(cy), 0)
    u = (x * c + y * s) * float(1 / semi_long)
    v = (y * c - x * s) * float(1 / semi_short)
    dist = u * u + v * v
    return _smoothstep((1 - dist) * 4 + 0.5) * (cv.ys > 0.25)


def render(report: Report, seed: int, size: int = 224) -> PhantomSample:
    """Render ``report`` as a frontal chest radiograph; deterministic given (report, seed, size)."""
    warm_up(size)
    rng = _seed_for(report, seed, size)
    cv = _Canvas(report, rng, size)
    labels = report.labels
    by_label: dict[str, list[Finding]] = {}
    for finding in report.findings:
        by_label.setdefault(finding.label, []).append(finding)

    if "hyperinflation" in labels:
        _lung_volume(cv, rng.uniform(1.08, 1.14), "hyperinflation")
    elif "low lung volumes" in labels:
        _lung_volume(cv, rng.uniform(0.84, 0.9), "low lung volumes")
    for label, painter in PAINTERS.items():
        if label in ("pneumothorax", "pleural effusion"):
            continue  # drawn after the heart: they sit over everything else in the lung
        for finding in by_label.get(label, ()):
            painter(cv, finding)

    # heart and mediastinum
    severity = by_label["cardiomegaly"][0].severity if "cardiomegaly" in by_label else None
    ctr = CTR_BY_SEVERITY[severity] if "cardiomegaly" in labels else rng.uniform(0.38, 0.47)
    heart = _heart(cv, ctr * rng.uniform(0.98, 1.03) if "cardiomegaly" in labels else ctr)
    heart_mask = (heart > 0.5) & (cv.ys < (cv.geo.bottom.max() + 1) / size)
    if "cardiomegaly" in labels:
        cv.mark("cardiomegaly", heart_mask)
    for label in ("pneumothorax", "pleural effusion"):  # fluid settles below the free air
        for finding in by_label.get(label, ()):
            PAINTERS[label](cv, finding)

    xs, ys = cv.xs, cv.ys
    static = _static_layers(size)
    # spine and trachea: straight, or bent for scoliosis; osteophytes for degenerative change
    column = static.column
    if "scoliosis" in labels:
        amp = rng.uniform(0.025, 0.045) * rng.choice([-1, 1])
        offset = amp * np.sin(np.pi * (ys[:, 0] - 0.1) / 0.7)
        shift_cols = np.arange(size, dtype=np.float32)[None, :] - offset[:, None] * size
        rows_idx = np.broadcast_to(np.arange(size, dtype=np.float32)[:, None], (size, size))
        column = ndi.map_coordinates(column, [rows_idx, shift_cols], order=1, mode="nearest")
        centre = MIDLINE + offset[:, None]
        cv.mark("scoliosis", (np.abs(xs - centre) < 0.045) & (ys > 0.1) & (ys < 0.85))
    else:
        centre = np.full((size, 1), MIDLINE, np.float32)
    if "degenerative spine" in labels:
        column = column.copy()
        for _ in range(int(rng.integers(3, 7))):
            level = rng.integers(4, 16) * 0.047 + 0.046
            side = rng.choice([-1, 1])
            row = min(int(level * size), size - 1)
            column += 0.16 * np.exp(-cv.blob(float(centre[row, 0]) + side * 0.04, level, 0.012, 0.005, side * 0.5))
        cv.mark("degenerative spine", (np.abs(xs - centre) < 0.06) & (ys > 0.15) & (ys < 0.85))

    # aortic knob and descending aorta, patient's left of the spine
    tortuous = "tortuous aorta" in labels
    aorta = static.aorta[int(tortuous)]
    if tortuous:
        cv.mark("tortuous aorta", static.knob[1])
    if "aortic calcification" in labels:
        cv.extra += static.knob_rim[int(tortuous)] * 0.5
        cv.mark("aortic calcification", static.knob_rim[int(tortuous)] > 0.3)

    lung_air = ndi.uniform_filter(cv.air * cv.lungs, 3) * (1 - 0.85 * heart) * (1 - 0.3 * aorta)
    depth = np.clip(cv.geo.edge_dist.astype(np.float32) * (1 / (0.06 * size)), 0, 1) ** 0.6
    gastric_y = cv.geo.bottom.max() / size + 0.04
    gastric = np.exp(-cv.blob(MIDLINE + 0.17, gastric_y, 0.05, 0.03) ** 2)
    vessels = _vessel_trees(size)[cv.variant] * cv.vessel_gain * (0.3 + 0.7 * depth)

    attenuation = (
        static.body
        + static.mediastinum * (1 - lung_air)
        + 0.05 * heart
        + 0.04 * aorta
        - lung_air * (0.36 + 0.34 * depth)
        + 0.2 * vessels
        + _rib_cages(size)[cv.variant] * (rng.uniform(0.6, 0.85) * static.rib_fade)
        + column * (1 - 0.44 * heart)
        - 0.12 * gastric * (1 - lung_air)
        + static.breasts * rng.uniform(0.0, 0.12)
        + cv.extra
    )
    texture = cv.texture(0.012) + cv.texture(0.008, fine=True)
    attenuation = np.clip(attenuation + texture * static.body, 0, None).astype(np.float32, copy=False)

    # exposure: a film-like curve, then contrast and gamma jitter
    technical = "technical quality" in cv.mesh
    k = rng.uniform(1.1, 1.6)
    white = float(1 - np.exp(-k * rng.uniform(1.2, 1.4)))  # attenuation exposed to full white
    image = np.clip((1 - np.exp(-k * attenuation)) / white, 0, 1) ** rng.uniform(0.95, 1.35)

    # geometry: slight rotation, scale and shift about the centre; masks follow by nearest
    # neighbour, all at once as bits of one integer image
    angle = np.deg2rad(rng.normal(0, 6 if technical else 2.5))
    scale = rng.uniform(0.93, 1.06)
    shift = rng.normal(0, 0.02, 2) * size
    c, s = np.cos(angle), np.sin(angle)
    matrix = np.array([[c, s], [-s, c]]) / scale  # output (row, col) -> input (row, col)
    centre_px = np.full(2, (size - 1) / 2)
    offset = centre_px - matrix @ (centre_px + shift[::-1])
    image = ndi.affine_transform(image, matrix, offset, order=1, mode="constant", cval=0.0)
    drawn = [label for label in cv.masks if label in labels]
    layers = [cv.masks[label] for label in drawn] + [cv.geo.right & cv.lungs, cv.geo.left & cv.lungs, heart_mask]
    packed = np.zeros((size, size), np.uint32)
    for bit, layer in enumerate(layers):
        packed |= layer.astype(np.uint32) << bit
    packed = ndi.affine_transform(packed, matrix, offset, order=0, mode="constant", cval=0)
    unpacked = [(packed >> bit & 1).astype(bool) for bit in range(len(layers))]

    # blur and quantum-like noise (more noise where fewer photons reach the detector)
    image = ndi.gaussian_filter(image, rng.uniform(0.35, 0.8) * size / 224)
    noise_level = rng.uniform(0.012, 0.03) * (1.8 if technical else 1.0)
    image += rng.standard_normal(image.shape, dtype=np.float32) * (noise_level * np.sqrt(0.15 + image))
    image = np.clip(image, 0, 1, out=image)

    masks = {label: m for label, m in zip(drawn, unpacked) if m.any()}
    boxes = {label: _boxes(m) for label, m in masks.items()}
    anatomy = dict(zip(ANATOMY, unpacked[len(drawn):]))
    return PhantomSample(report, image, masks, boxes, anatomy)


def _boxes(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """One (x0, y0, x1, y1) box per lesion: mask pieces closer than ~4 px count as one."""
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    top, left = max(rows[0] - 3, 0), max(cols[0] - 3, 0)
    mask = mask[top:rows[-1] + 4, left:cols[-1] + 4]
    labels, _ = ndi.label(ndi.binary_dilation(mask, iterations=2), structure=np.ones((3, 3)))
    out = []
    for k, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        ys, xs = sl
        sub = mask[sl] & (labels[sl] == k)
        if sub.any():
            rows, cols = np.nonzero(sub)
            out.append((int(left + xs.start + cols.min()), int(top + ys.start + rows.min()),
                        int(left + xs.start + cols.max() + 1), int(top + ys.start + rows.max() + 1)))
    return out


# ---------------------------------------------------------------------------------------------
# Dataset and examples

class PhantomDataset:
    """A torch-free sequence of phantom samples over one split of the report corpus.

    Item ``i`` renders report ``i // variants_per_report`` with a seed derived from
    (``seed``, ``i``), so the train split can show each report several times, each differently.
    """

    def __init__(self, reports: list[Report], seed: int = 0, size: int = 224,
                 variants_per_report: int = 1):
        if variants_per_report < 1:
            raise ValueError("variants_per_report must be at least 1.")
        self.reports, self.seed, self.size = reports, seed, size
        self.variants_per_report = variants_per_report

    def __len__(self) -> int:
        return len(self.reports) * self.variants_per_report

    def __getitem__(self, index: int) -> PhantomSample:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        report = self.reports[index // self.variants_per_report]
        return render(report, seed=self.seed * 1_000_003 + index, size=self.size)


def phantom_dataset(split: str = "test", seed: int = 0, size: int = 224,
                    variants_per_report: int = 1) -> PhantomDataset:
    """The phantom set over ``report_splits(load_reports(), seed)[split]``."""
    splits = report_splits(load_reports(), seed)
    if split not in splits:
        raise ValueError(f"Unknown split {split!r}; choose one of {sorted(splits)}.")
    return PhantomDataset(splits[split], seed, size, variants_per_report)


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


def write_examples(out_dir: Path, n: int = 16, seed: int = 0, size: int = 224,
                   split: str = "test", report_ids: list[str] | None = None) -> dict:
    """Render samples to ``out_dir``: NNN.png (8-bit grey) + NNN.json + contact_sheet.png.

    By default the first ``n`` samples of ``split``; with ``report_ids``, those reports (from the
    whole corpus, in that order), item i rendered with seed (``seed``, i) as in the dataset.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if report_ids is None:
        dataset = phantom_dataset(split, seed, size)
    else:
        by_id = {r.report_id: r for r in load_reports()}
        missing = [i for i in report_ids if i not in by_id]
        if missing:
            raise ValueError(f"Unknown report ids: {missing}")
        dataset = PhantomDataset([by_id[i] for i in report_ids], seed, size)
        split = "chosen"
    samples = [dataset[i] for i in range(min(n, len(dataset)))]
    files = []
    for i, sample in enumerate(samples):
        stem = f"{i:03d}"
        Image.fromarray(to_uint8(sample.image), mode="L").save(out_dir / f"{stem}.png", optimize=True)
        (out_dir / f"{stem}.json").write_text(json.dumps(sample_record(sample), indent=1))
        files += [f"{stem}.png", f"{stem}.json"]
    contact_sheet(samples).save(out_dir / "contact_sheet.png", optimize=True)
    files.append("contact_sheet.png")
    return {"out_dir": str(out_dir), "n": len(samples), "size": size, "seed": seed, "split": split,
            "files": files, "labels": [sorted(s.labels) for s in samples]}


def sample_record(sample: PhantomSample) -> dict:
    """JSON-able description of a sample: report, labels, findings and boxes."""
    report = sample.report
    return {
        "report_id": report.report_id,
        "text": report.text,
        "labels": sorted(sample.labels, key=FINDINGS.index),
        "findings": [{"label": f.label, "side": f.side, "zone": f.zone, "severity": f.severity,
                      "mesh": f.mesh} for f in report.findings],
        "boxes": {label: [list(b) for b in boxes] for label, boxes in sample.boxes.items()},
    }


def contact_sheet(samples: list[PhantomSample], columns: int = 4, tile: int = 128) -> Image.Image:
    """A grid of the images (``tile`` px each, so the sheet stays small) with labels under each."""
    size = min(tile, samples[0].image.shape[0])
    caption = 30
    rows = -(-len(samples) // columns)
    sheet = Image.new("L", (columns * size, rows * (size + caption)), 255)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for i, sample in enumerate(samples):
        x, y = (i % columns) * size, (i // columns) * (size + caption)
        sheet.paste(Image.fromarray(to_uint8(sample.image)).resize((size, size), Image.LANCZOS), (x, y))
        words = ", ".join(sorted(sample.labels, key=FINDINGS.index))
        line1, line2 = _wrap(words, max(size // 6, 10))
        draw.text((x + 3, y + size + 2), line1, fill=0, font=font)
        draw.text((x + 3, y + size + 15), line2, fill=0, font=font)
    return sheet


def _wrap(text: str, width: int) -> tuple[str, str]:
    if len(text) <= width:
        return text, ""
    cut = text.rfind(" ", 0, width)
    cut = cut if cut > 0 else width
    rest = text[cut:].strip()
    return text[:cut], rest if len(rest) <= width else rest[: width - 1] + "…"
