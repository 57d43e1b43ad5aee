"""Speed through the app: each tab's main endpoint through ``gradio_client`` against its floor.

The floor of a call is what no app can avoid: Gradio's own cost for the same request (a do-nothing
Gradio app on the same machine receiving the same upload or text and answering a small JSON) plus
the bare model work (one image forward, or one text forward for a text query) timed in this
process. The figure is ``ratio = app / (gradio floor + bare forward)``; target <= 1.3 for Diagnose
(``/zero_shot``), Retrieve by text (``/retrieve``) and Report by retrieval (``/report``). The client
fetches every output file, as a browser does; ``ratio_without_file_downloads`` is the same call answered
without fetching them. (Retrieve's thumbnails travel inline in its answer and Diagnose does not send the
preview back, so these two have no output file to fetch.)

The model is BiomedCLIP-sized with random weights, built here (nothing is downloaded): an open_clip
ViT-B/16 image tower and a BERT-base-sized text transformer (12 layers, 768 wide, 12 heads, 256
tokens), saved in open_clip's folder layout and served as ``local-dir:``; ``--model`` names any
other model (e.g. the embedded ``medclip-phantom``). Calls are interleaved (floor, app, bare) in
``--rounds`` rounds after warm-up calls that build the model's caches (the report sentence corpus
and gallery embeddings go to the usual on-disk cache, so a second run starts faster); medians. The
app's start-up warm-up thread is off (``MEDCLIP_WARM_UP=0``): it would share the cores with the
measured calls for its first half minute, and the warm-up calls build what the endpoints need.
The machine is shared: ``load_average`` says how busy it was.

    PYTHONPATH=. nice python bench/bench_app_speed.py --rounds 5 --endpoints zero_shot,retrieve
    PYTHONPATH=. nice python bench/bench_app_speed.py --model medclip-phantom --out bench/results/app_speed_embedded.json

At BiomedCLIP size the Report tab's first call embeds the 5,457 corpus sentences with the 256-token
text tower (cached on disk afterwards): a quarter of an hour on a busy 2-core machine, so
``--endpoints`` lets a run leave it out.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
BIOMEDCLIP_SIZED = {
    "embed_dim": 512,
    "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 16},
    "text_cfg": {"context_length": 256, "vocab_size": 49408, "width": 768, "heads": 12, "layers": 12},
}
FLOOR_APP = """
import sys
import gradio as gr
with gr.Blocks() as demo:
    upload, text, out = gr.File(type="filepath"), gr.Textbox(), gr.JSON()
    gr.Button().click(lambda path: {"ok": bool(path)}, upload, out, api_name="upload")
    gr.Button().click(lambda query: {"ok": bool(query)}, text, out, api_name="text")
