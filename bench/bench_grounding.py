"""Time per heatmap (one phrase) for each grounding method, against one bare forward pass of the same
image tower on the same image (the ratio is what to compare across machines).

Towers: the embedded ``medclip-phantom`` (ResNet-10t CNN) and an open_clip ViT-B/16 with random
weights (a real-size ViT, for the ViT-only paths: v-v attention and attention relevance; no
download). Each method is timed at its default settings and, under ``variants``, at the settings
it had before (four shifted passes for similarity and Surgery; 32 gScoreCAM channels), so each
change's gain is on record. Forward and method are timed back to back in the same process, medians
over ``--repeats`` runs after one warm-up; the ratio (of CPU seconds, see ``paired_timing``) is the
figure to compare (the machine is shared: ``load_average`` says how busy it was).

    PYTHONPATH=. nice python bench/bench_grounding.py --models vit --repeats 3
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

from timing import median_seconds

ROOT = Path(__file__).resolve().parents[1]


VARIANTS = {"similarity": {"fine_grid": True}, "surgery": {"fine_grid": True}, "gscorecam": {"gscorecam_channels": 32}}
CHANGES = [  # what made the defaults faster, recorded beside the figures
    "hub-size models (>= 60 M parameters): one pass instead of four shifted passes (similarity, surgery)",
    "hub-size models: 8 gScoreCAM channels instead of 32",
    "surgery: phrase and neutral prompt in one text pass",
    "the out-of-distribution verdict takes the image embedding from the method's own pass (one image pass "
    "fewer for every method but the four-pass similarity and surgery of the embedded models)",
    "'before': the old settings timed with the same code (hub-size models only; the embedded ones keep them)",
]


def paired_timing(forward, method, repeats: int) -> dict:
    """Forward then method, back to back, ``repeats`` times after a warm-up. The ratio is of the process's
    CPU seconds (``time.process_time``, the work done, which waiting for a shared core does not inflate),
    the median of the per-pair ratios; wall-clock medians are kept beside it."""
    forward(), method()
    pairs = []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        forward()
        wall_mid, cpu_mid = time.perf_counter(), time.process_time()
        method()
        pairs.append((wall_mid - wall, time.perf_counter() - wall_mid, cpu_mid - cpu, time.process_time() - cpu_mid))
    return {"ms": round(1000 * statistics.median(p[1] for p in pairs), 1),
            "forward_ms": round(1000 * statistics.median(p[0] for p in pairs), 1),
            "cpu_ms": round(1000 * statistics.median(p[3] for p in pairs), 1),
            "forward_cpu_ms": round(1000 * statistics.median(p[2] for p in pairs), 1),
            "ratio_to_forward": round(statistics.median(p[3] / p[2] for p in pairs), 2)}


def bench_model(model, repeats: int) -> dict:
    import numpy as np

    from medclip_core.tasks.grounding import SMALL_MODEL_PARAMETERS, ground, method_support

    variants = VARIANTS if model.num_parameters() >= SMALL_MODEL_PARAMETERS else {}  # small: settings unchanged

    image = np.random.default_rng(0).random((512, 512), dtype=np.float32)
    pixels = model.as_pixels([image])
    forward = median_seconds(lambda: model.encode_image(pixels), repeats)
    row = {"bare_forward_ms": round(1000 * forward, 2), "methods": {}}
    for method, reason in method_support(model).items():
        if reason:
            row["methods"][method] = {"unavailable": reason}
            continue
        for label, options in (("default", {}), ("before", variants.get(method))):
            if options is None:
                continue
            timing = paired_timing(lambda: model.encode_image(pixels),
                                   lambda: ground(image, ["left pleural effusion"], model=model, method=method,
                                                  **options), repeats)
            if label == "default":
                row["methods"][method] = timing
            else:
                row["methods"][method]["before"] = {"settings": options, **timing}
            print(model.card.name, method, label, timing, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU-time ratios are steadiest on 1)")
    parser.add_argument("--models", choices=("all", "vit", "embedded"), default="all")
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
    models = {"vit": [vit_model], "embedded": [load_model("medclip-phantom")]}.get(
        args.models, [load_model("medclip-phantom"), vit_model])
    rows = {m.card.name: bench_model(m, args.repeats) for m in models}
    result = {"benchmark": "milliseconds per heatmap (one phrase, 512x512 input) and ratio of CPU seconds to one "
                           "bare image forward pass timed just before it; CPU, medians",
              "command": f"PYTHONPATH=. nice python bench/bench_grounding.py --threads {args.threads} --repeats {args.repeats} "
                         f"--models {args.models}",
              "repeats": args.repeats, "threads": args.threads,
              "machine": {"python": platform.python_version(), "processor": platform.machine(),
                          "cpus": os.cpu_count(), "load_average": [round(x, 1) for x in os.getloadavg()]},
              "models": rows, "changes": CHANGES}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
