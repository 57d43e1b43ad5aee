"""Metrics as small pure numpy functions, so every number the app reports can be checked by hand.

Classification: ROC AUC (rank based, ties counted half). Retrieval: recall@k and precision@k over
a similarity matrix with a boolean relevance matrix (relevance need not be one-to-one). Grounding:
the pointing game on a heatmap drawn back onto the original image through the model's crop
(:func:`medclip_core.models.geometry.heatmap_from_patches`), and IoU / Dice for masks.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

from medclip_core.errors import TaskInputError

Box = tuple[float, float, float, float]


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values``; tied values share the mean of the ranks they span."""
    values = np.asarray(values, dtype=np.float64).ravel()
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # start index of each run of equal values
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    run_ranks = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(run_ranks, ends - starts)
    return ranks


def roc_auc(y_true: Sequence[bool] | np.ndarray, score: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve: P(score of a random positive > score of a random negative).

    Computed from ranks (Mann-Whitney U), ties between a positive and a negative count 1/2.
    Returns NaN when only one class is present.
    """
    y = np.asarray(y_true).astype(bool).ravel()
    score = np.asarray(score, dtype=np.float64).ravel()
    if y.shape != score.shape:
        raise ValueError(f"y_true has {y.size} entries, score has {score.size}.")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum = average_ranks(score)[y].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _top_k_relevance(similarity: np.ndarray, relevant: np.ndarray, k: int) -> np.ndarray:
    """(Q, min(k, G)) relevance of each query's k most similar gallery items, best first."""
    similarity = np.asarray(similarity, dtype=np.float64)
    relevant = np.asarray(relevant, dtype=bool)
    if similarity.shape != relevant.shape or similarity.ndim != 2:
        raise ValueError(f"similarity {similarity.shape} and relevant {relevant.shape} must be the same (Q, G).")
    if k < 1:
        raise ValueError("k must be at least 1.")
    top = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(relevant, top, axis=1)


def recall_at_k(similarity: np.ndarray, relevant: np.ndarray, ks: Iterable[int] = (1, 5, 10)) -> dict[int, float]:
    """Fraction of queries with at least one relevant item among their top k, for each k.

    ``similarity`` and ``relevant`` are (Q, G): query i against gallery item j. Queries with no
    relevant item at all are left out (NaN when none is left). Equal similarities keep gallery order.
    """
    has_relevant = np.asarray(relevant, dtype=bool).any(axis=1)
    out = {}
    for k in ks:
        hits = hits_at_k(similarity, relevant, k)[has_relevant]
        out[k] = float(hits.mean()) if hits.size else float("nan")
    return out


def hits_at_k(similarity: np.ndarray, relevant: np.ndarray, k: int) -> np.ndarray:
    """(Q,) whether each query has a relevant item among its k most similar (the per-query recall@k,
    which a bootstrap over queries resamples)."""
    return _top_k_relevance(similarity, relevant, k).any(axis=1)


def precision_at_k(similarity: np.ndarray, relevant: np.ndarray, ks: Iterable[int] = (5,)) -> dict[int, float]:
    """Mean over queries of the fraction of relevant items among the top k (top G when G < k)."""
    return {k: float(_top_k_relevance(similarity, relevant, k).mean()) for k in ks}


def _distance_to_box(x: float | np.ndarray, y: float | np.ndarray, box: Box) -> float | np.ndarray:
    """Euclidean distance from (x, y) to an ``(x0, y0, x1, y1)`` box, 0 inside it (arrays broadcast)."""
    x0, y0, x1, y1 = box
    return np.hypot(np.maximum(np.maximum(x0 - x, x - x1), 0.0), np.maximum(np.maximum(y0 - y, y - y1), 0.0))


def point_in_boxes(x: float, y: float, boxes: Iterable[Box], tolerance: float = 0.0) -> bool:
    """Whether the point (x, y), in pixel coordinates, lies in any ``(x0, y0, x1, y1)`` box (edges
    included) or within ``tolerance`` pixels (Euclidean) of one."""
    return any(_distance_to_box(x, y, box) <= tolerance for box in boxes)


def pointing_game(heatmap: np.ndarray, boxes: Iterable[Box], tolerance: float = 0.0) -> bool:
    """Hit when the heatmap's maximum (first one if tied) falls in any box, or within ``tolerance``
    pixels of one (Zhang et al. 2016, who introduced the game, allow 15 px).

    The maximum is the pixel at column x, row y, taken at its centre (x + 0.5, y + 0.5); boxes are
    ``(x0, y0, x1, y1)`` in the same pixel coordinates, so pixel i spans [i, i + 1).
    """
    heatmap = np.asarray(heatmap)
    row, col = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return point_in_boxes(col + 0.5, row + 0.5, boxes, tolerance)


def box_area_fraction(boxes: Iterable[Box], width: int, height: int, tolerance: float = 0.0) -> float:
    """Fraction of a width x height image covered by the union of ``boxes`` (pixel centres inside),
    each grown by ``tolerance`` pixels: the chance rate of :func:`pointing_game` with that tolerance."""
    covered = np.zeros((height, width), dtype=bool)
    ys, xs = np.arange(height) + 0.5, np.arange(width) + 0.5
    for box in boxes:
        covered |= _distance_to_box(xs[None, :], ys[:, None], box) <= tolerance
    return float(covered.mean())


def expected_calibration_error(probabilities: np.ndarray, truth: np.ndarray, bins: int = 10) -> float:
    """ECE (Guo et al. 2017) of binary probabilities: over ``bins`` equal-width probability bins, the
    share of items in each bin times |mean probability - observed frequency| there, summed."""
    probabilities = np.asarray(probabilities, dtype=float).ravel()
    truth = np.asarray(truth, dtype=float).ravel()
    if probabilities.shape != truth.shape or probabilities.size == 0:
        raise ValueError("probabilities and truth need the same, non-zero number of items")
    which = np.minimum((probabilities * bins).astype(int), bins - 1)
    error = 0.0
    for b in np.unique(which):
        inside = which == b
        error += inside.mean() * abs(probabilities[inside].mean() - truth[inside].mean())
    return float(error)


def platt_scaling(scores: np.ndarray, truth: np.ndarray, iterations: int = 100) -> tuple[float, float]:
    """Platt (1999) scaling: the ``(a, b)`` for which ``sigmoid(a * score + b)`` best predicts ``truth``
    (maximum likelihood, Newton's method on the two parameters)."""
    x = np.asarray(scores, dtype=float).ravel()
    y = np.asarray(truth, dtype=float).ravel()
    if x.shape != y.shape or y.min(initial=1) == y.max(initial=0):
        raise ValueError("Platt scaling needs as many scores as labels, and both classes among the labels")
    params = np.zeros(2)
    design = np.stack([x, np.ones_like(x)], axis=1)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(design @ params)))
        gradient = design.T @ (p - y)
        hessian = (design * (p * (1 - p))[:, None]).T @ design + 1e-9 * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        params -= step
        if np.abs(step).max() < 1e-10:
            break
    return float(params[0]), float(params[1])


