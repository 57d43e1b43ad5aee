"""Segment tab: one mask per phrase, zero-shot from a heatmap or by the trained decoder; PNG and DICOM SEG export.

A mask that cannot be a finding's outline (most of the image, or mostly outside the body) is marked
implausible on screen and left out of the DICOM SEG, with the reason, so it is never sent on as if
it were a finding's outline.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import gradio as gr
from pydicom.misc import is_dicom

from medclip_core.dicom_seg import write_dicom_seg
from medclip_core.models.segmentation_decoder import CONFIG_NAME, decoder_dir_for
from medclip_core.tasks.grounding import parse_phrases
from medclip_core.tasks.saving import saved_paths
from medclip_core.tasks.segmentation import SEGMENT_METHODS, TRAINED, implausible_masks, segment
from pages.common import clear_on, image_input_column, load_upload, ood_notice, ui_errors, unsupported_methods


@ui_errors
def run_segmentation(path: str | None, phrases_text: str, method: str, model: str,
                     keep_patient: bool = False) -> tuple[Any, dict, list[str], str]:
    """Image + phrases -> (annotated image, JSON summary, mask PNGs [+ DICOM SEG of the plausible masks
    for a DICOM input], out-of-distribution notice); the summary's ``implausible`` names the masks marked
    and left out, and why. The SEG is a de-identified copy unless ``keep_patient`` (for return to the
    archive the source came from)."""
    phrases = parse_phrases(phrases_text)
    result = segment(load_upload(path), phrases, model=model, method=method)
    implausible = implausible_masks(result)
    plausible = [p for p in result.phrases if p not in implausible]
    folder = tempfile.mkdtemp(prefix="medclip-masks-")
    saved = result.save(folder)
    if is_dicom(path) and plausible:
        masks = {p: m for p, m in zip(result.phrases, result.masks) if p in plausible}
        saved["dicom_seg"] = str(write_dicom_seg(path, masks, Path(folder) / "segmentation.dcm",
                                                 deidentify=not keep_patient))
    summary = {**result.to_dict(), "implausible": implausible}
    if "dicom_seg" in saved:
        summary["dicom_seg"] = Path(str(saved["dicom_seg"])).name
    image, annotations = result.annotations()
    marked = [(mask, f"{phrase} (implausible)" if phrase in implausible else phrase) for mask, phrase in annotations]
    return (image, marked), summary, saved_paths(saved), ood_notice(summary["ood"])


def plausibility_note(summary: dict | None) -> str:
    """What the user must know about the masks shown: which are implausible, and that they are not in the SEG."""
    implausible = (summary or {}).get("implausible") or {}
    if not implausible:
        return ""
    lines = [f"- **{phrase}**: the mask {reason}." for phrase, reason in implausible.items()]
    seg = ("left out of the DICOM SEG" if summary.get("dicom_seg") else
           "so no DICOM SEG was written" if len(implausible) == len(summary.get("phrases", [])) else "not exported")
    return ("⚠️ **Implausible mask(s)**, marked *(implausible)* on the image and " + seg +
            " (the PNGs are kept for inspection):\n" + "\n".join(lines))


def methods_for_model(model_name: str, chosen: str | None) -> Any:
    """The Method choices a model can serve; the others named with the reason they are not offered."""
    missing = {f"zero-shot:{m}": reason for m, reason in unsupported_methods(model_name).items()}
    decoder = decoder_dir_for(model_name)
    if decoder is None or not (decoder / CONFIG_NAME).is_file():
        missing[TRAINED] = "this model ships no trained decoder"
    offered = [m for m in SEGMENT_METHODS if m not in missing]
    info = None if not missing else "Not offered: " + "; ".join(f"{m} ({why})" for m, why in missing.items())
    return gr.update(choices=offered, value=chosen if chosen in offered else (offered or [None])[0], info=info)


def build(model_picker: gr.Dropdown) -> None:
    with gr.Tab("Segment") as tab:
        gr.Markdown("Outline findings from words alone: one mask per phrase. Zero-shot masks threshold a heatmap "
                    "(half its peak, the peak's connected region, holes filled); *trained* uses the "
                    "text-conditioned decoder shipped with the model. A DICOM input also gets a DICOM SEG.")
        with gr.Row():
            upload, _ = image_input_column("segment-upload", preview=True)
            with gr.Column():
                phrases = gr.Textbox(lines=3, value="pleural effusion", label="Phrases, one per line",
                                     elem_id="segment-phrases")
                method = gr.Dropdown(list(SEGMENT_METHODS), value="trained", label="Method", elem_id="segment-method")
                keep_patient = gr.Checkbox(False, label="DICOM SEG: keep the source's patient name, ID and study",
                                           info="for return to the same archive; unticked, the SEG is a "
                                                "de-identified copy for sharing (new UIDs, no identifiers)")
                button = gr.Button("Segment", variant="primary")
        ood = gr.Markdown(elem_id="segment-ood")
        note = gr.Markdown(elem_id="segment-note")
        annotated = gr.AnnotatedImage(label="Masks", height=560, elem_id="segment-masks")
        with gr.Row():
            details = gr.JSON(label="Result")
            files = gr.File(label="Masks (JSON, PNG; DICOM SEG of the plausible masks for DICOM input)",
                            file_count="multiple")
        run = button.click(run_segmentation, inputs=[upload, phrases, method, model_picker, keep_patient],
                           outputs=[annotated, details, files, ood], api_name="segment")
        run.success(plausibility_note, inputs=details, outputs=note, api_visibility="private", queue=False,
                    show_progress="hidden")
        clear_on([run.failure, upload.change, model_picker.change], [annotated, details, files, ood, note])
        gr.on([tab.select, model_picker.change], methods_for_model, inputs=[model_picker, method], outputs=method,
              api_visibility="private", show_progress="hidden")
