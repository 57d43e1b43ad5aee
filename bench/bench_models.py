"""Time and memory to load each registry model that is available here, and to encode one image.

Each model loads in a fresh subprocess, so its resident-memory growth is measured cleanly.
Models that cannot load here (hub models without a local copy) are listed with the reason.

    python bench/bench_models.py [--out bench/results/models.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = r"""
import json, resource, statistics, sys, time
import numpy as np
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
import torch
from medclip_core.models import load_model
from medclip_core.errors import MedclipError
torch.set_num_threads(2)
start = time.perf_counter()
try:
    model = load_model(sys.argv[1], device="cpu")
except MedclipError as exc:
    print(json.dumps({"loaded": False, "error": str(exc)})); sys.exit(0)
load_s = time.perf_counter() - start
image = np.random.default_rng(0).random((512, 512), dtype=np.float32)
model.encode_image([image])
times = []
for _ in range(10):
    t = time.perf_counter(); model.encode_image([image]); times.append(time.perf_counter() - t)
text_t = time.perf_counter(); model.encode_text(["small left pleural effusion"]); text_s = time.perf_counter() - text_t
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"loaded": True, "load_s": round(load_s, 3), "peak_rss_mb": round(after / 1024, 1),
                  "rss_growth_mb": round((after - before) / 1024, 1), "parameters_m": round(model.num_parameters() / 1e6, 2),
                  "encode_image_ms_median": round(1000 * statistics.median(times), 2),
                  "encode_text_ms": round(1000 * text_s, 2)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "models.json")
    args = parser.parse_args()
    from medclip_core.models import list_models

    rows = {}
    for name in list_models():
        done = subprocess.run([sys.executable, "-c", PROBE, name], cwd=ROOT, capture_output=True, text=True,
                              env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())},
                              timeout=600)
        lines = done.stdout.strip().splitlines()
        row = json.loads(lines[-1]) if lines else {"loaded": False, "error": done.stderr[-300:]}
        if "error" in row:  # the reason only; the instructions name this machine's cache folder
            row["error"] = row["error"].split(" To use it")[0]
        rows[name] = row
        print(name, rows[name], flush=True)
    result = {"benchmark": "load time, memory and single-image encode time per registry model (CPU, 2 threads)",
              "machine": {"python": platform.python_version(), "processor": platform.machine()}, "models": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