def iou(pred: np.ndarray, target: np.ndarray) -> float:
    """Intersection over union of two boolean masks; 1.0 when both are empty."""
    pred, target = np.asarray(pred, dtype=bool), np.asarray(target, dtype=bool)
    union = np.logical_or(pred, target).sum()
    return float(np.logical_and(pred, target).sum() / union) if union else 1.0


def dice(pred: np.ndarray, target: np.ndarray) -> float:
    """Dice coefficient 2|A∩B| / (|A| + |B|) of two boolean masks; 1.0 when both are empty."""
    pred, target = np.asarray(pred, dtype=bool), np.asarray(target, dtype=bool)
    total = pred.sum() + target.sum()
    return float(2.0 * np.logical_and(pred, target).sum() / total) if total else 1.0


def bootstrap_counts(n: int, resamples: int, seed: int = 0) -> np.ndarray:
    """(resamples, n) how often each of n items is drawn in each bootstrap resample (Efron 1979):
    n draws with replacement per resample. One matrix serves every finding and every model of an
    evaluation, so their intervals (and paired differences) come from the same resamples."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(resamples, n)) + np.arange(resamples)[:, None] * n
    return np.bincount(draws.ravel(), minlength=resamples * n).reshape(resamples, n)


def weighted_roc_auc(y_true: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC under each row of ``weights`` (R, N) item multiplicities, e.g. :func:`bootstrap_counts`:
    the AUC of the data set in which item i appears ``weights[r, i]`` times (ties count 1/2, as in
    :func:`roc_auc`, which a row of ones reproduces). NaN where a row leaves one class empty.

    The scores are sorted once; per row it sums the weight of positives and negatives in each group of
    tied scores, so R resamples cost O(R N) after one sort instead of R sorts."""
    y = np.asarray(y_true).astype(bool).ravel()
    score = np.asarray(score, dtype=np.float64).ravel()
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    order = np.argsort(score, kind="mergesort")
    sorted_score = score[order]
    starts = np.flatnonzero(np.r_[True, sorted_score[1:] != sorted_score[:-1]])
    w = weights[:, order]
    positive = np.add.reduceat(w * y[order], starts, axis=1)
    negative = np.add.reduceat(w * ~y[order], starts, axis=1)
    negative_below = np.cumsum(negative, axis=1) - negative
    n_pos, n_neg = positive.sum(axis=1), negative.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (positive * (negative_below + 0.5 * negative)).sum(axis=1) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def roc_curve(y_true: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate, threshold) at every distinct score, from the highest
    threshold down, starting at (0, 0); "positive" means score >= threshold."""
    y = np.asarray(y_true).astype(bool).ravel()
    score = np.asarray(score, dtype=np.float64).ravel()
    order = np.argsort(-score, kind="mergesort")
    sorted_score, sorted_y = score[order], y[order]
    last_of_run = np.r_[sorted_score[1:] != sorted_score[:-1], True]
    tp = np.cumsum(sorted_y)[last_of_run]
    fp = np.cumsum(~sorted_y)[last_of_run]
    n_pos, n_neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    return (np.r_[0.0, fp / n_neg], np.r_[0.0, tp / n_pos], np.r_[np.inf, sorted_score[last_of_run]])


def youden_threshold(y_true: np.ndarray, score: np.ndarray) -> float:
    """The threshold maximising Youden's J = sensitivity + specificity - 1 (Youden 1950)."""
    fpr, tpr, thresholds = roc_curve(y_true, score)
    return float(thresholds[1:][np.argmax((tpr - fpr)[1:])])


