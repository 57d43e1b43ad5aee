"""Evaluation of report drafts on the phantom split: both methods against three baselines.

For each phantom image of the split (the same images every other evaluation renders) each system
writes one report, which is compared with the real report the image was rendered from:

* BLEU-1..4 (corpus) and ROUGE-L against the reference text;
* **finding F1**: the rule-based labeller's reading of the draft (uncertain counted as present)
  against the MeSH labels of the reference, micro over the 22 findings ("normal" included) and
  macro over the findings present in the split; also against the labeller's reading of the
  reference text (the CheXbert-F1 protocol of the report-generation literature);
* baselines: a random training report (seeded), the most common training report, and the nearest
  whole training report (image embedding against report embeddings, :func:`image_to_reports`'s
  corpus).

The labeller's own agreement with the curated MeSH labels of all 3,927 reports is reported too, so
that the finding F1 can be read against the labeller's ceiling.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from medclip_core.data.findings import FINDINGS
from medclip_core.data.labeller import label_text
from medclip_core.data.reports import Report, load_reports, report_splits
from medclip_core.errors import MedclipError
from medclip_core.eval.report_metrics import corpus_bleu, finding_f1, mean_rouge_l, words
from medclip_core.models.base import ClipModel
from medclip_core.models.report_decoder import LoadedDecoder
from medclip_core.tasks.report import METHODS, SUPPORT, generated_draft, retrieval_draft
from medclip_core.tasks.report_features import phantom_features

BASELINES: tuple[str, ...] = ("random report", "most common report", "nearest whole report")
Progress = Callable[[float, str], Any]


def labeller_agreement(reports: Sequence[Report]) -> dict[str, Any]:
    """How the labeller's reading of each report's text agrees with its MeSH-derived labels."""
    predicted = [label_text(r.text).present() for r in reports]
    truth = [r.labels for r in reports]
    scores = finding_f1(predicted, truth, FINDINGS)
    return {"n_reports": len(reports), "micro_f1": scores["micro_f1"], "macro_f1": scores["macro_f1"],
            "exact_match": float(np.mean([p == t for p, t in zip(predicted, truth)])),
            "per_label_f1": scores["per_label"]}


def score_texts(texts: Sequence[str], reports: Sequence[Report]) -> dict[str, Any]:
    """BLEU-1..4, ROUGE-L, finding F1 (vs MeSH and vs the labelled reference) of one system's reports."""
    references = [r.text for r in reports]
    predicted = [label_text(t).present() for t in texts]
    versus_mesh = finding_f1(predicted, [r.labels for r in reports], FINDINGS)
    versus_text = finding_f1(predicted, [label_text(r).present() for r in references], FINDINGS)
    return {**corpus_bleu(texts, references), "rouge_l": mean_rouge_l(texts, references),
            "finding_f1_micro": versus_mesh["micro_f1"], "finding_f1_macro": versus_mesh["macro_f1"],
            "finding_f1_micro_vs_labelled_reference": versus_text["micro_f1"],
            "per_label_f1": versus_mesh["per_label"],
            "mean_words": float(np.mean([len(words(t)) for t in texts]))}


@dataclass
class ReportEvalResult:
    model: str
    split: str
    n_images: int
    systems: dict[str, dict[str, Any]]
    margins: dict[str, dict[str, float]]      # method -> baseline -> micro finding F1 difference
    labeller: dict[str, Any]
    settings: dict[str, Any]
    complete_split: bool  # every image of the split was evaluated
    examples: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def baseline_texts(model: ClipModel, pooled: np.ndarray, n: int, seed: int = 0) -> dict[str, list[str]]:
    """The three baselines' reports for ``n`` images with embeddings ``pooled``."""
    from medclip_core.tasks.retrieval import build_report_index

    train = report_splits(load_reports(), seed=seed)["train"]
    rng = np.random.default_rng(seed)
    most_common = Counter(r.text for r in train).most_common(1)[0][0]
    index = build_report_index(model)
    nearest = (pooled @ index.vectors.T).argmax(axis=1)
    return {"random report": [train[i].text for i in rng.integers(len(train), size=n)],
            "most common report": [most_common] * n,
            "nearest whole report": [index.items[i].report for i in nearest]}


def evaluate_reports(model: ClipModel, decoder: LoadedDecoder | None, split: str = "test", n: int | None = None,
                     k: int = 4, impression_k: int = 1, calibration: float = 1.0, support: float = SUPPORT,
                     beam: int = 3, seed: int = 0,
                     cache_dir: Path | None = None, progress: Progress | None = None) -> ReportEvalResult:
    """Both methods (generative only with a ``decoder``) and the baselines on the phantom ``split``."""
    from medclip_core.models.embedding_cache import default_cache_dir

    reports = report_splits(load_reports(), seed=seed).get(split)
    if reports is None:
        raise MedclipError(f"Unknown split '{split}'; choose train, val or test.")
    complete = not n or n >= len(reports)
    reports = reports[:n] if n else reports
    if not reports:
        raise MedclipError("Evaluate at least one image (n >= 1).")
    note = progress or (lambda fraction, message: None)
    note(0.0, "image features")
    features = phantom_features(model, split, limit=len(reports), seed=seed,
                                cache_dir=cache_dir or default_cache_dir() / "report-eval")
    texts = baseline_texts(model, features.pooled, len(reports), seed)
    seconds: dict[str, float] = {}
    methods = [m for m in METHODS if m == "retrieval" or decoder is not None]
    for method in methods:
        start, drafts = time.perf_counter(), []
        for i in range(len(reports)):
            if method == "retrieval":
                drafts.append(retrieval_draft(model, features.pooled[i], k, impression_k, calibration, 0.9,
                                                 support).text)
            else:
                drafts.append(generated_draft(model, decoder, features.pooled[i], features.patches[i], beam).text)
            if i % 50 == 0:
                note((i + 1) / len(reports), f"{method} {i + 1}/{len(reports)}")
        texts[method] = drafts
        seconds[method] = (time.perf_counter() - start) / len(reports)
    systems = {name: score_texts(t, reports) for name, t in texts.items()}
    for method in methods:
        systems[method]["seconds_per_report_from_features"] = seconds[method]
    margins = {method: {b: systems[method]["finding_f1_micro"] - systems[b]["finding_f1_micro"] for b in BASELINES}
               for method in methods}
    examples = [{"id": reports[i].report_id, "reference": reports[i].text,
                 **{name: texts[name][i] for name in (*methods, "nearest whole report")}} for i in range(min(5, len(reports)))]
    settings = {"k": k, "impression_k": impression_k, "calibration": calibration, "support": support,
                "beam": beam, "seed": seed,
                "decoder": _shown_path(decoder.path) if decoder is not None else None,
                "uncertain_counts_as_present": True}
    return ReportEvalResult(model.card.name, split, len(reports), systems, margins,
                            labeller_agreement(load_reports()), settings, complete, examples)


def _shown_path(path: Path) -> str:
    """``path`` relative to the working folder when inside it (no machine paths in committed results)."""
    try:
        return Path(path).resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return Path(path).name


def write_report_eval(result: ReportEvalResult, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.to_dict(), indent=1, default=float))
    return path
