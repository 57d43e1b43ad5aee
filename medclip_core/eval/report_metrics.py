"""Scores of generated reports against reference reports: BLEU-1..4, ROUGE-L and finding F1.

Plain Python, so every number can be checked by hand. Text is lower-cased and split into words
(punctuation and the FINDINGS / IMPRESSION headers dropped), as the report-generation literature
does before BLEU. BLEU is corpus BLEU (clipped n-gram counts and lengths summed over the corpus,
one brevity penalty, uniform weights over n = 1..N); ROUGE-L is the LCS F-measure with beta = 1.2
(as in pycocoevalcap), averaged over reports. Finding F1 compares label sets (e.g. the rule-based
labeller's reading of a generated report against the MeSH labels of the reference).
"""
from __future__ import annotations

import math
import re
from collections import Counter
from typing import Iterable, Sequence

_WORD = re.compile(r"[a-z0-9]+")
_HEADER = re.compile(r"\b(?:findings|impression)\s*:")


def words(text: str) -> list[str]:
    """Lower-case word tokens of a report (headers and punctuation removed)."""
    return _WORD.findall(_HEADER.sub(" ", text.lower()))


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str], max_n: int = 4) -> dict[str, float]:
    """BLEU-1 .. BLEU-``max_n`` of ``hypotheses`` against one reference each (corpus level)."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references.")
    matched, total = [0] * max_n, [0] * max_n
    hyp_len = ref_len = 0
    for hypothesis, reference in zip(hypotheses, references):
        hyp, ref = words(hypothesis), words(reference)
        hyp_len, ref_len = hyp_len + len(hyp), ref_len + len(ref)
        for n in range(1, max_n + 1):
            counts, ref_counts = _ngrams(hyp, n), _ngrams(ref, n)
            matched[n - 1] += sum(min(c, ref_counts[g]) for g, c in counts.items())
            total[n - 1] += max(len(hyp) - n + 1, 0)
    if hyp_len == 0:
        return {f"bleu_{n}": 0.0 for n in range(1, max_n + 1)}
    brevity = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    scores, log_sum = {}, 0.0
    for n in range(1, max_n + 1):
        precision = matched[n - 1] / total[n - 1] if total[n - 1] else 0.0
        log_sum += math.log(precision) if precision > 0 else -math.inf
        scores[f"bleu_{n}"] = brevity * math.exp(log_sum / n) if log_sum > -math.inf else 0.0
    return scores


def _lcs(a: list[str], b: list[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(hypothesis: str, reference: str, beta: float = 1.2) -> float:
    """ROUGE-L F-measure of one hypothesis against one reference."""
    hyp, ref = words(hypothesis), words(reference)
    lcs = _lcs(hyp, ref) if hyp and ref else 0
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(hyp), lcs / len(ref)
    return (1 + beta ** 2) * precision * recall / (recall + beta ** 2 * precision)


def mean_rouge_l(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    if len(hypotheses) != len(references) or not hypotheses:
        raise ValueError("Give as many hypotheses as references, at least one.")
    return sum(rouge_l(h, r) for h, r in zip(hypotheses, references)) / len(hypotheses)


def finding_f1(predicted: Sequence[Iterable[str]], true: Sequence[Iterable[str]],
               labels: Sequence[str]) -> dict:
    """Micro F1 over ``labels``, macro F1 over those with a true positive case, and per-label F1.

    ``predicted[i]`` and ``true[i]`` are the label sets of report i.
    """
    if len(predicted) != len(true):
        raise ValueError(f"{len(predicted)} predicted label sets but {len(true)} true ones.")
    tp, fp, fn = Counter(), Counter(), Counter()
    for p, t in zip(predicted, true):
        p, t = set(p), set(t)
        for label in labels:
            tp[label] += label in p and label in t
            fp[label] += label in p and label not in t
            fn[label] += label in t and label not in p
    per_label = {}
    for label in labels:
        denominator = 2 * tp[label] + fp[label] + fn[label]
        per_label[label] = 2 * tp[label] / denominator if denominator else float("nan")
    t, f_p, f_n = (sum(c[label] for label in labels) for c in (tp, fp, fn))
    present = [label for label in labels if tp[label] + fn[label] > 0]
    return {"micro_f1": 2 * t / (2 * t + f_p + f_n) if t + f_p + f_n else float("nan"),
            "macro_f1": sum(per_label[label] for label in present) / len(present) if present else float("nan"),
            "per_label": per_label,
            "support": {label: tp[label] + fn[label] for label in labels}}
