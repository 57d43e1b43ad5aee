"""Image–report pairs for training: the phantom preset or a CSV of (image path, report text).

Images are held in memory as 8-bit grey squares at the model's input size (rendered or loaded
once), so an epoch costs only the model. Each report keeps a few text variants (the full report,
sentences shuffled, sentence subsets, the impression alone), the augmentation the report-based
CLIP literature uses, and its sentences for the local (sentence–region) loss.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from medclip_core.data.tables import image_path_in, read_csv_rows
from medclip_core.errors import MedclipError

SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+")
MAX_SENTENCES = 6


@dataclass
class PairSet:
    """``images[i]`` shows report ``report_index[i]``; per-report texts, sentences and labels."""

    images: np.ndarray               # uint8 (M, S, S); a torch tensor once moved to a GPU for training
    report_index: np.ndarray         # int64 (M,)
    texts: list[list[str]]           # per report: text variants (first = full report)
    sentences: list[list[str]]       # per report: up to MAX_SENTENCES sentences
    labels: np.ndarray               # float32 (R, L) multi-hot; all-zero rows mean "unknown"
    label_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.images)


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in SENTENCE_SPLIT.split(text.strip()) if len(s.strip()) > 2]


def text_variants(findings: str, impression: str, rng: np.random.Generator, n_variants: int = 4) -> list[str]:
    """The full report first, then shuffled / sub-sampled sentence variants (deterministic given rng)."""
    full = " ".join(part for part in (findings, impression) if part).strip()
    sentences = split_sentences(full)
    variants = [full]
    if impression:
        variants.append(impression)
    while len(variants) < n_variants and len(sentences) > 1:
        order = rng.permutation(len(sentences))
        keep = max(1, int(np.ceil(len(sentences) * rng.uniform(0.5, 1.0))))
        variants.append(" ".join(sentences[i] for i in order[:keep]))
    return variants[:n_variants]


def _to_square_uint8(pixels: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    grey = pixels if pixels.ndim == 2 else pixels.mean(axis=2)
    img = Image.fromarray(np.clip(grey * 255.0 + 0.5, 0, 255).astype(np.uint8))
    side = min(img.size)
    left, top = (img.size[0] - side) // 2, (img.size[1] - side) // 2
    return np.asarray(img.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC))


def _render_uint8(job: tuple) -> np.ndarray:
    from medclip_core.data.phantom import render

    report, seed, size = job
    return np.clip(render(report, seed=seed, size=size).image * 255 + 0.5, 0, 255).astype(np.uint8)


def phantom_pairs(split: str, size: int, seed: int = 0, variants_per_report: int = 1, limit: int | None = None,
                  progress: Callable[[int, int], None] | None = None, workers: int = 1) -> PairSet:
    """Render the phantom split: ``variants_per_report`` images (different seeds) per report.

    ``workers > 1`` renders in that many processes; every image depends only on (report, seed,
    size), so the set is the same whatever the number of workers."""
    from medclip_core.data.findings import FINDINGS
    from medclip_core.data.reports import load_reports, report_splits

    reports = report_splits(load_reports(), seed=seed)[split]
    if limit is not None:
        reports = reports[:limit]
    jobs = [(report, seed * 1000 + v, size) for report in reports for v in range(variants_per_report)]
    index = [r for r in range(len(reports)) for _ in range(variants_per_report)]
    images: list[np.ndarray] = []
    pool = None
    if workers > 1 and len(jobs) > 1:
        import multiprocessing

        images.append(_render_uint8(jobs[0]))  # fills the mask and texture caches the forked workers inherit
        pool = multiprocessing.get_context("fork").Pool(workers)
    try:
        rest = jobs[len(images):]
        rendered = pool.imap(_render_uint8, rest, chunksize=64) if pool else map(_render_uint8, rest)
        for image in rendered:
            images.append(image)
            if progress and len(images) % 500 == 0:
                progress(len(images), len(jobs))
    finally:
        if pool:
            pool.terminate()
    rng = np.random.default_rng(seed)
    texts = [text_variants(rep.findings_text, rep.impression_text, rng) for rep in reports]
    labels = np.array([[1.0 if name in rep.labels else 0.0 for name in FINDINGS] for rep in reports], np.float32)
    return PairSet(np.stack(images), np.array(index), texts, [split_sentences(t[0])[:MAX_SENTENCES] for t in texts],
                   labels, FINDINGS)


def csv_pairs(csv_path: Path, size: int, seed: int = 0) -> PairSet:
    """A CSV with columns ``image`` (path, relative to the CSV's folder) and ``report``; an optional
    ``labels`` column holds ``|``-separated finding names (used for semantic-matching targets)."""
    from medclip_core.io import load_image

    rows = read_csv_rows(csv_path, {"image", "report"})
    if not rows:
        raise MedclipError(f"{Path(csv_path).name} has no rows.")
    root = Path(csv_path).expanduser().parent
    rng = np.random.default_rng(seed)
    label_names = tuple(sorted({name.strip() for row in rows for name in row.get("labels", "").split("|")
                                if name.strip()}))
    images, texts, labels = [], [], []
    for line, row in enumerate(rows, start=2):
        path = image_path_in(root, row["image"], f"{Path(csv_path).name}, line {line}")
        if not row["report"]:
            raise MedclipError(f"{Path(csv_path).name}, line {line}: the report is empty.")
        images.append(_to_square_uint8(load_image(path).pixels, size))
        texts.append(text_variants(row["report"], "", rng))
        names = {n.strip() for n in row.get("labels", "").split("|")}
        labels.append([1.0 if n in names else 0.0 for n in label_names])
    return PairSet(np.stack(images), np.arange(len(rows)), texts,
                   [split_sentences(t[0])[:MAX_SENTENCES] for t in texts],
                   np.array(labels, np.float32).reshape(len(rows), len(label_names)), label_names)
