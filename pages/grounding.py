"""Grounding tab: where the model looks for each phrase, by one or several heatmap methods."""
from __future__ import annotations

import dataclasses
import tempfile

import gradio as gr
import numpy as np
from PIL import Image

from medclip_core.errors import TaskInputError
from medclip_core.tasks.grounding import METHOD_TITLES, METHODS, GroundingResult, ground, parse_phrases
from medclip_core.tasks.saving import saved_paths
from pages.common import image_input_column, load_upload, ui_errors

GALLERY_MAX_SIDE = 512


def _for_display(result: GroundingResult) -> GroundingResult:
    """The result at gallery size (longest side ``GALLERY_MAX_SIDE``): what the gallery shows and the
    session keeps for re-blending, at most 1 MiB a map whatever the upload's size."""
    if max(result.image.size) <= GALLERY_MAX_SIDE:
        return result
    image = result.image.copy()
    image.thumbnail((GALLERY_MAX_SIDE, GALLERY_MAX_SIDE), Image.Resampling.BOX)
    maps = np.stack([np.asarray(Image.fromarray(m).resize(image.size, Image.Resampling.BILINEAR)) for m in result.maps])
    return dataclasses.replace(result, image=image, maps=maps)


def _gallery(results: list[GroundingResult], opacity: float) -> list[tuple[Image.Image, str]]:
    return [(r.overlay(i, opacity), f"{phrase} · {METHOD_TITLES[r.method]}")
            for r in results for i, phrase in enumerate(r.phrases)]


def _downloads(results: list[GroundingResult], opacity: float) -> list[str]:
    """Every method's saved files (JSON, .npy, map and overlay PNGs), named after the method."""
    folder = tempfile.mkdtemp(prefix="medclip-heatmaps-")
    return [path for r in results for path in saved_paths(r.save(folder, prefix=f"{r.method}-", opacity=opacity))]


@ui_errors
def run_heatmaps(path: str | None, phrases_text: str, methods: list[str], opacity: float,
                 model: str) -> tuple[list, dict, list[str], list[GroundingResult]]:
    """Image + phrases + methods -> (overlays, JSON summary, downloadable maps, results for re-blending).

    Peak memory whatever the upload's size: the decode bound of ``load_image`` (64 MiB for an
    8000 x 8000 8-bit PNG) + about 40 MiB per phrase and method at the working size (1024 px);
    the session keeps the results at gallery size only (<= 1 MiB a map, ``_for_display``)."""
    if not methods:
        raise TaskInputError("Pick at least one heatmap method.")
    phrases = parse_phrases(phrases_text)
    image = load_upload(path)
    results = [ground(image, phrases, model=model, method=method) for method in methods]
    summary = {"model": results[0].model, "phrases": phrases, "methods": [r.to_dict() for r in results]}
    downloads = _downloads(results, opacity)
    shown = [_for_display(r) for r in results]
    return _gallery(shown, opacity), summary, downloads, shown


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
        gallery = gr.Gallery(label="Heatmaps (phrase · method)", columns=3, height="auto")
        with gr.Row():
            details = gr.JSON(label="Result")
            files = gr.File(label="Maps and overlays (JSON, PNG, .npy)", file_count="multiple")
        state = gr.State([])
        button.click(run_heatmaps, inputs=[upload, phrases, methods, opacity, model_picker],
                     outputs=[gallery, details, files, state], api_name="heatmap")
        opacity.release(reblend, inputs=[state, opacity], outputs=gallery, api_visibility="private")
