"""Time to draft one report with each method, from a loaded image, with the embedded default model.

First call (cold: sentence embeddings and reference images loaded from the on-disk cache, the
decoder loaded) and then the median of ``--n`` phantom test images (warm). The machine's load is
recorded with the result, since this project's CPU is shared.

    python bench/bench_report.py [--n 20] [--out bench/results/report.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "report.json")
    args = parser.parse_args()

    import torch

    from medclip_core.data.phantom import phantom_dataset
    from medclip_core.io import image_from_array
    from medclip_core.models import load_model
    from medclip_core.tasks.report import METHODS, draft_report

    torch.set_num_threads(2)
    model = load_model("medclip-phantom")
    images = [image_from_array(phantom_dataset("test")[i].image) for i in range(args.n + 1)]
    result = {"machine": platform.processor() or platform.machine(), "torch_threads": 2,
              "load_average_before": os.getloadavg()[0], "n": args.n, "methods": {}}
    for method in METHODS:
        start = time.perf_counter()
        draft_report(images[0], method, model)
        cold = time.perf_counter() - start
        times = []
        for image in images[1:]:
            start = time.perf_counter()
            draft = draft_report(image, method, model)
            times.append(time.perf_counter() - start)
        result["methods"][method] = {"first_call_s": round(cold, 3), "median_s": round(statistics.median(times), 4),
                                     "max_s": round(max(times), 4), "example": draft.text}
        print(method, result["methods"][method], flush=True)
    result["load_average_after"] = os.getloadavg()[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
