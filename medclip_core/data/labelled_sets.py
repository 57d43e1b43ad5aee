"""Labelled evaluation sets handed in by users: one reader for the four CSV formats of the evaluation.

Formats (told apart by their columns; image paths are relative to the CSV's folder and may not
leave it, see :func:`~medclip_core.data.tables.image_path_in`; an ``image`` or ``path`` column):

* classification, CheXpert convention: one column per finding, ``1`` positive, ``0`` negative,
  ``-1`` uncertain, blank unknown (Irvin et al. 2019). Uncertain labels follow a policy
  (``UNCERTAIN_POLICIES``: as positive "U-Ones", as negative "U-Zeros", or left out); unknown ones
  are left out of that finding's metrics;
* classification, list form: ``image,labels`` with ``|``-separated labels; a finding named anywhere in
  the column is negative on every image that does not name it;
* retrieval: ``image,report`` (with ``labels`` as well, a hit may be defined by the label set);
* grounding: ``image,phrase,x,y,w,h``, one box per row in pixels of the original image (MS-CXR);
* segmentation: ``image,phrase,mask``, a mask image (non-zero = inside) per image and phrase.

Finding names (columns, labels, phrases) are matched to the labels the models can score
(:func:`match_finding`); columns and labels that match nothing are listed in ``unmatched``. Rows
whose image file is missing are listed in ``problems`` and skipped; a row repeated exactly is
reported once and skipped. Images are not decoded here: the evaluation decodes each once, and
lists the ones it cannot read.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from medclip_core.data.findings import FINDINGS, LABEL_SYNONYMS, NORMAL_LABELS, SHORT_FORMS
from medclip_core.data.tables import image_path_in, read_csv_rows
from medclip_core.errors import TaskInputError

UncertainPolicy = Literal["positive", "negative", "ignore"]
UNCERTAIN_POLICIES: tuple[str, ...] = ("positive", "negative", "ignore")
IMAGE_COLUMNS = ("image", "path")
BOX_COLUMNS = ("phrase", "x", "y", "w", "h")
# Columns of a CheXpert-style CSV that describe the study, not a finding (not listed as unmatched).
STUDY_COLUMNS = frozenset({"sex", "age", "frontal/lateral", "ap/pa", "view", "patient", "study", "id"})
CSV_NAME_HINT = "labels.csv"
Box = tuple[float, float, float, float]


def _finding_names() -> dict[str, str]:
    """Every name a finding goes by (label, report synonym, short form) -> the label models score."""
    names: dict[str, str] = {}
    for label in (*FINDINGS, *LABEL_SYNONYMS):
        names.setdefault(label, label)
    for label in NORMAL_LABELS:
        names.setdefault(label, label)
    for label, synonyms in (*LABEL_SYNONYMS.items(), *SHORT_FORMS.items()):
        for synonym in synonyms:
            names.setdefault(synonym, label)
    return names


FINDING_NAMES: dict[str, str] = _finding_names()


def match_finding(name: str) -> str | None:
    """The scoreable label ``name`` stands for (case, spaces and ``_`` ignored), or None.

    A label of ``FINDINGS`` or of ``LABEL_SYNONYMS`` (CheXpert's names too) is itself; a report synonym
    or short form ("effusion", "enlarged heart size") is the label it belongs to."""
    key = " ".join(name.replace("_", " ").lower().split())
    return FINDING_NAMES.get(key)


@dataclass
class SetProblem:
    """One bad row of a labelled set (1-based CSV line, header = line 1), shown to the user as it is."""

    line: int
    kind: str        # missing_file | duplicate_row | bad_value
    message: str


@dataclass
class LabelledImage:
    """One image of a labelled set: its id (path relative to the CSV), file path, and what is known of it.

    ``labels``: finding -> 1.0 / 0.0 (a finding left out when unknown or an uncertain label is left
    out); ``report``: its report text; ``boxes``: phrase -> ``(x0, y0, x1, y1)`` boxes; ``masks``:
    phrase -> mask file path."""

    image_id: str
    path: str
    labels: dict[str, float] = field(default_factory=dict)
    report: str | None = None
    boxes: dict[str, list[Box]] = field(default_factory=dict)
    masks: dict[str, str] = field(default_factory=dict)


@dataclass
class LabelledSet:
    """What was read from a labelled CSV: images in file order and the tasks they allow."""

    name: str
    csv_path: str
    images: list[LabelledImage]
    findings: list[str]                      # classification findings, in column / first-seen order
    unmatched: list[str]                     # columns or labels that match no finding
    problems: list[SetProblem]
    uncertain_policy: str
    rows: int

    @property
    def tasks(self) -> list[str]:
        """The evaluations this set allows: classification, retrieval, grounding, segmentation."""
        out = []
        if self.findings:
            out.append("classification")
        if sum(image.report is not None for image in self.images) >= 2:
            out.append("retrieval")
        if any(image.boxes for image in self.images):
            out.append("grounding")
        if any(image.masks for image in self.images):
            out.append("segmentation")
        return out

    def truth(self, findings: list[str] | None = None) -> np.ndarray:
        """(N, F) labels of every image for ``findings`` (default all): 1, 0, or NaN when unknown."""
        findings = self.findings if findings is None else findings
        return np.array([[image.labels.get(f, math.nan) for f in findings] for image in self.images],
                        dtype=np.float64).reshape(len(self.images), len(findings))

    def counts(self) -> dict[str, dict[str, int]]:
        """finding -> {"positives", "negatives"} among the images."""
        truth = self.truth()
        return {f: {"positives": int((truth[:, j] == 1).sum()), "negatives": int((truth[:, j] == 0).sum())}
                for j, f in enumerate(self.findings)}

    def to_dict(self) -> dict[str, Any]:
        """What was read, for people: counts, findings matched, unmatched names and bad rows."""
        problems: dict[str, int] = {}
        for p in self.problems:
            problems[p.kind] = problems.get(p.kind, 0) + 1
        return {"name": self.name, "csv": self.csv_path, "rows": self.rows, "n_images": len(self.images),
                "tasks": self.tasks, "findings": self.counts(), "unmatched": self.unmatched,
                "uncertain_policy": self.uncertain_policy,
                "n_reports": len({i.report for i in self.images if i.report is not None}),
                "n_boxes": sum(len(b) for i in self.images for b in i.boxes.values()),
                "n_masks": sum(len(i.masks) for i in self.images),
                "problem_counts": problems,
                "problems": [{"line": p.line, "kind": p.kind, "message": p.message} for p in self.problems]}


def _cheXpert_value(cell: str, policy: str) -> float | None:
    """A CheXpert cell -> 1.0 / 0.0, or None (unknown, or uncertain left out); ValueError if not a label."""
    if cell == "":
        return None
    value = float(cell)
    if value == 1:
        return 1.0
    if value == 0:
        return 0.0
    if value == -1:
        return {"positive": 1.0, "negative": 0.0, "ignore": None}[policy]
    raise ValueError(cell)


def _box(row: dict[str, str]) -> Box:
    x, y, w, h = (float(row[k]) for k in ("x", "y", "w", "h"))
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        raise ValueError("x, y must be numbers and w, h positive")
    return (x, y, x + w, y + h)


def find_set_csv(path: str | os.PathLike) -> Path:
    """``path`` if it is a CSV, else the CSV in that folder (``labels.csv`` first, then the shallowest)."""
    path = Path(path).expanduser()
    if path.is_file() and path.suffix.lower() == ".csv":
        return path
    if path.is_dir():
        csvs = sorted(path.rglob("*.csv"), key=lambda p: (p.name != CSV_NAME_HINT, len(p.parts), str(p)))
        if csvs:
            return csvs[0]
        raise TaskInputError(f"{path.name} holds no CSV file: add one (see docs/evaluation.md for the formats).")
    raise TaskInputError(f"'{path}' is neither a CSV file nor a folder holding one.")


def read_labelled_set(path: str | os.PathLike, uncertain: UncertainPolicy = "ignore",
                      allowed_root: str | os.PathLike | None = None) -> LabelledSet:
    """Read a labelled set (a CSV, or a folder holding one) in any of the module's formats.

    ``allowed_root`` confines the set to one server folder (the app passes ``MEDCLIP_GALLERY_ROOT``).
    Missing image files and repeated rows are listed and skipped; bad values (a CheXpert cell that is
    not 1/0/-1/blank, a box that is not four numbers) are listed and the row skipped.
    """
    if uncertain not in UNCERTAIN_POLICIES:
        raise TaskInputError(f"Uncertain labels: choose one of {', '.join(UNCERTAIN_POLICIES)}, not {uncertain!r}.")
    if allowed_root is not None:
        root = Path(allowed_root).expanduser().resolve()
        resolved = Path(path).expanduser().resolve()
        if resolved != root and root not in resolved.parents:
            raise TaskInputError(f"Evaluation data must lie inside {root}.")
    csv_path = find_set_csv(path)
    rows = read_csv_rows(csv_path, set())
    if not rows:
        raise TaskInputError(f"{csv_path.name} has no data rows.")
    columns = list(rows[0])
    image_column = next((c for c in IMAGE_COLUMNS if c in columns), None)
    if image_column is None:
        raise TaskInputError(f"{csv_path.name} needs an 'image' (or 'path') column with image paths.")
    folder = csv_path.parent
    list_form = "labels" in columns
    finding_columns: dict[str, str] = {}
    unmatched: list[str] = []
    if not list_form:
        known = {image_column, "report", "mask", *BOX_COLUMNS}
        for column in columns:
            if column in known or column in STUDY_COLUMNS:
                continue
            label = match_finding(column)
            if label is None:
                unmatched.append(column)
            elif label not in finding_columns.values():
                finding_columns[column] = label
    has_boxes = all(c in columns for c in BOX_COLUMNS)
    has_masks = "phrase" in columns and "mask" in columns

    images: dict[str, LabelledImage] = {}
    problems: list[SetProblem] = []
    seen_rows: dict[tuple, int] = {}
    list_labels: dict[str, set[str]] = {}
    for line, row in enumerate(rows, start=2):
        key = tuple(sorted(row.items()))
        if key in seen_rows:
            problems.append(SetProblem(line, "duplicate_row", f"line {line} repeats line {seen_rows[key]} (skipped)."))
            continue
        seen_rows[key] = line
        relative = row.get(image_column, "")
        if not relative:
            problems.append(SetProblem(line, "bad_value", f"line {line}: no image path."))
            continue
        file = image_path_in(folder, relative, f"{csv_path.name}, line {line}")
        image_id = file.relative_to(folder.resolve()).as_posix()
        if not file.is_file():
            problems.append(SetProblem(line, "missing_file", f"line {line}: no file '{relative}' (skipped)."))
            continue
        try:
            labels = {label: _cheXpert_value(row.get(column, ""), uncertain)
                      for column, label in finding_columns.items()}
            box = _box(row) if has_boxes and row.get("phrase") else None
        except ValueError as error:
            problems.append(SetProblem(line, "bad_value", f"line {line}: {error} (skipped)."))
            continue
        image = images.setdefault(image_id, LabelledImage(image_id, str(file)))
        image.labels.update({k: v for k, v in labels.items() if v is not None})
        if list_form:
            names = list_labels.setdefault(image_id, set())
            names.update(part.strip().lower() for part in row["labels"].split("|") if part.strip())
        if row.get("report"):
            image.report = row["report"]
        if box is not None:
            image.boxes.setdefault(row["phrase"], []).append(box)
        if has_masks and row.get("phrase") and row.get("mask"):
            mask = image_path_in(folder, row["mask"], f"{csv_path.name}, line {line}")
            if not mask.is_file():
                problems.append(SetProblem(line, "missing_file", f"line {line}: no mask file '{row['mask']}' (skipped)."))
            else:
                image.masks[row["phrase"]] = str(mask)
    findings = list(finding_columns.values())
    if list_form:
        findings, unmatched = _list_form_labels(images, list_labels)
    return LabelledSet(csv_path.parent.name or csv_path.stem, str(csv_path), list(images.values()), findings,
                       unmatched, problems, uncertain, len(rows))


def _list_form_labels(images: dict[str, LabelledImage],
                      names: dict[str, set[str]]) -> tuple[list[str], list[str]]:
    """Fill ``labels`` of every image from ``|``-separated label names: each finding named anywhere is
    1 on the images that name it and 0 on the others. Returns (findings, unmatched names)."""
    matched: dict[str, str] = {}
    unmatched: list[str] = []
    for name in dict.fromkeys(n for image_names in names.values() for n in sorted(image_names)):
        label = match_finding(name)
        if label is None:
            unmatched.append(name)
        else:
            matched[name] = label
    findings = sorted(set(matched.values()), key=lambda f: (FINDINGS.index(f) if f in FINDINGS else len(FINDINGS), f))
    for image_id, image in images.items():
        own = {matched[n] for n in names.get(image_id, ()) if n in matched}
        image.labels.update({f: float(f in own) for f in findings})
    return findings, unmatched
