"""Dice of a trained segmentation decoder per finding on the phantom test split.

For every test image and every finding (named by its first report synonym, e.g. "pleural
effusion"), the decoder's probability map on the original image is thresholded at 0.5. On images
that have the finding's mask: Dice against it (mean and median). On images without the finding:
how often the mask stays empty (specificity of "is it there at all") and the mean predicted area.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from medclip_core.data.findings import LABEL_SYNONYMS, SEGMENTED_FINDINGS
from medclip_core.data.phantom import PhantomDataset
from medclip_core.data.reports import load_reports, report_splits
from medclip_core.eval.metrics import dice
from medclip_core.models.base import ClipModel
from medclip_core.models.segmentation_decoder import SegmentationDecoder, logits_to_original

THRESHOLD = 0.5


@dataclass
class FindingDice:
    finding: str
    phrase: str
    n_positive: int
    dice_mean: float
    dice_median: float
    n_negative: int
    empty_on_negatives: float     # share of images without the finding where the mask stays empty
    area_on_negatives: float      # mean predicted area (fraction of the image) there


@dataclass
class SegmentationEval:
    model: str
    split: str
    n_images: int
    seed: int
    threshold: float
    seconds: float
    findings: list[FindingDice] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate_segmentation(model: ClipModel, decoder: SegmentationDecoder, n: int = 1000, split: str = "test",
                          seed: int = 0, batch: int = 16, findings: tuple[str, ...] | None = None,
                          progress: Callable[[int, int], None] | None = None) -> SegmentationEval:
    """Dice per finding over at least ``n`` rendered images of ``split`` (every report, equally often)."""
    findings = findings or SEGMENTED_FINDINGS
    phrases = [LABEL_SYNONYMS.get(f, (f,))[0] for f in findings]
    reports = report_splits(load_reports(), seed)[split]
    variants = max(1, math.ceil(n / len(reports)))
    dataset = PhantomDataset(reports, seed=seed, size=model.image_size, variants_per_report=variants)
    text = model.encode_text(phrases)
    scores: dict[str, list[float]] = {f: [] for f in findings}
    empty: dict[str, list[bool]] = {f: [] for f in findings}
    area: dict[str, list[float]] = {f: [] for f in findings}
    t0 = time.time()
    for start in range(0, len(dataset), batch):
        samples = [dataset[i] for i in range(start, min(start + batch, len(dataset)))]
        logits = decoder.logits(model, model.preprocess_batch([s.image for s in samples]), text)
        for sample, sample_logits in zip(samples, logits):
            height, width = sample.image.shape[:2]
            predicted = logits_to_original(sample_logits, model, width, height) > THRESHOLD
            for finding, mask in zip(findings, predicted):
                target = sample.masks.get(finding)
                if target is not None:
                    scores[finding].append(dice(mask, target))
                elif finding not in sample.labels:
                    empty[finding].append(not mask.any())
                    area[finding].append(float(mask.mean()))
        if progress:
            progress(min(start + batch, len(dataset)), len(dataset))
    rows = [FindingDice(f, p, len(scores[f]),
                        float(np.mean(scores[f])) if scores[f] else float("nan"),
                        float(np.median(scores[f])) if scores[f] else float("nan"),
                        len(empty[f]), float(np.mean(empty[f])) if empty[f] else float("nan"),
                        float(np.mean(area[f])) if area[f] else float("nan"))
            for f, p in zip(findings, phrases)]
    return SegmentationEval(model.card.name, split, len(dataset), seed, THRESHOLD, time.time() - t0, rows)
