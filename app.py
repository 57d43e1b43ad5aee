"""MedCLIP Explorer: the Gradio app (Hugging Face Spaces entry point). It only assembles the pages.

Run ``python app.py``; ``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT`` choose the address. Models
load on first use, so the app starts in seconds. Analytics are off: the app sends nothing anywhere.
Listening beyond loopback or on a Space makes it public (:mod:`medclip_core.hosting`): admin actions
need the token there. Every model call of every tab shares one concurrency limit
(``MEDCLIP_CONCURRENCY``); uploads are capped at ``MEDCLIP_MAX_UPLOAD_MB`` and temporary files
(uploads, masks, SEG files, heatmaps) are deleted ``MEDCLIP_TEMP_MAX_AGE_S`` seconds after they were made.
At start-up a background thread prepares what the tabs' first use would otherwise wait for
(:func:`start_warm_up`); ``MEDCLIP_WARM_UP=0`` turns it off.
"""
from __future__ import annotations

import logging
import os
import threading

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import gradio as gr  # noqa: E402

from medclip_core import hosting  # noqa: E402
from medclip_core.archive.config import archive_configured  # noqa: E402
from medclip_core.data import phantom  # noqa: E402
from medclip_core.data.galleries import collection_from_spec  # noqa: E402
from medclip_core.errors import MedclipError  # noqa: E402
from medclip_core.models import load_model  # noqa: E402
from medclip_core.tasks.embedding import announce_projection_warm_up, embedding_map, warm_up_projection  # noqa: E402
from medclip_core.train.runs import RunManager  # noqa: E402
from pages import (  # noqa: E402
    archive, common, diagnose, embeddings, evaluate, grounding, inspect, report, retrieve, segment, train,
)

TITLE = "MedCLIP Explorer"
MODEL_CONCURRENCY = int(os.environ.get("MEDCLIP_CONCURRENCY", "2"))
TEMP_MAX_AGE_ENV = "MEDCLIP_TEMP_MAX_AGE_S"
DEFAULT_TEMP_MAX_AGE_S = 7200
WARM_UP_ENV = "MEDCLIP_WARM_UP"
log = logging.getLogger("medclip_explorer")


def warm_up() -> None:
    """What the tabs' first use with the default model would wait for, most shared first: the model
    (every tab), the phantom renderer's set-up (gallery thumbnails, about 2 s), UMAP's compilation
    (about 8 s, holding the interpreter lock much of the time, hence last; the Embeddings tab shows PCA
    until then) and the Embeddings tab's default map. Each step is locked or cached where it lives, so
    a request that arrives meanwhile waits for the step under way instead of repeating it."""
    announce_projection_warm_up()
    model = None
    try:
        model = load_model(None)
        phantom.warm_up()
    except MedclipError as error:  # e.g. no default model on this machine: the tabs will say so on use
        log.warning("warm-up: %s", error)
    finally:
        warm_up_projection()  # whatever happened above, or the Embeddings tab would wait for it forever
    if model is not None:
        embedding_map(model, collection_from_spec(embeddings.DEFAULT_COLLECTION), method=embeddings.DEFAULT_METHOD)


def start_warm_up() -> threading.Thread | None:
    """Run :func:`warm_up` in a daemon thread (None when ``MEDCLIP_WARM_UP=0``)."""
    if os.environ.get(WARM_UP_ENV, "1") == "0":
        return None
    thread = threading.Thread(target=warm_up, name="medclip-warm-up", daemon=True)
    thread.start()
    return thread


def delete_cache_settings() -> tuple[int, int]:
    """Gradio's ``delete_cache`` (every, older than; seconds): this app's temporary files (uploads and
    outputs) older than ``MEDCLIP_TEMP_MAX_AGE_S`` (2 h) are deleted, checked every quarter of that,
    so a result's download link stays valid at least that long."""
    age = int(os.environ.get(TEMP_MAX_AGE_ENV, "") or DEFAULT_TEMP_MAX_AGE_S)
    return max(1, age // 4), age


def launch_settings() -> dict[str, object]:
    """The ``launch()`` arguments every deployment gets: the upload size limit (``MEDCLIP_MAX_UPLOAD_MB``)."""
    return {"max_file_size": hosting.max_upload_bytes()}


def build_app() -> gr.Blocks:
    with gr.Blocks(title=TITLE, delete_cache=delete_cache_settings()) as demo:
        gr.Markdown(f"# {TITLE}\nExplore CLIP-style vision–language models for medical images. "
                    "Research tool, not a medical device.")
        picker, _ = common.model_picker()
        diagnose.build(picker)
        retrieve.build(picker)
        embeddings.build(picker)
        grounding.build(picker)
        segment.build(picker)
        report.build(picker)
        inspect.build()
        runs = RunManager()  # one manager (and monitor thread) for the Training and Evaluate tabs
        train.build(picker, runs)
        evaluate.build(picker, runs)
        if archive_configured():  # the Archive tab exists only where the host set MEDCLIP_DICOMWEB_URL
            archive.build(picker)
            archive.resume_jobs()
    common.share_model_limit(demo, picker, MODEL_CONCURRENCY)
    common.release_sessions_on_close(demo)
    demo.queue(default_concurrency_limit=MODEL_CONCURRENCY, max_size=64)
    return demo


if __name__ == "__main__":
    start_warm_up()
    build_app().launch(**launch_settings())
