"""Collect the two arms of ``experiments/ablation_local_loss.sh`` into one committed result and a table.

    python experiments/summarize_ablation.py     # reads runs/ablation/, writes experiments/results/ablation_local_loss.json

Prints the markdown table used in the README and the model card: zero-shot AUC, image->text and
text->image retrieval, and the pointing game / Dice of the patch-similarity heatmaps, per arm.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "ablation"
OUT = ROOT / "experiments" / "results" / "ablation_local_loss.json"
ARMS = {"0.5": "local loss 0.5", "0": "no local loss"}
FOCAL = ("pleural effusion", "opacity", "nodule", "pneumothorax")


def arm_result(weight: str) -> dict:
    evaluation = json.loads((RUNS / f"local-{weight}.eval.json").read_text())
    grounding = json.loads((RUNS / f"local-{weight}.grounding.json").read_text())["methods"]["similarity"]
    train = json.loads((RUNS / f"local-{weight}.train.json").read_text())
    return {"local_loss_weight": float(weight), "steps": train["steps"], "train_seconds": train["seconds"],
            "macro_auc": evaluation["zero_shot"]["macro_auc"], "retrieval": evaluation["retrieval"],
            "pointing": grounding["pointing"], "dice": grounding["dice"], "n_images": evaluation["n_images"]}


def main() -> None:
    missing = [w for w in ARMS if not (RUNS / f"local-{w}.grounding.json").is_file()]
    if missing:
        sys.exit(f"arm(s) {', '.join(missing)} not finished: run bash experiments/ablation_local_loss.sh")
    results = {ARMS[w]: arm_result(w) for w in ARMS}
    OUT.write_text(json.dumps(results, indent=1))
    print("| arm | macro AUC | i→t R@10 | i→t P@5 | t→i R@10 | " + " | ".join(f"pointing {f}" for f in FOCAL)
          + " | mean pointing | mean Dice |")
    print("|---" * (7 + len(FOCAL)) + "|")
    for name, r in results.items():
        i2t, t2i = r["retrieval"]["image_to_text"], r["retrieval"]["text_to_image"]
        print(f"| {name} | {r['macro_auc']:.3f} | {i2t['recall@10']:.3f} | {i2t['precision@5']:.3f} | "
              f"{t2i['recall@10']:.3f} | " + " | ".join(f"{r['pointing'][f]:.2f}" for f in FOCAL)
              + f" | {r['pointing']['mean']:.3f} | {r['dice']['mean']:.3f} |")
    print(f"wrote {OUT.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
