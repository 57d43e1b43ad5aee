"""Embeddings tab: a 2-D map (UMAP, PCA or t-SNE) of image and report embeddings, and the modality gap."""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import gradio as gr

from medclip_core.data import phantom
from medclip_core.data.findings import FINDINGS
from medclip_core.models import load_model
from medclip_core.tasks.embedding import (
    METHOD_NAMES, embedding_map, figure, projection_preparing, projection_ready,
)
from pages.common import clear_on, ui_errors
from pages.retrieve import gallery_collection

EVERY_FINDING = "(each finding its own colour)"
DEFAULT_COLLECTION = "phantom:200"
DEFAULT_METHOD = "umap"
FIRST_USE_NOTE = ("**UMAP is still being prepared** (compiled once after the app starts, about 10 s): PCA is "
                  "shown meanwhile. Press *Compute map* again in a few seconds for UMAP.")

# Plotly cannot draw images in a hover label, so a panel beside the map shows the thumbnail of the
# hovered point (customdata[0], a data URI; customdata[2:4] are its label and modality).
HOVER_PANEL = ('<figure style="margin:0;text-align:center"><img alt="" style="width:192px;height:192px;'
               'background:#111"/><figcaption>Hover a point to see its image</figcaption></figure>')
HOVER_JS = """
const image = element.querySelector('img');
const caption = element.querySelector('figcaption');
setInterval(() => {
  const plot = document.querySelector('#embedding-plot .js-plotly-plot');
  if (!plot || plot.__medclipHover || typeof plot.on !== 'function') return;
  plot.__medclipHover = true;
  plot.on('plotly_hover', (event) => {
    const data = event.points[0].customdata;
    if (!data || !data[0]) return;
    image.src = data[0];
    caption.textContent = `${data[2]} (${data[3]})`;
  });
}, 400);
"""


@ui_errors
def run_embedding_map(gallery: str, method: str, color_by: str, model_name: str, highlight: str | None = None,
                      progress: gr.Progress = gr.Progress()) -> tuple[Any, str, dict]:
    """The map of a collection; coloured by label, ``highlight`` (a finding) is red and all else grey."""
    model = load_model(model_name)
    collection = gallery_collection(gallery)
    waiting = projection_preparing(method)
    if waiting:  # UMAP compiles once per process (app.py's start-up warm-up): show PCA meanwhile
        method = "pca"
    first_use = [] if phantom.is_warm() else ["preparing the phantom gallery"]
    if method in METHOD_NAMES and not projection_ready(method):  # no warm-up ran: compile now
        first_use.append(f"compiling {METHOD_NAMES[method]}, about 10 s")
    status = f"embedding; {' and '.join(first_use)}… (first use)" if first_use else "embedding"
    progress(0, desc=status)
    result = embedding_map(model, collection, method=method, color_by=color_by,
                           progress=lambda done, total: progress(done / max(total, 1), desc=status))
    if waiting:
        result = replace(result, notes=[FIRST_USE_NOTE, *result.notes])
    gap = ("" if result.modality_gap is None else
           f"**Modality gap** (distance between the image and text centroids): **{result.modality_gap:.3f}** "
           f"(centroid cosine {result.centroid_cosine:.3f}). ")
    summary = gap + f"{len(result)} points." + "".join(f"\n\n{note}" for note in result.notes)
    chosen = None if highlight in (None, "", EVERY_FINDING) or color_by != "label" else highlight
    return figure(result, highlight=chosen), summary, result.to_dict()


def recolour_map(shown: Any, gallery: str, method: str, color_by: str, model_name: str,
                 highlight: str | None) -> tuple[Any, Any, Any]:
    """Redraw the map on screen with new colours (a cache hit); nothing to do while no map is shown."""
    if shown is None:
        return gr.skip(), gr.skip(), gr.skip()
    return run_embedding_map(gallery, method, color_by, model_name, highlight)


def build(model_picker: gr.Dropdown) -> None:
    with gr.Tab("Embeddings"):
        gr.Markdown("Images (circles) and their reports (diamonds) embedded by the model and projected to 2-D. "
                    "Computed with progress and cached per model and collection.")
        with gr.Row():
            gallery = gr.Textbox(value=DEFAULT_COLLECTION, label="Collection", info="phantom or phantom:N (test split)")
            method = gr.Radio(["umap", "pca", "tsne"], value=DEFAULT_METHOD, label="Projection")
            color_by = gr.Radio(["label", "modality"], value="label", label="Colour by")
            highlight = gr.Dropdown([EVERY_FINDING, *FINDINGS], value=EVERY_FINDING, allow_custom_value=True,
                                    label="Highlight a finding", info="coloured by label: that finding red, "
                                                                      "every other point grey")
            button = gr.Button("Compute map", variant="primary")
        summary = gr.Markdown()
        with gr.Row():
            plot = gr.Plot(label="Embedding map", elem_id="embedding-plot", scale=4)
            gr.HTML(HOVER_PANEL, js_on_load=HOVER_JS, elem_id="embedding-hover", scale=1)
        details = gr.JSON(label="Points", visible=False)
        inputs, outputs = [gallery, method, color_by, model_picker, highlight], [plot, summary, details]
        run = button.click(run_embedding_map, inputs=inputs, outputs=outputs, api_name="embedding_map")
        recolour = gr.on([highlight.input, color_by.input], recolour_map, inputs=[plot, *inputs], outputs=outputs,
                         api_visibility="private", trigger_mode="always_last")
        clear_on([run.failure, recolour.failure, model_picker.change, gallery.input, method.input], outputs)
