"""Widgets and wiring shared by every tab: the model picker, its banner, and error display."""
from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any, Callable

import gradio as gr

from medclip_core.errors import ImageLoadError, MedclipError
from medclip_core.io import MedicalImage, load_image
from medclip_core.models import default_model_name, describe_models, get_spec

log = logging.getLogger("medclip_explorer")

SYNTHETIC_BANNER = (
    "⚠️ **`{name}` is an embedded demo model, trained on synthetic phantom radiographs rendered from real "
    "report text. It is not for diagnosis.** Pick a hub model (e.g. BiomedCLIP) for real images."
)
RESEARCH_BANNER = "Model **`{name}`**: research use only, not a medical device."
EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "assets" / "examples"
IMAGE_FILE_TYPES = [".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".dicom", ".bmp", ".gif", ".webp"]


def ui_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Show core errors as a readable message in the UI instead of a stack trace or a crash."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except MedclipError as exc:
            raise gr.Error(str(exc), print_exception=False) from exc
        except Exception as exc:  # keep the app alive and tell the user what happened
            log.exception("unexpected error in %s", fn.__name__)
            raise gr.Error(f"Unexpected error ({type(exc).__name__}): {exc}", print_exception=False) from exc

    return wrapper


def model_choices() -> list[tuple[str, str]]:
    return [(f"{row['name']} ({row['availability']})", row["name"]) for row in describe_models()]


def banner_for(name: str | None) -> str:
    """The warning under the model picker: the embedded models (trained on synthetic images) get the strong one."""
    name = name or default_model_name()
    try:
        synthetic = "synthetic" in get_spec(name).modality
    except MedclipError:  # a local folder or hub id typed in
        synthetic = False
    return (SYNTHETIC_BANNER if synthetic else RESEARCH_BANNER).format(name=name)


def model_picker() -> tuple[gr.Dropdown, gr.Markdown]:
    """The one model dropdown of the app (custom values allowed: local-dir:PATH, hf-hub:ID, hf:ID)."""
    picker = gr.Dropdown(
        choices=model_choices(), value=default_model_name(), allow_custom_value=True, label="Model",
        info="A registry model, or local-dir:/path, hf-hub:org/name (open_clip), hf:org/name (transformers)",
    )
    banner = gr.Markdown(banner_for(default_model_name()))
    picker.change(banner_for, inputs=picker, outputs=banner, api_visibility="private")
    return picker, banner


def example_files() -> list[str]:
    """The committed example images (phantom PNGs and one DICOM), for one-click examples."""
    files = sorted(str(p) for p in (EXAMPLES_DIR / "phantom").glob("[0-9]*.png"))
    dicom = EXAMPLES_DIR / "phantom_effusion.dcm"
    return files + ([str(dicom)] if dicom.exists() else [])


def image_upload(elem_id: str | None = None, label: str = "Image (PNG, JPEG, TIFF, DICOM)") -> gr.File:
    """The image upload of a tab: a file (DICOM included, which gr.Image cannot take), passed on as a path."""
    return gr.File(label=label, file_types=IMAGE_FILE_TYPES, type="filepath", elem_id=elem_id)


def image_examples(upload: gr.File) -> gr.Examples:
    return gr.Examples(examples=[[path] for path in example_files()], inputs=[upload], label="Examples")


def image_input_column(elem_id: str, preview: bool = False) -> tuple[gr.File, gr.Image | None]:
    """The left column of an image tab: the upload, a preview of the decoded image if asked, the examples."""
    with gr.Column():
        upload = image_upload(elem_id)
        shown = gr.Image(label="Image", type="pil", interactive=False, height=300) if preview else None
        image_examples(upload)
    return upload, shown


def ood_notice(verdict: dict[str, Any] | None) -> str:
    """The out-of-distribution verdict of a result's ``to_dict()["ood"]`` as the Markdown every image tab
    shows: a plain warning when the image is unlike the model's training images, one short line when the
    model has no reference, a quiet line otherwise, nothing without a verdict."""
    if not verdict:
        return ""
    if verdict["in_distribution"] is None:
        return f"Out-of-distribution check: {verdict['message']}."
    distance = f"distance {verdict['score']:.2f}, threshold {verdict['threshold']:.2f}"
    if verdict["in_distribution"]:
        return f"<small>✓ {verdict['message']} ({distance})</small>"
    return f"⚠️ **{verdict['message']}** ({distance})"


def load_upload(path: str | None) -> MedicalImage:
    """The uploaded image of a tab, decoded; no upload is a readable error, not a crash."""
    if not path:
        raise ImageLoadError("Please upload an image (PNG, JPEG, TIFF or DICOM) or pick an example.")
    return load_image(path)
