"""First-use and warm times of every tab through ``gradio_client``, with the embedded default model.

Each tab is measured in an app process of its own, started fresh with an empty embedding cache
folder (``MEDCLIP_CACHE_DIR``) and runs folder: *first use* is that process's first call of the
tab's endpoint (model loading, gallery / corpus embedding and any other first-time work included),
*warm* the median of ``--repeats`` further calls. ``--arrive-after S`` waits S seconds after the
app answers before the first call: a user arriving once the start-up warm-up (``app.warm_up``) is done,
rather than one racing it. The inputs are the tab's defaults (the values the
UI starts with) and a committed example image. The machine's load is recorded, since the CPU here
is shared.

    nice python bench/bench_tabs.py [--repeats 3] [--tabs diagnose,retrieve,...] [--out bench/results/tabs.json]
    nice python bench/bench_tabs.py --arrive-after 30 --out bench/results/tabs_arrive_30s.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "assets" / "examples" / "phantom" / "002.png"
MODEL = "medclip-phantom"


def tab_calls(example: Any) -> dict[str, tuple[str, tuple, dict]]:
    """Tab -> (endpoint, positional arguments, keyword arguments): each tab's default request."""
    return {
        "diagnose": ("/zero_shot", (example, "Phantom findings", "", "pairwise", MODEL, "(none)", 0), {}),
        "retrieve text → images": ("/retrieve", ("text → images", "pleural effusion", None, "phantom", 8, MODEL), {}),
        "retrieve image → reports": ("/retrieve", ("image → reports", "", example, "phantom", 8, MODEL), {}),
        "embeddings": ("/embedding_map", ("phantom:200", "umap", "label", MODEL), {}),
        "grounding": ("/heatmap", (example, "pleural effusion", ["similarity"], 0.5, MODEL), {}),
        "segment": ("/segment", (example, "pleural effusion", "trained", MODEL), {}),
        "report (retrieval)": ("/report", (example, "retrieval", 4, MODEL), {}),
        "inspect": ("/inspect", (example, -1), {}),
        "training status": ("/train_status", (None,), {}),
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(folder: Path) -> tuple[subprocess.Popen, str, float]:
    """A fresh app process on a free local port with empty cache and runs folders; (process, url, start seconds)."""
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "MEDCLIP_CACHE_DIR": str(folder / "cache"),
           "MEDCLIP_RUNS_DIR": str(folder / "runs"), "GRADIO_SERVER_NAME": "127.0.0.1",
           "GRADIO_SERVER_PORT": str(port)}
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return process, url, time.perf_counter() - started
        except OSError:
            if process.poll() is not None or time.perf_counter() - started > 300:
                raise RuntimeError("the app did not start")
            time.sleep(0.5)


def measure(tab: str, repeats: int, arrive_after: float = 0.0) -> dict[str, Any]:
    from gradio_client import Client, handle_file

    with tempfile.TemporaryDirectory(prefix="bench-tabs-") as folder:
        process, url, start_s = start_app(Path(folder))
        try:
            client = Client(url, verbose=False)
            endpoint, args, kwargs = tab_calls(handle_file(str(EXAMPLE)))[tab]

            def call() -> float:
                began = time.perf_counter()
                client.predict(*args, api_name=endpoint, **kwargs)
                return time.perf_counter() - began

            time.sleep(arrive_after)
            first = call()
            warm = [call() for _ in range(repeats)]
        finally:
            process.terminate()
            process.wait(timeout=30)
    return {"endpoint": endpoint, "app_start_s": round(start_s, 2), "first_use_s": round(first, 3),
            "warm_median_s": round(statistics.median(warm), 3), "warm_max_s": round(max(warm), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tabs", default=",".join(tab_calls(None)), help="comma-separated tab names")
    parser.add_argument("--arrive-after", type=float, default=0.0,
                        help="seconds between the app answering and the first call")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "tabs.json")
    args = parser.parse_args()
    result: dict[str, Any] = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                              "model": MODEL, "repeats": args.repeats, "arrive_after_s": args.arrive_after,
                              "load_average_before": os.getloadavg()[0],
                              "tabs": {}}
    for tab in args.tabs.split(","):
        result["tabs"][tab] = measure(tab, args.repeats, args.arrive_after)
        print(tab, result["tabs"][tab], flush=True)
    result["load_average_after"] = os.getloadavg()[0]
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
