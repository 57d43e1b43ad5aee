"""Diagnose tab: zero-shot findings for one image, optionally a second model and few-shot adaptation."""
from __future__ import annotations

from typing import Any

import gradio as gr

from medclip_core.data.findings import DEFAULT_PRESET, LABEL_PRESETS
from medclip_core.errors import MedclipError
from medclip_core.tasks.diagnose import diagnose, probability_figure
from medclip_core.tasks.zero_shot import parse_labels, resolve_labels
from pages.common import clear_on, image_input_column, load_upload, model_choices, ood_notice, ui_errors

NO_COMPARISON = "(none)"
MODEL_NEGATIVES = "the model's own"
NEGATIVE_CHOICES = [(MODEL_NEGATIVES, MODEL_NEGATIVES), ('"No {finding}." (CheXzero)', "negated"),
                    ("a normal study's sentences", "normal")]


@ui_errors
def run_diagnosis(path: str | None, preset: str, custom_labels: str, mode: str, model: str, compare_with: str,
                  shots: float, negatives: str = MODEL_NEGATIVES) -> tuple[Any, Any, dict, str]:
    """Image file + labels -> (bar chart, table, full JSON result, out-of-distribution notice). The preview
    is not sent again: the upload already showed it."""
    image = load_upload(path)
    result = diagnose(image, resolve_labels(custom_labels, preset), mode=mode, model=model,
                      compare_with=None if compare_with in (None, "", NO_COMPARISON) else compare_with,
                      shots=int(shots or 0), negatives=None if negatives in (None, "", MODEL_NEGATIVES) else negatives)
    header, rows = result.table()
    summary = result.to_dict()
    return probability_figure(result), gr.update(value=rows, headers=header), summary, ood_notice(
        summary["ood"])


def label_set_in_effect(custom_labels: str) -> Any:
    """Say on the preset when typed labels replace it, so the field never shows a set that is not used."""
    if not (custom_labels or "").strip():
        return gr.update(label="Label set", info=None)
    try:
        typed = f"Your {len(parse_labels(custom_labels))} typed label(s)"
    except MedclipError:  # too many or too long: Diagnose will say so
        typed = "Your typed labels"
    return gr.update(label="Label set (not in effect)", info=f"{typed} below replace it; clear them to use a preset.")


def build(model_picker: gr.Dropdown) -> None:
    with gr.Tab("Diagnose"):
        gr.Markdown("Zero-shot findings: each label is written as report sentences (a prompt ensemble) and "
                    "scored per label against negative sentences (CheXzero style), or as a softmax across labels.")
        with gr.Row():
            upload, _ = image_input_column("diagnose-upload", preview=True)
            with gr.Column():
                preset = gr.Dropdown(list(LABEL_PRESETS), value=DEFAULT_PRESET, label="Label set")
                custom = gr.Textbox(lines=4, label="Or your own labels, one per line",
                                    placeholder="pleural effusion\ncardiomegaly\npneumothorax")
                mode = gr.Radio(["pairwise", "softmax"], value="pairwise", label="Scoring",
                                info="pairwise: each finding vs negative sentences (multi-label); softmax: across labels")
                negatives = gr.Dropdown(NEGATIVE_CHOICES, value=MODEL_NEGATIVES, label="Negative sentences (pairwise)",
                                        info="Which works better depends on the text encoder; the embedded models "
                                             "use a normal study's sentences")
                compare = gr.Dropdown([NO_COMPARISON, *(value for _, value in model_choices())], value=NO_COMPARISON,
                                      allow_custom_value=True, label="Compare with a second model")
                shots = gr.Slider(0, 32, value=0, step=1, label="Few-shot adaptation: phantom examples per label",
                                  info="0 = zero-shot only; > 0 adds Tip-Adapter and a linear probe (phantom labels)")
                button = gr.Button("Diagnose", variant="primary")
        ood = gr.Markdown(elem_id="diagnose-ood")
        plot = gr.Plot(label="Probabilities", elem_id="diagnose-chart")
        table = gr.Dataframe(label="Table", interactive=False)
        details = gr.JSON(label="Result (with the prompts used)")
        run = button.click(run_diagnosis, inputs=[upload, preset, custom, mode, model_picker, compare, shots, negatives],
                           outputs=[plot, table, details, ood], api_name="zero_shot")
        clear_on([run.failure, upload.change, model_picker.change], [plot, table, details, ood])
        custom.change(label_set_in_effect, inputs=custom, outputs=preset, api_visibility="private", queue=False,
                      show_progress="hidden")
