"""Few-shot adaptation without training the model: a Tip-Adapter-style cache and a linear probe.

Both start from a small labelled *support set* embedded by the model (the phantom train split,
``shots`` images per label, or a user CSV of ``image,labels``):

* Tip-Adapter (Zhang et al., 2022) keeps the support features as keys and their labels as values.
  A query's affinity to each key is ``exp(-beta * (1 - cos))``; here, for multi-label findings,
  the affinity-weighted label frequency (Laplace-smoothed) is turned into a log-odds and added to
  the zero-shot logit with weight ``alpha``. No gradient step: it adapts in milliseconds.
* A linear probe: one logistic regression per label on the support embeddings (class-balanced).

The zero-shot and adapted probabilities are returned side by side so users see what a few
labelled examples change.
"""
from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from medclip_core.data.findings import NORMAL_LABELS
from medclip_core.data.tables import image_path_in, read_csv_rows
from medclip_core.errors import TaskInputError
from medclip_core.models.base import ClipModel, ImageLike
from medclip_core.tasks import embed_in_batches
from medclip_core.tasks.zero_shot import label_text_embeddings, logit_map, logits_from_embeddings

DEFAULT_ALPHA = 1.0
DEFAULT_BETA = 5.5
MAX_SHOTS = 64


@dataclass(frozen=True)
class SupportSet:
    """Embedded labelled examples: ``targets[i, j]`` says whether image i shows ``labels[j]``."""

    embeddings: torch.Tensor
    targets: np.ndarray
    labels: tuple[str, ...]
    source: str

    def __len__(self) -> int:
        return len(self.targets)


def _phantom_label(label: str) -> str | None:
    from medclip_core.data.findings import FINDINGS

    if label in FINDINGS:
        return label
    return "normal" if label in NORMAL_LABELS else None


def _embed(model: ClipModel, images: Sequence[ImageLike], batch_size: int = 32) -> torch.Tensor:
    return torch.from_numpy(embed_in_batches(model.encode_image, images, batch_size))


def phantom_support(model: ClipModel, labels: Sequence[str], shots: int = 16, seed: int = 0) -> SupportSet:
    """Up to ``shots`` phantom train images per label (labels must name phantom findings)."""
    from medclip_core.data.phantom import render
    from medclip_core.data.reports import load_reports, report_splits

    if not 1 <= shots <= MAX_SHOTS:
        raise TaskInputError(f"Shots per label must be between 1 and {MAX_SHOTS}.")
    mapped = {label: _phantom_label(label) for label in labels}
    unknown = [label for label, found in mapped.items() if found is None]
    if unknown:
        raise TaskInputError(f"The phantom support set has no examples of: {', '.join(unknown)}. "
                             "Use phantom finding names, or upload a CSV support set.")
    reports = report_splits(load_reports(), seed=seed)["train"]
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for label in labels:
        candidates = [i for i, r in enumerate(reports) if mapped[label] in r.labels and i not in chosen]
        chosen.extend(rng.permutation(candidates)[:shots].tolist())
    images = [render(reports[i], seed=seed, size=model.image_size).image for i in chosen]
    targets = np.array([[1.0 if mapped[label] in reports[i].labels else 0.0 for label in labels] for i in chosen])
    return SupportSet(_embed(model, images), targets, tuple(labels), f"phantom train split, {shots} per label")


def csv_support(model: ClipModel, csv_path: str | Path, labels: Sequence[str]) -> SupportSet:
    """A CSV with columns ``image`` (relative to the CSV folder) and ``labels`` (``|``-separated)."""
    from medclip_core.io import load_image

    rows = read_csv_rows(csv_path, {"image", "labels"})
    if not rows:
        raise TaskInputError("The support CSV has no rows.")
    root = Path(csv_path).expanduser().parent
    images, targets = [], []
    for line, row in enumerate(rows, start=2):
        images.append(load_image(image_path_in(root, row["image"], f"line {line}")))
        names = {" ".join(n.split()).lower() for n in row["labels"].split("|")}
        targets.append([1.0 if label in names else 0.0 for label in labels])
    return SupportSet(_embed(model, images), np.array(targets), tuple(labels),
                      f"CSV {Path(csv_path).name}, {len(rows)} images")


