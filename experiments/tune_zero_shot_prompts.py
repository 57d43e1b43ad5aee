"""Choose zero-shot prompts on the phantom *validation* split, then report the test split.

Two questions, both answered on the embedded models' validation images only:

1. **Pairwise negatives**: "No {finding}." (CheXzero) or a normal study's sentences? Each style is
   scored with the current prompts (macro AUC over findings, top-finding accuracy, calibration error),
   softmax across labels alongside.
2. **Label synonyms**: greedy backward selection over ``LABEL_SYNONYMS``. Each round drops the one
   synonym whose removal raises the mean validation top-finding accuracy of the models most (by at
   least ``--min-gain``) without lowering their mean macro AUC by more than ``--auc-tolerance``; it
   stops when no removal qualifies. Only removals are tried, and never of a label's first synonym
   (its standard term, which models trained on real reports know best), so every prompt stays
   report wording.

The chosen negative style goes into the embedded models' specs (``zero_shot_negatives``). The
chosen synonyms are only recorded: the test split is scored before and after in every style, and a
change that helps one style can hurt another (the README says what was found and left alone).

    python experiments/tune_zero_shot_prompts.py   # -> experiments/results/zero_shot_prompts.json (4-6 min on 2 cores)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from medclip_core.data import findings
from medclip_core.data.findings import FINDINGS
from medclip_core.eval.phantom_eval import phantom_eval_embeddings, zero_shot_summary
from medclip_core.models import load_model
from medclip_core.models.base import ClipModel
from medclip_core.tasks import zero_shot as zs

ROOT = Path(__file__).resolve().parents[1]

SUMMARY_KEYS = ("macro_auc", "top_finding_accuracy", "calibration_error")


class Split:
    """One model's image embeddings and label sets on one split."""

    def __init__(self, model: ClipModel, split: str, n: int) -> None:
        self.embeddings, self.label_sets = phantom_eval_embeddings(model, n, split)

    def score(self, model: ClipModel, mode: str, negatives: str | None) -> dict[str, float]:
        with torch.no_grad():
            text = zs.label_text_embeddings(model, FINDINGS, mode, cache=None, negatives=negatives)
        # uncalibrated: the styles are compared as the model scores them, before any Platt scaling
        probabilities = zs.scores_from_embeddings(self.embeddings, text, zs.logit_map(model, text, False))
        summary = zero_shot_summary(probabilities, self.label_sets, mode, negatives)
        return {key: None if summary[key] is None else round(summary[key], 4) for key in SUMMARY_KEYS}


def score_all(models: dict[str, ClipModel], splits: dict[str, Split], synonyms: dict[str, tuple[str, ...]],
              styles: list[tuple[str, str | None]]) -> dict[str, Any]:
    findings.LABEL_SYNONYMS.clear()
    findings.LABEL_SYNONYMS.update(synonyms)
    return {name: {f"{mode}/{negatives}" if negatives else mode: splits[name].score(model, mode, negatives)
                   for mode, negatives in styles} for name, model in models.items()}


def mean_of(scores: dict[str, Any], style: str, key: str) -> float:
    return sum(per_model[style][key] for per_model in scores.values()) / len(scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["medclip-phantom", "medclip-phantom-grounding"])
    parser.add_argument("--n", type=int, default=1000, help="images per split")
    parser.add_argument("--min-gain", type=float, default=0.003, help="top-finding accuracy a removal must add")
    parser.add_argument("--auc-tolerance", type=float, default=0.002, help="macro AUC a removal may cost")
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "results" / "zero_shot_prompts.json")
    args = parser.parse_args()
    start = time.perf_counter()
    models = {name: load_model(name) for name in args.models}
    val = {name: Split(model, "val", args.n) for name, model in models.items()}
    test = {name: Split(model, "test", args.n) for name, model in models.items()}
    styles = [("pairwise", "negated"), ("pairwise", "normal"), ("softmax", None)]
    original = dict(findings.LABEL_SYNONYMS)

    negatives = {"val": score_all(models, val, original, styles), "test": score_all(models, test, original, styles)}
    chosen_style = max(("negated", "normal"),
                       key=lambda style: mean_of(negatives["val"], f"pairwise/{style}", "top_finding_accuracy"))
    selection_style = [("pairwise", chosen_style)]
    key = f"pairwise/{chosen_style}"

    synonyms, rounds = dict(original), []
    current = score_all(models, val, synonyms, selection_style)
    while True:
        best = None
        for label in FINDINGS:
            for phrase in synonyms.get(label, ())[1:]:
                trial = {**synonyms, label: tuple(p for p in synonyms[label] if p != phrase)}
                scores = score_all(models, val, trial, selection_style)
                gain = mean_of(scores, key, "top_finding_accuracy") - mean_of(current, key, "top_finding_accuracy")
                auc_change = mean_of(scores, key, "macro_auc") - mean_of(current, key, "macro_auc")
                if gain >= args.min_gain and auc_change >= -args.auc_tolerance and (best is None or gain > best[0]):
                    best = (gain, auc_change, label, phrase, trial, scores)
        if best is None:
            break
        gain, auc_change, label, phrase, synonyms, current = best
        rounds.append({"removed": [label, phrase], "val_top_finding_gain": round(gain, 4),
                       "val_macro_auc_change": round(auc_change, 4)})
        print(f"drop '{phrase}' from '{label}': top-finding +{gain:.4f}, macro AUC {auc_change:+.4f}", file=sys.stderr)

    result = {
        "protocol": f"phantom val and test splits, {args.n} images each, seed 0; choices made on val only",
        "models": args.models,
        "negatives": {**negatives, "chosen": chosen_style},
        "synonym_selection": {"min_gain": args.min_gain, "auc_tolerance": args.auc_tolerance, "rounds": rounds,
                              "changed": {label: list(synonyms[label]) for label in FINDINGS
                                          if synonyms.get(label) != original.get(label)}},
        "test": {"before": score_all(models, test, original, styles), "after": score_all(models, test, synonyms, styles)},
        "seconds": round(time.perf_counter() - start, 1),
    }
    findings.LABEL_SYNONYMS.clear()
    findings.LABEL_SYNONYMS.update(original)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({"chosen_negatives": chosen_style, **result["synonym_selection"]}, indent=1))


if __name__ == "__main__":
    main()
