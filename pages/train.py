"""Training tab: start fine-tuning runs in the background, follow their curves and logs, cancel them.

Runs are separate processes owned by the run manager (``medclip_core.train.runs``); this tab only
starts, lists and cancels them, so closing the browser or restarting the app does not stop a run.
Finished runs join every tab's model picker under their run name. When ``MEDCLIP_ADMIN_TOKEN``
is set, anyone can look but starting and cancelling runs and uploading datasets need the token; on a
public server (:mod:`medclip_core.hosting`) without a token they are off.
"""
from __future__ import annotations

import datetime
import re
from typing import Any

import gradio as gr

from medclip_core import hosting
from medclip_core.models.trained_runs import finished_runs
from medclip_core.train.datasets import register_upload, remove_expired_uploads, resolve_dataset
from medclip_core.train.runs import (
    ACTIVE_STATES,
    DATASETS_FOLDER,
    METHOD_LABELS,
    RunManager,
    RunRecord,
    RunRequest,
    base_model_choices,
    log_tail,
    metrics_figure,
    read_metrics,
)
from medclip_core.train.tasks import run_manager_tasks
from pages.common import model_choices, ui_errors

TABLE_HEADERS = ["run", "state", "task", "method", "base model", "data", "device", "started", "minutes", "step",
                 "loss", "problem"]
TOKEN_NOTE = ("🔒 Starting and cancelling runs and validating dataset uploads need the admin token on this "
              "server (`MEDCLIP_ADMIN_TOKEN` is set): the buttons stay disabled until you enter it. "
              "Anyone can watch the runs.")
PUBLIC_OFF_NOTE = ("🔒 This is a public server: starting and cancelling runs and dataset uploads are off "
                   "(its host has not set `MEDCLIP_ADMIN_TOKEN`). Anyone can watch the runs.")
DATASETS = ["phantom:64", "phantom:512", "phantom"]


RUN_MESSAGE = re.compile(r"Run \*\*(.+?)\*\* is ")


def run_message(record: RunRecord) -> str:
    """The line above the runs table about the run just started or cancelled (``RUN_MESSAGE`` reads it back)."""
    return f"Run **{record.name}** is {record.state}."


def _when(timestamp: float | None) -> str:
    return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M") if timestamp else ""


def _row(record: RunRecord) -> list[Any]:
    request, metrics = record.request, record.last_metrics
    end = record.ended or (datetime.datetime.now().timestamp() if record.started else None)
    minutes = round((end - record.started) / 60, 1) if record.started and end else ""
    loss = metrics.get("loss")
    return [record.name, record.state, request.get("task"), request.get("method"), request.get("base_model"),
            request.get("data") if not str(request.get("data", "")).startswith("/") else "upload",
            record.device, _when(record.started), minutes, metrics.get("step", ""),
            round(loss, 4) if isinstance(loss, float) else "", record.error.splitlines()[0] if record.error else ""]


