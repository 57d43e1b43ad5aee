"""Zero-shot finding scores from text prompts, CheXzero style.

Each finding label is written the way Indiana University reports write it (``LABEL_SYNONYMS``) and
placed into a small ensemble of report-like sentences (``PROMPT_TEMPLATES``). The embeddings of
the sentences are averaged and re-normalised into one positive and one negative text embedding
per label. Two scoring modes:

* ``"pairwise"`` (CheXzero): per label, softmax over (positive, negative) of the scaled cosine
  similarities; each label gets its own probability in [0, 1], labels are independent (multi-label).
* ``"softmax"``: softmax over labels of the scaled similarity to each positive embedding; rows sum
  to 1 (useful as "which of these is it?", wrong for multi-label images).

What the pairwise *negative* is (``NEGATIVE_STYLES``):

* ``"negated"``: the finding's own negation, "No {finding}." (CheXzero). It needs a text encoder
  that has learned what "no" means.
* ``"normal"``: the sentences of a normal study (``NORMAL_PROMPTS["positive"]``), the same for every
  label: "does this image read more like a report of {finding} or like a normal report?". A frozen
  sentence encoder places "No pleural effusion." next to "Pleural effusion.", so a model trained on
  top of it (the embedded models) scores far better this way
  (``bench/results/zero_shot_prompts.json``).

Each model's spec names its style (``zero_shot_negatives``, "negated" unless it says otherwise); a
call can override it. A model card may also carry a calibration of the pairwise scores (see
:class:`LogitMap`). "normal" breaks the "{finding}" / "no {finding}" pattern ("no normal" is
not a sentence a report contains), so it has its own positive and negative sentences in both styles.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from medclip_core.data.findings import DEFAULT_PRESET, LABEL_PRESETS, LABEL_SYNONYMS, NORMAL_LABELS
from medclip_core.errors import TaskInputError
from medclip_core.models.base import ClipModel, ImageLike
from medclip_core.models.ood import OodVerdict, ood_verdict
from medclip_core.tasks import check_text_items
from medclip_core.tasks.saving import SavesJson

ScoreMode = Literal["pairwise", "softmax"]
SCORE_MODES: tuple[str, ...] = ("pairwise", "softmax")
NegativeStyle = Literal["negated", "normal"]
NEGATIVE_STYLES: tuple[str, ...] = ("negated", "normal")

MAX_LABELS = 64
MAX_LABEL_CHARS = 200


def parse_labels(text: str) -> list[str]:
    """Free text, one label per line (commas also separate) -> cleaned, lower-case, de-duplicated labels."""
    return check_text_items(text.lower().replace(",", "\n").splitlines(), noun="label", max_items=MAX_LABELS,
                            max_chars=MAX_LABEL_CHARS, example="pleural effusion")


def resolve_labels(typed: str | Sequence[str] | None = None, preset: str | None = DEFAULT_PRESET) -> list[str]:
    """The labels to score: the ``typed`` ones (free text or a list, see :func:`parse_labels`) when any
    is not blank, else those of the ``preset`` (a name of ``LABEL_PRESETS``). The one place the CLI and
    the Diagnose tab turn a user's choice into a label list."""
    text = typed if isinstance(typed, str) or typed is None else "\n".join(typed)
    if text and text.strip():
        return parse_labels(text)
    if preset not in LABEL_PRESETS:
        raise TaskInputError(f"Unknown label preset '{preset}'; choose one of: {', '.join(LABEL_PRESETS)}.")
    return list(LABEL_PRESETS[preset])


# Sentence patterns as they occur in reports; ``{finding}`` takes each synonym in turn.
PROMPT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "positive": ("{finding}.", "There is {finding}.", "Findings consistent with {finding}."),
    "negative": ("No {finding}.", "There is no {finding}.", "No evidence of {finding}."),
}

# "normal" has no "no {finding}" form; these are the report sentences that say it and its opposite.
NORMAL_PROMPTS: dict[str, tuple[str, ...]] = {
    "positive": ("No acute cardiopulmonary abnormality.", "Normal chest.",
                 "Heart size normal. Lungs are clear."),
    "negative": ("Acute cardiopulmonary abnormality.", "Abnormal chest.",
                 "There is an acute cardiopulmonary process."),
}


def label_prompts(label: str, negatives: NegativeStyle = "negated") -> dict[str, list[str]]:
    """The positive and negative sentences that stand for ``label`` (unknown labels used verbatim)."""
    if label.lower() in NORMAL_LABELS:
        return {kind: list(sentences) for kind, sentences in NORMAL_PROMPTS.items()}
    synonyms = LABEL_SYNONYMS.get(label, (label,))
    positive = [template.format(finding=s) for s in synonyms for template in PROMPT_TEMPLATES["positive"]]
    if negatives == "normal":
        return {"positive": positive, "negative": list(NORMAL_PROMPTS["positive"])}
    return {"positive": positive,
            "negative": [template.format(finding=s) for s in synonyms for template in PROMPT_TEMPLATES["negative"]]}


