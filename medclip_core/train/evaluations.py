"""Evaluations as background runs: uploads of labelled sets, server sets, requests, progress, results.

An evaluation run is a run of the run manager (:mod:`medclip_core.train.runs`, task
``EVALUATION_TASK``): the CLI's ``eval --data SET --model A --model B --out RUN_DIR`` in its own
process, so it survives an app restart like a training run. Its stderr (``train.log``) carries
``NN% message`` progress lines, from which :func:`evaluation_progress` tells the fraction done and
the time left; its folder ends with ``evaluation.json``, ``.csv`` and ``.html``.

Data comes from a zip upload (unpacked with the training uploads' limits,
:func:`~medclip_core.train.datasets.import_upload`) into ``<runs>/eval-datasets/ID`` and named
``upload:ID``, or from a CSV under ``MEDCLIP_GALLERY_ROOT`` when the host set it.
"""
from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

from medclip_core.data.labelled_sets import LabelledSet, read_labelled_set
from medclip_core.errors import TaskInputError
from medclip_core.train.datasets import UPLOAD_PREFIX, import_upload
from medclip_core.train.runs import EVALUATION_TASK, RunRecord, RunRequest

DATASETS_FOLDER = "eval-datasets"
GALLERY_ROOT_ENV = "MEDCLIP_GALLERY_ROOT"
MAX_SERVER_SETS = 200
PROGRESS_LINE = re.compile(r"^(\d{1,3})% (.*)$")


def import_evaluation_upload(files: Sequence[str | Path], runs_root: Path) -> tuple[str, LabelledSet]:
    """Unpack an uploaded zip (or CSV + images) and read it as a labelled set; returns (``upload:ID``,
    the set). An upload that cannot be read as a labelled set is deleted."""
    root = Path(runs_root) / DATASETS_FOLDER
    csv_path = import_upload(list(files), root)
    dataset_id = csv_path.relative_to(root).parts[0]
    folder = root / dataset_id
    try:
        labelled = read_labelled_set(folder)
        if not labelled.images:
            raise TaskInputError(f"No image of {Path(labelled.csv_path).name} was found in the upload.")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return f"{UPLOAD_PREFIX}{dataset_id}", labelled


def server_sets() -> list[str]:
    """The CSV files under ``MEDCLIP_GALLERY_ROOT`` (relative paths, at most ``MAX_SERVER_SETS``); [] if unset."""
    root = os.environ.get(GALLERY_ROOT_ENV)
    if not root or not Path(root).is_dir():
        return []
    found = []
    for path in sorted(Path(root).rglob("*.csv")):
        found.append(path.relative_to(root).as_posix())
        if len(found) >= MAX_SERVER_SETS:
            break
    return found


def resolve_evaluation_data(name: str, runs_root: Path) -> Path:
    """The folder or CSV of a data set named in the UI or API: ``upload:ID`` or a CSV under
    ``MEDCLIP_GALLERY_ROOT``; anything else is refused (a public server reads no other path)."""
    name = (name or "").strip()
    if name.startswith(UPLOAD_PREFIX):
        dataset_id = name[len(UPLOAD_PREFIX):]
        folder = Path(runs_root) / DATASETS_FOLDER / dataset_id
        if not (dataset_id.isalnum() and folder.is_dir()):
            raise TaskInputError(f"'{name}' is not an uploaded evaluation set: upload it first.")
        return folder
    root = os.environ.get(GALLERY_ROOT_ENV)
    if not name:
        raise TaskInputError("Upload a labelled set (zip) or choose a server data set.")
    if not root:
        raise TaskInputError(f"This server offers no data sets of its own ({GALLERY_ROOT_ENV} is not set): "
                             "upload a zip.")
    path = (Path(root) / name).resolve()
    read_labelled_set(path, allowed_root=root)  # refuses paths outside the root, unreadable sets
    return path


def read_evaluation_data(name: str, runs_root: Path, uncertain: str = "ignore") -> LabelledSet:
    """The labelled set behind a data set name (see :func:`resolve_evaluation_data`)."""
    return read_labelled_set(resolve_evaluation_data(name, runs_root), uncertain)


def evaluation_request(name: str, data: Path, models: Sequence[str], tasks: Sequence[str] | None = None,
                       bootstrap: int = 1000, threshold: float | None = None, uncertain: str = "ignore",
                       device: str = "cpu") -> RunRequest:
    """A run-manager request that evaluates ``models`` on the set at ``data``."""
    if not models:
        raise TaskInputError("Choose at least one model to evaluate.")
    args: list[str] = [arg for model in dict.fromkeys(models) for arg in ("--model", model)]
    if tasks:
        args += ["--tasks", *tasks]
    args += ["--bootstrap", str(int(bootstrap)), "--uncertain", uncertain]
    if threshold is not None:
        args += ["--threshold", str(float(threshold))]
    return RunRequest(name=name, base_model=list(models)[0], data=str(data), task=EVALUATION_TASK, device=device,
                      extra_args=args)


def evaluation_progress(record: RunRecord) -> dict[str, Any]:
    """State, fraction done, last progress message, seconds elapsed and an estimate of the seconds left."""
    fraction, message = 0.0, ""
    try:
        lines = record.log_path.read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    for line in reversed(lines):
        match = PROGRESS_LINE.match(line.strip())
        if match:
            fraction, message = min(int(match.group(1)), 100) / 100, match.group(2)
            break
    if record.state == "finished":
        fraction, message = 1.0, "done"
    end = record.ended or time.time()
    elapsed = end - record.started if record.started else 0.0
    left = elapsed * (1 - fraction) / fraction if record.state == "running" and fraction > 0 else None
    return {"name": record.name, "state": record.state, "fraction": fraction, "message": message,
            "seconds_elapsed": round(elapsed, 1), "seconds_left": None if left is None else round(left, 1),
            "error": record.error}


def evaluation_files(record: RunRecord) -> dict[str, Path]:
    """The result files of a finished evaluation run that exist: {"json", "csv", "html"} -> path."""
    folder = Path(record.run_dir)
    files = {kind: folder / f"evaluation.{kind}" for kind in ("json", "csv", "html")}
    return {kind: path for kind, path in files.items() if path.is_file()}
