"""Training datasets handed in by users: a CSV of ``image,report[,labels]`` rows, alone or in a zip
with its images. Checked before a run starts, so that a run does not fail an hour in.

``validate_pairs_csv`` reads every row and reports, per line, image files that are missing or
unreadable, empty reports, duplicated rows, and image paths that leave the dataset folder. A
dataset with a path leaving its folder is refused as a whole; otherwise the good rows (first
copy of a duplicate) are written to ``pairs.clean.csv`` next to the CSV, which is what a run trains on.
``import_upload`` puts uploaded files (a zip, or a CSV with its images) into a fresh folder under
the runs folder, refusing zip members whose names leave it.

Zips are bounded before anything is written, from their central directory: at most
``MAX_UNZIPPED_BYTES`` unpacked (2 GiB), ``MAX_ZIP_MEMBERS`` entries (50,000) and, for members over
``RATIO_CHECKED_BYTES`` (1 MiB), ``MAX_COMPRESSION_RATIO`` (200) unpacked bytes per stored byte; images,
DICOM files and CSVs stay far below that, a zip bomb (deflate reaches about 1,000) does not. The first
two can be changed with ``MEDCLIP_UPLOAD_MAX_UNZIPPED_BYTES`` and
``MEDCLIP_UPLOAD_MAX_MEMBERS``. While unpacking,
each member is cut off at the size its header declares, so a lying header gets no further. An upload
that is refused or not usable is deleted with its folder; a usable one expires after
``MEDCLIP_UPLOAD_TTL_HOURS`` (24) unless a queued or running run trains on it
(:func:`remove_expired_uploads`).
"""
from __future__ import annotations

import csv
import os
import shutil
import time
import uuid
import zipfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medclip_core.data.tables import image_path_in, read_csv_rows
from medclip_core.errors import ImageLoadError, TaskInputError

CLEAN_NAME = "pairs.clean.csv"
MIN_PAIRS = 2
MAX_UNZIPPED_BYTES = int(os.environ.get("MEDCLIP_UPLOAD_MAX_UNZIPPED_BYTES", 2 * 1024 ** 3))
MAX_ZIP_MEMBERS = int(os.environ.get("MEDCLIP_UPLOAD_MAX_MEMBERS", 50_000))
MAX_COMPRESSION_RATIO = 200
RATIO_CHECKED_BYTES = 1024 ** 2  # smaller members may compress better (a CSV of similar rows); the total bounds them
COPY_CHUNK = 1024 ** 2
UPLOAD_TTL_ENV = "MEDCLIP_UPLOAD_TTL_HOURS"
DEFAULT_UPLOAD_TTL_HOURS = 24.0
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


def _mib(size: int) -> str:
    return f"{size / 1024 ** 2:,.1f} MiB"


def _check_zip_directory(zf: zipfile.ZipFile, name: str) -> list[zipfile.ZipInfo]:
    """The file members of a zip, after checking its directory against the upload limits."""
    entries = zf.infolist()
    if len(entries) > MAX_ZIP_MEMBERS:
        raise TaskInputError(f"{name} holds {len(entries):,} entries; an upload may hold at most {MAX_ZIP_MEMBERS:,}.")
    members = [m for m in entries if not m.is_dir()]
    total = sum(m.file_size for m in members)
    if total > MAX_UNZIPPED_BYTES:
        raise TaskInputError(f"{name} unpacks to {_mib(total)}; an upload may unpack to at most "
                             f"{_mib(MAX_UNZIPPED_BYTES)}.")
    for m in members:
        if m.file_size > RATIO_CHECKED_BYTES and m.file_size > MAX_COMPRESSION_RATIO * m.compress_size:
            raise TaskInputError(f"{name}: member {m.filename} is compressed "
                                 f"{m.file_size / max(m.compress_size, 1):,.0f} times ({_mib(m.file_size)} from "
                                 f"{m.compress_size:,} bytes), more than the {MAX_COMPRESSION_RATIO} times "
                                 "images and tables reach: refused as a zip bomb.")
    return members


