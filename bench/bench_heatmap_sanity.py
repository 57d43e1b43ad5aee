"""Heatmap sanity checks (medclip_core/eval/heatmap_sanity.py) for the two embedded models on phantom
test images that show a focal finding: per method, the median and interquartile range of the Spearman
correlation between the phrase's map and a nonsense phrase's map (prompt), and between the model's map
and the map of a copy with its last image block randomised (weights); medians above the threshold are
flagged. gScoreCAM (about 30x slower than the others) runs on the first ``--n-slow`` images only.

    PYTHONPATH=. OMP_NUM_THREADS=1 nice python bench/bench_heatmap_sanity.py [--n 20] [--n-slow 4] [--out bench/results/heatmap_sanity.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("medclip-phantom", "medclip-phantom-grounding")
FAST = ("similarity", "surgery", "gradcam", "relevance")
SLOW = ("gscorecam",)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--n-slow", type=int, default=4)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "heatmap_sanity.json")
    args = parser.parse_args()

    import torch

    from medclip_core.eval.heatmap_sanity import CONTROL_PHRASE, FLAG_THRESHOLD, check_heatmaps, phantom_sanity_items
    from medclip_core.models import load_model

    started = time.perf_counter()
    items = phantom_sanity_items(args.n)
    results = {}
    for name in MODELS:
        model = load_model(name)
        fast = check_heatmaps(model, items, methods=FAST).to_dict()
        slow = check_heatmaps(model, items[:args.n_slow], methods=SLOW).to_dict()
        fast["methods"].update(slow["methods"])
        fast["flags"].update(slow["flags"])
        fast["skipped"].update(slow["skipped"])
        fast["seconds"] = round(fast["seconds"] + slow["seconds"], 1)
        results[name] = fast
        print(name, {m: (r["prompt"]["median"], (r["weights"] or {}).get("median")) for m, r in fast["methods"].items()},
              flush=True)
    payload = {
        "benchmark": "heatmap sanity checks: Spearman correlation of each method's map with a nonsense phrase's map "
                     "and with a last-block-randomised model's map (median, IQR), phantom test images with a focal finding",
        "command": f"PYTHONPATH=. OMP_NUM_THREADS=1 nice python bench/bench_heatmap_sanity.py --n {args.n} --n-slow {args.n_slow}",
        "n_images": len(items), "n_images_slow_methods": min(args.n_slow, len(items)), "slow_methods": list(SLOW),
        "phrases": sorted({item.phrase for item in items}), "control_phrase": CONTROL_PHRASE,
        "threshold": FLAG_THRESHOLD, "torch_threads": torch.get_num_threads(),
        "machine": {"python": platform.python_version(), "processor": platform.machine(), "cpus": os.cpu_count(),
                    "note": "2 cores shared with other jobs while measured"},
        "total_seconds": round(time.perf_counter() - started, 1),
        "models": results,
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
