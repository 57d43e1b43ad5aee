"""Background runs: throughput through the run manager against the trainer called directly, and the
cost of DistributedDataParallel with two CPU processes.

All runs train the medclip-phantom architecture (phantom-cnn-minilm, 224 px, global + local loss,
bf16 autocast) on the first 64 phantom training reports, batch 16, no validation. Throughput is
images/s over the steps after the first (from ``metrics.jsonl``: the trainer's own clock), so
process start-up (imports, rendering) is reported apart, as the wall time to the first step.

1. direct (``train()`` from Python, in a fresh interpreter) vs through the manager (a
   ``python -m medclip_core train`` process it starts and watches), both 2 torch threads, run side
   by side so that both see the same load from the other jobs on a shared CPU (measured one after
   the other, single pairs ranged 0.7-1.0 as that load changed), ``--repeats`` times; ratio of medians.
2. one process with 2 threads, one with 1 thread, and ``torchrun --nproc_per_node 2`` (gloo,
   1 thread each) through the manager, all with the same global batch.

    python bench/bench_runs.py [--steps 10] [--repeats 2] [--part all|manager|ddp] [--out bench/results/runs.json]

``--part`` reruns one half and keeps the other half's figures in ``--out``. On a shared CPU the
other jobs' load changes from minute to minute: the load average is recorded with each half.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ["OMP_NUM_THREADS"] = "2"  # before torch: this process and its children use 2 threads

from medclip_core.train.runs import RunManager, RunRequest, read_metrics  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

BATCH = 16
REPORTS = 64


def steady_images_per_s(rows: list[dict]) -> float:
    """Images/s between the first and the last logged step (the first step warms up)."""
    first, last = rows[0], rows[-1]
    return BATCH * (last["step"] - first["step"]) / (last["elapsed_s"] - first["elapsed_s"])


DIRECT = """
import json, sys, time
import torch
torch.set_num_threads(2)
from medclip_core.train.contrastive import TrainConfig, train
start = time.perf_counter()
result = train(TrainConfig(out_dir=sys.argv[1], architecture="phantom-cnn-minilm", limit_reports={reports},
                           phantom_variants=1, max_steps={steps}, batch_size={batch}, lr=1e-4, warmup_steps=1,
                           log_every=1, checkpoint_every=10 ** 6, val_reports=0), log=lambda _: None)
