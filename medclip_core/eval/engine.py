"""The evaluation engine: several models on one labelled set, images decoded once, with intervals.

One pass over the images of a :class:`~medclip_core.data.labelled_sets.LabelledSet` (decoded in
worker processes by a torch ``DataLoader``, each image once, whatever the number of models) feeds
every model: each preprocesses and encodes the decoded batch; grounding and segmentation maps are
drawn for the images that have boxes or masks. Prompts are encoded once per model. Then, per task:

* classification (zero-shot, pairwise prompt ensembles as :mod:`medclip_core.tasks.zero_shot`): per
  finding the ROC AUC with a percentile bootstrap 95 % interval (Efron & Tibshirani 1993) over
  images, the number of positives and negatives, "too few to trust" under
  ``MIN_TRUSTED_POSITIVES`` positives and "not defined" with no positive or no negative (never 0.5);
  for every pair of models the paired AUC difference, its interval from the same resamples (a
  paired bootstrap, as DeLong et al. 1988 pair the AUCs analytically); the ROC curve; the
  reliability diagram and ECE (Guo et al. 2017); sensitivity and specificity at the user's
  threshold or at Youden's;
* retrieval (image -> report and report -> image): recall@1/5/10 with bootstrap intervals over
  queries. Each distinct report text is one gallery item, so duplicated reports do not inflate it;
  a hit is the image's own report text, or (``relevance="labels"``) any report of the same label set;
* grounding: pointing game (Zhang et al. 2016) per heatmap method, strict and within
  ``POINTING_TOLERANCE`` pixels, beside its chance rate (the fraction of the image the boxes cover);
* segmentation: Dice and IoU of the zero-shot mask of each method's map with the given mask;
* sanity checks of each heatmap method (Adebayo et al. 2018, "Sanity checks for saliency maps"):
  the Spearman rank correlation between a phrase's map and (a) the map of a nonsense phrase
  (``CONTROL_PHRASE``) on the same image, (b) the map of the same phrase drawn by a copy of the
  model whose last image block has random weights (``ClipModel.with_randomised_blocks``; the
  standalone checks are :mod:`medclip_core.eval.heatmap_sanity`). A method whose median correlation exceeds ``FLAG_THRESHOLD`` draws much the same map whatever the prompt,
  or whatever the learned weights, and is flagged.

The engine imports nothing of training or the app: the CLI and the run manager call
:func:`evaluate_set` and save the :class:`EvaluationResult`.
"""
from __future__ import annotations

import contextlib
import itertools
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from medclip_core.data.labelled_sets import LabelledSet
from medclip_core.errors import ImageLoadError, MedclipError, TaskInputError
from medclip_core.eval.metrics import (
    bootstrap_counts, box_area_fraction, dice, expected_calibration_error, hits_at_k, iou, pointing_game,
    reliability_bins, roc_auc, roc_curve, sensitivity_specificity, spearman, weighted_roc_auc, youden_threshold,
)
from medclip_core.io import MedicalImage, load_image
from medclip_core.models.base import ClipModel
from medclip_core.tasks.grounding import METHODS, ground, method_support
from medclip_core.tasks.saving import SavesJson, output_folder, write_json
from medclip_core.tasks.segmentation import mask_from_heatmap
from medclip_core.tasks.zero_shot import label_text_embeddings, logit_map, scores_from_embeddings

TASKS: tuple[str, ...] = ("classification", "retrieval", "grounding", "segmentation")
MIN_TRUSTED_POSITIVES = 10
MIN_CLASS_FOR_INTERVAL = 2     # fewer positives or negatives: no interval ("too small a set")
RETRIEVAL_KS = (1, 5, 10)
ROC_POINTS = 200               # ROC curves are thinned to about this many points in the results
STATUS_OK, STATUS_FEW, STATUS_UNDEFINED = "ok", "too few to trust", "not defined"
POINTING_TOLERANCE = 15.0      # pixels, as in Zhang et al. 2016
CONTROL_PHRASE = "a photo of a bicycle wheel"   # names nothing a chest radiograph shows
FLAG_THRESHOLD = 0.9           # median Spearman above this: the map barely changed
SANITY_MAX_SIDE = 128          # maps are subsampled to at most this many pixels a side for the rank correlation

Progress = Callable[[float, str], Any]


