"""Zero-shot scores on a CUDA device match those on the CPU (a check that needs a GPU).

The default model is loaded twice, on "cuda" and on "cpu". On the committed phantom examples it
compares, device against device: the pairwise probabilities with the model's own negatives and
calibration, with negation, and the softmax; image embeddings made on the CPU scored with the
text embeddings held on the GPU (what the evaluation does); and few-shot adaptation (the
zero-shot and Tip-Adapter series). GPU convolutions may use TF32, so the two agree to a
tolerance, not bit for bit. Exits 1 when a difference exceeds ``--tolerance``.

    python experiments/check_zero_shot_devices.py --out experiments/results/zero_shot_devices.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from medclip_core.data.findings import LABEL_PRESETS
from medclip_core.io import load_image
from medclip_core.models import load_model
from medclip_core.tasks.few_shot import SUPPORT_CACHE, few_shot_scores
from medclip_core.tasks.zero_shot import score_images, zero_shot

ROOT = Path(__file__).resolve().parents[1]

EXAMPLES = ROOT / "assets" / "examples" / "phantom"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="medclip-phantom")
    parser.add_argument("--tolerance", type=float, default=0.02, help="largest allowed probability difference")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("No CUDA device: this check needs one.")
    models = {device: load_model(args.model, device=device) for device in ("cuda", "cpu")}
    labels = list(LABEL_PRESETS["Phantom findings"])
    images = [load_image(path) for path in sorted(EXAMPLES.glob("[0-9][0-9][0-9].png"))]
    differences: dict[str, float] = {}
    same_top: dict[str, bool] = {}
    for name, mode, negatives in (("pairwise, own negatives", "pairwise", None),
                                  ("pairwise, negation", "pairwise", "negated"), ("softmax", "softmax", None)):
        results = {device: [zero_shot(model, image, labels, mode, negatives) for image in images]
                   for device, model in models.items()}
        differences[name] = float(max(np.abs(np.subtract(g.probabilities, c.probabilities)).max()
                                      for g, c in zip(results["cuda"], results["cpu"])))
        same_top[name] = all(g.ranked()[0][0] == c.ranked()[0][0] and g.calibrated == c.calibrated
                             for g, c in zip(results["cuda"], results["cpu"]))
    cpu_embeddings = models["cpu"].encode_image(images)
    differences["CPU embeddings, GPU text"] = float(np.abs(
        score_images(models["cuda"], cpu_embeddings, labels) - score_images(models["cpu"], cpu_embeddings, labels)).max())
    few_shot = {device: few_shot_scores(model, images[2], SUPPORT_CACHE.phantom(model, labels, 4))
                for device, model in models.items()}
    for series in ("zero_shot", "tip_adapter"):
        differences[f"few-shot {series}"] = float(np.abs(np.subtract(getattr(few_shot["cuda"], series),
                                                                     getattr(few_shot["cpu"], series))).max())
    result = {"model": args.model, "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
              "examples": len(images), "tolerance": args.tolerance, "max_probability_difference": differences,
              "same_top_label_and_calibration": same_top,
              "calibrated": zero_shot(models["cuda"], images[0], labels).calibrated}
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    if max(differences.values()) > args.tolerance or not all(same_top.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
