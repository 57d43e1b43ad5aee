"""Archive tab: search the host's DICOMweb archive, diagnose an archived image, store SR / SEG back,
and score a whole study or series in the background. Shown only when MEDCLIP_DICOMWEB_URL is set.

The tab only arranges widgets; everything it does goes through :mod:`medclip_core.archive`
(connection, identifiers policy, write-back confirmed by QIDO-RS, jobs that survive a restart).
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import gradio as gr

from medclip_core.archive.client import NON_IMAGE_MODALITIES, ArchiveClient, InstanceSummary, StoredObject
from medclip_core.archive.config import ArchiveSettings
from medclip_core.archive.jobs import (
    ACTIVE,
    JobSpec,
    cancel_job,
    create_job,
    job_summary,
    job_table,
    jobs_root,
    recent_jobs,
    resume_unfinished,
    start_job,
)
from medclip_core.archive.writeback import (
    DEFAULT_THRESHOLD,
    ArchivedDiagnosis,
    diagnose_instance,
    push_draft_report,
    push_findings,
    push_segment,
)
from medclip_core.data.findings import LABEL_PRESETS
from medclip_core.errors import MedclipError, TaskInputError
from medclip_core.tasks.diagnose import probability_figure
from medclip_core.tasks.grounding import parse_phrases
from medclip_core.tasks.segmentation import SEGMENT_METHODS
from medclip_core.tasks.zero_shot import resolve_labels
from pages.common import MODEL_CALLS, ui_errors

FRAME_RULES = ["middle", "first", "last"]
FOLLOW_SECONDS = 30 * 60  # a page follows a job this long; the job itself runs on regardless
STUDY_COLUMNS = ["study date", "description", "modalities", "series", "instances", "Study UID"]
IDENTIFIER_COLUMNS = {"patient_name": "patient name", "patient_id": "patient ID", "accession_number": "accession"}


def _client(request: gr.Request | None) -> ArchiveClient:
    """A client for this browser session (its id goes to the audit log, never an identifier)."""
    session = getattr(request, "session_hash", None)
    return ArchiveClient(ArchiveSettings.from_env(), session_id=session[:12] if session else None)


def _series_choice(series: Any) -> tuple[str, str]:
    count = "?" if series.instance_count is None else series.instance_count
    return (f"{series.modality or '?'} · #{series.number if series.number is not None else '?'} · "
            f"{series.description or 'no description'} · {count} instance(s)", series.series_uid)


def _instance_choice(instance: InstanceSummary) -> tuple[str, str]:
    size = f"{instance.columns}×{instance.rows}" if instance.rows else "no image"
    frames = f" · {instance.frames} frames" if instance.frames > 1 else ""
    skipped = f" · {instance.skip_reason}" if instance.skip_reason else ""
    return (f"#{instance.number if instance.number is not None else '?'} · {instance.modality} · {size}{frames}"
            f"{skipped}", instance.sop_uid)


@ui_errors
def search(accession: str, date: str, modality: str, study_uid: str,
           request: gr.Request) -> tuple[Any, Any, str]:
    """Criteria -> (studies table, study picker, message)."""
    client = _client(request)
    studies = client.search_studies(accession, date, modality, study_uid)
    identifiers = list(IDENTIFIER_COLUMNS) if client.settings.show_identifiers else []
    rows = [[s.study_date, s.description, "/".join(s.modalities), s.series_count, s.instance_count, s.study_uid,
             *(s.identifiers.get(key, "") for key in identifiers)] for s in studies]
    choices = [(f"{s.study_date or 'no date'} · {s.description or 'no description'} · {'/'.join(s.modalities)}"
                f" · {s.study_uid}", s.study_uid) for s in studies]
    message = f"{len(studies)} stud{'y' if len(studies) == 1 else 'ies'} found." if studies else \
        "No study matches these criteria."
    return (gr.update(value=rows, headers=STUDY_COLUMNS + [IDENTIFIER_COLUMNS[k] for k in identifiers]),
            gr.update(choices=choices, value=choices[0][1] if choices else None), message)


@ui_errors
def pick_study(study_uid: str | None, request: gr.Request) -> Any:
    """A study -> its series (the first series of images chosen)."""
    if not study_uid:
        return gr.update(choices=[], value=None)
    series = _client(request).list_series(study_uid)
    images = [s for s in series if s.modality not in NON_IMAGE_MODALITIES] or series
    return gr.update(choices=[_series_choice(s) for s in series], value=images[0].series_uid if images else None)


@ui_errors
def pick_series(study_uid: str | None, series_uid: str | None,
                request: gr.Request) -> tuple[Any, list[tuple[Any, str]], list[str]]:
    """A series -> (instance picker with the first image chosen, thumbnails, the instance UID of each thumbnail)."""
    if not (study_uid and series_uid):
        return gr.update(choices=[], value=None), [], []
    client = _client(request)
    instances = client.list_instances(study_uid, series_uid)
    images = [i for i in instances if not i.skip_reason]
    previews = client.thumbnails(instances)
    return (gr.update(choices=[_instance_choice(i) for i in instances], value=images[0].sop_uid if images else None),
            [(preview, _instance_choice(instance)[0]) for preview, instance in previews],
            [instance.sop_uid for _, instance in previews])


def pick_thumbnail(thumbnail_uids: list[str], event: gr.SelectData) -> Any:
    return gr.update(value=thumbnail_uids[event.index])


@ui_errors
def run_diagnosis(study_uid: str | None, series_uid: str | None, sop_uid: str | None, frame: str, preset: str,
                  custom_labels: str, mode: str, model: str,
                  request: gr.Request) -> tuple[Any, Any, Any, dict, ArchivedDiagnosis, str, str, str]:
    """The chosen instance -> (preview, chart, table, JSON, the diagnosis kept for write-back, cleared write-back notes)."""
    if not (study_uid and series_uid and sop_uid):
        raise TaskInputError("Search for a study, then pick a series and an instance to diagnose.")
    result = diagnose_instance(_client(request), study_uid, series_uid, sop_uid,
                               resolve_labels(custom_labels, preset), model=model or None, frame=frame or None,
                               mode=mode)
    header, rows = result.diagnosis.table()
    return (result.image.to_pil(), probability_figure(result.diagnosis), gr.update(value=rows, headers=header),
            result.to_dict(), result, "", "", "")


def _stored_note(what: str, store: Callable[[], StoredObject]) -> str:
    """Store one object; the note says stored (with the UIDs QIDO-RS found) or not stored and why."""
    try:
        stored = store()
    except MedclipError as exc:
        gr.Warning(f"{what} not stored: {exc}")
        return f"❌ **{what}: not stored.** {exc}"
    return (f"✅ **{what}: stored** and found again in the study. Series UID `{stored.series_uid}`, "
            f"SOP Instance UID `{stored.sop_uid}`.")


def _diagnosed(result: ArchivedDiagnosis | None) -> ArchivedDiagnosis:
    if result is None:
        raise TaskInputError("Diagnose an archived image first; its results are what gets stored.")
    return result


@ui_errors
def store_findings(result: ArchivedDiagnosis | None, threshold: float, request: gr.Request) -> str:
    result = _diagnosed(result)
    return _stored_note("Findings SR", lambda: push_findings(_client(request), result, float(threshold)))


@ui_errors
def store_report(result: ArchivedDiagnosis | None, request: gr.Request) -> str:
    result = _diagnosed(result)
    return _stored_note("Draft report SR", lambda: push_draft_report(_client(request), result))


@ui_errors
def store_segmentation(result: ArchivedDiagnosis | None, phrases: str, method: str, request: gr.Request) -> str:
    result = _diagnosed(result)
    return _stored_note("SEG", lambda: push_segment(_client(request), result, parse_phrases(phrases), method))


def _storing() -> str:
    return "⏳ Storing…"


# --- whole study / series jobs -----------------------------------------------------------------


def _job_folder(name: str | None) -> Path:
    folder = jobs_root() / (name or "")
    if not name or folder.parent != jobs_root() or not (folder / "state.json").exists():
        raise TaskInputError("Pick a job from the list (press Refresh to see the latest).")
    return folder


def _job_choices() -> list[str]:
    return [folder.name for folder in recent_jobs()]


@ui_errors
def run_whole(source: str, study_uid: str | None, series_uid: str | None, frame: str, preset: str,
              custom_labels: str, mode: str, model: str, report: bool, write_sr: bool, request: gr.Request) -> Any:
    """Start a background job for the chosen study or series; -> the job list with the new job chosen."""
    spec = JobSpec(source, resolve_labels(custom_labels, preset), study_uid=study_uid or None,
                   series_uid=series_uid or None, model=model or None, mode=mode, frame=frame or None,
                   report=bool(report), write_sr=bool(write_sr))
    session = getattr(request, "session_hash", None)
    folder = create_job(spec)
    start_job(folder, lambda: ArchiveClient(ArchiveSettings.from_env(), session_id=session[:12] if session else None))
    return gr.update(choices=_job_choices(), value=folder.name)


def follow_job(name: str | None, progress: gr.Progress = gr.Progress()) -> Iterator[tuple[str, Any, Any]]:
    """Follow a job's files until it ends: (status line, table so far, CSV download at the end)."""
    try:
        folder = _job_folder(name)
    except MedclipError as exc:
        yield str(exc), gr.update(), None
        return
    deadline = time.monotonic() + FOLLOW_SECONDS
    while True:
        summary = job_summary(folder, log_lines=1)
        header, rows = job_table(folder)
        done, total = summary.get("done") or 0, summary.get("total")
        if total:
            progress((done, total), desc="images", unit="images")
        counts = ", ".join(f"{count} {status}" for status, count in summary["counts"].items() if count)
        status = f"**{summary['status']}**: {done} of {total if total is not None else '?'} done"
        status += f" ({counts})" if counts else ""
        status += f". {summary['error']}" if summary.get("error") else ""
        status += "".join(f"\n\nFindings SR stored: series `{s['series_uid']}`" for s in summary.get("stored", []))
        table = gr.update(value=rows, headers=header)
        if summary["status"] not in ACTIVE:
            csv = folder / "results.csv"
            download = None
            if csv.exists():  # a copy in a temporary folder, which the app may serve
                download = Path(tempfile.mkdtemp(prefix="medclip-job-")) / f"{folder.name}.csv"
                shutil.copy(csv, download)
            yield status, table, str(download) if download else None
            return
        if time.monotonic() > deadline:
            yield status + " — still running; press Follow to see more.", table, None
            return
        yield status, table, None
        time.sleep(1.0)


