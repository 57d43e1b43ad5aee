"""Latency of one image encode when app requests run at once, and beside a busy background process.

Each of ``--callers`` Python threads (as the app's queue runs ``MEDCLIP_CONCURRENCY`` requests)
encodes the same phantom image ``--n`` times with the embedded default; the median per-call time
is reported for every torch thread setting, next to one caller alone. Then the same with another
process doing torch work beside the app (as a run started from the Training tab does), with that
process on 1 thread and on all cores. It answers whether the app should split the cores between
concurrent calls: on this 2-core machine it need not (see bench/results/concurrency.json).

    python bench/bench_concurrency.py [--callers 2] [--n 20] [--out bench/results/concurrency.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


BUSY = "import torch; torch.set_num_threads({threads}); a = torch.randn(384, 384)\nwhile True: a = (a @ a).tanh()"


def timed_calls(model, image, callers: int, n: int) -> list[float]:
    timings: list[float] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(n):
            start = time.perf_counter()
            model.encode_image([image])
            with lock:
                timings.append(time.perf_counter() - start)

    workers = [threading.Thread(target=work) for _ in range(callers)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callers", type=int, default=2)
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "concurrency.json")
    args = parser.parse_args()

    import torch

    from medclip_core.io import load_image
    from medclip_core.models import load_model

    model = load_model("medclip-phantom")
    image = load_image(ROOT / "assets" / "examples" / "phantom" / "000.png")
    model.encode_image([image])
    cores = os.cpu_count() or 1
    result = {"cores": cores, "callers": args.callers, "n_per_caller": args.n,
              "load_average_before": os.getloadavg()[0], "median_s": {}}
    for threads in sorted({1, max(1, cores // args.callers), cores}):
        torch.set_num_threads(threads)
        result["median_s"][f"{threads} thread(s), 1 caller"] = statistics.median(timed_calls(model, image, 1, args.n))
        result["median_s"][f"{threads} thread(s), {args.callers} callers"] = statistics.median(
            timed_calls(model, image, args.callers, args.n))
    for background_threads in sorted({1, cores}):
        busy = subprocess.Popen([sys.executable, "-c", BUSY.format(threads=background_threads)])
        time.sleep(3)
        try:
            for threads in sorted({1, cores}):
                torch.set_num_threads(threads)
                result["median_s"][f"{threads} thread(s), 1 caller, background process on {background_threads}"] = \
                    statistics.median(timed_calls(model, image, 1, args.n))
        finally:
            busy.kill()
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
