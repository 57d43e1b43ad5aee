"""Galleries: collections of images with, where known, their finding labels and reports.

A :class:`Collection` is what retrieval searches and the embedding map draws: the phantom test
split (the default, rendered on demand), a folder of images, or a CSV of image paths with
optional reports and labels. Images are loaded (or rendered) only when asked for, so a large
gallery is never held in memory. Each collection carries a ``fingerprint`` that changes whenever
its images may have changed (phantom parameters and the renderer's and report parser's source;
file names, sizes and modification times), which names its cached embeddings
(:mod:`medclip_core.models.embedding_cache`).
"""
from __future__ import annotations

import functools
import hashlib
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from medclip_core.data import phantom as phantom_module
from medclip_core.data import reports as reports_module
from medclip_core.data.findings import FINDINGS
from medclip_core.data.tables import image_path_in, read_csv_rows
from medclip_core.errors import ImageLoadError, MedclipError
from medclip_core.io import MedicalImage, image_from_array, load_image
from medclip_core.models.embedding_cache import content_digest

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".dcm", ".dicom"})


@dataclass(frozen=True)
class GalleryItem:
    """One gallery image: its id, finding labels and report when known, and how to load it.

    ``labels`` is None for unlabelled galleries (a plain folder); ``path`` is None for rendered
    phantom images. ``image()`` loads (or renders) the pixels again on each call.
    """

    item_id: str
    labels: frozenset[str] | None
    report: str | None
    path: str | None
    loader: Callable[[], MedicalImage] = field(repr=False, compare=False)

    def image(self) -> MedicalImage:
        return self.loader()

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.item_id, "labels": sorted_labels(self.labels), "report": self.report,
                "path": self.path}


@dataclass(frozen=True)
class SkippedFile:
    """A file a collection left out, and why (shown to the user as it is)."""

    path: str
    reason: str


@dataclass
class Collection:
    """A gallery of images to search; ``fingerprint`` changes whenever its images may have changed."""

    name: str
    items: list[GalleryItem]
    fingerprint: str
    skipped: list[SkippedFile] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labelled(self) -> bool:
        return bool(self.items) and all(item.labels is not None for item in self.items)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "n_items": len(self.items), "labelled": self.labelled,
                "n_skipped": len(self.skipped),
                "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped]}


def sorted_labels(labels: Iterable[str] | None) -> list[str] | None:
    """Labels in ``FINDINGS`` order (unknown ones after, alphabetically); None stays None."""
    if labels is None:
        return None
    order = {label: i for i, label in enumerate(FINDINGS)}
    return sorted(labels, key=lambda label: (order.get(label, len(order)), label))


