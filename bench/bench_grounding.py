"""Time per heatmap (one phrase) for each grounding method, against one bare forward pass of the same
image tower on the same image (the ratio is what to compare across machines).

Towers: the embedded ``medclip-phantom`` (ResNet-10t CNN) and an open_clip ViT-B/16 with random
weights (a real-size ViT, for the ViT-only paths: v-v attention and attention relevance; no
download). Medians over ``--repeats`` runs after one warm-up.

    python bench/bench_grounding.py [--repeats 5] [--threads 1] [--out bench/results/grounding.json]
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

from timing import median_seconds

ROOT = Path(__file__).resolve().parents[1]


def bench_model(model, repeats: int) -> dict:
    import numpy as np

    from medclip_core.tasks.grounding import ground, method_support

    image = np.random.default_rng(0).random((512, 512), dtype=np.float32)
    pixels = model.as_pixels([image])
    forward = median_seconds(lambda: model.encode_image(pixels), repeats)
    row = {"bare_forward_ms": round(1000 * forward, 2), "methods": {}}
    for method, reason in method_support(model).items():
        if reason:
            row["methods"][method] = {"unavailable": reason}
            continue
        seconds = median_seconds(lambda: ground(image, ["left pleural effusion"], model=model, method=method),
                                  repeats)
        row["methods"][method] = {"ms": round(1000 * seconds, 1), "ratio_to_forward": round(seconds / forward, 1)}
        print(model.card.name, method, row["methods"][method], flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadiest on a shared machine)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "grounding.json")
    args = parser.parse_args()
    import open_clip
    import torch

    from medclip_core.models import load_model
    from medclip_core.models.base import ModelCard
    from medclip_core.models.open_clip_backend import OpenClipModel

    torch.set_num_threads(args.threads)
    vit = open_clip.create_model("ViT-B-16", pretrained=None)
    card = ModelCard("ViT-B-16 (random weights)", "open_clip", "open_clip ViT-B-16 config", "none", 224, 512, "n/a")
    vit_model = OpenClipModel(vit, open_clip.get_tokenizer("ViT-B-16"), card, torch.device("cpu"),
                              open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)
    rows = {m.card.name: bench_model(m, args.repeats) for m in (load_model("medclip-phantom"), vit_model)}
    result = {"benchmark": "milliseconds per heatmap (one phrase, 512x512 input) and ratio to one bare image "
                           "forward pass; CPU, medians",
              "command": "python bench/bench_grounding.py", "repeats": args.repeats, "threads": args.threads,
              "machine": {"python": platform.python_version(), "processor": platform.machine()}, "models": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
