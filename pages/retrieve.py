"""Retrieve tab: text -> images, image -> images and image -> reports over a gallery index.

The gallery is the phantom test split by default (labelled, so precision@k is shown); a server
folder or CSV can be used when the host sets ``MEDCLIP_GALLERY_ROOT`` (galleries must lie inside
it). An archive index built with ``python -m medclip_core index build`` and registered by the host
under ``MEDCLIP_INDEX_ROOT`` can be chosen instead: it is searched from disk and only the result
thumbnails are read from the archive. A query image stays in the user's session: it is embedded,
never added to an index.
"""
from __future__ import annotations

import os
from typing import Any

import gradio as gr

from medclip_core.data import phantom
from medclip_core.data.galleries import collection_from_spec
from medclip_core.errors import ImageLoadError, TaskInputError
from medclip_core.index import ArchiveIndex, registered_indexes, resolve_index, search_index_image, search_index_text
from medclip_core.io import load_image
from medclip_core.models import load_model
from medclip_core.tasks.retrieval import (
    build_index, image_to_reports, labelled_precision, search_image, search_text,
)
from pages.common import (
    clear_on, image_examples, image_upload, ood_notice, thumbnail_grid, thumbnail_grid_html, ui_errors,
)

MODES = ("text → images", "image → images", "image → reports")
GALLERY_ROOT_ENV = "MEDCLIP_GALLERY_ROOT"
NO_ARCHIVE_INDEX = "(none: search the gallery)"


def gallery_collection(spec: str):
    """The gallery a user named; server folders only inside ``MEDCLIP_GALLERY_ROOT`` when the host set it."""
    root = os.environ.get(GALLERY_ROOT_ENV) or None
    return collection_from_spec(spec, allowed_root=root, allow_paths=root is not None)


def short_labels(labels: list[str] | None) -> str:
    """A hit's labels as a thumbnail caption that fits its tile: the first one and how many more (all of
    them are in the hits table)."""
    labels = labels or []
    return ", ".join(labels) if len(labels) <= 1 else f"{labels[0]} +{len(labels) - 1}"


def search_archive_index(name: str, mode: str, query_text: str, query_path: str | None, k: int,
                         model_name: str) -> tuple[list, list[list[Any]], str, dict]:
    """Search a host-registered archive index; thumbnails are read from the archive for the hits only."""
    if mode == "image → reports":
        raise TaskInputError("An archive index holds images; choose text → images or image → images.")
    index = ArchiveIndex.open(resolve_index(name, allow_paths=False))
    model = load_model(model_name or index.info.model)
    if mode == "text → images":
        result = search_index_text(model, index, query_text, k=k)
    else:
        result = search_index_image(model, index, load_image(query_path), k=k)
    thumbnails, missing = [], 0
    for hit in result.hits:
        try:
            thumbnails.append((index.load_image(hit.item_id), f"{hit.rank}. {hit.score:.3f} — {hit.item_id}"))
        except ImageLoadError:
            missing += 1
    summary = f"{len(result.hits)} of {len(index):,} images in archive index *{index.info.name}* ({result.index_kind})."
    if missing:
        summary += (f" {missing} result image(s) could not be read from {index.source_root}; the host can point "
                    "the index at its images with MEDCLIP_INDEX_SOURCES.")
    rows = [[h.rank, round(h.score, 4), ", ".join(h.labels or []) or h.item_id, h.report or ""] for h in result.hits]
    return thumbnails, rows, summary + "".join(f"\n\n{note}" for note in result.notes), result.to_dict()


@ui_errors
def run_retrieval(mode: str, query_text: str, query_path: str | None, gallery: str, k: float, model_name: str,
                  archive_index: str = NO_ARCHIVE_INDEX,
                  progress: gr.Progress = gr.Progress()) -> tuple[str, list[list[Any]], str, dict, str]:
    """Returns the result thumbnails with captions (an HTML grid), a hits table, a summary, the JSON result
    and, for an image query, the out-of-distribution notice of the query image."""
    k = int(k)
    if mode not in MODES:
        raise TaskInputError(f"Choose one of: {', '.join(MODES)}.")
    if mode != "text → images" and not query_path:
        raise TaskInputError("Upload a query image (PNG, JPEG, TIFF or DICOM) for an image query.")
    if archive_index and archive_index != NO_ARCHIVE_INDEX:
        thumbnails, rows, summary, result = search_archive_index(archive_index, mode, query_text, query_path, k,
                                                                 model_name)
        return thumbnail_grid_html(thumbnails), rows, summary, result, ood_notice(result["ood"])
    model = load_model(model_name)

    def report(done: int, total: int) -> None:
        progress(done / max(total, 1), desc=f"embedding {total} items")

    if mode == "image → reports":
        result = image_to_reports(model, load_image(query_path), k=k, progress=report)
        summary = f"{len(result.hits)} closest reports of {result.gallery}."
        details = result.to_dict()
        return ("", [[h.rank, round(h.score, 4), "", h.report] for h in result.hits], summary, details,
                ood_notice(details["ood"]))
    collection = gallery_collection(gallery)
    if not phantom.is_warm():  # the background warm-up (app.py) is still building the renderer's banks
        progress(0, desc="preparing the phantom gallery… (first use)")
    index = build_index(model, collection, progress=report)
    if mode == "text → images":
        result = search_text(model, index, query_text, k=k)
    else:
        result = search_image(model, index, load_image(query_path), k=k)
    summary = f"{len(result.hits)} of {len(index)} images in *{index.name}* ({index.kind} index)."
    precision = labelled_precision(result, collection)
    if precision is not None:
        summary += f" Precision@{len(result.hits)} against the labels: **{precision:.2f}**."
    thumbnails = [(index.item(h.item_id).image(), f"{h.rank}. {h.score:.3f} — {short_labels(h.labels)}")
                  for h in result.hits]
    rows = [[h.rank, round(h.score, 4), ", ".join(h.labels or []), h.report or ""] for h in result.hits]
    details = result.to_dict()
    notes = "".join(f"\n\n{note}" for note in result.notes)
    return thumbnail_grid_html(thumbnails), rows, summary + notes, details, ood_notice(details["ood"])


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
                archive = gr.Dropdown([NO_ARCHIVE_INDEX, *registered_indexes()], value=NO_ARCHIVE_INDEX,
                                      label="Archive index", elem_id="retrieve-archive-index",
                                      info="an index the host built with `index build` under MEDCLIP_INDEX_ROOT; "
                                           "searched instead of the gallery, with the model it was built with")
                k = gr.Slider(1, 50, value=8, step=1, label="Results (k)")
                button = gr.Button("Search", variant="primary")
        summary = gr.Markdown()
        ood = gr.Markdown(elem_id="retrieve-ood")
        results = thumbnail_grid("retrieve-gallery")
        table = gr.Dataframe(headers=["rank", "score", "labels", "report"], label="Hits", interactive=False, wrap=True,
                             column_widths=["8%", "10%", "22%", "60%"])
        details = gr.JSON(label="Result")
        outputs = [results, table, summary, details, ood]
        run = button.click(run_retrieval, inputs=[mode, text, upload, gallery, k, model_picker, archive],
                           outputs=outputs, api_name="retrieve")
        clear_on([run.failure, upload.change, model_picker.change, mode.input, archive.input], outputs)