class RenderCache:
    """Rendered phantom gallery images, least recently used first out, keyed by (report id, dataset
    seed, index, size); thread-safe. Retrieval shows the same few top hits again and again, and a
    render costs about 8 ms (a result page of 8 thumbnails was 64 of its 78 ms). The images are
    read-only, since every caller shares them. ``renders`` counts images actually drawn, ``hits``
    the look-ups served from memory. 256 grey 224-px images hold about 50 MB.
    """

    def __init__(self, max_entries: int = 256) -> None:
        self.max_entries = max_entries
        self._images: OrderedDict[tuple, MedicalImage] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.renders = 0

    def image(self, dataset: phantom_module.PhantomDataset, index: int) -> MedicalImage:
        """Item ``index`` of ``dataset`` as an image, rendered only when it is not in the cache."""
        key = (dataset.reports[index // dataset.variants_per_report].report_id, dataset.seed, index,
               dataset.size, dataset.variants_per_report)
        with self._lock:
            if key in self._images:
                self.hits += 1
                self._images.move_to_end(key)
                return self._images[key]
        image = image_from_array(dataset[index].image, {"format": "phantom"})  # outside the lock: renders run in parallel
        image.pixels.flags.writeable = False
        with self._lock:
            self.renders += 1
            self._images[key] = image
            self._images.move_to_end(key)
            while len(self._images) > self.max_entries:
                self._images.popitem(last=False)
        return image

    def clear(self) -> None:
        with self._lock:
            self._images.clear()
            self.hits = self.renders = 0


PHANTOM_RENDERS = RenderCache()


def _render_phantom(dataset: phantom_module.PhantomDataset, index: int) -> MedicalImage:
    return PHANTOM_RENDERS.image(dataset, index)


def phantom_collection(n: int | None = None, seed: int = 0, size: int = 224, split: str = "test") -> Collection:
    """The first ``n`` images of the phantom ``split`` (all of it when None), rendered on demand.

    The fingerprint covers the parameters and the source of the renderer and the report parser,
    so a cached index is rebuilt when either changes.
    """
    try:
        dataset = phantom_module.phantom_dataset(split=split, seed=seed, size=size)
    except ValueError as error:  # unknown split
        raise MedclipError(str(error)) from error
    count = len(dataset) if n is None else n
    if not 1 <= count <= len(dataset):
        raise MedclipError(f"The phantom {split} split has {len(dataset)} images; "
                           f"choose n between 1 and {len(dataset)}.")
    renderer = [hashlib.sha256(Path(m.__file__).read_bytes()).hexdigest() for m in (phantom_module, reports_module)]
    items = []
    for i, report in enumerate(dataset.reports[:count]):
        items.append(GalleryItem(report.report_id, report.labels, report.text, None,
                                 functools.partial(_render_phantom, dataset, i)))
    return Collection(f"phantom {split} (n={count}, {size} px, seed {seed})", items,
                      content_digest("phantom", split, count, seed, size, renderer))


def _file_state(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def _unreadable_reason(path: Path) -> str | None:
    """None when ``path`` loads as an image, else the reason it does not (load_image raises only ImageLoadError)."""
    try:
        load_image(path)
    except ImageLoadError as error:
        return str(error)
    return None


def folder_collection(folder: str | os.PathLike, name: str | None = None) -> Collection:
    """Every image under ``folder`` (recursively), unlabelled, ids = paths relative to the folder.

    Files with an image suffix (PNG, JPEG, TIFF, BMP, GIF, WebP, DICOM) or with no suffix (DICOM
    files often have none) are opened once with :func:`~medclip_core.io.load_image` to check them;
    the unreadable ones are left out and listed in ``skipped``. Hidden files and other suffixes
    (.txt, .json ...) are ignored.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise MedclipError(f"Folder not found: {root}. Choose an existing folder of images.")
    candidates = sorted(p for p in root.rglob("*")
                        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
                        and (p.suffix.lower() in IMAGE_SUFFIXES or not p.suffix))
    items, skipped, state = [], [], []
    for path in candidates:
        relative = path.relative_to(root).as_posix()
        reason = _unreadable_reason(path)
        if reason is not None:
            skipped.append(SkippedFile(relative, reason))
            continue
        items.append(GalleryItem(relative, None, None, str(path), functools.partial(load_image, path)))
        state.append((relative, *_file_state(path)))
    if not items:
        raise MedclipError(
            f"No readable images in {root}: {len(candidates)} image file(s) found, {len(skipped)} could not be read. "
            f"Supported: {', '.join(sorted(IMAGE_SUFFIXES))} or DICOM files without a suffix.")
    return Collection(name or root.name, items, content_digest("folder", str(root.resolve()), state), skipped)


def csv_collection(csv_path: str | os.PathLike, name: str | None = None) -> Collection:
    """Images listed in a CSV: column ``image`` (path relative to the CSV's folder), optional
    ``report`` (text) and ``labels`` (``|``-separated, e.g. ``cardiomegaly|pleural effusion``).

    A path that leaves the CSV's folder (absolute, ``..``, or a link pointing outside) makes the
    whole CSV refused. Missing, unreadable or repeated images are left out and listed in
    ``skipped``. With a ``labels`` column every item is labelled (an empty cell = no findings).
    """
    csv_file = Path(csv_path).expanduser()
    rows = read_csv_rows(csv_file, {"image"})
    root = csv_file.parent.resolve()
    has_labels = bool(rows) and "labels" in rows[0]
    items, skipped, state, seen = [], [], [], set()
    for number, row in enumerate(rows, start=1):  # data rows, header not counted
        relative = row.get("image", "")
        if not relative:
            skipped.append(SkippedFile(f"row {number}", "no image path in the 'image' column"))
            continue
        path = image_path_in(root, relative, f"{csv_file.name}, row {number}")
        relative = path.relative_to(root).as_posix()  # one id per file, however the cell spells it
        if relative in seen:
            skipped.append(SkippedFile(relative, f"listed again in row {number}"))
            continue
        seen.add(relative)
        if not path.is_file():
            skipped.append(SkippedFile(relative, f"row {number}: file not found"))
            continue
        reason = _unreadable_reason(path)
        if reason is not None:
            skipped.append(SkippedFile(relative, reason))
            continue
        labels = (frozenset(part.strip().lower() for part in row.get("labels", "").split("|") if part.strip())
                  if has_labels else None)
        items.append(GalleryItem(relative, labels, row.get("report") or None, str(path),
                                 functools.partial(load_image, path)))
        state.append((relative, *_file_state(path)))
    if not items:
        raise MedclipError(f"{csv_file.name} lists no readable images ({len(skipped)} row(s) skipped).")
    fingerprint = content_digest("csv", str(csv_file.resolve()), _file_state(csv_file), state)
    return Collection(name or csv_file.stem, items, fingerprint, skipped)


def collection_from_spec(spec: str, allowed_root: str | os.PathLike | None = None,
                         allow_paths: bool = True) -> Collection:
    """``phantom`` / ``phantom:N`` (the phantom test split, all or the first N), a folder or a CSV.

    ``allowed_root`` confines folders and CSVs to one server folder, and ``allow_paths=False``
    refuses them altogether: the app uses these so that a user of a shared deployment cannot
    read arbitrary server paths.
    """
    spec = (spec or "phantom").strip()
    if spec == "phantom" or spec.startswith("phantom:"):
        count = spec.partition(":")[2]
        if count and not count.isdigit():
            raise MedclipError(f"'{spec}': write phantom:N with N a whole number of images.")
        return phantom_collection(n=int(count) if count else None)
    if not allow_paths:
        raise MedclipError("This deployment only serves the phantom gallery (phantom or phantom:N); the host "
                           "can allow server folders by setting MEDCLIP_GALLERY_ROOT.")
    path = Path(spec).expanduser().resolve()
    if allowed_root is not None:
        root = Path(allowed_root).expanduser().resolve()
        if path != root and root not in path.parents:
            raise MedclipError(f"Galleries must lie inside {root}.")
    if path.is_dir():
        return folder_collection(path)
    if path.suffix.lower() == ".csv" and path.is_file():
        return csv_collection(path)
    raise MedclipError(f"'{spec}' is neither 'phantom', a folder of images nor a CSV file.")