def build(model_picker: gr.Dropdown, manager: RunManager | None = None) -> None:
    """The Training tab; ``manager`` defaults to one on ``MEDCLIP_RUNS_DIR`` (reconciled on start)."""
    manager = manager or RunManager()
    manager.start_monitor()
    datasets_root = manager.root / DATASETS_FOLDER

    def table() -> list[list[Any]]:
        return [_row(r) for r in reversed(manager.refresh())]

    @ui_errors
    def start_run(name: str, base_model: str, dataset: str, task: str, method: str, epochs: float, batch_size: float,
                  lr: float, seed: float, max_steps: float, processes: float, token: str) -> tuple[str, dict, Any]:
        """Queue a run (it starts when its device is free); returns a message, the run, the run selector."""
        hosting.check_admin_token(token)
        name = (name or "").strip() or datetime.datetime.now().strftime("run-%Y%m%d-%H%M%S")
        record = manager.submit(RunRequest(
            name=name, base_model=base_model, data=resolve_dataset(dataset, datasets_root), task=task, method=method,
            epochs=float(epochs), batch_size=int(batch_size), lr=float(lr), seed=int(seed),
            max_steps=int(max_steps) if max_steps and max_steps > 0 else None, nproc=int(processes or 1)))
        choices = gr.update(choices=[r.name for r in manager.list_runs()], value=record.name)
        return run_message(record), record.to_dict(), choices

    @ui_errors
    def run_status(name: str | None) -> tuple[list[list[Any]], Any, str, dict]:
        """The runs table, and for run ``name`` (default: the newest) its curves, log tail and metrics."""
        rows = table()
        name = name or (rows[0][0] if rows else None)
        if not name:
            return rows, metrics_figure([], "no runs yet"), "", {}
        record = manager.get(name)
        metrics = read_metrics(record.run_dir)
        details = {"name": record.name, "state": record.state, "final_metrics": record.last_metrics,
                   "request": record.request, "checkpoint": str(record.checkpoint_path), "error": record.error}
        return rows, metrics_figure(metrics, f"{record.name} ({record.state})"), log_tail(record.log_path), details

    def follow(name: str | None, shown: str | None) -> tuple[Any, ...]:
        """What the timer refreshes: the run's status, and the message above it when the run it names has
        changed state since (so it never says "running" for a run that has finished)."""
        status = run_status(name)
        named = RUN_MESSAGE.match(shown or "")
        if not named:
            return *status, gr.skip()
        message = run_message(manager.get(named.group(1)))
        return *status, (message if message != shown else gr.skip())

    @ui_errors
    def cancel_run(name: str | None, token: str) -> tuple[str, dict]:
        hosting.check_admin_token(token)
        if not name:
            raise gr.Error("Choose a run to cancel.", print_exception=False)
        record = manager.cancel(name, wait_s=5)
        return run_message(record), record.to_dict()

    @ui_errors
    def validate(files: list[str] | None, token: str | None = None) -> tuple[str, list[list[Any]], Any]:
        """Import an uploaded zip (or CSV + images) and report what is wrong with it; an unusable upload
        is deleted. ``token`` defaults to None so that API callers of a server without a token may omit it."""
        hosting.check_admin_token(token)
        remove_expired_uploads(datasets_root, [r.request.get("data", "") for r in manager.list_runs()
                                               if r.state in ACTIVE_STATES])
        dataset, report = register_upload(files or [], datasets_root)
        rows = [[p.line, p.kind, p.message] for p in report.problems]
        if not report.usable:
            return f"{report.summary()} The upload was deleted: fix it and upload it again.", rows, gr.skip()
        choice = gr.update(choices=DATASETS + [dataset], value=dataset)
        return f"**{dataset}**: {report.summary()}", rows, choice

    def refresh_choices(known: dict[str, list[str]]) -> tuple[Any, Any, Any, dict[str, list[str]]]:
        """Offer new runs in the run selector and newly finished ones in the model pickers (skipped when
        nothing changed, so a user's choice is never reset)."""
        now = {"finished": list(finished_runs(manager.root)), "runs": [r.name for r in manager.list_runs()]}
        models = (gr.update(choices=model_choices()), gr.update(choices=base_model_choices())) \
            if now["finished"] != known.get("finished") else (gr.skip(), gr.skip())
        runs = gr.update(choices=now["runs"]) if now["runs"] != known.get("runs") else gr.skip()
        return *models, runs, now

    enabled = hosting.admin_actions_enabled()
    needs_token = hosting.admin_token_needed()
    with gr.Tab("Training"):
        gr.Markdown("Fine-tune a model in the background. A run is its own process: it keeps going when you close "
                    "the page and is still listed after an app restart. Finished runs appear in the model picker "
                    "under their run name.")
        with gr.Row():
            with gr.Column():
                run_name = gr.Textbox(label="Run name", placeholder="blank: run-DATE-TIME")
                base_model = gr.Dropdown(base_model_choices(), value="medclip-phantom", label="Base model",
                                         info="a checkpoint to fine-tune, or an architecture to train from scratch")
                task = gr.Dropdown(run_manager_tasks(), value="contrastive", label="Task")
                method = gr.Dropdown([(label, key) for key, label in METHOD_LABELS.items()], value="full",
                                     label="Method")
            with gr.Column():
                dataset = gr.Dropdown(DATASETS, value="phantom:64", allow_custom_value=True, label="Dataset",
                                      info="phantom (3,142 reports × 3 images), phantom:N, or a validated upload")
                upload = gr.File(label="Your dataset: a zip of images with a CSV (image,report[,labels]), "
                                       "or a CSV with its image files", file_count="multiple", type="filepath",
                                 file_types=[".zip", ".csv", ".png", ".jpg", ".jpeg", ".dcm", ".tif", ".tiff"])
                validate_button = gr.Button("Validate dataset", interactive=not needs_token)
                dataset_summary = gr.Markdown()
                problems = gr.Dataframe(headers=["line", "problem", "message"], label="Dataset problems",
                                        interactive=False, wrap=True)
            with gr.Column():
                epochs = gr.Number(1, label="Epochs", minimum=0.01)
                max_steps = gr.Number(0, precision=0, label="Max steps (0: by epochs)", minimum=0)
                batch_size = gr.Number(32, precision=0, label="Batch size (global)", minimum=2)
                lr = gr.Number(1e-4, label="Learning rate", minimum=0)
                seed = gr.Number(0, precision=0, label="Seed")
                processes = gr.Number(1, precision=0, label="Processes (torchrun)", minimum=1)
        token = gr.Textbox(label="Admin token", type="password", visible=needs_token and enabled)
        if needs_token:
            gr.Markdown(TOKEN_NOTE if enabled else PUBLIC_OFF_NOTE)
        with gr.Row():
            start = gr.Button("Start run", variant="primary", interactive=not needs_token)
            cancel = gr.Button("Cancel selected run", variant="stop", interactive=not needs_token)
        message = gr.Markdown()
        run_json = gr.JSON(visible=False)
        runs = gr.Dataframe(headers=TABLE_HEADERS, label="Runs (newest first)", interactive=False, wrap=True,
                            elem_id="train-runs")
        selected = gr.Dropdown([r.name for r in manager.list_runs()], label="Run", allow_custom_value=True)
        curves = gr.Plot(label="Curves")
        with gr.Row():
            log = gr.Code(label="Log (tail)", language=None, lines=12)
            final = gr.JSON(label="Run and its last metrics")
        timer = gr.Timer(2.0)
        known = gr.State({"finished": list(finished_runs(manager.root)), "runs": [r.name for r in manager.list_runs()]})

        token.change(lambda t: (gr.update(interactive=bool(t)),) * 3, inputs=token,
                     outputs=[start, cancel, validate_button], api_visibility="private")
        start.click(start_run, inputs=[run_name, base_model, dataset, task, method, epochs, batch_size, lr, seed,
                                       max_steps, processes, token], outputs=[message, run_json, selected],
                    api_name="train_start")
        cancel.click(cancel_run, inputs=[selected, token], outputs=[message, run_json], api_name="train_cancel")
        status_outputs = [runs, curves, log, final]
        selected.change(run_status, inputs=selected, outputs=status_outputs, api_name="train_status")
        timer.tick(follow, inputs=[selected, message], outputs=[*status_outputs, message], api_visibility="private",
                   show_progress="hidden")
        timer.tick(refresh_choices, inputs=known, outputs=[model_picker, base_model, selected, known],
                   api_visibility="private", show_progress="hidden")
        validate_button.click(validate, inputs=[upload, token], outputs=[dataset_summary, problems, dataset],
                              api_name="train_validate")