@dataclass
class EvalOptions:
    """How to evaluate. ``tasks`` None: every task the set allows. ``threshold`` None: Youden's per
    finding. ``methods``: heatmap methods for grounding and segmentation. ``workers``: decoding
    processes (0 decodes in this one); None: the cores torch's threads leave free (:func:`decode_workers`)."""

    tasks: tuple[str, ...] | None = None
    bootstrap: int = 1000
    seed: int = 0
    threshold: float | None = None
    methods: tuple[str, ...] = ("similarity",)
    tolerance: float = POINTING_TOLERANCE
    relevance: str = "report"
    negatives: str | None = None
    batch_size: int = 32
    workers: int | None = None
    ece_bins: int = 10


@dataclass
class EvaluationResult(SavesJson):
    """Everything one evaluation measured; ``save`` writes ``evaluation.json``, ``evaluation.csv`` (one
    row per model and finding) and ``evaluation.html`` (the report with its figures, offline)."""

    SAVED_NAME = "evaluation"

    data: dict[str, Any]
    models: list[str]
    options: dict[str, Any]
    n_images: int
    skipped_images: list[dict[str, str]]
    classification: dict[str, Any] = field(default_factory=dict)
    comparisons: dict[str, Any] = field(default_factory=dict)
    retrieval: dict[str, Any] = field(default_factory=dict)
    grounding: dict[str, Any] = field(default_factory=dict)
    segmentation: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))

    def csv_rows(self) -> list[dict[str, Any]]:
        """One row per model and finding: AUC, interval, counts, status, operating point, ECE."""
        rows = []
        for model, per in self.classification.items():
            for finding, m in per["findings"].items():
                low, high = m["ci"] or (None, None)
                rows.append({"model": model, "finding": finding, "auc": m["auc"], "ci_low": low, "ci_high": high,
                             "n_positives": m["n_positives"], "n_negatives": m["n_negatives"],
                             "status": m["status"], "threshold": m["threshold"],
                             "sensitivity": m["sensitivity"], "specificity": m["specificity"], "ece": m["ece"]})
        return rows

    def save(self, out_dir: Any, *, prefix: str = "") -> dict[str, str]:
        import csv

        from medclip_core.eval.html_report import evaluation_html

        folder = output_folder(out_dir)
        payload = self.to_dict()
        json_path = write_json(folder / f"{prefix}{self.SAVED_NAME}.json", payload)
        csv_path = folder / f"{prefix}{self.SAVED_NAME}.csv"
        with open(csv_path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=["model", "finding", "auc", "ci_low", "ci_high", "n_positives",
                                                        "n_negatives", "status", "threshold", "sensitivity",
                                                        "specificity", "ece"])
            writer.writeheader()
            writer.writerows(json_safe(self.csv_rows()))
        html_path = folder / f"{prefix}{self.SAVED_NAME}.html"
        html_path.write_text(evaluation_html(payload), encoding="utf-8")
        return {"json": str(json_path), "csv": str(csv_path), "html": str(html_path)}


def json_safe(value: Any) -> Any:
    """NaN -> None, numpy scalars and arrays -> Python numbers and lists, recursively."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def mean_of_numbers(values: Sequence[float]) -> float:
    """Mean of the values that are not NaN; NaN when none is (a finding without targets)."""
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


@contextlib.contextmanager
def eval_mode(model: ClipModel) -> Iterator[None]:
    """Evaluation mode for the duration, then the module's previous mode (training may be running)."""
    was_training = model.module.training
    model.eval()
    try:
        yield
    finally:
        model.module.train(was_training)


# --- decoding ------------------------------------------------------------------------------------


