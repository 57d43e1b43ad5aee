"""MedCLIP Explorer: the Gradio app (Hugging Face Spaces entry point). It only assembles the pages.

Run ``python app.py``; ``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT`` choose the address. Models
load on first use, so the app starts in seconds. Analytics are off: the app sends nothing anywhere.
"""
from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import gradio as gr  # noqa: E402

from medclip_core.archive.config import archive_configured  # noqa: E402
from pages import (  # noqa: E402
    archive, common, diagnose, embeddings, evaluate, grounding, inspect, report, retrieve, segment, train,
)

TITLE = "MedCLIP Explorer"
MODEL_CONCURRENCY = int(os.environ.get("MEDCLIP_CONCURRENCY", "2"))


def build_app() -> gr.Blocks:
    with gr.Blocks(title=TITLE) as demo:
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
        train.build(picker)
        evaluate.build(picker)
        if archive_configured():  # the Archive tab exists only where the host set MEDCLIP_DICOMWEB_URL
            archive.build(picker)
            archive.resume_jobs()
    demo.queue(default_concurrency_limit=MODEL_CONCURRENCY, max_size=64)
    return demo


if __name__ == "__main__":
    build_app().launch()
