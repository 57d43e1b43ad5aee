"""Training datasets handed in by users: a CSV of ``image,report[,labels]`` rows, alone or in a zip
with its images. Checked before a run starts, so that a run does not fail an hour in.

``validate_pairs_csv`` reads every row and reports, per line, image files that are missing or
unreadable, empty reports, duplicated rows, and image paths that leave the dataset folder. A
dataset with a path leaving its folder is refused as a whole; otherwise the good rows (first
copy of a duplicate) are written to ``pairs.clean.csv`` next to the CSV, which is what a run trains on.
``import_upload`` puts uploaded files (a zip, or a CSV with its images) into a fresh folder under
the runs folder, refusing zip members whose names leave it.
"""
from __future__ import annotations

import csv
import shutil
import uuid
import zipfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medclip_core.data.tables import image_path_in, read_csv_rows
from medclip_core.errors import ImageLoadError, TaskInputError

CLEAN_NAME = "pairs.clean.csv"
MIN_PAIRS = 2
MAX_UNZIPPED_BYTES = 4 * 1024 ** 3
PROBLEM_KINDS = {
    "outside_folder": "image path leaves the dataset folder (refused)",
    "missing_file": "image file not found",
    "unreadable_image": "image cannot be read",
    "empty_report": "report text is empty",
    "duplicate_row": "duplicate of an earlier row (skipped)",
}


@dataclass
class DatasetProblem:
    line: int
    kind: str
    message: str


@dataclass
class DatasetReport:
    """What validation found: counts, one problem per bad line, and the clean CSV when usable."""

    csv_path: str
    rows: int
    valid: int
    problems: list[DatasetProblem] = field(default_factory=list)
    refused: bool = False
    clean_csv: str | None = None

    @property
    def counts(self) -> dict[str, int]:
        return dict(Counter(p.kind for p in self.problems))

    @property
    def usable(self) -> bool:
        return self.clean_csv is not None

    def summary(self) -> str:
        """One paragraph for people: counts, problems by kind, and whether a run can use it."""
        parts = [f"{self.rows} rows, {self.valid} usable image-report pairs."]
        parts += [f"{count} × {PROBLEM_KINDS[kind]}." for kind, count in self.counts.items()]
        if self.refused:
            parts.append("Refused: every image path must stay inside the dataset folder.")
        elif not self.usable:
            parts.append(f"Not usable: a run needs at least {MIN_PAIRS} good pairs.")
        else:
            parts.append("Ready to train on the usable pairs.")
        return " ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "counts": self.counts, "usable": self.usable}


def validate_pairs_csv(csv_path: str | Path) -> DatasetReport:
    """Check every row of a training CSV; write ``pairs.clean.csv`` beside it when it is usable."""
    from medclip_core.io import load_image

    csv_path = Path(csv_path)
    rows = read_csv_rows(csv_path, {"image", "report"})
    root = csv_path.parent
    problems: list[DatasetProblem] = []
    good: list[dict[str, str]] = []
    seen: dict[tuple[str, str], int] = {}
    for line, row in enumerate(rows, start=2):
        try:
            path = image_path_in(root, row["image"], f"line {line}")
        except TaskInputError as exc:
            problems.append(DatasetProblem(line, "outside_folder", str(exc)))
            continue
        key = (str(path), row["report"])
        if key in seen:
            problems.append(DatasetProblem(line, "duplicate_row", f"line {line} repeats line {seen[key]}."))
            continue
        seen[key] = line
        if not row["report"]:
            problems.append(DatasetProblem(line, "empty_report", f"line {line}: the report is empty."))
            continue
        if not path.is_file():
            problems.append(DatasetProblem(line, "missing_file", f"line {line}: no file '{row['image']}'."))
            continue
        try:
            load_image(path)
        except ImageLoadError as exc:
            problems.append(DatasetProblem(line, "unreadable_image", f"line {line}: {exc}"))
            continue
        good.append(row)
    report = DatasetReport(str(csv_path), len(rows), len(good), problems,
                           refused=any(p.kind == "outside_folder" for p in problems))
    if not report.refused and len(good) >= MIN_PAIRS:
        clean = root / CLEAN_NAME
        with open(clean, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=["image", "report", "labels"], extrasaction="ignore")
            writer.writeheader()
            writer.writerows({"labels": "", **row} for row in good)
        report.clean_csv = str(clean)
    return report


def _extract_zip(archive: Path, folder: Path) -> None:
    """Unpack ``archive`` into ``folder``, refusing members that would land outside it or a zip bomb."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.infolist() if not m.is_dir()]
            if sum(m.file_size for m in members) > MAX_UNZIPPED_BYTES:
                raise TaskInputError(f"{archive.name} unpacks to more than {MAX_UNZIPPED_BYTES // 1024 ** 3} GB.")
            for member in members:
                target = image_path_in(folder, member.filename, f"{archive.name}, member {member.filename}")
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out)
    except zipfile.BadZipFile as exc:
        raise TaskInputError(f"{archive.name} is not a readable zip file ({exc}).") from exc


def import_upload(files: list[str | Path], datasets_root: Path) -> Path:
    """Copy uploaded files into a new folder under ``datasets_root``; return the dataset CSV in it.

    Either one zip (holding a CSV and its images) or a CSV with the image files it names."""
    files = [Path(f) for f in files or []]
    if not files:
        raise TaskInputError("Upload a zip of images with a CSV, or a CSV with its image files.")
    folder = Path(datasets_root) / uuid.uuid4().hex[:12]
    folder.mkdir(parents=True)
    zips = [f for f in files if f.suffix.lower() == ".zip"]
    if zips:
        if len(files) > 1:
            raise TaskInputError("Upload either one zip or a CSV with its images, not both.")
        _extract_zip(zips[0], folder)
    else:
        for f in files:
            shutil.copyfile(f, folder / f.name)
    csvs = sorted((p for p in folder.rglob("*.csv") if p.name != CLEAN_NAME),
                  key=lambda p: (len(p.relative_to(folder).parts), str(p)))
    if not csvs:
        raise TaskInputError("The upload holds no CSV file (columns image,report[,labels]).")
    return csvs[0]


UPLOAD_PREFIX = "upload:"


def register_upload(files: list[str | Path], datasets_root: Path) -> tuple[str, DatasetReport]:
    """Import uploaded files and validate them; returns the dataset name a run takes (``upload:ID``)."""
    csv_path = import_upload(files, datasets_root)
    dataset_id = csv_path.relative_to(datasets_root).parts[0]
    return f"{UPLOAD_PREFIX}{dataset_id}", validate_pairs_csv(csv_path)


def resolve_dataset(name: str, datasets_root: Path) -> str:
    """A dataset name from the UI or API as ``RunRequest.data``: ``phantom``, ``phantom:N`` pass through,
    ``upload:ID`` becomes the clean CSV of a validated upload. Server paths are not accepted here."""
    name = (name or "").strip()
    if name == "phantom" or name.startswith("phantom:"):
        return name
    if name.startswith(UPLOAD_PREFIX):
        dataset_id = name[len(UPLOAD_PREFIX):]
        folder = Path(datasets_root) / dataset_id
        clean = sorted(folder.rglob(CLEAN_NAME)) if dataset_id.isalnum() and folder.is_dir() else []
        if not clean:
            raise TaskInputError(f"'{name}' is not a validated, usable upload: upload the dataset and validate it.")
        return str(clean[0])
    raise TaskInputError(f"Unknown dataset '{name}': use phantom, phantom:N or a validated upload (upload:ID).")
