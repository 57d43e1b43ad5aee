"""Evaluate tab: any model on the user's own labelled set, side by side, with confidence intervals.

Upload a zip (a CSV in one of the formats of ``docs/evaluation.md`` with its images) or choose a
set on the server (under ``MEDCLIP_GALLERY_ROOT``), see what was read, pick models and tasks, start.
The evaluation is a background run of the run manager (:mod:`medclip_core.train.evaluations`): it
survives an app restart; this tab shows its progress, then its tables and figures and the JSON,
CSV and HTML downloads. Public servers need the admin token for uploads and runs, as training does.
"""
from __future__ import annotations

import datetime
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import gradio as gr

from medclip_core import hosting
from medclip_core.eval.engine import TASKS
from medclip_core.eval.html_report import auc_figure, classification_rows, reliability_figure, roc_figure
from medclip_core.models import default_model_name
from medclip_core.train.evaluations import (
    EVALUATION_TASK, evaluation_files, evaluation_progress, evaluation_request, import_evaluation_upload,
    read_evaluation_data, resolve_evaluation_data, server_sets,
)
from medclip_core.train.runs import RunManager
from pages.common import model_choices, ui_errors

CLASSIFICATION_HEADERS = ["model", "finding", "AUC", "95 % CI", "positives", "negatives", "status", "threshold",
                          "sensitivity", "specificity", "ECE"]
PROBLEM_HEADERS = ["line", "problem", "message"]


def _what_was_read(name: str, summary: dict[str, Any]) -> str:
    findings = ", ".join(f"{f} ({c['positives']}+/{c['negatives']}−)" for f, c in summary["findings"].items())
    problems = ", ".join(f"{n} × {kind.replace('_', ' ')}" for kind, n in summary["problem_counts"].items())
    return (f"**{name}**: {summary['rows']} rows, {summary['n_images']} images; tasks: "
            f"{', '.join(summary['tasks']) or 'none'}.\n\nFindings matched: {findings or 'none'}.\n\n"
            f"Columns or labels that match no finding: {', '.join(summary['unmatched']) or 'none'}.\n\n"
            f"Bad rows: {problems or 'none'}.")


def _downloadable(name: str, files: dict[str, Path]) -> list[str]:
    """Copies of a run's result files in the temporary folder, where Gradio serves downloads from."""
    folder = Path(tempfile.gettempdir()) / "medclip-evaluations" / name
    folder.mkdir(parents=True, exist_ok=True)
    copies = []
    for path in files.values():
        copy = folder / path.name
        if not copy.is_file():
            shutil.copyfile(path, copy)
        copies.append(str(copy))
    return copies


def _evaluation_runs(manager: RunManager) -> list[str]:
    return [r.name for r in reversed(manager.list_runs()) if r.request.get("task") == EVALUATION_TASK]