def tip_adapter_logits(image_embeddings: torch.Tensor, support: SupportSet, beta: float = DEFAULT_BETA) -> np.ndarray:
    """Log-odds of each label from the affinity-weighted support labels (N, L)."""
    keys = support.embeddings.float().to(image_embeddings.device)  # support sets are kept on the CPU
    affinity = torch.exp(-beta * (1.0 - image_embeddings.float() @ keys.T)).cpu().numpy()
    positive = affinity @ support.targets
    frequency = (positive + 1.0) / (affinity.sum(axis=1, keepdims=True) + 2.0)
    return np.log(frequency) - np.log1p(-frequency)


@dataclass
class LinearProbe:
    """One class-balanced logistic regression per label on support embeddings."""

    labels: tuple[str, ...]
    models: list[Any]
    priors: np.ndarray

    @classmethod
    def fit(cls, support: SupportSet) -> "LinearProbe":
        from sklearn.linear_model import LogisticRegression

        features = support.embeddings.float().cpu().numpy()
        models = []
        for j in range(len(support.labels)):
            column = support.targets[:, j]
            if column.min() == column.max():  # one class only: fall back to its frequency
                models.append(None)
                continue
            models.append(LogisticRegression(C=1.0, class_weight="balanced", max_iter=1000).fit(features, column))
        return cls(support.labels, models, support.targets.mean(axis=0))

    def predict(self, image_embeddings: torch.Tensor) -> np.ndarray:
        features = image_embeddings.float().cpu().numpy()
        columns = [model.predict_proba(features)[:, 1] if model is not None else np.full(len(features), prior)
                   for model, prior in zip(self.models, self.priors)]
        return np.stack(columns, axis=1)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@dataclass
class FewShotResult:
    """Zero-shot and adapted probabilities for one image, label by label."""

    labels: list[str]
    zero_shot: list[float]
    tip_adapter: list[float]
    linear_probe: list[float]
    mode: str
    support: str
    support_size: int
    alpha: float
    beta: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def few_shot_scores(model: ClipModel, image: ImageLike, support: SupportSet, mode: str = "pairwise",
                    alpha: float = DEFAULT_ALPHA, beta: float = DEFAULT_BETA,
                    negatives: str | None = None) -> FewShotResult:
    """Score ``image`` on the support set's labels: zero-shot, Tip-Adapter and linear probe
    (``mode`` and ``negatives`` as in :func:`medclip_core.tasks.zero_shot.zero_shot`)."""
    embedding = model.encode_image([image])
    text = label_text_embeddings(model, support.labels, mode, negatives=negatives)
    base = logits_from_embeddings(embedding, text, logit_map(model, text)).cpu().numpy()
    adapted = base + alpha * tip_adapter_logits(embedding, support, beta)
    activate = _softmax if mode == "softmax" else _sigmoid
    probe = LinearProbe.fit(support)
    notes = [f"'{label}' has only one class in the support set; the probe returns its frequency."
             for label, m in zip(probe.labels, probe.models) if m is None]
    return FewShotResult(list(support.labels), activate(base)[0].tolist(), activate(adapted)[0].tolist(),
                         probe.predict(embedding)[0].tolist(), mode, support.source, len(support), alpha, beta, notes)


class SupportCache:
    """Embedded phantom support sets per model (weakly keyed) and (labels, shots, seed)."""

    def __init__(self) -> None:
        self._entries: weakref.WeakKeyDictionary[ClipModel, dict[tuple, SupportSet]] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def phantom(self, model: ClipModel, labels: Sequence[str], shots: int, seed: int = 0) -> SupportSet:
        key = (tuple(labels), shots, seed)
        with self._lock:
            per_model = self._entries.setdefault(model, {})
            if key not in per_model:
                per_model[key] = phantom_support(model, labels, shots, seed)
            return per_model[key]


SUPPORT_CACHE = SupportCache()