def sensitivity_specificity(y_true: np.ndarray, score: np.ndarray, threshold: float) -> tuple[float, float]:
    """Sensitivity (true positive rate) and specificity (true negative rate) of ``score >= threshold``."""
    y = np.asarray(y_true).astype(bool).ravel()
    called = np.asarray(score, dtype=np.float64).ravel() >= threshold
    sensitivity = float(called[y].mean()) if y.any() else float("nan")
    specificity = float((~called[~y]).mean()) if (~y).any() else float("nan")
    return sensitivity, specificity


def reliability_bins(probabilities: np.ndarray, truth: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """The reliability diagram of binary probabilities (DeGroot & Fienberg 1983; Guo et al. 2017): per
    non-empty equal-width bin, its range, item count, mean probability and observed frequency; the
    bins of :func:`expected_calibration_error`."""
    probabilities = np.asarray(probabilities, dtype=float).ravel()
    truth = np.asarray(truth, dtype=float).ravel()
    which = np.minimum((probabilities * bins).astype(int), bins - 1)
    out = []
    for b in np.unique(which):
        inside = which == b
        out.append({"low": b / bins, "high": (b + 1) / bins, "count": int(inside.sum()),
                    "mean_probability": float(probabilities[inside].mean()),
                    "observed_frequency": float(truth[inside].mean())})
    return out

def spearman(first: np.ndarray, second: np.ndarray) -> float:
    """Spearman rank correlation of two maps of the same shape (ties share their mean rank).

    Identical maps give 1.0; a constant map against a different one gives NaN (no ranks to correlate)."""
    a, b = np.asarray(first, dtype=np.float64).ravel(), np.asarray(second, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise TaskInputError(f"maps of different sizes: {a.size} and {b.size} values")
    if np.array_equal(a, b):
        return 1.0
    ranks_a, ranks_b = average_ranks(a), average_ranks(b)
    ranks_a -= ranks_a.mean()
    ranks_b -= ranks_b.mean()
    norm = math.sqrt(float(ranks_a @ ranks_a) * float(ranks_b @ ranks_b))
    return float(ranks_a @ ranks_b) / norm if norm > 0 else math.nan