print(json.dumps({{"metrics": result.metrics, "seconds": time.perf_counter() - start}}))
"""


def direct(out: Path, steps: int) -> dict:
    """``train()`` called from Python, in a fresh interpreter like a run (a warm process would reuse
    the oneDNN kernels compiled for the same batch shapes by the previous repeat)."""
    start = time.perf_counter()
    code = DIRECT.format(reports=REPORTS, steps=steps, batch=BATCH)
    done = subprocess.run([sys.executable, "-c", code, str(out)], cwd=ROOT, capture_output=True, text=True,
                          check=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
    wall = time.perf_counter() - start
    rows = json.loads(done.stdout.strip().splitlines()[-1])["metrics"]
    return {"images_per_s": steady_images_per_s(rows), "wall_s": wall, "startup_s": wall - rows[-1]["elapsed_s"],
            "final_loss": rows[-1]["loss"]}


def submit(manager: RunManager, name: str, steps: int, nproc: int = 1, threads: int = 2, device: str = "cpu") -> float:
    os.environ["OMP_NUM_THREADS"] = str(threads)
    manager.submit(RunRequest(name=name, base_model="phantom-cnn-minilm", data=f"phantom:{REPORTS}", max_steps=steps,
                              batch_size=BATCH, lr=1e-4, warmup_steps=1, checkpoint_every=10 ** 6, nproc=nproc,
                              device=device, extra_args=["--val-reports", "0"]))
    os.environ["OMP_NUM_THREADS"] = "2"
    return time.perf_counter()


def collect(manager: RunManager, name: str, start: float) -> dict:
    record = manager.wait(name, timeout_s=1200, poll_s=0.5)
    wall = time.perf_counter() - start
    if record.state != "finished":
        raise RuntimeError(f"{name} {record.state}: {record.error}")
    rows = read_metrics(record.run_dir)
    return {"images_per_s": steady_images_per_s(rows), "wall_s": wall, "startup_s": wall - rows[-1]["elapsed_s"],
            "final_loss": rows[-1]["loss"]}


def managed(manager: RunManager, name: str, steps: int, nproc: int = 1, threads: int = 2) -> dict:
    return collect(manager, name, submit(manager, name, steps, nproc, threads))


def manager_vs_direct(manager: RunManager, tmp: Path, steps: int, repeats: int) -> dict:
    pairs = []
    for i in range(repeats):  # side by side, so that both see the same load from other jobs
        start = submit(manager, f"managed{i}", steps)
        pairs.append((direct(tmp / f"direct{i}", steps), collect(manager, f"managed{i}", start)))
        print(json.dumps(pairs[-1]), flush=True)
    direct_ips = statistics.median(d["images_per_s"] for d, _ in pairs)
    managed_ips = statistics.median(m["images_per_s"] for _, m in pairs)
    return {
        "direct_images_per_s": round(direct_ips, 2),
        "manager_images_per_s": round(managed_ips, 2),
        "ratio_manager_to_direct": round(managed_ips / direct_ips, 3),
        "ratio_per_pair": [round(m["images_per_s"] / d["images_per_s"], 3) for d, m in pairs],
        "startup_s": {"direct": round(statistics.median(d["startup_s"] for d, _ in pairs), 1),
                      "manager": round(statistics.median(m["startup_s"] for _, m in pairs), 1)},
        "runs": [{"direct": d, "manager": m} for d, m in pairs],
        "load_average_1min": os.getloadavg()[0],
    }


def ddp_overhead(manager: RunManager, steps: int) -> dict:
    two_threads = managed(manager, "one-process-2-threads", steps, threads=2)
    one_thread = managed(manager, "one-process-1-thread", steps, threads=1)
    ddp = managed(manager, "torchrun-2-processes", steps, nproc=2, threads=1)
    return {
        "one_process_2_threads_images_per_s": round(two_threads["images_per_s"], 2),
        "one_process_1_thread_images_per_s": round(one_thread["images_per_s"], 2),
        "torchrun_2_processes_1_thread_each_images_per_s": round(ddp["images_per_s"], 2),
        "ddp_speedup_vs_1_process_1_thread": round(ddp["images_per_s"] / one_thread["images_per_s"], 3),
        "ddp_ratio_vs_1_process_2_threads": round(ddp["images_per_s"] / two_threads["images_per_s"], 3),
        "same_final_loss_as_one_process": abs(ddp["final_loss"] - one_thread["final_loss"]) < 1e-3,
        "startup_s": {"one_process": round(one_thread["startup_s"], 1), "torchrun_2": round(ddp["startup_s"], 1)},
        "load_average_1min": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--part", choices=("all", "manager", "ddp"), default="all")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "runs.json")
    args = parser.parse_args()
    result = json.loads(args.out.read_text()) if args.out.is_file() and args.part != "all" else {}
    result.update({
        "benchmark": "background runs: manager vs direct trainer; DDP with 2 CPU processes (gloo)",
        "model": "phantom-cnn-minilm, 224 px, global + local loss, bf16 autocast",
        "batch": BATCH, "steps": args.steps, "reports": REPORTS,
        "machine": {"python": platform.python_version(), "processor": platform.machine(), "cores": os.cpu_count(),
                    "note": "2 cores shared with other jobs while measured"},
    })
    with tempfile.TemporaryDirectory() as tmp:
        manager = RunManager(Path(tmp) / "runs")
        if args.part in ("all", "manager"):
            result["manager_vs_direct"] = manager_vs_direct(manager, Path(tmp), args.steps, args.repeats)
        if args.part in ("all", "ddp"):
            result["ddp"] = ddp_overhead(manager, args.steps)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
