"""Report tab: a draft report for one image (sentence retrieval or the trained decoder), editable,
with each sentence's similarity to the image and the findings it states, and the out-of-distribution
verdict of the image (a warning when it does not look like the model's training images)."""
from __future__ import annotations

from typing import Any

import gradio as gr

from medclip_core.errors import TaskInputError
from medclip_core.tasks.grounding import ground
from medclip_core.tasks.report import METHODS, draft_report
from pages.common import image_input_column, load_upload, ood_notice, ui_errors

TABLE_HEADERS = ["section", "sentence", "similarity", "states"]
COLUMN_WIDTHS = ["15%", "44%", "15%", "26%"]  # at 1280 px no header or section name breaks; sentences wrap


def _states(labels: dict[str, list[str]]) -> str:
    parts = [", ".join(labels["positive"]), ", ".join(f"{x}?" for x in labels["uncertain"]),
             ", ".join(f"no {x}" for x in labels["negative"])]
    return "; ".join(p for p in parts if p)


@ui_errors
def run_report(path: str | None, method: str, k: float, model: str,
               progress: gr.Progress = gr.Progress()) -> tuple[Any, str, str, Any, dict, str]:
    """Image file -> (preview, decoder prompts, editable draft, sentence table, JSON result, OOD notice). A
    model's first use embeds the sentence corpus (shipped for the embedded models): the progress bar says so."""
    image = load_upload(path)
    progress(0, desc="Loading the model and its report corpus")

    def embedding(done: int, total: int) -> None:
        progress(done / max(total, 1), desc=f"First use of this model: embedding {total:,} report sentences")

    draft = draft_report(image, method, model, k=int(k), progress=embedding)
    caution = ""
    if draft.prompted is not None:
        prompted = ", ".join(f"{name} ({p:.2f})" for name, p in draft.prompted.items()) or "none"
        caution = f"Findings the decoder was prompted to report: {prompted}"
    rows = [[s.section, s.text, round(s.similarity, 4), _states(s.labels)] for s in draft.sentences]
    summary = draft.to_dict()
    return (image.to_pil(), caution, draft.text.replace(" IMPRESSION:", "\n\nIMPRESSION:"),
            gr.update(value=rows, headers=TABLE_HEADERS), summary, ood_notice(summary["ood"]))


@ui_errors
def sentence_heatmap(path: str | None, sentence: str, model: str) -> tuple[Any, str]:
    """Where the model finds one sentence of the draft (patch-similarity heatmap of the Grounding tab)."""
    if not sentence or not sentence.strip():
        raise TaskInputError("Pick a sentence of the draft.")
    result = ground(load_upload(path), [sentence.strip()], model=model, method="similarity")
    return result.overlay(0, 0.5), f"Heatmap of: *{sentence.strip()}*"


def _selected_sentence_heatmap(path: str | None, model: str, event: gr.SelectData) -> tuple[Any, str]:
    row = event.row_value or []
    return sentence_heatmap(path, str(row[1]) if len(row) > 1 else "", model)


def build(model_picker: gr.Dropdown) -> None:
    with gr.Tab("Report"):
        gr.Markdown("A draft report for a chest radiograph: **retrieval** picks sentences of real Open-i reports "
                    "closest to the image (CXR-RePaiR style, no near-duplicates, no contradictions); "
                    "**generative** is a small decoder trained over the model's image features (embedded model "
                    "only). Edit the draft freely: it is a starting point, not a diagnosis.")
        with gr.Row():
            upload, preview = image_input_column("report-upload", preview=True)
            with gr.Column():
                method = gr.Radio(list(METHODS), value=METHODS[0], label="Method")
                k = gr.Slider(1, 8, value=4, step=1, label="Findings sentences (retrieval)")
                button = gr.Button("Draft report", variant="primary")
                ood = gr.Markdown(elem_id="report-ood")
                caution = gr.Markdown(elem_id="report-caution")
                draft = gr.Textbox(label="Draft report (editable)", lines=8, interactive=True, elem_id="report-draft")
        with gr.Row():
            with gr.Column(scale=3):
                table = gr.Dataframe(headers=TABLE_HEADERS, interactive=False, wrap=True, column_widths=COLUMN_WIDTHS,
                                     elem_id="report-sentences",
                                     label="Sentences: similarity to the image and what each states "
                                           "(select one to see its heatmap)")
            with gr.Column(scale=2):
                heatmap_caption = gr.Markdown()
                heatmap = gr.Image(label="Heatmap of the selected sentence", type="pil", interactive=False,
                                   height=300)
        details = gr.JSON(label="Result")
        button.click(run_report, inputs=[upload, method, k, model_picker],
                     outputs=[preview, caution, draft, table, details, ood], api_name="report")
        table.select(_selected_sentence_heatmap, inputs=[upload, model_picker], outputs=[heatmap, heatmap_caption],
                     api_visibility="private")