class _DecodedImages(Dataset):
    """Item i: (i, the decoded image or the reason it could not be decoded)."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, MedicalImage | str]:
        try:
            return index, load_image(self.paths[index])
        except ImageLoadError as error:
            return index, str(error)


def _as_list(batch: list) -> list:
    return batch


def decode_workers(requested: int | None = None) -> int:
    """Decoding processes for a run: ``requested``, or the cores left after torch's intra-op threads (at
    most 4). A decoding process on a core the encoder's threads use slows the encoder more than decoding
    costs: on 2 cores with 2 torch threads, one worker halved the throughput of the phantom benchmark
    (bench/bench_evaluate.py), while decoding in the main process kept 0.99 of bare ``encode_image``."""
    if requested is not None:
        return requested
    return max(0, min(4, (os.cpu_count() or 1) - torch.get_num_threads()))


def decoded_batches(paths: Sequence[str], batch_size: int, workers: int) -> DataLoader:
    """Batches of (index, image or error) with each image decoded once, by ``workers`` processes."""
    return DataLoader(_DecodedImages(paths), batch_size=batch_size, num_workers=workers, collate_fn=_as_list,
                      persistent_workers=False, prefetch_factor=2 if workers else None)


# --- per-task summaries ---------------------------------------------------------------------------


def _interval(values: np.ndarray) -> list[float] | None:
    values = values[np.isfinite(values)]
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))] if values.size else None


def _thinned(values: np.ndarray) -> np.ndarray:
    step = max(1, len(values) // ROC_POINTS)
    return np.r_[values[:-1:step], values[-1]] if len(values) > 1 else values


def finding_metrics(truth: np.ndarray, probability: np.ndarray, weights: np.ndarray | None,
                    threshold: float | None, bins: int) -> tuple[dict[str, Any], np.ndarray | None]:
    """Metrics of one finding for one model over images with a known label (``truth`` not NaN), and
    its bootstrap AUCs (or None). ``weights``: the (R, N) bootstrap counts over all N images."""
    known = np.isfinite(truth)
    y, p = truth[known].astype(bool), probability[known]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    out: dict[str, Any] = {"n_positives": n_pos, "n_negatives": n_neg, "auc": None, "ci": None,
                           "threshold": None, "threshold_rule": None, "sensitivity": None, "specificity": None,
                           "ece": None, "roc": None, "reliability": [], "note": None}
    if n_pos == 0 or n_neg == 0:
        out.update(status=STATUS_UNDEFINED, note=f"no {'positive' if n_pos == 0 else 'negative'} image: "
                   "AUC, sensitivity and specificity are not defined")
        return out, None
    out["status"] = STATUS_OK if n_pos >= MIN_TRUSTED_POSITIVES else STATUS_FEW
    out["auc"] = roc_auc(y, p)
    resampled = None
    if weights is not None and min(n_pos, n_neg) >= MIN_CLASS_FOR_INTERVAL:
        resampled = weighted_roc_auc(y, p, weights[:, known])
        out["ci"] = _interval(resampled)
    elif weights is not None:
        out["note"] = f"too small a set for an interval: fewer than {MIN_CLASS_FOR_INTERVAL} positives or negatives"
    cut = threshold if threshold is not None else youden_threshold(y, p)
    out["threshold"], out["threshold_rule"] = float(cut), "user" if threshold is not None else "youden"
    out["sensitivity"], out["specificity"] = sensitivity_specificity(y, p, cut)
    out["ece"] = expected_calibration_error(p, y, bins)
    out["reliability"] = reliability_bins(p, y, bins)
    fpr, tpr, _ = roc_curve(y, p)
    out["roc"] = {"fpr": _thinned(fpr).tolist(), "tpr": _thinned(tpr).tolist()}
    return out, resampled


def classification_summary(truth: np.ndarray, findings: Sequence[str], probabilities: dict[str, np.ndarray],
                           options: EvalOptions) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per model and finding :func:`finding_metrics`, and the paired AUC differences of every pair of
    models (same bootstrap resamples). ``truth`` (N, F) with NaN unknown; ``probabilities``
    {model: (N, F)}."""
    weights = bootstrap_counts(truth.shape[0], options.bootstrap, options.seed) if options.bootstrap else None
    results: dict[str, Any] = {}
    resampled: dict[str, dict[str, np.ndarray | None]] = {}
    for model, prob in probabilities.items():
        per = {}
        resampled[model] = {}
        for j, finding in enumerate(findings):
            per[finding], resampled[model][finding] = finding_metrics(
                truth[:, j], prob[:, j], weights, options.threshold, options.ece_bins)
        defined = [m["auc"] for m in per.values() if m["auc"] is not None]
        trusted = [m["auc"] for m in per.values() if m["status"] == STATUS_OK]
        results[model] = {"findings": per, "macro_auc": mean_of_numbers(defined) if defined else None,
                          "macro_auc_trusted": mean_of_numbers(trusted) if trusted else None}
    comparisons: dict[str, Any] = {}
    for first, second in itertools.combinations(probabilities, 2):
        per = {}
        for finding in findings:
            a, b = results[first]["findings"][finding], results[second]["findings"][finding]
            if a["auc"] is None:
                per[finding] = {"difference": None, "ci": None, "note": a["note"]}
                continue
            ra, rb = resampled[first][finding], resampled[second][finding]
            per[finding] = {"difference": a["auc"] - b["auc"],
                            "ci": _interval(ra - rb) if ra is not None and rb is not None else None, "note": None}
        comparisons[f"{first} vs {second}"] = {"first": first, "second": second, "findings": per}
    return results, comparisons


