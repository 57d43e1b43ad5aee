"""Calibrate an embedded model's pairwise zero-shot probabilities on the phantom *validation* split.

Platt scaling: on 1,000 validation images, fit the two numbers ``a, b`` of
``sigmoid(a * (cos(image, positive) - cos(image, negative)) + b)`` to the labels, with the model's
own negative style: one pair over all findings but "normal", one for "normal" (scored against other
sentences). They replace the model's logit scale (and zero bias) for that style; the ranking of
findings and every AUC stay as they are. The fit is written into the model's card (``zero_shot_calibration`` in
``assets/NAME/medclip_config.json``); the test split is scored before and after.

    python scripts/release/calibrate_zero_shot.py [--models medclip-phantom medclip-phantom-grounding]
    # -> experiments/results/zero_shot_calibration.json (about 2 min)
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from medclip_core.data.findings import FINDINGS
from medclip_core.eval.metrics import platt_scaling
from medclip_core.eval.phantom_eval import phantom_eval_embeddings, zero_shot_summary
from medclip_core.models import checkpoint, get_spec, load_model
from medclip_core.tasks.zero_shot import LogitMap, label_text_embeddings, logits_from_embeddings, scores_from_embeddings  # noqa: E501

ROOT = Path(__file__).resolve().parents[2]

KEYS = ("macro_auc", "top_finding_accuracy", "calibration_error")


def calibrate(name: str, n: int) -> dict:
    model = load_model(name)
    with torch.no_grad():
        text = label_text_embeddings(model, FINDINGS, "pairwise", cache=None)
    val, val_labels = phantom_eval_embeddings(model, n, "val")
    truth = np.array([[f in labels for f in FINDINGS] for labels in val_labels])
    cosines = logits_from_embeddings(val, text, LogitMap(1.0)).numpy()
    normal = np.array([f == "normal" for f in FINDINGS])
    groups = {}
    for group, columns in (("findings", ~normal), ("normal", normal)):
        scale, bias = platt_scaling(cosines[:, columns], truth[:, columns])
        groups[group] = {"scale": round(scale, 4), "bias": round(bias, 4)}
    calibration = {"negatives": text.negatives, **groups,
                   "fitted_on": f"phantom val split, {n} images x {len(FINDINGS)} findings (scripts/release/calibrate_zero_shot.py)"}
    calibrated = LogitMap(tuple(groups["normal" if f == "normal" else "findings"]["scale"] for f in FINDINGS),
                          tuple(groups["normal" if f == "normal" else "findings"]["bias"] for f in FINDINGS), True)
    test, test_labels = phantom_eval_embeddings(model, n, "test")
    measured = {}
    for split, (embeddings, labels) in {"val": (val, val_labels), "test": (test, test_labels)}.items():
        for kind, logits in (("uncalibrated", LogitMap(model.logit_scale)), ("calibrated", calibrated)):
            summary = zero_shot_summary(scores_from_embeddings(embeddings, text, logits), labels, "pairwise",
                                        text.negatives)
            measured[f"{split}/{kind}"] = {key: round(summary[key], 4) for key in KEYS}
    folder = get_spec(name).local_path
    config = checkpoint.read_config(folder)
    config["card"]["zero_shot_calibration"] = calibration
    (folder / checkpoint.CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    return {"calibration": calibration, "logit_scale": round(float(model.logit_scale), 4), "measured": measured}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["medclip-phantom", "medclip-phantom-grounding"])
    parser.add_argument("--n", type=int, default=1000, help="images per split")
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "results" / "zero_shot_calibration.json")
    args = parser.parse_args()
    start = time.perf_counter()
    result = {name: calibrate(name, args.n) for name in args.models}
    result["seconds"] = round(time.perf_counter() - start, 1)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