@ui_errors
def cancel(name: str | None) -> str:
    cancel_job(_job_folder(name))
    return "Cancel requested: the job stops before its next image."


def resume_jobs() -> list[Path]:
    """Restart in the background the jobs an earlier app process left unfinished (called at app start)."""
    return resume_unfinished(lambda: ArchiveClient(ArchiveSettings.from_env(), session_id="resumed"))


# --- layout ------------------------------------------------------------------------------------


def build(model_picker: gr.Dropdown) -> None:
    with gr.Tab("Archive"):
        try:
            settings = ArchiveSettings.from_env()
        except MedclipError as exc:  # a bad host setting: say so here, keep the rest of the app serving
            gr.Markdown(f"The image archive is configured but cannot be used: {exc}")
            return
        gr.Markdown(
            f"Images from the hospital archive at `{settings.safe_url}` (DICOMweb). Search, pick an image, "
            "diagnose it" + (", and store the results back into its study (the app shows them only once the "
                             "archive has them)." if settings.write_enabled else
                             ". Storing results back is off (the host allows it with MEDCLIP_DICOMWEB_WRITE=1).")
            + ("" if settings.show_identifiers else " Patient identifiers are not shown."))
        with gr.Row():
            accession = gr.Textbox(label="Accession number", elem_id="archive-accession")
            date = gr.Textbox(label="Study date", placeholder="YYYYMMDD or YYYYMMDD-YYYYMMDD")
            modality = gr.Textbox(label="Modality", placeholder="CR, DX, CT ...")
            study_uid = gr.Textbox(label="Study Instance UID")
        search_button = gr.Button("Search archive", variant="primary")
        found = gr.Markdown()
        studies = gr.Dataframe(headers=STUDY_COLUMNS, label="Studies", interactive=False)
        with gr.Row():
            study = gr.Dropdown(choices=[], label="Study", elem_id="archive-study")
            series = gr.Dropdown(choices=[], label="Series", elem_id="archive-series")
            instance = gr.Dropdown(choices=[], label="Instance", elem_id="archive-instance")
            frame = gr.Dropdown(FRAME_RULES, value="middle", allow_custom_value=True, label="Frame",
                                info="multi-frame images: middle, first, last or a 0-based frame number")
        thumbnails = gr.Gallery(label="Thumbnails (click one to pick it)", columns=6, height=220,
                                elem_id="archive-thumbnails")
        thumbnail_uids = gr.State([])
        with gr.Row():
            preset = gr.Dropdown(list(LABEL_PRESETS), value="Phantom findings", label="Label set")
            custom = gr.Textbox(lines=2, label="Or your own labels, one per line")
            mode = gr.Radio(["pairwise", "softmax"], value="pairwise", label="Scoring")
        diagnose_button = gr.Button("Diagnose archived image", variant="primary", elem_id="archive-diagnose")
        with gr.Row():
            preview = gr.Image(label="Image", type="pil", interactive=False, height=300)
            plot = gr.Plot(label="Probabilities", elem_id="archive-chart")
        table = gr.Dataframe(label="Findings", interactive=False)
        details = gr.JSON(label="Result")
        diagnosis = gr.State(None)
        notes = [gr.Markdown(visible=settings.write_enabled, elem_id=f"archive-stored-{what}")
                 for what in ("sr", "report", "seg")]
        with gr.Group(visible=settings.write_enabled):
            with gr.Row():
                threshold = gr.Slider(0, 1, value=DEFAULT_THRESHOLD, step=0.01, label="Finding threshold (SR)")
                push_sr = gr.Button("Store findings SR")
                push_report = gr.Button("Store draft report SR")
            with gr.Row():
                phrases = gr.Textbox(value="pleural effusion", label="SEG phrases, one per line")
                method = gr.Dropdown(list(SEGMENT_METHODS), value="trained", label="Segmentation method")
                push_seg = gr.Button("Store SEG")
        with gr.Accordion("Whole study or series", open=False):
            gr.Markdown("Zero-shot for every image of the chosen study or series, in the background: the job "
                        "goes on if you close the page or the app restarts. Non-image instances are skipped.")
            with gr.Row():
                source = gr.Radio(["study", "series"], value="series", label="Score every image of the")
                with_report = gr.Checkbox(label="Draft a report for each image")
                write_sr = gr.Checkbox(label="Store one findings SR per study", visible=settings.write_enabled)
                run_button = gr.Button("Run job", variant="primary")
            with gr.Row():
                job = gr.Dropdown(choices=_job_choices(), label="Job", elem_id="archive-job")
                refresh = gr.Button("Refresh")
                follow = gr.Button("Follow")
                stop = gr.Button("Cancel job")
            job_status = gr.Markdown(elem_id="archive-job-status")
            job_rows = gr.Dataframe(label="Results", interactive=False)
            job_csv = gr.File(label="CSV", elem_id="archive-job-csv")

        search_button.click(search, inputs=[accession, date, modality, study_uid], outputs=[studies, study, found],
                            api_name="archive_search")
        study.change(pick_study, inputs=study, outputs=series, api_visibility="private")
        series.change(pick_series, inputs=[study, series], outputs=[instance, thumbnails, thumbnail_uids],
                      api_visibility="private")
        thumbnails.select(pick_thumbnail, inputs=thumbnail_uids, outputs=instance, api_visibility="private")
        diagnose_button.click(run_diagnosis,
                              inputs=[study, series, instance, frame, preset, custom, mode, model_picker],
                              outputs=[preview, plot, table, details, diagnosis, *notes], api_name="archive_zero_shot")
        # the report and SEG write-backs run the diagnosis' model: they share the model-call limit
        for button, store, inputs, note, group in (
                (push_sr, store_findings, [diagnosis, threshold], notes[0], None),
                (push_report, store_report, [diagnosis], notes[1], MODEL_CALLS),
                (push_seg, store_segmentation, [diagnosis, phrases, method], notes[2], MODEL_CALLS)):
            button.click(_storing, outputs=note, api_visibility="private").then(
                store, inputs=inputs, outputs=note, api_visibility="private", concurrency_id=group)
        run_button.click(run_whole, inputs=[source, study, series, frame, preset, custom, mode, model_picker,
                                            with_report, write_sr], outputs=job, api_visibility="private").success(
            follow_job, inputs=job, outputs=[job_status, job_rows, job_csv], api_visibility="private",
            concurrency_limit=8, concurrency_id="archive-follow")
        follow.click(follow_job, inputs=job, outputs=[job_status, job_rows, job_csv], api_visibility="private",
                     concurrency_limit=8, concurrency_id="archive-follow")
        refresh.click(lambda: gr.update(choices=_job_choices()), outputs=job, api_visibility="private")
        stop.click(cancel, inputs=job, outputs=job_status, api_visibility="private")
