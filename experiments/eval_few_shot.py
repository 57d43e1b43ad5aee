"""Few-shot adaptation against zero-shot on the phantom test split (the Diagnose tab's three series).

The support set is ``shots`` phantom *train* images per label of the "Phantom findings" preset
(``phantom_support``); the query set is 1,000 test images. For each image the three series the
Diagnose tab shows are scored: zero-shot (pairwise, the model's own negatives and calibration),
zero-shot + Tip-Adapter (default ``alpha``, ``beta``) and the linear probe. Macro AUC over the
labels and top-label accuracy (the highest-scoring label is one of the image's own, among images
with at least one preset label).

    python experiments/eval_few_shot.py [--shots 4 16]   # -> experiments/results/few_shot.json (about 2 min)
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from medclip_core.data.findings import LABEL_PRESETS
from medclip_core.eval.metrics import roc_auc
from medclip_core.eval.phantom_eval import MIN_CLASS_COUNT, phantom_eval_embeddings
from medclip_core.models import load_model
from medclip_core.tasks.few_shot import (
    DEFAULT_ALPHA, DEFAULT_BETA, LinearProbe, phantom_support, tip_adapter_logits,
)
from medclip_core.tasks.zero_shot import label_text_embeddings, logit_map, logits_from_embeddings

ROOT = Path(__file__).resolve().parents[1]


def summary(probabilities: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    aucs = [roc_auc(truth[:, j], probabilities[:, j]) for j in range(truth.shape[1])
            if MIN_CLASS_COUNT <= truth[:, j].sum() <= len(truth) - MIN_CLASS_COUNT]
    labelled = truth.any(axis=1)
    top = truth[labelled][np.arange(labelled.sum()), probabilities[labelled].argmax(axis=1)]
    return {"macro_auc": round(float(np.mean(aucs)), 4), "top_label_accuracy": round(float(top.mean()), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="medclip-phantom")
    parser.add_argument("--shots", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--n", type=int, default=1000, help="test images")
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "results" / "few_shot.json")
    args = parser.parse_args()
    start = time.perf_counter()
    model = load_model(args.model, device="cpu")
    labels = list(LABEL_PRESETS["Phantom findings"])
    embeddings, label_sets = phantom_eval_embeddings(model, args.n, "test")
    with torch.no_grad():
        text = label_text_embeddings(model, labels, cache=None)
        logits = logit_map(model, text)
        base = logits_from_embeddings(embeddings, text, logits).cpu().numpy()
    truth = np.array([[label in found for label in labels] for found in label_sets])
    result = {"model": args.model, "labels": labels, "test_images": len(label_sets), "negatives": text.negatives,
              "calibrated": logits.calibrated, "alpha": DEFAULT_ALPHA, "beta": DEFAULT_BETA,
              "zero_shot": summary(1 / (1 + np.exp(-base)), truth), "shots": {}}
    for shots in args.shots:
        support = phantom_support(model, labels, shots)
        adapted = base + DEFAULT_ALPHA * tip_adapter_logits(embeddings, support, DEFAULT_BETA)
        result["shots"][shots] = {"support_images": len(support),
                                  "tip_adapter": summary(1 / (1 + np.exp(-adapted)), truth),
                                  "linear_probe": summary(LinearProbe.fit(support).predict(embeddings), truth)}
    result["seconds"] = round(time.perf_counter() - start, 1)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
