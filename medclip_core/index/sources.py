"""What an indexing job reads: the list of source images, and how one image becomes model input.

A source is a folder (every PNG/JPEG/TIFF/DICOM file under it, recursively, in sorted order) or a
CSV with an ``image`` column (paths relative to the CSV's folder) and optional ``report`` and
``labels`` (``|``-separated) columns. Listing is cheap (no file is opened), so a job over millions
of files starts at once; the same path listed twice is kept once. Files are opened by
:func:`decode_item`, in worker processes (local engine) or CPU tasks (Ray engine); a file that
cannot be read becomes a *problem* row, never an exception.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pydicom
import torch

from medclip_core.data.tables import image_path_in, read_csv_rows
from medclip_core.errors import ImageLoadError, MedclipError
from medclip_core.data.galleries import IMAGE_SUFFIXES
from medclip_core.io import load_image

DICOM_MAGIC = b"DICM"
DICOM_MAGIC_OFFSET = 128


@dataclass(frozen=True)
class SourceItem:
    """One listed image: ``position`` in the source order, ``image_id`` (its path relative to the
    source root, POSIX), and the report and labels a CSV gave it."""

    position: int
    image_id: str
    report: str | None = None
    labels: tuple[str, ...] | None = None


@dataclass(frozen=True)
class SourceListing:
    """The images of a source: ``items`` in order, paths relative to ``root``; ``repeats`` are
    (path, reason) pairs for rows that named an image already listed (kept once)."""

    kind: str  # "folder" or "csv"
    source: str
    root: str
    items: list[SourceItem]
    repeats: list[tuple[str, str]]

    def digest(self) -> str:
        """A hash of the listed ids, so a resumed job can check it is reading the same source."""
        digest = hashlib.sha256()
        for item in self.items:
            digest.update(item.image_id.encode() + b"\n")
        return digest.hexdigest()


@dataclass(frozen=True)
class DecodedItem:
    """An image ready for the model: ``pixels`` (3, S, S) float32, or ``problem`` (why not)."""

    position: int
    pixels: np.ndarray | None
    sop_instance_uid: str | None
    problem: str | None


def _is_image_file(path: Path, root: Path) -> bool:
    hidden = any(part.startswith(".") for part in path.relative_to(root).parts)
    return not hidden and (path.suffix.lower() in IMAGE_SUFFIXES or not path.suffix) and path.is_file()


def list_source(source: str | os.PathLike) -> SourceListing:
    """The images of a folder (recursive) or of a CSV; see the module docstring."""
    path = Path(source).expanduser().resolve()
    if path.is_dir():
        files = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if _is_image_file(p, path))
        items = [SourceItem(i, relative) for i, relative in enumerate(files)]
        kind, root, repeats = "folder", path, []
    elif path.is_file() and path.suffix.lower() == ".csv":
        kind, root = "csv", path.parent
        items, repeats = _csv_items(path)
    else:
        raise MedclipError(f"Index source '{source}' is neither a folder of images nor a CSV file.")
    if not items:
        raise MedclipError(f"{path} lists no image files (PNG, JPEG, TIFF, DICOM).")
    return SourceListing(kind, str(path), str(root), items, repeats)


def _csv_items(csv_file: Path) -> tuple[list[SourceItem], list[tuple[str, str]]]:
    rows = read_csv_rows(csv_file, {"image"})
    has_labels = bool(rows) and "labels" in rows[0]
    items: list[SourceItem] = []
    repeats: list[tuple[str, str]] = []
    seen: set[str] = set()
    for number, row in enumerate(rows, start=1):
        cell = row.get("image", "")
        if not cell:
            repeats.append((f"{csv_file.name} row {number}", "no image path in the 'image' column"))
            continue
        relative = image_path_in(csv_file.parent, cell, f"{csv_file.name}, row {number}") \
            .relative_to(csv_file.parent.resolve()).as_posix()
        if relative in seen:
            repeats.append((relative, f"listed again in row {number}; indexed once"))
            continue
        seen.add(relative)
        labels = (tuple(sorted(p.strip().lower() for p in row.get("labels", "").split("|") if p.strip()))
                  if has_labels else None)
        items.append(SourceItem(len(items), relative, row.get("report") or None, labels))
    return items, repeats


def sop_instance_uid(path: Path) -> str | None:
    """The SOP Instance UID of a DICOM file (header only), None for other files."""
    with open(path, "rb") as handle:
        if handle.read(DICOM_MAGIC_OFFSET + 4)[DICOM_MAGIC_OFFSET:] != DICOM_MAGIC:
            return None
    header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
    uid = header.get("SOPInstanceUID")
    return str(uid).strip() or None if uid else None


def decode_item(root: str, item: SourceItem, preprocess: Callable[..., torch.Tensor]) -> DecodedItem:
    """Read ``item`` under ``root`` and apply the model's ``preprocess``; a problem row if unreadable."""
    path = Path(root) / item.image_id
    try:
        if not path.is_file():
            raise ImageLoadError("file not found")
        pixels = preprocess(load_image(path)).numpy().astype(np.float32, copy=False)
        return DecodedItem(item.position, pixels, sop_instance_uid(path), None)
    except (ImageLoadError, OSError, pydicom.errors.InvalidDicomError) as error:
        return DecodedItem(item.position, None, None, str(error) or type(error).__name__)