def _copy_member(zf: zipfile.ZipFile, member: zipfile.ZipInfo, target: Path) -> None:
    """Copy one member, stopping as soon as it yields more bytes than its header declares (zipfile
    itself stops there and fails the CRC; counting keeps the bound independent of that)."""
    written = 0
    with zf.open(member) as source, open(target, "wb") as out:
        while chunk := source.read(COPY_CHUNK):
            written += len(chunk)
            if written > member.file_size:
                raise TaskInputError(f"Member {member.filename} holds more than the {member.file_size:,} bytes "
                                     "its header declares: refused.")
            out.write(chunk)


def _extract_zip(archive: Path, folder: Path) -> None:
    """Create ``folder`` and unpack ``archive`` into it, after checking the zip's directory against the
    limits, refusing members that would land outside the folder or unpack beyond their declared size."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = _check_zip_directory(zf, archive.name)
            folder.mkdir(parents=True)
            for member in members:
                target = image_path_in(folder, member.filename, f"{archive.name}, member {member.filename}")
                target.parent.mkdir(parents=True, exist_ok=True)
                _copy_member(zf, member, target)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError) as exc:
        raise TaskInputError(f"{archive.name} is not a readable zip file ({exc}).") from exc


@contextmanager
def _discarded_on_error(folder: Path) -> Iterator[None]:
    """Delete ``folder`` (an upload's own) if the block fails, so refused uploads leave nothing behind."""
    try:
        yield
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def import_upload(files: list[str | Path], datasets_root: Path) -> Path:
    """Copy uploaded files into a new folder under ``datasets_root``; return the dataset CSV in it.

    Either one zip (holding a CSV and its images) or a CSV with the image files it names. A refused
    upload leaves no folder."""
    files = [Path(f) for f in files or []]
    if not files:
        raise TaskInputError("Upload a zip of images with a CSV, or a CSV with its image files.")
    zips = [f for f in files if f.suffix.lower() == ".zip"]
    if zips and len(files) > 1:
        raise TaskInputError("Upload either one zip or a CSV with its images, not both.")
    folder = Path(datasets_root) / uuid.uuid4().hex[:12]
    with _discarded_on_error(folder):
        if zips:
            _extract_zip(zips[0], folder)
        else:
            folder.mkdir(parents=True)
            for f in files:
                shutil.copyfile(f, folder / f.name)
        csvs = sorted((p for p in folder.rglob("*.csv") if p.name != CLEAN_NAME),
                      key=lambda p: (len(p.relative_to(folder).parts), str(p)))
        if not csvs:
            raise TaskInputError("The upload holds no CSV file (columns image,report[,labels]).")
    return csvs[0]


UPLOAD_PREFIX = "upload:"


def register_upload(files: list[str | Path], datasets_root: Path) -> tuple[str, DatasetReport]:
    """Import uploaded files and validate them; returns the dataset name a run takes (``upload:ID``).
    An upload that is not usable is deleted: its report is all that is left of it."""
    csv_path = import_upload(files, datasets_root)
    dataset_id = csv_path.relative_to(datasets_root).parts[0]
    folder = Path(datasets_root) / dataset_id
    with _discarded_on_error(folder):
        report = validate_pairs_csv(csv_path)
    if not report.usable:
        shutil.rmtree(folder, ignore_errors=True)
    return f"{UPLOAD_PREFIX}{dataset_id}", report


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


def upload_ttl_s() -> float:
    """How long a validated upload is kept (``MEDCLIP_UPLOAD_TTL_HOURS``, default 24 h), in seconds."""
    return float(os.environ.get(UPLOAD_TTL_ENV, "") or DEFAULT_UPLOAD_TTL_HOURS) * 3600


def remove_expired_uploads(datasets_root: Path, in_use: list[str | Path], max_age_s: float | None = None) -> list[Path]:
    """Delete upload folders under ``datasets_root`` older than ``max_age_s`` (default :func:`upload_ttl_s`),
    except those holding a path of ``in_use`` (the data of queued and running runs); returns the deleted ones."""
    root = Path(datasets_root)
    if not root.is_dir():
        return []
    max_age_s = upload_ttl_s() if max_age_s is None else max_age_s
    used = [Path(p).resolve() for p in in_use]
    removed = []
    for folder in root.iterdir():
        if not folder.is_dir() or time.time() - folder.stat().st_mtime <= max_age_s:
            continue
        if any(folder.resolve() in path.parents for path in used):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed
