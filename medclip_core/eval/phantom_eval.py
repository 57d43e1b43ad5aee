"""One benchmark over the phantom chest X-ray set: zero-shot AUC, retrieval, grounding, speed.

The phantom set gives, for every image, its report, its finding labels and a box per finding, so
one pass measures what real public sets rarely allow together:

* zero-shot: pairwise prompt-ensemble probability per finding (the model's own negatives and
  calibration) -> the evaluation engine's per-finding metrics (AUC with a bootstrap 95 % interval,
  counts, "too few to trust" / "not defined"; :mod:`medclip_core.eval.engine`), so the phantom set
  is measured by the same code as any user's labelled set; the AUCs of the findings with at least
  ``MIN_CLASS_COUNT`` positives and negatives, their macro mean, how often an image's top finding is its own, and the calibration error;
* retrieval between the n images and their n reports. Many reports say the same thing in other
  words, so "the exact report" is the wrong target: a retrieved item counts as relevant when its
  finding-label set equals the query's (recall@1/5/10, precision@5, both directions);
* grounding (pointing game): patch-token similarity to the finding's positive prompt ensemble,
  drawn back onto the image; a hit when its maximum lies in a box of that finding. Reported raw
  and with CLIP-Surgery-style redundancy removal (the mean prompt embedding over all findings is
  subtracted first, which cancels what every prompt has in common), beside the chance rate
  (the mean fraction of the image the boxes cover);
* timing: wall-clock seconds and image throughput.

Text embeddings are computed afresh on every call (no cache), because this runs on models whose
weights are still changing during training.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from medclip_core.data.findings import FINDINGS, GROUNDING_FINDINGS
from medclip_core.eval.engine import EvalOptions, classification_summary, eval_mode, json_safe, mean_of_numbers
from medclip_core.eval.metrics import (
    box_area_fraction, expected_calibration_error, pointing_game, precision_at_k, recall_at_k,
)
from medclip_core.models.base import ClipModel
from medclip_core.models.geometry import heatmap_from_patches
from medclip_core.tasks import embed_in_batches
from medclip_core.tasks.zero_shot import label_text_embeddings, logit_map, scores_from_embeddings

if TYPE_CHECKING:
    from medclip_core.data.phantom import PhantomDataset, PhantomSample

MIN_CLASS_COUNT = 5
PHANTOM_BOOTSTRAP = 1000  # resamples of the per-finding AUC intervals
RETRIEVAL_KS = (1, 5, 10)
PRECISION_K = 5
IMAGE_SIZE = 224

Progress = Callable[[float, str], Any]


@dataclass
class PhantomEvalResult:
    """Everything :func:`evaluate_phantom` measured; ``to_dict()`` is the JSON written to disk.

    * ``n_images`` rendered images over ``n_reports`` distinct reports.
    * ``zero_shot``: ``mode``, ``negatives`` and ``calibrated`` (how it was scored), ``auc``
      {finding: AUC}, ``macro_auc``, ``top_finding_accuracy``, ``calibration_error`` (see
      :func:`zero_shot_summary`), ``positives`` {finding: count for every finding}, ``skipped``
      (findings with too few positives or negatives), ``findings`` {finding: "auc", "ci" (bootstrap 95 %
      interval), "n_positives", "n_negatives", "status"} from the evaluation engine.
    * ``retrieval``: ``image_to_text`` and ``text_to_image``, each {"recall@1", "recall@5",
      "recall@10", "precision@5"}, and ``relevance`` (how a hit is defined).
    * ``grounding``: ``raw`` and ``redundancy_removed``, each {"per_finding": {finding: hit rate},
      "mean"}; ``chance`` {"per_finding", "mean"}; ``n_targets`` {finding: count}; ``note``.
    * ``timing``: ``seconds_total``, ``seconds_render``, ``seconds_image_encoding``,
      ``images_per_second`` (image encoding throughput).

    Undefined values (no qualifying finding, no box) are None.
    """

    model: str
    split: str
    seed: int
    n_images: int
    n_reports: int
    zero_shot: dict[str, Any]
    retrieval: dict[str, Any]
    grounding: dict[str, Any]
    timing: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))


PHANTOM_FINDING_KEYS = ("auc", "ci", "n_positives", "n_negatives", "status")


def zero_shot_summary(probabilities: np.ndarray, label_sets: list[frozenset[str]], mode: str = "pairwise",
                      negatives: str | None = None, bootstrap: int = 0, seed: int = 0) -> dict[str, Any]:
    """Per-finding metrics from the evaluation engine (:func:`~medclip_core.eval.engine.classification_summary`,
    with ``bootstrap`` resamples for intervals): ``findings`` {finding: AUC, interval, counts, status},
    and ``auc`` for the findings with at least ``MIN_CLASS_COUNT`` positives and negatives;
    ``top_finding_accuracy`` across findings: how often an image's highest-scoring finding of
    ``FINDINGS`` is one of its own (every image has one; "normal" counts); ``calibration_error``
    (pairwise mode only): the ECE over all (image, finding) pairs."""
    truth = np.array([[label in labels for label in FINDINGS] for labels in label_sets], dtype=bool)
    engine, _ = classification_summary(truth.astype(float), FINDINGS, {"model": probabilities},
                                       EvalOptions(bootstrap=bootstrap, seed=seed))
    findings = {f: {k: m[k] for k in PHANTOM_FINDING_KEYS} for f, m in engine["model"]["findings"].items()}
    positives = {label: findings[label]["n_positives"] for label in FINDINGS}
    enough = [f for f in FINDINGS if min(positives[f], len(label_sets) - positives[f]) >= MIN_CLASS_COUNT]
    auc = {f: findings[f]["auc"] for f in enough}
    top = truth[np.arange(len(truth)), probabilities.argmax(axis=1)]
    return {"mode": mode, "negatives": negatives, "auc": auc, "macro_auc": mean_of_numbers(list(auc.values())),
            "top_finding_accuracy": float(top.mean()),
            # softmax rows sum to 1, so their ECE mostly counts findings per image: left out
            "calibration_error": expected_calibration_error(probabilities, truth) if mode == "pairwise" else None,
            "positives": positives, "skipped": [f for f in FINDINGS if f not in auc], "findings": findings}


def _retrieval_summary(similarity: np.ndarray, label_sets: list[frozenset[str]]) -> dict[str, Any]:
    set_ids = {labels: i for i, labels in enumerate(dict.fromkeys(label_sets))}
    ids = np.array([set_ids[labels] for labels in label_sets])
    relevant = ids[:, None] == ids[None, :]

    def direction(sim: np.ndarray, rel: np.ndarray) -> dict[str, float]:
        out = {f"recall@{k}": v for k, v in recall_at_k(sim, rel, RETRIEVAL_KS).items()}
        out[f"precision@{PRECISION_K}"] = precision_at_k(sim, rel, (PRECISION_K,))[PRECISION_K]
        return out

    return {"image_to_text": direction(similarity, relevant),
            "text_to_image": direction(similarity.T, relevant.T),
            "relevance": "same finding-label set"}


class _PointingTally:
    """Pointing-game hits per focal finding, raw and with redundancy removal, plus chance rates."""

    def __init__(self) -> None:
        self.hits = {variant: {f: [] for f in GROUNDING_FINDINGS} for variant in ("raw", "redundancy_removed")}
        self.chance = {f: [] for f in GROUNDING_FINDINGS}

    def add(self, patches: torch.Tensor, sample: Any, model: ClipModel,
            directions: dict[str, dict[str, torch.Tensor]]) -> None:
        height, width = np.asarray(sample.image).shape[:2]
        geometry = model.geometry(width, height)
        for finding in GROUNDING_FINDINGS:
            boxes = (sample.boxes or {}).get(finding) or []
            if not boxes:
                continue
            self.chance[finding].append(box_area_fraction(boxes, width, height))
            for variant, by_finding in directions.items():
                sims = (patches @ by_finding[finding]).cpu().numpy()
                heatmap = heatmap_from_patches(sims, geometry, width, height)
                self.hits[variant][finding].append(float(pointing_game(heatmap, boxes)))

    def summary(self, note: str | None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for variant, per in self.hits.items():
            rates = {f: mean_of_numbers(v) for f, v in per.items() if v}
            out[variant] = {"per_finding": rates, "mean": mean_of_numbers(list(rates.values()))}
        chance = {f: mean_of_numbers(v) for f, v in self.chance.items() if v}
        out["chance"] = {"per_finding": chance, "mean": mean_of_numbers(list(chance.values()))}
        out["n_targets"] = {f: len(v) for f, v in self.chance.items()}
        out["note"] = note
        return out


def phantom_eval_order(n: int = 1000, split: str = "test", seed: int = 0) -> tuple[PhantomDataset, list[int]]:
    """The rendered set of ``split`` and the indices of its first ``n`` samples, covering it evenly.

    When the split has fewer than ``n`` reports (the test split has ~390), each report is rendered
    in several seeded variants, and every report appears once before any appears again.
    """
    from medclip_core.data.phantom import phantom_dataset

    if n < 2:
        raise ValueError(f"Need at least 2 phantom samples, got n={n}.")
    n_reports = len(phantom_dataset(split=split, seed=seed, size=IMAGE_SIZE))
    variants = math.ceil(n / n_reports)
    dataset = phantom_dataset(split=split, seed=seed, size=IMAGE_SIZE, variants_per_report=variants)
    order = [report * variants + variant for variant in range(variants) for report in range(n_reports)]
    return dataset, order[:min(n, len(dataset))]


def phantom_eval_samples(n: int = 1000, split: str = "test", seed: int = 0,
                         progress: Progress | None = None) -> list[PhantomSample]:
    """The samples of :func:`phantom_eval_order`, rendered; ``progress(fraction, message)`` every 64."""
    dataset, order = phantom_eval_order(n, split, seed)
    samples = []
    for i, index in enumerate(order):
        samples.append(dataset[index])
        if progress is not None and (i + 1) % 64 == 0:
            progress((i + 1) / len(order), f"rendered {i + 1}/{len(order)} images")
    return samples


def phantom_eval_embeddings(model: ClipModel, n: int = 1000, split: str = "test", seed: int = 0,
                            batch_size: int = 64) -> tuple[torch.Tensor, list[frozenset[str]]]:
    """Image embeddings (N, D, on the CPU) and label sets of the :func:`phantom_eval_samples`."""
    samples = phantom_eval_samples(n, split, seed)
    with torch.no_grad():
        vectors = embed_in_batches(model.encode_image, [s.image for s in samples], batch_size)
    return torch.from_numpy(vectors), [frozenset(s.labels) for s in samples]


def evaluate_phantom(model: ClipModel, n: int = 1000, split: str = "test", seed: int = 0,
                     batch_size: int = 64, progress: Progress | None = None,
                     negatives: str | None = None) -> PhantomEvalResult:
    """Run the phantom benchmark on the :func:`phantom_eval_samples` (``n``, ``split``, ``seed``).

    Zero-shot scores are pairwise, with the model's own negative prompts unless ``negatives`` names
    a style (:data:`medclip_core.tasks.zero_shot.NEGATIVE_STYLES`). ``progress(fraction, message)``,
    when given, is called as batches finish (``gr.Progress`` fits). See :class:`PhantomEvalResult`.
    """
    def report(fraction: float, message: str) -> None:
        if progress is not None:
            progress(fraction, message)

    start = time.perf_counter()
    samples = phantom_eval_samples(n, split, seed, lambda f, m: report(0.4 * f, m))
    count = len(samples)
    seconds_render = time.perf_counter() - start
    label_sets = [frozenset(s.labels) for s in samples]

    with eval_mode(model):
        text = label_text_embeddings(model, FINDINGS, "pairwise", cache=None, negatives=negatives)
        positive = dict(zip(FINDINGS, text.positive))
        common = text.positive.mean(dim=0)
        directions = {"raw": {f: positive[f] for f in GROUNDING_FINDINGS},
                      "redundancy_removed": {f: positive[f] - common for f in GROUNDING_FINDINGS}}
        grounding_note = None
        if not model.supports_patch_tokens:
            grounding_note = "skipped: this model has no patch tokens in the joint space"

        tally = _PointingTally()
        image_embeddings = []
        seconds_encode = 0.0
        for lo in range(0, count, batch_size):
            batch = samples[lo:lo + batch_size]
            tick = time.perf_counter()
            pixels = model.preprocess_batch([s.image for s in batch])
            image_embeddings.append(model.encode_image(pixels).cpu())
            seconds_encode += time.perf_counter() - tick
            if grounding_note is None:
                targets = [i for i, s in enumerate(batch) if any((s.boxes or {}).get(f) for f in GROUNDING_FINDINGS)]
                if targets:
                    patches = model.patch_tokens(pixels[targets])
                    for patch_grid, i in zip(patches, targets):
                        tally.add(patch_grid, batch[i], model, directions)
            done = min(lo + batch_size, count)
            report(0.4 + 0.5 * done / count, f"encoded {done}/{count} images")
        image_embeddings = torch.cat(image_embeddings)

        logits = logit_map(model, text)
        probabilities = scores_from_embeddings(image_embeddings, text, logits)
        report(0.9, "encoding reports")
        texts = [s.report.text for s in samples]
        text_embeddings = torch.cat([model.encode_text(texts[lo:lo + batch_size]).cpu()
                                     for lo in range(0, count, batch_size)])
    similarity = (image_embeddings @ text_embeddings.T).numpy()

    seconds_total = time.perf_counter() - start
    report(1.0, "done")
    return PhantomEvalResult(
        model=model.card.name, split=split, seed=seed, n_images=count,
        n_reports=len({s.report.report_id for s in samples}),
        zero_shot={**zero_shot_summary(probabilities, label_sets, "pairwise", text.negatives, PHANTOM_BOOTSTRAP,
                                       seed),
                   "calibrated": logits.calibrated},
        retrieval=_retrieval_summary(similarity, label_sets),
        grounding=tally.summary(grounding_note),
        timing={"seconds_total": seconds_total, "seconds_render": seconds_render,
                "seconds_image_encoding": seconds_encode,
                "images_per_second": count / seconds_encode if seconds_encode > 0 else float("nan")},
    )


def write_eval(result: PhantomEvalResult, path: str | Path) -> Path:
    """Write ``result.to_dict()`` as indented JSON to ``path`` (folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.to_dict(), indent=2, allow_nan=False) + "\n")
    return path