@dataclass(frozen=True)
class LabelTextEmbeddings:
    """Ensembled text embeddings for a label list: ``positive`` (L, D); in pairwise mode ``negative``
    (L, D) built in the ``negatives`` style, in softmax mode both None."""

    labels: tuple[str, ...]
    mode: str
    positive: torch.Tensor
    negative: torch.Tensor | None
    prompts: dict[str, dict[str, list[str]]]
    negatives: str | None = None


def _ensemble(model: ClipModel, sentences: Sequence[str]) -> torch.Tensor:
    return F.normalize(model.encode_text(list(sentences)).mean(dim=0), dim=-1)


def _encode_labels(model: ClipModel, labels: tuple[str, ...], mode: str,
                   negatives: str | None) -> LabelTextEmbeddings:
    prompts = {label: label_prompts(label, negatives or "negated") for label in labels}
    positive = torch.stack([_ensemble(model, prompts[label]["positive"]) for label in labels])
    if mode != "pairwise":
        prompts = {label: {"positive": p["positive"], "negative": []} for label, p in prompts.items()}
        return LabelTextEmbeddings(labels, mode, positive, None, prompts)
    # one ensemble per distinct negative sentence list ("normal" style shares one across labels)
    ensembles: dict[tuple[str, ...], torch.Tensor] = {}
    for label in labels:
        key = tuple(prompts[label]["negative"])
        if key not in ensembles:
            ensembles[key] = _ensemble(model, key)
    negative = torch.stack([ensembles[tuple(prompts[label]["negative"])] for label in labels])
    return LabelTextEmbeddings(labels, mode, positive, negative, prompts, negatives)


class TextEmbeddingCache:
    """Label text embeddings per model object, so repeated scoring does not re-encode prompts.

    Keyed weakly by the model object (an entry goes when the model does) and then by
    (labels, mode, negatives). It assumes the model's weights are frozen: after changing them in place
    (training), call :meth:`clear` or pass ``cache=None``. ``hits`` / ``misses`` count look-ups.
    """

    def __init__(self) -> None:
        self._entries: weakref.WeakKeyDictionary[ClipModel, dict[tuple, LabelTextEmbeddings]] = (
            weakref.WeakKeyDictionary())
        self.hits = 0
        self.misses = 0

    def get(self, model: ClipModel, labels: tuple[str, ...], mode: str,
            negatives: str | None) -> LabelTextEmbeddings:
        per_model = self._entries.setdefault(model, {})
        key = (labels, mode, negatives)
        if key in per_model:
            self.hits += 1
        else:
            self.misses += 1
            per_model[key] = _encode_labels(model, labels, mode, negatives)
        return per_model[key]

    def clear(self) -> None:
        self._entries.clear()
        self.hits = self.misses = 0


TEXT_EMBEDDING_CACHE = TextEmbeddingCache()


def _check_mode(mode: str) -> None:
    if mode not in SCORE_MODES:
        raise TaskInputError(f"Scoring mode must be one of {SCORE_MODES}, got {mode!r}.")


def negative_style(model: ClipModel, mode: str, negatives: str | None = None) -> str | None:
    """The pairwise negative style to use: ``negatives`` if given, else the model's; None in softmax mode."""
    if mode != "pairwise":
        return None
    style = negatives or model.card.zero_shot_negatives
    if style not in NEGATIVE_STYLES:
        raise TaskInputError(f"Negative prompts must be one of {NEGATIVE_STYLES}, got {style!r}.")
    return style


def label_text_embeddings(model: ClipModel, labels: Sequence[str], mode: ScoreMode = "pairwise",
                          cache: TextEmbeddingCache | None = TEXT_EMBEDDING_CACHE,
                          negatives: NegativeStyle | None = None) -> LabelTextEmbeddings:
    """Ensembled prompt embeddings for ``labels``; served from ``cache`` unless it is None.
    ``negatives`` overrides the model's pairwise negative style (see the module docstring)."""
    _check_mode(mode)
    style = negative_style(model, mode, negatives)
    labels = tuple(labels)
    if not labels:
        raise TaskInputError("At least one label is needed.")
    if cache is None:
        return _encode_labels(model, labels, mode, style)
    return cache.get(model, labels, mode, style)