demo.queue().launch(server_name="127.0.0.1", server_port=int(sys.argv[1]))
"""


def save_biomedclip_sized(folder: Path) -> Path:
    """The random-weight ViT-B/16 + BERT-base-sized model in open_clip's layout (``local-dir:`` loads it)."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    module = open_clip.model.CLIP(**BIOMEDCLIP_SIZED)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": BIOMEDCLIP_SIZED,
              "preprocess_cfg": {"mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD)}}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(command: list[str], port: int, env: dict[str, str]) -> subprocess.Popen:
    """Start a server on 127.0.0.1:port and wait until it answers."""
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
            return process
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(process.stderr.read().decode()[-2000:])
            time.sleep(1)
    process.kill()
    raise RuntimeError(f"server on port {port} did not start")


def seconds_of(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a model name; default: the BiomedCLIP-sized random model")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--gallery", default="phantom:16", help="the Retrieve tab's gallery for the text query")
    parser.add_argument("--endpoints", default="zero_shot,retrieve,report")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "app_speed.json")
    args = parser.parse_args()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": str(ROOT)}
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    sys.path.insert(0, str(ROOT))
    import torch
    from gradio_client import Client, handle_file

    from medclip_core.data.findings import DEFAULT_PRESET
    from medclip_core.io import load_image
    from medclip_core.models import load_model
    from pages.common import example_files
    from pages.diagnose import MODEL_NEGATIVES, NO_COMPARISON
    from pages.retrieve import NO_ARCHIVE_INDEX

    workdir = Path(tempfile.mkdtemp(prefix="medclip-app-speed-"))
    model_name = args.model or f"local-dir:{save_biomedclip_sized(workdir / 'biomedclip-sized')}"
    image_path = example_files()[0]             # a 224-px phantom PNG
    model = load_model(model_name)
    pixels = model.as_pixels([load_image(image_path)])
    bare = {"image": lambda: model.encode_image(pixels), "text": lambda: model.encode_text(["pleural effusion"])}
    calls = {
        "zero_shot": ("upload", "image", dict(args=(handle_file(image_path), DEFAULT_PRESET, "", "pairwise", model_name,
                                                     NO_COMPARISON, 0, MODEL_NEGATIVES), api_name="/zero_shot")),
        "retrieve": ("text", "text", dict(args=("text → images", "pleural effusion", None, args.gallery, 8, model_name,
                                                NO_ARCHIVE_INDEX), api_name="/retrieve")),
        "report": ("upload", "image", dict(args=(handle_file(image_path), "retrieval", 4, model_name),
                                           api_name="/report")),
    }
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # a timeout still stops the servers (finally below)
    app_port, floor_port = free_port(), free_port()
    app = start([sys.executable, "app.py"], app_port, {**env, "GRADIO_SERVER_NAME": "127.0.0.1",
                                                       "GRADIO_SERVER_PORT": str(app_port), "MEDCLIP_WARM_UP": "0"})
    floor = start([sys.executable, "-c", FLOOR_APP, str(floor_port)], floor_port, env)
    results: dict[str, Any] = {}

    def write() -> None:
        """After every endpoint, so a long warm-up cut short keeps what was measured."""
        output = {
            "benchmark": "each tab's main endpoint through gradio_client vs (a do-nothing Gradio app receiving the "
                         "same request + the bare model forward); medians of interleaved rounds; target ratio <= 1.3",
            "command": "PYTHONPATH=. nice python bench/bench_app_speed.py" + (f" --model {args.model}" if args.model else "")
                       + f" --rounds {args.rounds} --endpoints {args.endpoints}"
                       + (f" --out {args.out.resolve().relative_to(ROOT)}" if args.out.resolve().is_relative_to(ROOT) else ""),
            "model": args.model or "BiomedCLIP-sized random weights: open_clip ViT-B/16 + 12x768 text transformer",
            "image": "assets/examples/phantom first example (224 px PNG)", "gallery": args.gallery,
            "torch_threads": torch.get_num_threads(),
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                        "load_average": [round(x, 1) for x in os.getloadavg()]},
            "endpoints": results,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(output, indent=2, ensure_ascii=False) + "\n")

    try:
        app_client = Client(f"http://127.0.0.1:{app_port}/", verbose=False)
        # the same calls without fetching output files (a gallery's images): what the app itself costs
        app_answer_client = Client(f"http://127.0.0.1:{app_port}/", verbose=False, download_files=False)
        floor_client = Client(f"http://127.0.0.1:{floor_port}/", verbose=False)
        for name in args.endpoints.split(","):
            floor_kind, bare_kind, request = calls[name]
            floor_args = (handle_file(image_path),) if floor_kind == "upload" else ("pleural effusion",)
            started = time.perf_counter()
            for _ in range(args.warmup):
                app_client.predict(*request["args"], api_name=request["api_name"])
            warmup = time.perf_counter() - started
            times: dict[str, list[float]] = {"gradio_floor": [], "app": [], "app_without_file_downloads": [],
                                             "bare_forward": []}
            for _ in range(args.rounds):
                times["gradio_floor"].append(seconds_of(lambda: floor_client.predict(*floor_args,
                                                                                     api_name=f"/{floor_kind}")))
                times["app"].append(seconds_of(lambda: app_client.predict(*request["args"],
                                                                          api_name=request["api_name"])))
                times["app_without_file_downloads"].append(seconds_of(lambda: app_answer_client.predict(
                    *request["args"], api_name=request["api_name"])))
                with torch.inference_mode():
                    times["bare_forward"].append(seconds_of(bare[bare_kind]))
            medians = {k: statistics.median(v) for k, v in times.items()}
            floor_total = medians["gradio_floor"] + medians["bare_forward"]
            results[name] = {**{f"{k}_ms": round(1000 * v, 1) for k, v in medians.items()},
                             "ratio_app_to_floor_plus_forward": round(medians["app"] / floor_total, 3),
                             "ratio_without_file_downloads": round(medians["app_without_file_downloads"] / floor_total, 3),
                             "app_over_floor_ms": round(1000 * (medians["app"] - floor_total), 1),
                             "bare": f"{bare_kind} forward", "warmup_s": round(warmup, 1)}
            print(name, results[name], flush=True)
            write()
    finally:
        for process in (app, floor):
            process.terminate()
            process.wait(timeout=30)
        for path in sorted(workdir.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        workdir.rmdir()


if __name__ == "__main__":
    main()
