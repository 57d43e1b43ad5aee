"""Grounding tab: where the model looks for each phrase, by one or several heatmap methods."""
from __future__ import annotations

import dataclasses
import tempfile
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from medclip_core.errors import TaskInputError
from medclip_core.eval.heatmap_sanity import CONTROL_PHRASE
from medclip_core.tasks.grounding import METHOD_TITLES, METHODS, GroundingResult, ground, parse_phrases
from medclip_core.tasks.saving import saved_paths
from pages.common import clear_on, image_input_column, load_upload, ood_notice, ui_errors, unsupported_methods

METHODS_INFO = "Every method this model can serve."

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


def _gallery(results: list[GroundingResult], opacity: float,
             controls: list[GroundingResult] = ()) -> list[tuple[Image.Image, str]]:
    """Overlays captioned "phrase · method" (the method's short title, so the caption fits its tile), then the
    nonsense-phrase control maps (``controls``) if shown."""
    return [(r.overlay(i, opacity), f"{phrase} · {METHOD_TITLES[r.method].split(' (')[0]}")
            for r in results for i, phrase in enumerate(r.phrases)] + \
        [(c.overlay(0, opacity), f"control: {c.phrases[0]} · {METHOD_TITLES[c.method].split(' (')[0]}")
         for c in controls]


def _downloads(results: list[GroundingResult], opacity: float) -> list[str]:
    """Every method's saved files (JSON, .npy, map and overlay PNGs), named after the method."""
    folder = tempfile.mkdtemp(prefix="medclip-heatmaps-")
    return [path for r in results for path in saved_paths(r.save(folder, prefix=f"{r.method}-", opacity=opacity))]


@ui_errors
def run_heatmaps(path: str | None, phrases_text: str, methods: list[str], opacity: float,
                 model: str, control: bool = False) -> tuple[list, dict, list[str], list[list[GroundingResult]], str]:
    """Image + phrases + methods -> (overlays, JSON summary, downloadable maps, [results, controls] for
    re-blending, out-of-distribution notice). ``control``: also map the nonsense phrase ``CONTROL_PHRASE``
    by each method, the control of the heatmap sanity checks (``medclip_core.eval.heatmap_sanity``): a map
    that looks the same for it does not depend on the phrase.

    Peak memory whatever the upload's size: the decode bound of ``load_image`` (64 MiB for an
    8000 x 8000 8-bit PNG) + about 40 MiB per phrase and method at the working size (1024 px);
    the session keeps the results at gallery size only (<= 1 MiB a map, ``_for_display``)."""
    if not methods:
        raise TaskInputError("Pick at least one heatmap method.")
    phrases = parse_phrases(phrases_text)
    image = load_upload(path)
    results = [ground(image, phrases, model=model, method=method) for method in methods]
    controls = [ground(image, [CONTROL_PHRASE], model=model, method=method) for method in methods] if control else []
    summary = {"model": results[0].model, "phrases": phrases, "methods": [r.to_dict() for r in results]}
    if controls:
        summary["controls"] = [c.to_dict() for c in controls]
    downloads = _downloads(results, opacity)
    shown, shown_controls = [_for_display(r) for r in results], [_for_display(c) for c in controls]
    return (_gallery(shown, opacity, shown_controls), summary, downloads, [shown, shown_controls],
            ood_notice(summary["methods"][0]["ood"]))


def reblend(state: list[list[GroundingResult]] | None, opacity: float) -> list:
    results, controls = state or ([], [])
    return _gallery(results, opacity, controls)



def methods_for_model(model_name: str, chosen: list[str] | None) -> Any:
    """The Methods choices a model can serve, the others named with the reason they are not offered."""
    missing = unsupported_methods(model_name)
    offered = [m for m in METHODS if m not in missing]
    kept = [m for m in chosen or [] if m in offered] or offered[:1]
    info = METHODS_INFO if not missing else "Not offered for this model: " + "; ".join(
        f"{METHOD_TITLES[m]} ({reason})" for m, reason in missing.items())
    return gr.update(choices=[(METHOD_TITLES[m], m) for m in offered], value=kept, info=info)


def build(model_picker: gr.Dropdown) -> None:
    with gr.Tab("Grounding") as tab:
        gr.Markdown("Type phrases (one per line) and see where the model finds each of them. Several methods "
                    "side by side; maps lie on the original image (for DICOM: the windowed original). "
                    "Of the shipped models, **medclip-phantom-grounding** localises best; the default "
                    "medclip-phantom classifies better but its maps often peak beside the finding.")
        with gr.Row():
            upload, _ = image_input_column("grounding-upload", preview=True)
            with gr.Column():
                phrases = gr.Textbox(lines=3, value="pleural effusion", label="Phrases, one per line",
                                     placeholder="left basal effusion\nright upper lobe nodule")
                methods = gr.CheckboxGroup([(METHOD_TITLES[m], m) for m in METHODS], value=["similarity"],
                                           label="Methods", info=METHODS_INFO, elem_id="grounding-methods")
                control = gr.Checkbox(False, label="Show a nonsense-phrase control",
                                      info=f"Adds each method's map of '{CONTROL_PHRASE}': a map that looks the "
                                           "same ignores the phrase (docs/grounding.md, sanity checks).")
                opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="Overlay opacity")
                button = gr.Button("Show heatmaps", variant="primary")
        ood = gr.Markdown(elem_id="grounding-ood")
        gallery = gr.Gallery(label="Heatmaps (phrase · method)", columns=3, fit_columns=False, height="auto",
                             object_fit="contain", elem_id="grounding-gallery")
        with gr.Row():
            details = gr.JSON(label="Result")
            files = gr.File(label="Maps and overlays (JSON, PNG, .npy)", file_count="multiple")
        state = gr.State([])
        outputs = [gallery, details, files, state, ood]
        run = button.click(run_heatmaps, inputs=[upload, phrases, methods, opacity, model_picker, control],
                           outputs=outputs, api_name="heatmap")
        opacity.release(reblend, inputs=[state, opacity], outputs=gallery, api_visibility="private")
        clear_on([run.failure, upload.change, model_picker.change], outputs)
        gr.on([tab.select, model_picker.change], methods_for_model, inputs=[model_picker, methods], outputs=methods,
              api_visibility="private", show_progress="hidden")
