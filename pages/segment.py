"""Segment tab: one mask per phrase, zero-shot from a heatmap or by the trained decoder; PNG and DICOM SEG export."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import gradio as gr
from pydicom.misc import is_dicom

from medclip_core.tasks.grounding import parse_phrases
from medclip_core.tasks.saving import saved_paths
from medclip_core.tasks.segmentation import SEGMENT_METHODS, segment
from pages.common import image_input_column, load_upload, ood_notice, ui_errors


@ui_errors
def run_segmentation(path: str | None, phrases_text: str, method: str,
                     model: str) -> tuple[Any, dict, list[str], str]:
    """Image + phrases -> (annotated image, JSON summary, mask PNGs [+ DICOM SEG for a DICOM input],
    out-of-distribution notice)."""
    phrases = parse_phrases(phrases_text)
    result = segment(load_upload(path), phrases, model=model, method=method)
    saved = result.save(tempfile.mkdtemp(prefix="medclip-masks-"), dicom_source=path if is_dicom(path) else None)
    summary = result.to_dict()
    if "dicom_seg" in saved:
        summary["dicom_seg"] = Path(str(saved["dicom_seg"])).name
    return result.annotations(), summary, saved_paths(saved), ood_notice(summary["ood"])


def build(model_picker: gr.Dropdown) -> None:
    with gr.Tab("Segment"):
        gr.Markdown("Outline findings from words alone: one mask per phrase. Zero-shot masks threshold a heatmap "
                    "(half its peak, the peak's connected region, holes filled); *trained* uses the "
                    "text-conditioned decoder shipped with the model. A DICOM input also gets a DICOM SEG.")
        with gr.Row():
            upload, _ = image_input_column("segment-upload")
            with gr.Column():
                phrases = gr.Textbox(lines=3, value="pleural effusion", label="Phrases, one per line")
                method = gr.Dropdown(list(SEGMENT_METHODS), value="trained", label="Method")
                button = gr.Button("Segment", variant="primary")
        ood = gr.Markdown(elem_id="segment-ood")
        annotated = gr.AnnotatedImage(label="Masks")
        with gr.Row():
            details = gr.JSON(label="Result")
            files = gr.File(label="Masks (JSON, PNG; DICOM SEG for DICOM input)", file_count="multiple")
        button.click(run_segmentation, inputs=[upload, phrases, method, model_picker],
                     outputs=[annotated, details, files, ood], api_name="segment")
