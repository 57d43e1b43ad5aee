"""Widgets and wiring shared by every tab: the model picker, its banner, error display, and the one
concurrency limit every model call shares."""
from __future__ import annotations

import functools
import html
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import gradio as gr

from medclip_core.errors import ImageLoadError, MedclipError
from medclip_core.io import MedicalImage, load_image
from medclip_core.models import default_model_name, describe_models, get_spec, load_model
from medclip_core.models.base import ImageLike
from medclip_core.tasks.embedding import thumbnail_data_uri
from medclip_core.tasks.grounding import method_support

log = logging.getLogger("medclip_explorer")

SYNTHETIC_BANNER = (
    "⚠️ **`{name}` is an embedded demo model, trained on synthetic phantom radiographs rendered from real "
    "report text. It is not for diagnosis.** {advice}\n\n{models}"
)
RESEARCH_BANNER = "Model **`{name}`**: research use only, not a medical device.\n\n{models}"
REAL_IMAGE_MODEL = "biomedclip"
USABLE_NOW = ("available", "cached")  # model_availability values that load without the network
ADD_OFFLINE = (
    "For real images add BiomedCLIP, which works offline once it is here: copy a Hugging Face cache that "
    "holds it (start the app with `HF_HOME` pointing at it), or pick `local-dir:/path/to/folder` with its "
    "files. How: `docs/models.md`, section *Adding BiomedCLIP offline*."
)
EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "assets" / "examples"
IMAGE_FILE_TYPES = [".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".dicom", ".bmp", ".gif", ".webp"]
MODEL_CALLS = "model-calls"  # the Gradio concurrency group of every event that runs a model


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


def _names(names: list[str]) -> str:
    return ", ".join(f"`{n}`" for n in names)


def usable_models_line(rows: list[dict[str, Any]]) -> str:
    """Which registry models load on this machine now, which would come from the hub, which are missing."""
    usable = [r["name"] for r in rows if r["availability"] in USABLE_NOW]
    download = [r["name"] for r in rows if r["availability"] == "downloadable"]
    missing = [r["name"] for r in rows if r["availability"] not in (*USABLE_NOW, "downloadable")]
    line = f"Usable on this machine now: {_names(usable) or 'none'}."
    if download:
        line += f" From the hub on first use: {_names(download)}."
    if missing:
        line += f" Not here (no local copy, no hub): {_names(missing)}."
    return line


def banner_for(name: str | None) -> str:
    """The warning under the model picker: the embedded models (trained on synthetic images) get the strong
    one, with how to get a model for real images; every banner says which models can be used here now."""
    name = name or default_model_name()
    try:
        synthetic = "synthetic" in get_spec(name).modality
    except MedclipError:  # a local folder or hub id typed in
        synthetic = False
    rows = describe_models()
    real_model_here = any(r["name"] == REAL_IMAGE_MODEL and r["availability"] in (*USABLE_NOW, "downloadable")
                          for r in rows)
    advice = f"For real images pick `{REAL_IMAGE_MODEL}`." if real_model_here else ADD_OFFLINE
    return (SYNTHETIC_BANNER if synthetic else RESEARCH_BANNER).format(
        name=name, advice=advice, models=usable_models_line(rows))


def model_picker() -> tuple[gr.Dropdown, gr.Markdown]:
    """The one model dropdown of the app (custom values allowed: local-dir:PATH, hf-hub:ID, hf:ID)."""
    picker = gr.Dropdown(
        choices=model_choices(), value=default_model_name(), allow_custom_value=True, label="Model",
        info="A registry model, or local-dir:/path, hf-hub:org/name (open_clip), hf:org/name (transformers)",
    )
    banner = gr.Markdown(banner_for(default_model_name()))
    # the banner reads the picker but runs no model: no concurrency limit, so share_model_limit leaves it out
    picker.change(banner_for, inputs=picker, outputs=banner, api_visibility="private", concurrency_limit=None)
    return picker, banner


def share_model_limit(demo: gr.Blocks, picker: gr.Dropdown, limit: int) -> list[str]:
    """Put every event that reads the model picker into one Gradio concurrency group (``concurrency_id``
    :data:`MODEL_CALLS`) of at most ``limit`` running at once, across all tabs and endpoints: heavy
    heatmaps and light zero-shot calls then share the server's compute instead of each endpoint having
    its own limit. Events that run a model named elsewhere (the archive's write-back of a diagnosis)
    join by being given ``concurrency_id=MODEL_CALLS``; events given other concurrency settings (e.g.
    the archive's job followers) keep them. Returns the names of the grouped functions."""
    grouped = []
    for block_fn in demo.fns.values():
        marked = block_fn.concurrency_id == MODEL_CALLS
        own_settings = block_fn.concurrency_limit != "default" or block_fn.concurrency_id != str(id(block_fn.fn))
        reads_picker = any(c is picker for c in block_fn.inputs)
        if block_fn.fn is None or not (marked or (reads_picker and not own_settings)):
            continue
        block_fn.concurrency_id, block_fn.concurrency_limit = MODEL_CALLS, limit
        grouped.append(block_fn.name)
    return grouped


def release_sessions_on_close(demo: gr.Blocks) -> None:
    """Drop a session's stored values (its ``gr.State``: Inspect's image, Grounding's maps …) as soon as
    its browser tab closes. Gradio would keep them for an hour in case the tab reconnects, which on a
    shared Space holds every recent visitor's images; a visitor who comes back starts afresh."""
    def release(request: gr.Request) -> None:
        if request is not None and request.session_hash:
            demo.state_holder.delete_state(request.session_hash)

    demo.unload(release)


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


THUMBNAIL_SIDE = 320  # px: a grid cell of a 1280-px page, four to a row
THUMBNAIL_GRID_CSS = """
.thumbnail-grid { display: grid; grid-template-columns: repeat(4, minmax(0, 1fr)); gap: 8px; }
.thumbnail-grid figure { margin: 0; display: flex; flex-direction: column; align-items: center; }
.thumbnail-grid img { width: 100%; aspect-ratio: 1; object-fit: contain; background: #000; border-radius: 4px; }
.thumbnail-grid figcaption { font-size: 0.85em; text-align: center; overflow-wrap: anywhere; }
"""


def thumbnail_grid(elem_id: str) -> gr.HTML:
    """An output grid of result thumbnails with captions; its value comes from :func:`thumbnail_grid_html`."""
    return gr.HTML("", css_template=THUMBNAIL_GRID_CSS, elem_id=elem_id, js_on_load=None)


def thumbnail_grid_html(items: Sequence[tuple[ImageLike, str]]) -> str:
    """(image, caption) pairs as one HTML grid with each thumbnail inline as a JPEG data URI (at most
    :data:`THUMBNAIL_SIDE` px): the answer carries its images, so neither a browser nor an API client
    makes one more request per thumbnail, and nothing is written to the server's file cache."""
    figures = []
    for image, caption in items:
        text = html.escape(caption)
        figures.append(f'<figure><img src="{thumbnail_data_uri(image, THUMBNAIL_SIDE, "JPEG")}" alt="{text}" '
                       f'title="{text}"><figcaption>{text}</figcaption></figure>')
    return f'<div class="thumbnail-grid">{"".join(figures)}</div>' if figures else ""


def image_input_column(elem_id: str, preview: bool = False) -> tuple[gr.File, gr.Image | None]:
    """The left column of an image tab: the upload, a preview of the decoded image if asked (shown as soon as
    a file is chosen), the examples."""
    with gr.Column():
        upload = image_upload(elem_id)
        shown = gr.Image(label="Image", type="pil", interactive=False, height=300,
                         elem_id=f"{elem_id}-preview") if preview else None
        image_examples(upload)
    if shown is not None:
        upload.change(show_preview, inputs=upload, outputs=shown, api_visibility="private", show_progress="hidden")
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


def _empty(count: int) -> Callable[[], Any]:
    def empty() -> Any:
        return None if count == 1 else (None,) * count
    return empty


def clear_on(triggers: Sequence[Callable[..., Any]], outputs: Sequence[gr.components.Component]) -> None:
    """Empty ``outputs`` whenever one of ``triggers`` fires (listeners such as ``upload.change``,
    ``picker.change`` or a call's ``.failure``), so an answer never stays on screen beside an input it
    was not computed from, nor under the error toast of the call that replaced it."""
    for trigger in triggers:
        trigger(_empty(len(outputs)), outputs=list(outputs), api_visibility="private", queue=False,
                show_progress="hidden")


def show_preview(path: str | None) -> Any:
    """The decoded image of an upload as soon as it is chosen (None when cleared or unreadable: the
    tab's own call then gives the readable error)."""
    if not path:
        return None
    try:
        return load_image(path).to_pil()
    except MedclipError:
        return None


def unsupported_methods(model_name: str) -> dict[str, str]:
    """Heatmap method -> why ``model_name`` cannot serve it (empty when it serves all, or cannot be loaded:
    the call itself then says why)."""
    try:
        support = method_support(load_model(model_name))
    except MedclipError:
        return {}
    return {method: reason for method, reason in support.items() if reason}
