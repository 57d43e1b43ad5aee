"""Grounding tab: where the model looks for each phrase, by one or several heatmap methods."""
from __future__ import annotations

import tempfile

import gradio as gr
from PIL import Image

from medclip_core.errors import TaskInputError
from medclip_core.tasks.grounding import METHOD_TITLES, METHODS, GroundingResult, ground, parse_phrases
from medclip_core.tasks.saving import saved_paths
from pages.common import image_input_column, load_upload, ood_notice, ui_errors


def _gallery(results: list[GroundingResult], opacity: float) -> list[tuple[Image.Image, str]]:
    return [(r.overlay(i, opacity), f"{phrase} · {METHOD_TITLES[r.method]}")
            for r in results for i, phrase in enumerate(r.phrases)]


def _downloads(results: list[GroundingResult], opacity: float) -> list[str]:
    """Every method's saved files (JSON, .npy, map and overlay PNGs), named after the method."""
    folder = tempfile.mkdtemp(prefix="medclip-heatmaps-")
    return [path for r in results for path in saved_paths(r.save(folder, prefix=f"{r.method}-", opacity=opacity))]


@ui_errors
def run_heatmaps(path: str | None, phrases_text: str, methods: list[str], opacity: float,
                 model: str) -> tuple[list, dict, list[str], list[GroundingResult], str]:
    """Image + phrases + methods -> (overlays, JSON summary, downloadable maps, results for re-blending,
    out-of-distribution notice)."""
    if not methods:
        raise TaskInputError("Pick at least one heatmap method.")
    phrases = parse_phrases(phrases_text)
    image = load_upload(path)
    results = [ground(image, phrases, model=model, method=method) for method in methods]
    summary = {"model": results[0].model, "phrases": phrases, "methods": [r.to_dict() for r in results]}
    return _gallery(results, opacity), summary, _downloads(results, opacity), results, ood_notice(
        summary["methods"][0]["ood"])


def reblend(results: list[GroundingResult] | None, opacity: float) -> list:
    return _gallery(results or [], opacity)


def build(model_picker: gr.Dropdown) -> None:
    with gr.Tab("Grounding"):
        gr.Markdown("Type phrases (one per line) and see where the model finds each of them. Several methods "
                    "side by side; maps lie on the original image (for DICOM: the windowed original). "
                    "Of the shipped models, **medclip-phantom-grounding** localises best; the default "
                    "medclip-phantom classifies better but its maps often peak beside the finding.")
        with gr.Row():
            upload, _ = image_input_column("grounding-upload")
            with gr.Column():
                phrases = gr.Textbox(lines=3, value="pleural effusion", label="Phrases, one per line",
                                     placeholder="left basal effusion\nright upper lobe nodule")
                methods = gr.CheckboxGroup([(METHOD_TITLES[m], m) for m in METHODS], value=["similarity"],
                                           label="Methods",
                                           info="Attention relevance needs a ViT with a class token.")
                opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="Overlay opacity")
                button = gr.Button("Show heatmaps", variant="primary")
        ood = gr.Markdown(elem_id="grounding-ood")
        gallery = gr.Gallery(label="Heatmaps (phrase · method)", columns=3, height="auto")
        with gr.Row():
            details = gr.JSON(label="Result")
            files = gr.File(label="Maps and overlays (JSON, PNG, .npy)", file_count="multiple")
        state = gr.State([])
        button.click(run_heatmaps, inputs=[upload, phrases, methods, opacity, model_picker],
                     outputs=[gallery, details, files, state, ood], api_name="heatmap")
        opacity.release(reblend, inputs=[state, opacity], outputs=gallery, api_visibility="private")
