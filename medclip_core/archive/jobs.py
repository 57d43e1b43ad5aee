"""Zero-shot (and optionally a draft report) for every image of a study, a series or a local folder.

A job is a folder under the jobs root (``MEDCLIP_ARCHIVE_JOBS``, default ``$MEDCLIP_RUNS_DIR/archive-jobs``
or ``runs/archive-jobs``), and its files are its whole state, so it survives a restart of the app:

* ``spec.json`` what to do; ``state.json`` status (queued, running, done, failed, cancelled),
  counts and the SR series stored; ``progress.log`` one line per step;
* ``results.jsonl`` one line per instance or file done (scored, skipped with a note, or failed with
  the reason); a resumed job skips every key already there;
* ``results.csv`` the table when the job ends; ``cancel`` present = stop before the next image.

Non-image instances (SR, PR, KO, SEG, RT ...) are skipped with a note; multi-frame images are
scored on the frame the spec's frame rule picks. With ``write_sr`` and an archive source, one
findings SR per study goes to the archive at the end (:func:`medclip_core.archive.sr.findings_sr`).
"""
from __future__ import annotations

import csv
import json
import os
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import pydicom

from medclip_core.archive.client import ArchiveClient, InstanceSummary, NON_IMAGE_MODALITIES, frame_index
from medclip_core.archive.errors import (
    ArchiveAuthError,
    ArchiveLimitError,
    ArchiveNotFoundError,
    ArchiveUnavailableError,
)
from medclip_core.archive.sr import ImageFindings, findings_sr, model_version
from medclip_core.errors import MedclipError, TaskInputError
from medclip_core.io import load_image
from medclip_core.models import default_model_name, load_model
from medclip_core.tasks.zero_shot import zero_shot

SOURCES = ("study", "series", "folder")
MAX_FOLDER_FILES = 2000
ACTIVE = ("queued", "running")
ClientFactory = Callable[[], ArchiveClient]


def jobs_root() -> Path:
    """Where job folders live (created on first use)."""
    explicit = os.environ.get("MEDCLIP_ARCHIVE_JOBS")
    root = Path(explicit) if explicit else Path(os.environ.get("MEDCLIP_RUNS_DIR", "runs")) / "archive-jobs"
    root.mkdir(parents=True, exist_ok=True)
    return root


@dataclass
class JobSpec:
    """What a job does. ``source``: study (``study_uid``), series (``study_uid`` + ``series_uid``) or folder."""

    source: str
    labels: list[str]
    study_uid: str | None = None
    series_uid: str | None = None
    folder: str | None = None
    model: str | None = None
    mode: str = "pairwise"
    frame: str | int | None = None
    report: bool = False
    write_sr: bool = False
    threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise TaskInputError(f"A job's source must be one of {SOURCES}, got '{self.source}'.")
        if self.source in ("study", "series") and not self.study_uid:
            raise TaskInputError("A study or series job needs a Study Instance UID.")
        if self.source == "series" and not self.series_uid:
            raise TaskInputError("A series job needs a Series Instance UID.")
        if self.source == "folder" and not (self.folder and Path(self.folder).is_dir()):
            raise TaskInputError(f"No folder at '{self.folder}'.")
        if not self.labels:
            raise TaskInputError("A job needs at least one finding label.")
        frame_index(self.frame, 1_000_000)  # the rule is valid (the index is checked per image)


@dataclass
class JobRow:
    """One instance or file: status scored, skipped or failed; ``probabilities`` follow the spec's labels."""

    key: str
    status: str
    note: str = ""
    study_uid: str = ""
    series_uid: str = ""
    sop_uid: str = ""
    frame: int | None = None
    probabilities: list[float] = field(default_factory=list)
    report: str = ""
    in_distribution: bool | None = None  # the image's out-of-distribution verdict; None: no reference


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def create_job(spec: JobSpec, root: Path | None = None) -> Path:
    """A new job folder holding ``spec`` (status queued); run it with :func:`run_job` or :func:`start_job`."""
    folder = (root or jobs_root()) / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    folder.mkdir(parents=True)
    (folder / "spec.json").write_text(json.dumps(asdict(spec), indent=2))
    _write_state(folder, {"status": "queued", "created": _now(), "done": 0, "total": None, "stored": []})
    return folder


def read_spec(folder: Path) -> JobSpec:
    return JobSpec(**json.loads((Path(folder) / "spec.json").read_text()))


def read_state(folder: Path) -> dict[str, Any]:
    return json.loads((Path(folder) / "state.json").read_text())


def _write_state(folder: Path, state: dict[str, Any]) -> None:
    temporary = folder / "state.json.tmp"
    temporary.write_text(json.dumps(state, indent=2))
    temporary.replace(folder / "state.json")  # atomic: a reader never sees half a state


def read_rows(folder: Path) -> list[JobRow]:
    path = Path(folder) / "results.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                rows.append(JobRow(**json.loads(line)))
            except (ValueError, TypeError):
                continue  # a line cut short by a crash: that item is done again
    return rows


