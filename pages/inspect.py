"""Inspect tab: upload PNG/JPEG/TIFF/DICOM, see the windowed image, change the window, read safe metadata."""
from __future__ import annotations

from typing import Any

import gradio as gr
import numpy as np

from medclip_core.io import MedicalImage, load_image
from pages.common import image_examples, image_upload, ui_errors

NOT_RECORDED = "not recorded"
# Fields a reader of a radiograph looks for: said to be absent rather than left out or shown as 0.
EXPECTED_DICOM_FIELDS = ("modality", "body_part_examined", "view_position", "pixel_spacing_mm")


def _window_sliders(image: MedicalImage) -> tuple[dict[str, Any], dict[str, Any]]:
    values = image.modality_values
    if values is None:
        return gr.update(interactive=False), gr.update(interactive=False)
    low, high = float(np.min(values)), float(np.max(values))
    center = image.metadata.get("window_center", (low + high) / 2)
    width = image.metadata.get("window_width", max(high - low, 1.0))
    span = max(high - low, 1.0)
    return (gr.update(minimum=low - span, maximum=high + span, value=center, interactive=True),
            gr.update(minimum=1.0, maximum=4 * span, value=width, interactive=True))


def displayed_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """The metadata as shown: an absent, empty or all-zero expected field (a pixel spacing of [0, 0]
    is what some writers put when they do not know it) reads "not recorded", never as a measurement."""
    shown = dict(metadata)
    fields = EXPECTED_DICOM_FIELDS if metadata.get("format") == "DICOM" else ("pixel_spacing_mm",)
    for key in fields:
        value = shown.get(key)
        if value in (None, "", []) or (isinstance(value, (list, tuple)) and not any(value)) or value == 0:
            shown[key] = NOT_RECORDED
    return shown


@ui_errors
def inspect_image(path: str | None, frame: float | None) -> tuple[Any, dict, Any, Any, MedicalImage]:
    """Load an uploaded file; returns preview, metadata, the two window sliders and the image state.
    A cleared upload clears the outputs (no error: clearing is what the user asked for)."""
    if not path:
        idle = gr.update(interactive=False)
        return None, None, idle, idle, None
    image = load_image(path, frame=None if frame is None or frame < 0 else int(frame))
    center, width = _window_sliders(image)
    return image.to_pil(), displayed_metadata(image.metadata), center, width, image


@ui_errors
def rewindow(image: MedicalImage | None, center: float, width: float) -> Any:
    if image is None or image.modality_values is None:
        return gr.skip()
    return image.with_window(center, width).to_pil()


def build() -> None:
    with gr.Tab("Inspect image"):
        gr.Markdown("Upload a PNG, JPEG, TIFF or DICOM file. DICOM images are shown with their window; "
                    "only non-identifying metadata is displayed.")
        state = gr.State(None)
        with gr.Row():
            with gr.Column():
                upload = image_upload("inspect-upload", label="Image file")
                frame = gr.Number(value=-1, precision=0, label="Frame (-1: middle frame)")
                center = gr.Slider(label="Window center", interactive=False)
                width = gr.Slider(label="Window width", interactive=False)
                image_examples(upload)
            with gr.Column():
                preview = gr.Image(label="Windowed image", type="pil", interactive=False)
                metadata = gr.JSON(label="Metadata (non-identifying)")
        outputs = [preview, metadata, center, width, state]
        upload.change(inspect_image, inputs=[upload, frame], outputs=outputs, api_name="inspect")
        frame.submit(inspect_image, inputs=[upload, frame], outputs=outputs, api_visibility="private")
        for slider in (center, width):
            slider.release(rewindow, inputs=[state, center, width], outputs=preview, api_visibility="private")
