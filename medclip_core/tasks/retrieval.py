"""Retrieval over a gallery of medical images: text -> images, image -> images, image -> reports.

A :class:`Collection` is the gallery: the phantom test split (the default, rendered on demand), a
folder of images, or a CSV of image paths with optional reports and labels. :func:`build_index`
embeds its images once per model and keeps the vectors on disk, so the next session (or the next
call) loads them instead of running the model again:

* the cache folder is ``$MEDCLIP_CACHE_DIR`` or ``~/.cache/medclip-explorer/indexes``; each
  entry is named by the model fingerprint (card name/source/image size + a strided sample of every
  weight tensor, so changed weights give a new entry) and the collection fingerprint (phantom
  parameters and renderer source, or file names, sizes and modification times);
* an entry holds ``vectors.npy`` (L2-normalised float32), ``items.json`` (id, labels, report,
  path per row) and ``fingerprint.json``; it is written to a temporary folder and renamed into
  place, so a crash or a concurrent build never leaves half an entry.

Search runs in FAISS on inner products (= cosine similarity, the vectors being normalised): an
exact ``IndexFlatIP`` up to ``EXACT_INDEX_MAX`` (50,000) vectors, above that an approximate
``IndexHNSWFlat`` (graph search, ``HNSW_NEIGHBORS`` links per node, ``efSearch`` at least k),
which answers in milliseconds where a flat scan of millions would not, at the cost of sometimes
missing a true neighbour; that index is saved too (``index.faiss``) since building it is slow.

Query images are embedded and searched, never added to an index or written anywhere: uploads
stay in the user's session. :func:`image_to_reports` retrieves whole reports (CXR-RePaiR style)
from a report corpus, by default the training split of the Open-i reports, whose text embeddings
are cached on disk in the same way.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import faiss
import numpy as np

from medclip_core.data import reports as reports_module
from medclip_core.data.labeller import label_text
from medclip_core.data import phantom as phantom_module
from medclip_core.data.reports import FINDINGS, Report, load_reports, report_splits
from medclip_core.data.tables import image_path_in, read_csv_rows
from medclip_core.errors import ImageLoadError, MedclipError
from medclip_core.eval.metrics import precision_at_k as precision_at_k_matrix
from medclip_core.io import MedicalImage, image_from_array, load_image
from medclip_core.models.base import ClipModel, ImageLike
from medclip_core.tasks import embed_in_batches

CACHE_DIR_ENV = "MEDCLIP_CACHE_DIR"
DEFAULT_CACHE_DIR = Path("~/.cache/medclip-explorer/indexes")
INDEX_FORMAT = 1  # bump when the layout of a cache entry changes
EXACT_INDEX_MAX = 50_000  # above this many vectors the index is approximate (HNSW)
HNSW_NEIGHBORS = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 256  # recall@10 0.98 (128: 0.93) against exact search, 100k image-like vectors (bench_tasks)
MAX_K = 1000
WEIGHT_SAMPLES_PER_TENSOR = 64  # values of each weight tensor that enter the model fingerprint
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".dcm", ".dicom"})

Progress = Callable[[int, int], Any]


# ---------------------------------------------------------------------------------------------
# Collections


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


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _render_phantom(dataset: phantom_module.PhantomDataset, index: int) -> MedicalImage:
    return image_from_array(dataset[index].image, {"format": "phantom"})


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
                      _digest("phantom", split, count, seed, size, renderer))


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
    return Collection(name or root.name, items, _digest("folder", str(root.resolve()), state), skipped)


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
    fingerprint = _digest("csv", str(csv_file.resolve()), _file_state(csv_file), state)
    return Collection(name or csv_file.stem, items, fingerprint, skipped)


# ---------------------------------------------------------------------------------------------
# Fingerprints and the on-disk cache


def model_fingerprint(model: ClipModel, buffers: bool = True) -> str:
    """Hash of the model's identity and weights, cheap enough to take on every query.

    Card name, source and image size, then for every tensor of the state dict its name, shape
    and ``WEIGHT_SAMPLES_PER_TENSOR`` evenly strided values: any training step or other
    checkpoint changes the hash, without reading every weight. ``buffers=False`` hashes the
    trained parameters only (not e.g. BatchNorm running statistics, which the loader's probe
    forward currently nudges by a thread-count-dependent rounding amount).
    """
    digest = hashlib.sha256(f"{model.card.name}\n{model.card.source}\n{model.card.image_size}".encode())
    tensors = model.module.state_dict() if buffers else dict(model.module.named_parameters())
    for name, tensor in tensors.items():
        flat = tensor.detach().reshape(-1)
        stride = max(1, flat.numel() // WEIGHT_SAMPLES_PER_TENSOR)
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(flat[::stride].float().cpu().numpy().tobytes())
    return digest.hexdigest()


def default_cache_dir() -> Path:
    """``$MEDCLIP_CACHE_DIR`` if set, else ``~/.cache/medclip-explorer/indexes``."""
    return Path(os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR).expanduser()


def _faiss_index(vectors: np.ndarray) -> Any:
    if len(vectors) <= EXACT_INDEX_MAX:
        index = faiss.IndexFlatIP(vectors.shape[1])
    else:
        index = faiss.IndexHNSWFlat(vectors.shape[1], HNSW_NEIGHBORS, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    index.add(vectors)
    return index


def _load_entry(folder: Path, fingerprint: dict[str, Any]) -> tuple[np.ndarray, Any] | None:
    """The cached vectors and FAISS index in ``folder`` if it holds exactly this fingerprint."""
    try:
        if json.loads((folder / "fingerprint.json").read_text()) != fingerprint:
            return None
        vectors = np.load(folder / "vectors.npy")
        index = (faiss.read_index(str(folder / "index.faiss")) if (folder / "index.faiss").is_file()
                 else _faiss_index(vectors))
    except (OSError, ValueError, RuntimeError):  # missing or damaged entry: rebuild it
        return None
    return vectors, index


def _save_entry(folder: Path, fingerprint: dict[str, Any], vectors: np.ndarray, index: Any,
                items: list[GalleryItem]) -> Path | None:
    """Write the entry (staged, then renamed into place); None when the cache cannot be written.

    A read-only or full cache disk only costs the reuse: the index in memory works all the same.
    """
    staging = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".building-", dir=folder.parent))
        np.save(staging / "vectors.npy", vectors)
        if not isinstance(index, faiss.IndexFlat):
            faiss.write_index(index, str(staging / "index.faiss"))
        (staging / "items.json").write_text(json.dumps([item.to_dict() for item in items]))
        (staging / "fingerprint.json").write_text(json.dumps(fingerprint))
        if folder.exists():  # a stale or damaged entry under the same name
            shutil.rmtree(folder)
        os.replace(staging, folder)
    except (OSError, RuntimeError):  # faiss reports write errors as RuntimeError
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        return None
    return folder


# ---------------------------------------------------------------------------------------------
# Indexes


@dataclass
class RetrievalHit:
    """One result: ``rank`` 1 is the most similar; ``score`` is the cosine similarity."""

    rank: int
    score: float
    item_id: str
    report: str | None
    labels: list[str] | None
    path: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "score": self.score, "id": self.item_id, "report": self.report,
                "labels": self.labels, "path": self.path}


@dataclass
class VectorIndex:
    """Embeddings of a gallery in FAISS: ``vectors[i]`` (L2-normalised) belongs to ``items[i]``.

    ``modality`` is ``"image"`` for :func:`build_index` and ``"text"`` for the report corpus of
    :func:`image_to_reports`. ``path`` is the cache entry (None when the cache folder could not
    be written); ``from_cache`` says whether the vectors were loaded from it rather than computed.
    """

    name: str
    modality: str
    items: list[GalleryItem]
    vectors: np.ndarray
    model_fingerprint: str
    source_fingerprint: str
    path: Path | None
    from_cache: bool
    faiss_index: Any = field(repr=False)

    def __post_init__(self) -> None:
        self._by_id = {item.item_id: item for item in self.items}

    def __len__(self) -> int:
        return len(self.items)

    @property
    def kind(self) -> str:
        return "exact" if isinstance(self.faiss_index, faiss.IndexFlat) else "approximate (HNSW)"

    def item(self, item_id: str) -> GalleryItem:
        if item_id not in self._by_id:
            raise MedclipError(f"No item '{item_id}' in {self.name}.")
        return self._by_id[item_id]

    def search(self, query: np.ndarray, k: int) -> list[RetrievalHit]:
        """The ``min(k, len(self))`` items most similar to the (D,) or (1, D) ``query``, best first."""
        k = min(k, len(self.items))
        if not isinstance(self.faiss_index, faiss.IndexFlat):
            self.faiss_index.hnsw.efSearch = max(HNSW_EF_SEARCH, k)
        scores, rows = self.faiss_index.search(np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1), k)
        # HNSW pads with row -1 when it finds fewer; equal scores keep gallery order
        found = sorted(((float(s), int(r)) for s, r in zip(scores[0], rows[0]) if r >= 0),
                       key=lambda pair: (-pair[0], pair[1]))
        hits = []
        for rank, (score, row) in enumerate(found, start=1):
            item = self.items[row]
            hits.append(RetrievalHit(rank, score, item.item_id, item.report, sorted_labels(item.labels), item.path))
        return hits

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "modality": self.modality, "n_items": len(self.items),
                "dim": int(self.vectors.shape[1]), "kind": self.kind,
                "path": str(self.path) if self.path else None, "from_cache": self.from_cache}


def _cached_index(model: ClipModel, name: str, modality: str, items: list[GalleryItem], source_fingerprint: str,
                  cache_dir: str | os.PathLike | None, embed: Callable[[], np.ndarray]) -> VectorIndex:
    """Load the entry for (model, source) from the cache, or ``embed()`` and save it."""
    model_fp = model_fingerprint(model)
    fingerprint = {"format": INDEX_FORMAT, "modality": modality, "model": model_fp, "source": source_fingerprint,
                   "model_name": model.card.name, "ids": [item.item_id for item in items]}
    entry_name = f"{modality}-{model_fp[:16]}-{source_fingerprint[:16]}"
    folder = Path(cache_dir or default_cache_dir()).expanduser() / entry_name
    cached = _load_entry(folder, fingerprint)
    if cached is not None:
        vectors, index = cached
        return VectorIndex(name, modality, items, vectors, model_fp, source_fingerprint, folder, True, index)
    vectors = np.ascontiguousarray(embed(), dtype=np.float32)
    index = _faiss_index(vectors)
    saved = _save_entry(folder, fingerprint, vectors, index, items)
    return VectorIndex(name, modality, items, vectors, model_fp, source_fingerprint, saved, False, index)


def build_index(model: ClipModel, collection: Collection, cache_dir: str | os.PathLike | None = None,
                batch_size: int = 32, progress: Progress | None = None) -> VectorIndex:
    """Embed every image of ``collection`` (or load the cached embeddings) into a searchable index.

    ``progress(done, total)`` gets the number of images embedded so far after each batch, and
    (total, total) once on a cache hit. See the module docstring for the cache.
    """
    if not collection.items:
        raise MedclipError(f"The collection '{collection.name}' has no images to index.")
    loaders = [item.image for item in collection.items]
    index = _cached_index(model, collection.name, "image", collection.items, collection.fingerprint, cache_dir,
                          lambda: embed_in_batches(model.encode_image, loaders, batch_size, progress))
    if index.from_cache and progress is not None:
        progress(len(index), len(index))
    return index


def build_report_index(model: ClipModel, corpus: Sequence[Report | str] | None = None,
                       cache_dir: str | os.PathLike | None = None, batch_size: int = 64,
                       progress: Progress | None = None) -> VectorIndex:
    """Text embeddings of whole reports, cached on disk per (model, corpus) like :func:`build_index`.

    ``corpus``: reports or plain texts; None means the training split of the Open-i reports
    (``report_splits(load_reports(), seed=0)["train"]``, the corpus CXR-RePaiR-style retrieval
    draws on; the phantom test images' own reports are not in it).
    """
    name = "Open-i reports (train split)" if corpus is None else "report corpus"
    corpus = report_splits(load_reports(), seed=0)["train"] if corpus is None else list(corpus)
    if not corpus:
        raise MedclipError("The report corpus is empty; give at least one report.")
    items = []
    for i, entry in enumerate(corpus):
        if isinstance(entry, Report):
            items.append(GalleryItem(entry.report_id, entry.labels, entry.text, None, _no_image))
        else:
            items.append(GalleryItem(f"report-{i + 1}", None, str(entry), None, _no_image))
    source = _digest("reports", [(item.item_id, item.report) for item in items])
    texts = [item.report for item in items]
    index = _cached_index(model, name, "text", items, source, cache_dir,
                          lambda: embed_in_batches(model.encode_text, texts, batch_size, progress))
    if index.from_cache and progress is not None:
        progress(len(index), len(index))
    return index


def _no_image() -> MedicalImage:
    raise MedclipError("A report has no image.")


# ---------------------------------------------------------------------------------------------
# Queries


@dataclass
class RetrievalResult:
    """The hits of one query, best first; ``notes`` tell the user about truncation or a short gallery."""

    query_kind: str  # "text" or "image"
    query: str | None  # the query text; None for an image query
    k: int
    gallery: str
    model: str
    index_kind: str
    hits: list[RetrievalHit]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"query_kind": self.query_kind, "query": self.query, "k": self.k, "gallery": self.gallery,
                "model": self.model, "index_kind": self.index_kind, "hits": [h.to_dict() for h in self.hits],
                "notes": self.notes}


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_K:
        raise MedclipError(f"k (the number of results) must be a whole number from 1 to {MAX_K}, got {k!r}.")
    return int(k)


def _check_model(model: ClipModel, index: VectorIndex) -> None:
    if model_fingerprint(model) != index.model_fingerprint:
        raise MedclipError(f"The index of '{index.name}' was built with another model or other weights; "
                           f"build it again for {model.card.name} before searching.")


def text_exceeds_context(model: ClipModel, text: str) -> bool:
    """Whether ``text`` is cut by the model's tokenizer (longer than its text context).

    A truncated text tokenizes exactly like the same text with a word appended (both are cut at
    the same place); a shorter text does not. This only needs the model's public ``tokenize``.
    A text that fills the context exactly also reads as cut: the two cannot be told apart this way.
    """
    def ids(t: str) -> Any:
        tokens = model.tokenize([t])
        return tokens["input_ids"] if isinstance(tokens, dict) else tokens

    plain, extended = ids(text), ids(text + " x")
    return plain.shape == extended.shape and bool((plain == extended).all())


def _gallery_notes(index: VectorIndex, k: int) -> list[str]:
    if k > len(index):
        return [f"The gallery holds {len(index)} item(s), so all {len(index)} are shown instead of {k}."]
    return []


def search_text(model: ClipModel, index: VectorIndex, text: str, k: int = 10) -> RetrievalResult:
    """The ``k`` gallery images most similar to ``text`` (e.g. "left pleural effusion")."""
    k = _check_k(k)
    if not isinstance(text, str) or not text.strip():
        raise MedclipError("Type a description to search for, e.g. 'pleural effusion'.")
    text = text.strip()
    _check_model(model, index)
    notes = []
    if text_exceeds_context(model, text):
        context = getattr(model, "context_length", None)
        notes.append(f"The query is longer than {model.card.name}'s text context"
                     f"{f' ({context} tokens)' if context else ''}; only its beginning was used.")
    hits = index.search(model.encode_text([text]).cpu().numpy(), k)
    return RetrievalResult("text", text, k, index.name, model.card.name, index.kind, hits,
                           notes + _gallery_notes(index, k))


def search_image(model: ClipModel, index: VectorIndex, image: ImageLike, k: int = 10) -> RetrievalResult:
    """The ``k`` gallery images most similar to ``image``; the query is only embedded, never stored."""
    k = _check_k(k)
    _check_model(model, index)
    hits = index.search(model.encode_image([image]).cpu().numpy(), k)
    return RetrievalResult("image", None, k, index.name, model.card.name, index.kind, hits, _gallery_notes(index, k))


def image_to_reports(model: ClipModel, image: ImageLike, k: int = 5, corpus: Sequence[Report | str] | None = None,
                     cache_dir: str | os.PathLike | None = None, progress: Progress | None = None) -> RetrievalResult:
    """The ``k`` whole reports of ``corpus`` (see :func:`build_report_index`) closest to ``image``."""
    k = _check_k(k)
    index = build_report_index(model, corpus, cache_dir=cache_dir, progress=progress)
    hits = index.search(model.encode_image([image]).cpu().numpy(), k)
    return RetrievalResult("image", None, k, index.name, model.card.name, index.kind, hits, _gallery_notes(index, k))


# ---------------------------------------------------------------------------------------------
# Precision for labelled galleries


def labels_in_text(text: str) -> frozenset[str]:
    """The findings a query names as present or possible, unless negated ("no effusion"): the
    rule-based labeller's reading (:func:`medclip_core.data.labeller.label_text`), without "normal"."""
    labels = label_text(text)
    return labels.positive | labels.uncertain


def precision_at_k(result: RetrievalResult, query_labels: str | Iterable[str] | None = None) -> float:
    """Fraction of the hits whose labels contain every finding in ``query_labels``.

    For a text query ``query_labels`` may be left out: the findings the text names are used
    (:func:`labels_in_text`), so "pleural effusion" counts hits labelled "pleural effusion".
    """
    if query_labels is None:
        if result.query_kind != "text":
            raise MedclipError("Say which finding(s) the query image shows to measure precision@k.")
        wanted = labels_in_text(result.query or "")
        if not wanted:
            raise MedclipError(f"The query '{result.query}' names none of the known findings "
                               f"({', '.join(FINDINGS)}); give the finding(s) to measure precision@k.")
    else:
        wanted = frozenset([query_labels] if isinstance(query_labels, str) else query_labels)
        wanted = frozenset(label.strip().lower() for label in wanted if label.strip())
        if not wanted:
            raise MedclipError("Give at least one finding to measure precision@k.")
    if not result.hits:
        raise MedclipError("The result has no hits to measure.")
    if any(hit.labels is None for hit in result.hits):
        raise MedclipError(f"'{result.gallery}' has no finding labels, so precision@k cannot be measured; "
                           "use the phantom gallery or a CSV with a 'labels' column.")
    relevant = np.array([[wanted <= set(hit.labels) for hit in result.hits]])
    scores = np.array([[hit.score for hit in result.hits]])
    n = len(result.hits)
    return precision_at_k_matrix(scores, relevant, (n,))[n]


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