def distinct_reports(reports: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """The distinct report texts in first-seen order, and for each image the index of its text."""
    texts = list(dict.fromkeys(reports))
    index = {text: i for i, text in enumerate(texts)}
    return texts, np.array([index[r] for r in reports])


def retrieval_summary(similarity: np.ndarray, own_text: np.ndarray, label_keys: Sequence[Any] | None,
                      options: EvalOptions) -> dict[str, Any]:
    """Recall@k both ways with bootstrap intervals over queries. ``similarity`` (N images, T distinct
    texts); ``own_text[i]`` the text of image i; ``label_keys`` per image (same key = same label set)
    when ``relevance == "labels"``."""
    n, n_texts = similarity.shape
    if label_keys is not None:
        keys = np.array([hash(k) for k in label_keys])
        text_keys = np.empty(n_texts, dtype=keys.dtype)
        text_keys[own_text[::-1]] = keys[::-1]  # a text takes the label set of its first image
        relevant = keys[:, None] == text_keys[None, :]
    else:
        relevant = own_text[:, None] == np.arange(n_texts)[None, :]
    out: dict[str, Any] = {"n_images": n, "n_texts": n_texts,
                           "relevance": "same label set" if label_keys is not None else "own report text"}
    for name, sim, rel in (("image_to_text", similarity, relevant), ("text_to_image", similarity.T, relevant.T)):
        weights = bootstrap_counts(sim.shape[0], options.bootstrap, options.seed + 1) if options.bootstrap else None
        per = {}
        for k in RETRIEVAL_KS:
            hits = hits_at_k(sim, rel, k).astype(float)
            ci = _interval(weights @ hits / weights.sum(axis=1)) if weights is not None and len(hits) > 1 else None
            per[f"recall@{k}"] = {"value": float(hits.mean()), "ci": ci}
        out[name] = per
    return out


class _MapTally:
    """Pointing game and Dice/IoU per method and phrase, accumulated image by image."""

    def __init__(self, methods: Sequence[str]) -> None:
        self.pointing = {m: {} for m in methods}
        self.pointing_tol = {m: {} for m in methods}
        self.chance: dict[str, list[float]] = {}
        self.chance_tol: dict[str, list[float]] = {}
        self.dice = {m: {} for m in methods}
        self.iou = {m: {} for m in methods}
        self.checks: dict[str, dict[str, list[float]]] = {
            check: {m: [] for m in methods} for check in ("nonsense_phrase", "randomised_last_block")}

    def add_check(self, check: str, method: str, heatmap: np.ndarray, other: np.ndarray) -> None:
        """Rank correlation of a phrase's map with its control map (subsampled) under ``check``."""
        step = max(1, max(heatmap.shape) // SANITY_MAX_SIDE)
        rho = spearman(heatmap[::step, ::step], other[::step, ::step])
        self.checks[check][method].append(float(rho) if np.isfinite(rho) else 1.0)  # a constant map: no change

    def add_boxes(self, method: str, phrase: str, heatmap: np.ndarray, boxes: list, tolerance: float) -> None:
        self.pointing[method].setdefault(phrase, []).append(float(pointing_game(heatmap, boxes)))
        self.pointing_tol[method].setdefault(phrase, []).append(float(pointing_game(heatmap, boxes, tolerance)))

    def add_chance(self, phrase: str, boxes: list, width: int, height: int, tolerance: float) -> None:
        self.chance.setdefault(phrase, []).append(box_area_fraction(boxes, width, height))
        self.chance_tol.setdefault(phrase, []).append(box_area_fraction(boxes, width, height, tolerance))

    def add_mask(self, method: str, phrase: str, heatmap: np.ndarray, truth: np.ndarray) -> None:
        predicted = mask_from_heatmap(heatmap)
        self.dice[method].setdefault(phrase, []).append(dice(predicted, truth))
        self.iou[method].setdefault(phrase, []).append(iou(predicted, truth))

    @staticmethod
    def _means(per: dict[str, list[float]]) -> dict[str, Any]:
        rates = {phrase: mean_of_numbers(v) for phrase, v in per.items()}
        return {"per_phrase": rates, "mean": mean_of_numbers(list(rates.values())) if rates else None}

    def sanity(self, randomised_note: str | None) -> dict[str, Any]:
        """Per method and check: median rank correlation with the control map, maps compared, flagged."""
        out: dict[str, Any] = {}
        for method in self.pointing:
            out[method] = {}
            for check, per_method in self.checks.items():
                values = per_method[method]
                median = float(np.median(values)) if values else None
                out[method][check] = {"median_rank_correlation": median, "n_maps": len(values),
                                      "flagged": median is not None and median > FLAG_THRESHOLD}
        return {"methods": out, "nonsense_phrase": CONTROL_PHRASE, "flag_above": FLAG_THRESHOLD,
                "randomised_last_block_note": randomised_note}

    def grounding(self, tolerance: float, randomised_note: str | None) -> dict[str, Any]:
        return {"methods": {m: {"pointing": self._means(self.pointing[m]),
                                f"pointing_{tolerance:g}px": self._means(self.pointing_tol[m])}
                            for m in self.pointing},
                "sanity": self.sanity(randomised_note),
                "chance": self._means(self.chance), f"chance_{tolerance:g}px": self._means(self.chance_tol),
                "n_targets": {phrase: len(v) for phrase, v in self.chance.items()}, "tolerance_px": tolerance}

    def segmentation(self) -> dict[str, Any]:
        return {"methods": {m: {"dice": self._means(self.dice[m]), "iou": self._means(self.iou[m])} for m in self.dice},
                "n_targets": {phrase: len(v) for phrase, v in next(iter(self.dice.values()), {}).items()}}



def _mask_array(path: str) -> np.ndarray:
    pixels = load_image(path).pixels
    return (pixels.mean(axis=2) if pixels.ndim == 3 else pixels) > 0.5


# --- the engine -----------------------------------------------------------------------------------


def evaluate_set(models: dict[str, ClipModel], labelled: LabelledSet, options: EvalOptions | None = None,
                 progress: Progress | None = None) -> EvaluationResult:
    """Evaluate every model of ``models`` ({name: model}) on ``labelled`` (see the module docstring)."""
    options = options or EvalOptions()
    if not models:
        raise TaskInputError("Choose at least one model to evaluate.")
    allowed = labelled.tasks
    tasks = [t for t in (options.tasks or allowed) if t in allowed]
    unknown = sorted(set(options.tasks or ()) - set(TASKS))
    if unknown or not tasks:
        raise TaskInputError(f"Nothing to evaluate: this set allows {', '.join(allowed) or 'no task'}"
                             + (f"; unknown task(s) {', '.join(unknown)}" if unknown else "") + ".")
    bad_methods = sorted(set(options.methods) - set(METHODS))
    if bad_methods:
        raise TaskInputError(f"Unknown heatmap method(s) {bad_methods}; choose from {', '.join(METHODS)}.")

    def report(fraction: float, message: str) -> None:
        if progress is not None:
            progress(fraction, message)

    start = time.perf_counter()
    images = labelled.images
    n = len(images)
    text: dict[str, Any] = {}
    methods: dict[str, list[str]] = {}
    tallies: dict[str, _MapTally] = {}
    for name, model in models.items():
        with eval_mode(model):
            if "classification" in tasks:  # prompts encoded once per model
                text[name] = label_text_embeddings(model, labelled.findings, "pairwise", cache=None,
                                                   negatives=options.negatives)
        support = method_support(model)
        methods[name] = [m for m in options.methods if not support[m]]
        tallies[name] = _MapTally(methods[name])
    want_maps = "grounding" in tasks or "segmentation" in tasks
    randomised: dict[str, ClipModel | None] = {}
    randomised_notes: dict[str, str | None] = {}
    for name, model in models.items():
        randomised[name], randomised_notes[name] = None, None
        if "grounding" in tasks and methods[name]:
            try:
                randomised[name] = model.with_randomised_blocks(1, options.seed)
            except MedclipError as error:  # no known last block: that check is left out
                randomised_notes[name] = f"not measured: {error}"

    embeddings: dict[str, list[torch.Tensor]] = {name: [] for name in models}
    decoded_ok = np.zeros(n, dtype=bool)
    skipped: list[dict[str, str]] = []
    seconds_encode = {name: 0.0 for name in models}
    seconds_maps = 0.0
    done = 0
    for batch in decoded_batches([i.path for i in images], options.batch_size, decode_workers(options.workers)):
        good = [(i, image) for i, image in batch if not isinstance(image, str)]
        skipped += [{"image": images[i].image_id, "reason": image} for i, image in batch if isinstance(image, str)]
        for i, _ in good:
            decoded_ok[i] = True
        for name, model in models.items():
            if not good:
                break
            tick = time.perf_counter()
            with eval_mode(model):
                embeddings[name].append(model.encode_image(model.preprocess_batch([im for _, im in good])).float().cpu())
            seconds_encode[name] += time.perf_counter() - tick
            if want_maps:
                tick = time.perf_counter()
                _draw_maps(model, methods[name], tallies[name], [(images[i], im) for i, im in good], tasks, options,
                           randomised[name])
                seconds_maps += time.perf_counter() - tick
        done += len(batch)
        report(0.9 * done / max(n, 1), f"encoded {done}/{n} images")

    kept = np.flatnonzero(decoded_ok)
    if kept.size < 2:
        raise TaskInputError(f"Only {kept.size} image(s) of {n} could be read: nothing to evaluate.")
    result = EvaluationResult(
        data=labelled.to_dict(), models=list(models), options=asdict(options), n_images=int(kept.size),
        skipped_images=skipped)
    vectors = {name: torch.cat(chunks) for name, chunks in embeddings.items()}
    tick = time.perf_counter()
    if "classification" in tasks:
        truth = labelled.truth()[kept]
        probabilities = {}
        for name, model in models.items():
            probabilities[name] = scores_from_embeddings(vectors[name], text[name], logit_map(model, text[name]))
        result.classification, result.comparisons = classification_summary(
            truth, labelled.findings, probabilities, options)
    seconds_bootstrap = time.perf_counter() - tick
    if "retrieval" in tasks:
        report(0.95, "retrieval")
        with_report = [j for j, i in enumerate(kept) if images[i].report is not None]
        texts, own = distinct_reports([images[kept[j]].report for j in with_report])
        keys = ([frozenset(k for k, v in images[kept[j]].labels.items() if v == 1) for j in with_report]
                if options.relevance == "labels" and labelled.findings else None)
        for name, model in models.items():
            with eval_mode(model):
                text_vectors = torch.cat([model.encode_text(texts[lo:lo + 64]).float().cpu()
                                          for lo in range(0, len(texts), 64)])
            similarity = (vectors[name][with_report] @ text_vectors.T).numpy()
            result.retrieval[name] = retrieval_summary(similarity, own, keys, options)
    if "grounding" in tasks:
        result.grounding = {name: tallies[name].grounding(options.tolerance, randomised_notes[name]) for name in models}
    if "segmentation" in tasks:
        result.segmentation = {name: tallies[name].segmentation() for name in models}
    seconds_total = time.perf_counter() - start
    result.timing = {"seconds_total": seconds_total, "seconds_maps": seconds_maps,
                     "seconds_bootstrap": seconds_bootstrap,
                     **{f"seconds_image_encoding[{name}]": s for name, s in seconds_encode.items()},
                     "images_per_second": kept.size * len(models) / max(sum(seconds_encode.values()), 1e-9)}
    report(1.0, "done")
    return result


def _draw_maps(model: ClipModel, methods: list[str], tally: _MapTally, batch: list[tuple[Any, MedicalImage]],
               tasks: list[str], options: EvalOptions, randomised: ClipModel | None) -> None:
    """Heatmaps of each method for the phrases an image has boxes or masks for, scored into ``tally``."""
    for item, image in batch:
        boxes = item.boxes if "grounding" in tasks else {}
        masks = item.masks if "segmentation" in tasks else {}
        phrases = list(dict.fromkeys([*boxes, *masks]))
        if not phrases:
            continue
        height, width = image.pixels.shape[:2]
        for phrase in boxes:
            tally.add_chance(phrase, boxes[phrase], width, height, options.tolerance)
        for method in methods:
            maps = ground(image, phrases, model=model, method=method).maps
            checks = boxes and "grounding" in tasks
            control = ground(image, [CONTROL_PHRASE], model=model, method=method).maps[0] if checks else None
            random_maps = (ground(image, phrases, model=randomised, method=method).maps
                           if checks and randomised is not None else [None] * len(phrases))
            for phrase, heatmap, random_map in zip(phrases, maps, random_maps):
                if control is not None:
                    tally.add_check("nonsense_phrase", method, heatmap, control)
                if random_map is not None:
                    tally.add_check("randomised_last_block", method, heatmap, random_map)
                if phrase in boxes:
                    tally.add_boxes(method, phrase, heatmap, boxes[phrase], options.tolerance)
                if phrase in masks:
                    tally.add_mask(method, phrase, heatmap, _mask_array(masks[phrase]))
