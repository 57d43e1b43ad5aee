"""Retrieve tab: text -> images, image -> images and image -> reports over a gallery index.

The gallery is the phantom test split by default (labelled, so precision@k is shown); a server
folder or CSV can be used when the host sets ``MEDCLIP_GALLERY_ROOT`` (galleries must lie inside
it). A query image stays in the user's session: it is embedded, never added to an index.
"""
from __future__ import annotations

import os
from typing import Any

import gradio as gr

from medclip_core.data.galleries import collection_from_spec
from medclip_core.errors import TaskInputError
from medclip_core.io import load_image
from medclip_core.models import load_model
from medclip_core.tasks.retrieval import (
    build_index, image_to_reports, labels_in_text, precision_at_k, search_image, search_text,
)
from pages.common import image_examples, image_upload, ui_errors

MODES = ("text → images", "image → images", "image → reports")
GALLERY_ROOT_ENV = "MEDCLIP_GALLERY_ROOT"


def gallery_collection(spec: str):
    """The gallery a user named; server folders only inside ``MEDCLIP_GALLERY_ROOT`` when the host set it."""
    root = os.environ.get(GALLERY_ROOT_ENV) or None
    return collection_from_spec(spec, allowed_root=root, allow_paths=root is not None)


@ui_errors
def run_retrieval(mode: str, query_text: str, query_path: str | None, gallery: str, k: float, model_name: str,
                  progress: gr.Progress = gr.Progress()) -> tuple[list, list[list[Any]], str, dict]:
    """Returns gallery thumbnails with captions, a hits table, a summary and the JSON result."""
    model = load_model(model_name)
    k = int(k)
    if mode not in MODES:
        raise TaskInputError(f"Choose one of: {', '.join(MODES)}.")
    if mode != "text → images" and not query_path:
        raise TaskInputError("Upload a query image (PNG, JPEG, TIFF or DICOM) for an image query.")

    def report(done: int, total: int) -> None:
        progress(done / max(total, 1), desc=f"embedding {total} items")

    if mode == "image → reports":
        result = image_to_reports(model, load_image(query_path), k=k, progress=report)
        summary = f"{len(result.hits)} closest reports of {result.gallery}."
        return [], [[h.rank, round(h.score, 4), "", h.report] for h in result.hits], summary, result.to_dict()
    collection = gallery_collection(gallery)
    index = build_index(model, collection, progress=report)
    if mode == "text → images":
        result = search_text(model, index, query_text, k=k)
    else:
        result = search_image(model, index, load_image(query_path), k=k)
    summary = f"{len(result.hits)} of {len(index)} images in *{index.name}* ({index.kind} index)."
    if collection.labelled and mode == "text → images" and labels_in_text(result.query or ""):
        summary += f" Precision@{len(result.hits)} against the labels: **{precision_at_k(result):.2f}**."
    thumbnails = [(index.item(h.item_id).image().to_pil(), f"{h.rank}. {h.score:.3f} — {', '.join(h.labels or [])}")
                  for h in result.hits]
    rows = [[h.rank, round(h.score, 4), ", ".join(h.labels or []), h.report or ""] for h in result.hits]
    return thumbnails, rows, summary + "".join(f"\n\n{note}" for note in result.notes), result.to_dict()


def build(model_picker: gr.Dropdown) -> None:
    with gr.Tab("Retrieve"):
        gr.Markdown("Search a gallery by text or by image, or find the closest reports of the Open-i corpus "
                    "for an image. The index is built once per model and cached on disk.")
        with gr.Row():
            with gr.Column():
                mode = gr.Radio(list(MODES), value=MODES[0], label="Query")
                text = gr.Textbox(label="Text query", value="pleural effusion", max_lines=3)
                upload = image_upload(label="Query image (stays in your session)")
                image_examples(upload)
            with gr.Column():
                gallery = gr.Textbox(value="phantom", label="Gallery", elem_id="retrieve-collection",
                                     info="phantom (test split, 392 images), phantom:N, or a folder / CSV inside "
                                          "MEDCLIP_GALLERY_ROOT when the host allows it")
                k = gr.Slider(1, 50, value=8, step=1, label="Results (k)")
                button = gr.Button("Search", variant="primary")
        summary = gr.Markdown()
        results = gr.Gallery(label="Results", columns=4, height="auto", elem_id="retrieve-gallery")
        table = gr.Dataframe(headers=["rank", "score", "labels", "report"], label="Hits", interactive=False, wrap=True)
        details = gr.JSON(label="Result")
        button.click(run_retrieval, inputs=[mode, text, upload, gallery, k, model_picker],
                     outputs=[results, table, summary, details], api_name="retrieve")