@dataclass(frozen=True)
class LogitMap:
    """How a cosine similarity (pairwise: a difference of two) becomes a logit: ``scale * x + bias``,
    with one number for all labels or one per label.

    Uncalibrated, ``scale`` is the model's own logit scale and ``bias`` 0. A model card may carry a
    ``zero_shot_calibration``: Platt scaling of the pairwise scores for one negative style, fitted
    on held-out labelled images (``bench/calibrate_zero_shot.py``), as ``{"negatives": STYLE,
    "findings": {"scale", "bias"}, "normal": {"scale", "bias"}, "fitted_on": TEXT}``: one pair for
    every finding (any label, free text included), one for "normal", which is scored against other
    sentences. It changes no ranking within a group and no AUC, only what the probabilities mean.
    """

    scale: float | tuple[float, ...]
    bias: float | tuple[float, ...] = 0.0
    calibrated: bool = False


def logit_map(model: ClipModel, text: LabelTextEmbeddings, calibrated: bool = True) -> LogitMap:
    """The model's calibration when it has one for this pairwise style (and ``calibrated``), else its logit scale."""
    calibration = model.card.zero_shot_calibration
    if not (calibrated and calibration and text.mode == "pairwise" and calibration.get("negatives") == text.negatives):
        return LogitMap(float(model.logit_scale))
    groups = [calibration["normal" if label.lower() in NORMAL_LABELS else "findings"] for label in text.labels]
    return LogitMap(tuple(float(g["scale"]) for g in groups), tuple(float(g["bias"]) for g in groups), True)


def logits_from_embeddings(image_embeddings: torch.Tensor, text: LabelTextEmbeddings,
                           logits: LogitMap) -> torch.Tensor:
    """(N, D) normalised image embeddings -> (N, L) logits: softmax mode of cos(image, pos), pairwise
    of cos(image, pos) - cos(image, neg), through ``logits``."""
    image_embeddings = image_embeddings.float().to(text.positive.device)
    direction = text.positive if text.mode == "softmax" else text.positive - text.negative
    scale, bias = (torch.as_tensor(v, dtype=torch.float32, device=direction.device) for v in (logits.scale, logits.bias))
    return scale * (image_embeddings @ direction.T) + bias


def scores_from_embeddings(image_embeddings: torch.Tensor, text: LabelTextEmbeddings,
                           logits: LogitMap) -> np.ndarray:
    """(N, D) normalised image embeddings x label embeddings -> (N, L) probabilities (see module doc)."""
    values = logits_from_embeddings(image_embeddings, text, logits)
    # pairwise: the sigmoid of the difference is the softmax over the (positive, negative) pair
    probabilities = values.softmax(dim=-1) if text.mode == "softmax" else torch.sigmoid(values)
    return probabilities.cpu().numpy()


def score_images(model: ClipModel, image_embeddings: torch.Tensor, labels: Sequence[str],
                 mode: ScoreMode = "pairwise", cache: TextEmbeddingCache | None = TEXT_EMBEDDING_CACHE,
                 negatives: NegativeStyle | None = None, calibrated: bool = True) -> np.ndarray:
    """Probabilities (N, L) for already encoded images; see the module docstring for the modes."""
    text = label_text_embeddings(model, labels, mode, cache, negatives)
    return scores_from_embeddings(image_embeddings, text, logit_map(model, text, calibrated))


@dataclass
class ZeroShotResult(SavesJson):
    """Zero-shot scores of one image: ``probabilities[i]`` belongs to ``labels[i]``; ``negatives`` is
    the pairwise negative style (None in softmax mode); ``ood`` whether the image is like the model's
    training images (:mod:`medclip_core.models.ood`)."""

    SAVED_NAME = "zero_shot"

    labels: list[str]
    probabilities: list[float]
    mode: str
    prompts: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    negatives: str | None = None
    calibrated: bool = False
    ood: OodVerdict | None = None

    def ranked(self) -> list[tuple[str, float]]:
        """(label, probability) from most to least likely."""
        return sorted(zip(self.labels, self.probabilities), key=lambda pair: -pair[1])

    def to_dict(self) -> dict[str, Any]:
        return {"labels": self.labels, "probabilities": self.probabilities, "mode": self.mode,
                "negatives": self.negatives, "calibrated": self.calibrated, "prompts": self.prompts,
                "ood": self.ood.to_dict() if self.ood else None}


def zero_shot(model: ClipModel, image: ImageLike, labels: Sequence[str], mode: ScoreMode = "pairwise",
              negatives: NegativeStyle | None = None, calibrated: bool = True) -> ZeroShotResult:
    """Score one image against ``labels`` with the prompt ensemble (``negatives``: see the module doc;
    ``calibrated``: use the model's calibration where it has one, see :class:`LogitMap`)."""
    text = label_text_embeddings(model, labels, mode, negatives=negatives)
    logits = logit_map(model, text, calibrated)
    embedding = model.encode_image([image])
    probabilities = scores_from_embeddings(embedding, text, logits)[0]
    return ZeroShotResult(list(text.labels), [float(p) for p in probabilities], mode, text.prompts, text.negatives,
                          logits.calibrated, ood_verdict(model, embedding))