def build(model_picker: gr.Dropdown, manager: RunManager | None = None) -> None:
    """The Evaluate tab; ``manager`` defaults to one on ``MEDCLIP_RUNS_DIR``."""
    manager = manager or RunManager()
    manager.start_monitor()

    @ui_errors
    def read_upload(files: list[str] | None, token: str | None = None) -> tuple[str, list[list[Any]], Any]:
        """Unpack an uploaded zip and say what was read; the set joins the data choices as ``upload:ID``."""
        hosting.check_admin_token(token, "Evaluations of uploaded data")
        name, labelled = import_evaluation_upload(files or [], manager.root)
        rows = [[p.line, p.kind, p.message] for p in labelled.problems]
        return _what_was_read(name, labelled.to_dict()), rows, gr.update(choices=server_sets() + [name], value=name)

    @ui_errors
    def describe(name: str | None, uncertain: str) -> tuple[str, list[list[Any]]]:
        """What a chosen data set holds (counts, findings matched, bad rows)."""
        if not name:
            return "", []
        labelled = read_evaluation_data(name, manager.root, uncertain)
        return _what_was_read(name, labelled.to_dict()), [[p.line, p.kind, p.message] for p in labelled.problems]

    @ui_errors
    def start(name: str, models: list[str] | str | None, tasks: list[str] | None, bootstrap: float,
              threshold: float | None, uncertain: str, token: str | None = None) -> tuple[str, Any]:
        """Queue an evaluation run; returns a message and the run selector set to it."""
        hosting.check_admin_token(token, "Evaluations of uploaded data")
        models = [models] if isinstance(models, str) else list(models or [])
        run_name = datetime.datetime.now().strftime("eval-%Y%m%d-%H%M%S-%f")
        request = evaluation_request(run_name, resolve_evaluation_data(name, manager.root), models or
                                     [default_model_name()], tasks or None, int(bootstrap or 0),
                                     float(threshold) if threshold else None, uncertain)
        record = manager.submit(request)
        return (f"Evaluation **{record.name}** is {record.state}.",
                gr.update(choices=_evaluation_runs(manager), value=record.name))

    @ui_errors
    def status(name: str | None) -> tuple[dict, str, list[list[Any]], Any, Any, Any, str, list[str] | None]:
        """Progress of evaluation ``name`` (default: the newest), then its tables, figures and files."""
        runs = _evaluation_runs(manager)
        name = name or (runs[0] if runs else None)
        empty = ({}, "No evaluation yet.", [], None, None, None, "", None)
        if not name:
            return empty
        record = manager.refresh_one(name)
        progress = evaluation_progress(record)
        left = f", about {progress['seconds_left']:.0f} s left" if progress["seconds_left"] is not None else ""
        text = f"**{name}**: {record.state}, {progress['fraction']:.0%} {progress['message']}{left}"
        if record.error:
            text += f"\n\n```\n{record.error}\n```"
        files = evaluation_files(record)
        if "json" not in files:
            return progress, text, [], None, None, None, "", None
        payload = json.loads(files["json"].read_text())
        others = [f"{model} {direction} recall@{k}: {v['value']:.3f}" for model, r in payload["retrieval"].items()
                  for direction in ("image_to_text", "text_to_image") for k, v in
                  ((k.split("@")[1], v) for k, v in r[direction].items())]
        others += [f"{model} {method} pointing: {m['pointing']['mean']}" for model, g in payload["grounding"].items()
                   for method, m in g["methods"].items()]
        figures = ((auc_figure(payload), roc_figure(payload), reliability_figure(payload))
                   if payload["classification"] else (None, None, None))
        return (progress, text, classification_rows(payload), *figures, "\n\n".join(others),
                _downloadable(name, files))

    def tick(name: str | None, shown: list[str]) -> tuple[Any, ...]:
        """The timer's refresh: the status again, unless the run shown has ended and is on screen already
        (so its figures are not redrawn every two seconds)."""
        runs = _evaluation_runs(manager)
        name = name or (runs[0] if runs else None)
        state = manager.get(name).state if name in runs else None
        if state in ("finished", "failed", "cancelled") and shown == [name, state]:
            return (*(gr.skip(),) * 8, shown)
        return (*status(name), [name, state])

    enabled = hosting.admin_actions_enabled()
    needs_token = hosting.admin_token_needed()
    with gr.Tab("Evaluate"):
        gr.Markdown("Measure models on **your own labelled data**: zero-shot AUC per finding with 95 % bootstrap "
                    "intervals, paired differences between models, ROC curves, calibration, retrieval recall, "
                    "pointing game and Dice. Formats: a CheXpert-style CSV, `image,labels`, `image,report`, "
                    "`image,phrase,x,y,w,h` boxes or `image,phrase,mask` (see docs/evaluation.md), zipped with "
                    "the images.")
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="Labelled set: a zip of a CSV with its images", file_types=[".zip"],
                                 file_count="multiple", type="filepath", elem_id="evaluate-upload")
                read_button = gr.Button("Read upload", interactive=not needs_token)
                data = gr.Dropdown(server_sets(), label="Data set", allow_custom_value=False,
                                   info="an upload (upload:ID) or a CSV under the server's MEDCLIP_GALLERY_ROOT")
                uncertain = gr.Radio(["ignore", "positive", "negative"], value="ignore",
                                     label="Uncertain labels (-1)")
            with gr.Column():
                summary = gr.Markdown(elem_id="evaluate-summary")
                problems = gr.Dataframe(headers=PROBLEM_HEADERS, label="Bad rows", interactive=False, wrap=True)
            with gr.Column():
                models = gr.Dropdown(model_choices(), value=[default_model_name()], multiselect=True, label="Models")
                tasks = gr.CheckboxGroup(list(TASKS), label="Tasks (none ticked: all the set allows)")
                bootstrap = gr.Number(1000, precision=0, minimum=0, maximum=10_000, label="Bootstrap resamples")
                threshold = gr.Number(0, minimum=0, maximum=1,
                                      label="Threshold for sensitivity/specificity (0: Youden's per finding)")
        token = gr.Textbox(label="Admin token", type="password", visible=needs_token and enabled)
        start_button = gr.Button("Start evaluation", variant="primary", interactive=not needs_token)
        message = gr.Markdown()
        selected = gr.Dropdown(_evaluation_runs(manager), label="Evaluation", allow_custom_value=True)
        progress_text = gr.Markdown(elem_id="evaluate-progress")
        progress_json = gr.JSON(visible=False)
        table = gr.Dataframe(headers=CLASSIFICATION_HEADERS, label="Classification", interactive=False, wrap=True,
                             elem_id="evaluate-table")
        auc_plot = gr.Plot(label="AUC per finding")
        roc_plot = gr.Plot(label="ROC curves")
        reliability_plot = gr.Plot(label="Reliability")
        other = gr.Markdown()
        downloads = gr.File(label="Downloads (JSON, CSV, HTML report)", file_count="multiple", interactive=False,
                            elem_id="evaluate-downloads")
        timer = gr.Timer(2.0)
        shown = gr.State([])

        token.change(lambda t: (gr.update(interactive=bool(t)),) * 2, inputs=token, outputs=[read_button, start_button],
                     api_visibility="private")
        read_button.click(read_upload, inputs=[upload, token], outputs=[summary, problems, data],
                          api_name="evaluate_read")
        data.input(describe, inputs=[data, uncertain], outputs=[summary, problems], api_visibility="private")
        start_button.click(start, inputs=[data, models, tasks, bootstrap, threshold, uncertain, token],
                           outputs=[message, selected], api_name="evaluate_start")
        outputs = [progress_json, progress_text, table, auc_plot, roc_plot, reliability_plot, other, downloads]
        selected.change(status, inputs=selected, outputs=outputs, api_name="evaluate_status")
        timer.tick(tick, inputs=[selected, shown], outputs=[*outputs, shown], api_visibility="private",
                   show_progress="hidden")
