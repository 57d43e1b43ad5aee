"""Zero-shot finding scores from text prompts, CheXzero style.

Each finding label is written the way Indiana University reports write it (``LABEL_SYNONYMS``) and
placed into a small ensemble of report-like sentences (``PROMPT_TEMPLATES``). The embeddings of
the sentences are averaged and re-normalised into one positive and one negative text embedding
per label. Two scoring modes:

* ``"pairwise"`` (CheXzero): per label, softmax over (positive, negative) of the scaled cosine
  similarities; each label gets its own probability in [0, 1], labels are independent (multi-label).
* ``"softmax"``: softmax over labels of the scaled similarity to each positive embedding; rows sum
  to 1 (useful as "which of these is it?", wrong for multi-label images).

"normal" breaks the "{finding}" / "no {finding}" pattern ("no normal" is not a sentence a report
contains), so it has its own hand-written positive and negative sentences (``NORMAL_PROMPTS``).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from medclip_core.errors import TaskInputError
from medclip_core.models.base import ClipModel, ImageLike
from medclip_core.tasks import check_text_items

ScoreMode = Literal["pairwise", "softmax"]
SCORE_MODES: tuple[str, ...] = ("pairwise", "softmax")

# Report phrases for each finding label of medclip_core.data.reports.FINDINGS (1-3 each).
LABEL_SYNONYMS: dict[str, tuple[str, ...]] = {
    "cardiomegaly": ("cardiomegaly", "enlarged cardiac silhouette", "enlarged heart size"),
    "pleural effusion": ("pleural effusion", "pleural fluid"),
    "opacity": ("airspace opacity", "focal consolidation", "airspace disease"),
    "atelectasis": ("atelectasis", "subsegmental atelectasis"),
    "nodule": ("pulmonary nodule", "nodular opacity", "lung mass"),
    "calcified granuloma": ("calcified granuloma", "granulomatous disease"),
    "pneumothorax": ("pneumothorax",),
    "edema": ("pulmonary edema", "vascular congestion"),
    "hyperinflation": ("hyperinflated lungs", "emphysema", "flattened diaphragms"),
    "devices": ("pacemaker", "central venous catheter", "sternotomy wires"),
    "scoliosis": ("scoliosis", "curvature of the thoracic spine"),
    "degenerative spine": ("degenerative changes of the thoracic spine", "spondylosis"),
    "tortuous aorta": ("tortuous aorta", "ectatic aorta"),
    "aortic calcification": ("aortic calcification", "atherosclerotic aorta"),
    "hilar prominence": ("hilar prominence", "hilar adenopathy"),
    "fracture": ("rib fracture", "fracture"),
    "low lung volumes": ("low lung volumes",),
    "elevated diaphragm": ("elevated hemidiaphragm",),
    "scarring": ("scarring", "pulmonary scarring"),
    "interstitial markings": ("increased interstitial markings", "interstitial opacities"),
    "hiatal hernia": ("hiatal hernia",),
    # CheXpert label names (lower case) in report language
    "enlarged cardiomediastinum": ("enlarged cardiomediastinal silhouette", "widened mediastinum"),
    "lung opacity": ("airspace opacity", "lung opacity"),
    "lung lesion": ("lung nodule", "lung mass"),
    "consolidation": ("consolidation", "focal consolidation"),
    "pneumonia": ("pneumonia", "infiltrate"),
    "pleural other": ("pleural thickening", "pleural scarring"),
    "support devices": ("support devices", "pacemaker", "central venous catheter"),
}

MAX_LABELS = 64
MAX_LABEL_CHARS = 200
LABEL_PRESETS: dict[str, tuple[str, ...]] = {
    "CheXpert findings": (
        "no finding", "enlarged cardiomediastinum", "cardiomegaly", "lung opacity", "lung lesion", "edema",
        "consolidation", "pneumonia", "atelectasis", "pneumothorax", "pleural effusion", "pleural other",
        "fracture", "support devices"),
    "Phantom findings": (
        "normal", "cardiomegaly", "pleural effusion", "opacity", "atelectasis", "nodule", "calcified granuloma",
        "pneumothorax", "edema", "hyperinflation", "devices", "scoliosis"),
}


def parse_labels(text: str) -> list[str]:
    """Free text, one label per line (commas also separate) -> cleaned, lower-case, de-duplicated labels."""
    return check_text_items(text.lower().replace(",", "\n").splitlines(), noun="label", max_items=MAX_LABELS,
                            max_chars=MAX_LABEL_CHARS, example="pleural effusion")

# Sentence patterns as they occur in reports; ``{finding}`` takes each synonym in turn.
PROMPT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "positive": ("{finding}.", "There is {finding}.", "Findings consistent with {finding}."),
    "negative": ("No {finding}.", "There is no {finding}.", "No evidence of {finding}."),
}

# "normal" has no "no {finding}" form; these are the report sentences that say it and its opposite.
NORMAL_LABELS: frozenset[str] = frozenset({"normal", "no finding"})
NORMAL_PROMPTS: dict[str, tuple[str, ...]] = {
    "positive": ("No acute cardiopulmonary abnormality.", "Normal chest.",
                 "Heart size normal. Lungs are clear."),
    "negative": ("Acute cardiopulmonary abnormality.", "Abnormal chest.",
                 "There is an acute cardiopulmonary process."),
}


def label_prompts(label: str) -> dict[str, list[str]]:
    """The positive and negative sentences that stand for ``label`` (unknown labels used verbatim)."""
    if label.lower() in NORMAL_LABELS:
        return {kind: list(sentences) for kind, sentences in NORMAL_PROMPTS.items()}
    synonyms = LABEL_SYNONYMS.get(label, (label,))
    return {kind: [template.format(finding=s) for s in synonyms for template in templates]
            for kind, templates in PROMPT_TEMPLATES.items()}


@dataclass(frozen=True)
class LabelTextEmbeddings:
    """Ensembled text embeddings for a label list: ``positive`` (L, D), ``negative`` (L, D) or None."""

    labels: tuple[str, ...]
    mode: str
    positive: torch.Tensor
    negative: torch.Tensor | None
    prompts: dict[str, dict[str, list[str]]]


def _ensemble(model: ClipModel, sentences: Sequence[str]) -> torch.Tensor:
    return F.normalize(model.encode_text(list(sentences)).mean(dim=0), dim=-1)


def _encode_labels(model: ClipModel, labels: tuple[str, ...], mode: str) -> LabelTextEmbeddings:
    prompts = {label: label_prompts(label) for label in labels}
    positive = torch.stack([_ensemble(model, prompts[label]["positive"]) for label in labels])
    negative = None
    if mode == "pairwise":
        negative = torch.stack([_ensemble(model, prompts[label]["negative"]) for label in labels])
    return LabelTextEmbeddings(labels, mode, positive, negative, prompts)


class TextEmbeddingCache:
    """Label text embeddings per model object, so repeated scoring does not re-encode prompts.

    Keyed weakly by the model object (an entry goes when the model does) and then by
    (labels, mode). It assumes the model's weights are frozen: after changing them in place
    (training), call :meth:`clear` or pass ``cache=None``. ``hits`` / ``misses`` count look-ups.
    """

    def __init__(self) -> None:
        self._entries: weakref.WeakKeyDictionary[ClipModel, dict[tuple, LabelTextEmbeddings]] = (
            weakref.WeakKeyDictionary())
        self.hits = 0
        self.misses = 0

    def get(self, model: ClipModel, labels: tuple[str, ...], mode: str) -> LabelTextEmbeddings:
        per_model = self._entries.setdefault(model, {})
        key = (labels, mode)
        if key in per_model:
            self.hits += 1
        else:
            self.misses += 1
            per_model[key] = _encode_labels(model, labels, mode)
        return per_model[key]

    def clear(self) -> None:
        self._entries.clear()
        self.hits = self.misses = 0


TEXT_EMBEDDING_CACHE = TextEmbeddingCache()


def _check_mode(mode: str) -> None:
    if mode not in SCORE_MODES:
        raise TaskInputError(f"Scoring mode must be one of {SCORE_MODES}, got {mode!r}.")


def label_text_embeddings(model: ClipModel, labels: Sequence[str], mode: ScoreMode = "pairwise",
                          cache: TextEmbeddingCache | None = TEXT_EMBEDDING_CACHE) -> LabelTextEmbeddings:
    """Ensembled prompt embeddings for ``labels``; served from ``cache`` unless it is None."""
    _check_mode(mode)
    labels = tuple(labels)
    if not labels:
        raise TaskInputError("At least one label is needed.")
    if cache is None:
        return _encode_labels(model, labels, mode)
    return cache.get(model, labels, mode)


def scores_from_embeddings(image_embeddings: torch.Tensor, text: LabelTextEmbeddings,
                           logit_scale: float) -> np.ndarray:
    """(N, D) normalised image embeddings x label embeddings -> (N, L) probabilities (see module doc)."""
    image_embeddings = image_embeddings.float().to(text.positive.device)
    positive = logit_scale * image_embeddings @ text.positive.T
    if text.mode == "softmax":
        return positive.softmax(dim=-1).cpu().numpy()
    negative = logit_scale * image_embeddings @ text.negative.T
    # softmax over the (positive, negative) pair, first element
    return torch.sigmoid(positive - negative).cpu().numpy()


def score_images(model: ClipModel, image_embeddings: torch.Tensor, labels: Sequence[str],
                 mode: ScoreMode = "pairwise",
                 cache: TextEmbeddingCache | None = TEXT_EMBEDDING_CACHE) -> np.ndarray:
    """Probabilities (N, L) for already encoded images; see the module docstring for the modes."""
    text = label_text_embeddings(model, labels, mode, cache)
    return scores_from_embeddings(image_embeddings, text, model.logit_scale)


@dataclass
class ZeroShotResult:
    """Zero-shot scores of one image: ``probabilities[i]`` belongs to ``labels[i]``."""

    labels: list[str]
    probabilities: list[float]
    mode: str
    prompts: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    def ranked(self) -> list[tuple[str, float]]:
        """(label, probability) from most to least likely."""
        return sorted(zip(self.labels, self.probabilities), key=lambda pair: -pair[1])

    def to_dict(self) -> dict[str, Any]:
        return {"labels": self.labels, "probabilities": self.probabilities, "mode": self.mode,
                "prompts": self.prompts}


def zero_shot(model: ClipModel, image: ImageLike, labels: Sequence[str],
              mode: ScoreMode = "pairwise") -> ZeroShotResult:
    """Score one image against ``labels`` with the prompt ensemble."""
    text = label_text_embeddings(model, labels, mode)
    probabilities = scores_from_embeddings(model.encode_image([image]), text, model.logit_scale)[0]
    used = {label: (prompts if mode == "pairwise" else {"positive": prompts["positive"], "negative": []})
            for label, prompts in text.prompts.items()}
    return ZeroShotResult(list(text.labels), [float(p) for p in probabilities], mode, used)