def _log(folder: Path, message: str) -> None:
    with open(folder / "progress.log", "a", encoding="utf-8") as handle:
        handle.write(f"{_now()} {message}\n")


def cancel_job(folder: Path) -> None:
    """Ask a running job to stop before its next image."""
    (Path(folder) / "cancel").touch()


def _archive_items(client: ArchiveClient, spec: JobSpec) -> list[InstanceSummary]:
    instances = client.list_instances(spec.study_uid, spec.series_uid if spec.source == "series" else None)
    if not instances:
        raise ArchiveNotFoundError(f"The archive has no instances for this {spec.source} "
                                   f"({spec.series_uid if spec.source == 'series' else spec.study_uid}).")
    return instances


def _folder_items(spec: JobSpec) -> list[Path]:
    files = sorted(p for p in Path(spec.folder).rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise TaskInputError(f"The folder '{spec.folder}' holds no files.")
    if len(files) > MAX_FOLDER_FILES:
        raise ArchiveLimitError(f"The folder holds {len(files)} files; a job takes at most {MAX_FOLDER_FILES}.")
    return files


def _file_header(path: Path) -> tuple[str | None, int]:
    """(why a DICOM file holds no image to score or None, its number of frames); (None, 1) for other files."""
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # not DICOM: load_image decides
        return None, 1
    modality = str(getattr(header, "Modality", "") or "")
    if modality in NON_IMAGE_MODALITIES:
        return f"not an image ({modality})", 1
    frames = int(getattr(header, "NumberOfFrames", 1) or 1)
    return (None, frames) if "Rows" in header else ("not an image (no pixel data)", 1)


def run_job(folder: Path, client_factory: ClientFactory | None = None,
            progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Run (or resume) a job to its end in this thread; returns its final state.

    Instances already in ``results.jsonl`` are skipped. ``progress(done, total)`` follows each item.
    A core error for one image is recorded on its row; an error about the whole job (archive
    unreachable, empty study, too many instances) ends the job as failed with the message.
    """
    folder = Path(folder)
    spec = read_spec(folder)
    state = read_state(folder)
    done = {row.key for row in read_rows(folder)}
    state.update(status="running", started=state.get("started") or _now(), error=None)
    _write_state(folder, state)
    try:
        client = client_factory() if spec.source != "folder" else None
        items: list[Any] = _archive_items(client, spec) if client else _folder_items(spec)
        total = len(items)
        _log(folder, f"{'resuming' if done else 'starting'}: {len(done)} of {total} already done")
        name = spec.model or default_model_name()
        model = load_model(name)
        for item in items:
            key = item.sop_uid if client else str(item)
            if key in done:
                continue
            if (folder / "cancel").exists():
                state.update(status="cancelled", done=len(done), total=total)
                _write_state(folder, state)
                _log(folder, "cancelled")
                return state
            row = _score_archive_item(client, spec, item, model, name) if client else \
                _score_file(spec, item, model, name)
            with open(folder / "results.jsonl", "a", encoding="utf-8") as handle:
                handle.write(json.dumps(asdict(row)) + "\n")
            done.add(key)
            state.update(done=len(done), total=total)
            _write_state(folder, state)
            _log(folder, f"{len(done)}/{total} {row.status}{': ' + row.note if row.note else ''}")
            if progress is not None:
                progress(len(done), total)
        if spec.write_sr and client is not None:
            _store_study_srs(folder, client, spec, name, state)
        write_csv(folder)
        state.update(status="done", finished=_now())
        _log(folder, "done")
    except Exception as exc:  # a background job records every failure instead of dying as "running"
        message = str(exc) if isinstance(exc, MedclipError) else f"unexpected error ({type(exc).__name__}): {exc}"
        state.update(status="failed", error=message, finished=_now())
        _log(folder, f"failed: {message}")
    _write_state(folder, state)
    return state


def _score_archive_item(client: ArchiveClient, spec: JobSpec, item: InstanceSummary, model, name: str) -> JobRow:
    row = JobRow(item.sop_uid, "scored", study_uid=item.study_uid, series_uid=item.series_uid, sop_uid=item.sop_uid)
    if item.skip_reason:
        row.status, row.note = "skipped", item.skip_reason
        return row
    try:
        image, _ = client.fetch_image(item.study_uid, item.series_uid, item.sop_uid, spec.frame)
        _score(row, spec, image, model, name, item.frames)
        client.audit.record("job-score", session_id=client.session_id, study_uid=item.study_uid,
                            series_uid=item.series_uid, instance_uid=item.sop_uid, model=name)
    except (ArchiveUnavailableError, ArchiveAuthError):
        raise  # the archive itself failed: the job stops and can be resumed
    except MedclipError as exc:  # this image: undecodable, gone, too large ...
        row.status, row.note = "failed", str(exc)
    return row


def _score_file(spec: JobSpec, path: Path, model, name: str) -> JobRow:
    row = JobRow(str(path), "scored")
    reason, frames = _file_header(path)
    if reason:
        row.status, row.note = "skipped", reason
        return row
    try:
        image = load_image(path, frame=frame_index(spec.frame, frames) if frames > 1 else None)
        _score(row, spec, image, model, name, frames)
    except MedclipError as exc:
        row.status, row.note = "failed", str(exc)
    return row


def _score(row: JobRow, spec: JobSpec, image, model, name: str, frames: int) -> None:
    result = zero_shot(model, image, spec.labels, spec.mode)
    row.probabilities = [round(float(p), 6) for p in result.probabilities]
    row.in_distribution = result.ood.in_distribution if result.ood else None
    chosen = frame_index(spec.frame, frames) if frames > 1 else None
    row.frame = (frames // 2 if chosen is None else chosen) if frames > 1 else None
    if spec.report:
        from medclip_core.tasks.report import draft_report

        row.report = draft_report(image, model=name).text


def _store_study_srs(folder: Path, client: ArchiveClient, spec: JobSpec, name: str, state: dict[str, Any]) -> None:
    """One findings SR per study of the scored rows (studies already stored are not stored again)."""
    rows = [row for row in read_rows(folder) if row.status == "scored"]
    stored_studies = {entry["study_uid"] for entry in state.get("stored", [])}
    version = model_version(load_model(name).card)
    for study_uid in sorted({row.study_uid for row in rows} - stored_studies):
        images = [ImageFindings(client.fetch_metadata(row.study_uid, row.series_uid, row.sop_uid), spec.labels,
                                row.probabilities, row.frame, row.in_distribution)
                  for row in rows if row.study_uid == study_uid]
        stored = client.store(findings_sr(images, name, version, spec.threshold, spec.mode, deidentify=False),
                              study_uid, model=name)
        state.setdefault("stored", []).append(stored.to_dict())
        _write_state(folder, state)
        _log(folder, f"findings SR stored: series {stored.series_uid}")


def job_table(folder: Path) -> tuple[list[str], list[list[Any]]]:
    """(header, rows) of a job so far: one row per instance or file, one column per label (probability),
    status and note. The UI shows it while the job runs; :func:`write_csv` writes it at the end."""
    spec = read_spec(folder)
    header = ["item", "status", "note", "study_uid", "series_uid", "sop_uid", "frame", "in distribution",
              *spec.labels, *(["report"] if spec.report else [])]
    rows = [[row.key, row.status, row.note, row.study_uid, row.series_uid, row.sop_uid,
             "" if row.frame is None else row.frame, {True: "yes", False: "no"}.get(row.in_distribution, ""),
             *(row.probabilities or [""] * len(spec.labels)),
             *([row.report] if spec.report else [])] for row in read_rows(folder)]
    return header, rows


def write_csv(folder: Path) -> Path:
    """``results.csv``: the job's table (:func:`job_table`)."""
    header, rows = job_table(folder)
    path = Path(folder) / "results.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


_RUNNING: dict[str, threading.Thread] = {}  # owner: start_job; job folder -> its thread in this process
_RUNNING_LOCK = threading.Lock()


def start_job(folder: Path, client_factory: ClientFactory | None = None) -> threading.Thread:
    """Run a job in a background thread of this process (at most one thread per job)."""
    key = str(Path(folder).resolve())
    with _RUNNING_LOCK:
        thread = _RUNNING.get(key)
        if thread is not None and thread.is_alive():
            return thread
        thread = threading.Thread(target=run_job, args=(Path(folder), client_factory), daemon=True,
                                  name=f"archive-job-{Path(folder).name}")
        _RUNNING[key] = thread
        thread.start()
    return thread


def unfinished_jobs(root: Path | None = None) -> Iterator[Path]:
    """Job folders left queued or running (e.g. by an app that stopped), oldest first."""
    for folder in sorted((root or jobs_root()).iterdir()):
        if (folder / "state.json").exists() and read_state(folder).get("status") in ACTIVE:
            yield folder


def recent_jobs(root: Path | None = None, limit: int = 20) -> list[Path]:
    """The newest job folders first (folder names start with their creation time)."""
    folders = [folder for folder in (root or jobs_root()).iterdir() if (folder / "state.json").exists()]
    return sorted(folders, key=lambda folder: folder.name, reverse=True)[:limit]


def resume_unfinished(client_factory: ClientFactory | None = None, root: Path | None = None) -> list[Path]:
    """Restart, in the background, every job an earlier process left unfinished."""
    folders = list(unfinished_jobs(root))
    for folder in folders:
        start_job(folder, client_factory)
    return folders


def job_summary(folder: Path, log_lines: int = 20) -> dict[str, Any]:
    """State, the last lines of the progress log and the counts by status, for the UI and the CLI."""
    rows = read_rows(folder)
    log = (Path(folder) / "progress.log")
    return {"job": Path(folder).name, **read_state(folder),
            "counts": {s: sum(r.status == s for r in rows) for s in ("scored", "skipped", "failed")},
            "log": log.read_text().splitlines()[-log_lines:] if log.exists() else []}
