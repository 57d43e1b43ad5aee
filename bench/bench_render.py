"""Benchmark the phantom renderer: images per second at 224 px on one CPU core.

The first calls fill caches (report parse, lung-mask bank, per-size anatomy banks, per-mask
geometry); that warm-up is timed and reported on its own. The steady-state rate is measured
after every lung mask's geometry is cached, over reports of the test split with mixed findings.

    python bench/bench_render.py [--n 400] [--size 224] [--out bench/results/render.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

# one core: keep numpy/scipy from spreading work over threads
for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(variable, "1")

from medclip_core.data import phantom  # noqa: E402
from medclip_core.data.reports import load_reports, report_splits  # noqa: E402


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400, help="images in the timed run")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "render.json")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

    start = time.perf_counter()
    reports = report_splits(load_reports(), seed=0)["test"]
    parsed = time.perf_counter()
    bank = phantom.lung_mask_bank()
    masks_loaded = time.perf_counter()
    phantom.render(reports[0], seed=0, size=args.size)  # builds the per-size banks
    first_image = time.perf_counter()
    for index in range(len(bank)):  # per-mask geometry, normally filled lazily as masks are drawn
        phantom.lung_geometry(index, args.size)
    geometry = time.perf_counter()

    timed = [reports[i % len(reports)] for i in range(args.n)]
    t0 = time.perf_counter()
    for i, report in enumerate(timed):
        phantom.render(report, seed=1000 + i, size=args.size)
    elapsed = time.perf_counter() - t0

    result = {
        "benchmark": "phantom render, steady state, one core",
        "size": args.size,
        "n_images": args.n,
        "images_per_s": round(args.n / elapsed, 1),
        "ms_per_image": round(1000 * elapsed / args.n, 2),
        "warmup_s": {
            "parse_reports": round(parsed - start, 2),
            "load_lung_masks": round(masks_loaded - parsed, 2),
            "first_image_banks": round(first_image - masks_loaded, 2),
            "all_mask_geometry": round(geometry - first_image, 2),
        },
        "n_lung_masks": len(bank),
        "machine": {"python": platform.python_version(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
