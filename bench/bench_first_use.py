"""First-use and warm times of every model tab of the app, through ``gradio_client``.

Each case starts the app in a fresh process (so nothing is loaded yet; its start-up warm-up thread
begins as with ``python app.py``) with an empty
``MEDCLIP_CACHE_DIR`` (so only the files shipped in ``assets/`` are there), calls one endpoint once
(first use: model loading, corpus and gallery embeddings, ...) and then ``--warm`` more times
(median: warm). The input is the committed example DICOM; the model the default ``medclip-phantom``.
The machine's load is recorded with the result, since this project's CPU is shared.

    OMP_NUM_THREADS=1 nice python bench/bench_first_use.py [--only report-retrieval] [--out bench/results/first_use.json]

``--label`` names the run in the JSON (e.g. "before" / "after"); runs with other labels already in
the file are kept, so one file holds the before/after comparison.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "assets" / "examples" / "phantom_effusion.dcm"
MODEL = "medclip-phantom"
NO_ARCHIVE_INDEX = "(none: search the gallery)"
START_TIMEOUT_S = 180


def _cases(image: Any) -> dict[str, tuple[str, tuple]]:
    """Case name -> (endpoint, positional inputs in the order of the tab's ``click`` inputs)."""
    return {
        "diagnose": ("/zero_shot", (image, "Phantom findings", "", "pairwise", MODEL, "(none)", 0,
                                    "the model's own")),
        "retrieve-text": ("/retrieve", ("text → images", "pleural effusion", None, "phantom", 8, MODEL,
                                        NO_ARCHIVE_INDEX)),
        "retrieve-image-reports": ("/retrieve", ("image → reports", "", image, "phantom", 5, MODEL,
                                                 NO_ARCHIVE_INDEX)),
        "embeddings": ("/embedding_map", ("phantom:200", "umap", "label", MODEL)),
        "grounding": ("/heatmap", (image, "pleural effusion", ["similarity"], 0.5, MODEL)),
        "segment": ("/segment", (image, "pleural effusion", "trained", MODEL)),
        "report-retrieval": ("/report", (image, "retrieval", 4, MODEL)),
        "report-generative": ("/report", (image, "generative", 4, MODEL)),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _timed(call: Callable[[], Any]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def run_case(name: str, warm: int) -> dict[str, Any]:
    """Start the app in a fresh process with an empty cache, time the first and the warm calls."""
    from gradio_client import Client, handle_file

    endpoint, inputs = _cases(handle_file(str(EXAMPLE)))[name]
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="medclip-first-use-") as cache:
        env = dict(os.environ, MEDCLIP_CACHE_DIR=cache, GRADIO_ANALYTICS_ENABLED="False")
        code = ("import app; app.start_warm_up(); "  # as `python app.py` does
                f"app.build_app().launch(server_name='127.0.0.1', server_port={port}, quiet=True)")
        started = time.perf_counter()
        server = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            client = None
            while client is None:
                if time.perf_counter() - started > START_TIMEOUT_S or server.poll() is not None:
                    raise RuntimeError(f"the app did not start for case {name}")
                try:
                    client = Client(f"http://127.0.0.1:{port}/", verbose=False)
                except Exception:  # not listening yet
                    time.sleep(0.5)
            start_s = time.perf_counter() - started
            first = _timed(lambda: client.predict(*inputs, api_name=endpoint))
            warm_times = [_timed(lambda: client.predict(*inputs, api_name=endpoint)) for _ in range(warm)]
        finally:
            server.terminate()
            server.wait(timeout=30)
    return {"endpoint": endpoint, "app_start_s": round(start_s, 2), "first_use_s": round(first, 2),
            "warm_s": round(statistics.median(warm_times), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="case names (default: all)")
    parser.add_argument("--warm", type=int, default=3, help="warm calls after the first one")
    parser.add_argument("--label", default="after", help="name of this run in the JSON")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "first_use.json")
    args = parser.parse_args()

    names = args.only or list(_cases(None))
    run = {"load_average_before": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(),
           "omp_threads": os.environ.get("OMP_NUM_THREADS"), "model": MODEL, "cases": {}}
    for name in names:
        run["cases"][name] = run_case(name, args.warm)
        print(name, run["cases"][name], flush=True)
    run["load_average_after"] = round(os.getloadavg()[0], 2)
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results[args.label] = run
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(run, indent=2))


if __name__ == "__main__":
    main()
