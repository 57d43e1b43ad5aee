"""Retrieval over a gallery of medical images: text -> images, image -> images, image -> reports.

The gallery is a :class:`~medclip_core.data.galleries.Collection` (the phantom test split, a folder
of images, or a CSV). :func:`build_index` embeds its images once per model and keeps the vectors
in the on-disk embedding cache (:mod:`medclip_core.models.embedding_cache`), so the next session
(or the next call) loads them instead of running the model again: each entry is named by the
model fingerprint and the collection fingerprint, and holds ``vectors.npy`` (L2-normalised
float32), ``items.json`` (id, labels, report, path per row) and ``fingerprint.json``. The entries
of the embedded models' default corpora and galleries also ship precomputed (float16) in
``assets/embeddings/`` and are read from there when the cache has none (``from_cache`` is then
True and ``path`` the shipped file).

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

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import faiss
import numpy as np

from medclip_core.data.findings import FINDINGS
from medclip_core.data.galleries import Collection, GalleryItem, sorted_labels
from medclip_core.data.labeller import label_text
from medclip_core.data.reports import Report, load_reports, report_splits
from medclip_core.errors import MedclipError, TaskInputError
from medclip_core.io import MedicalImage
from medclip_core.models.base import ClipModel, ImageLike
from medclip_core.models.embedding_cache import (
    content_digest, default_cache_dir, load_shipped, load_vectors, model_fingerprint, save_entry, shipped_path,
)
from medclip_core.models.ood import OodVerdict, ood_verdict
from medclip_core.tasks import embed_in_batches
from medclip_core.tasks.saving import SavesJson

INDEX_FORMAT = 1  # bump when the layout of a cache entry changes
INDEX_NAME = "index.faiss"
EXACT_INDEX_MAX = 50_000  # above this many vectors the index is approximate (HNSW)
HNSW_NEIGHBORS = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 256  # recall@10 0.98 (128: 0.93) against exact search, 100k image-like vectors (bench_tasks)
MAX_K = 1000

Progress = Callable[[int, int], Any]


# ---------------------------------------------------------------------------------------------
# The on-disk entry of an index: the cache's vectors and items, plus the FAISS index when it is slow to build


def faiss_index_for(vectors: np.ndarray) -> Any:
    """An exact inner-product index up to ``EXACT_INDEX_MAX`` vectors, an HNSW graph above."""
    if len(vectors) <= EXACT_INDEX_MAX:
        index = faiss.IndexFlatIP(vectors.shape[1])
    else:
        index = faiss.IndexHNSWFlat(vectors.shape[1], HNSW_NEIGHBORS, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    index.add(vectors)
    return index


def _load_entry(folder: Path, fingerprint: dict[str, Any]) -> tuple[np.ndarray, Any] | None:
    """The cached vectors and FAISS index in ``folder`` if it holds exactly this fingerprint."""
    vectors = load_vectors(folder, fingerprint)
    if vectors is None:
        return None
    try:
        index = (faiss.read_index(str(folder / INDEX_NAME)) if (folder / INDEX_NAME).is_file()
                 else faiss_index_for(vectors))
    except (OSError, ValueError, RuntimeError):  # damaged entry: rebuild it
        return None
    return vectors, index


def _save_entry(folder: Path, fingerprint: dict[str, Any], vectors: np.ndarray, index: Any,
                items: list[GalleryItem]) -> Path | None:
    """Write the entry; an exact index is rebuilt from the vectors in no time, an HNSW one is saved too."""
    def write_index(staging: Path) -> None:
        if not isinstance(index, faiss.IndexFlat):
            faiss.write_index(index, str(staging / INDEX_NAME))

    return save_entry(folder, fingerprint, vectors, [item.to_dict() for item in items], write_index)


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
    be written, the shipped file when it was read from ``assets/embeddings/``); ``from_cache`` says
    whether the vectors were loaded (from the cache or the shipped copy) rather than computed.
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
    shipped = load_shipped(entry_name, fingerprint)
    if shipped is not None:  # the embedded models' default corpora and galleries ship precomputed
        return VectorIndex(name, modality, items, shipped, model_fp, source_fingerprint,
                           shipped_path(entry_name), True, faiss_index_for(shipped))
    vectors = np.ascontiguousarray(embed(), dtype=np.float32)
    index = faiss_index_for(vectors)
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
    source = content_digest("reports", [(item.item_id, item.report) for item in items])
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
class RetrievalResult(SavesJson):
    """The hits of one query, best first; ``notes`` tell the user about truncation or a short gallery; ``ood``
    (image queries) whether the query image is like the model's training images (:mod:`medclip_core.models.ood`)."""

    SAVED_NAME = "retrieval"

    query_kind: str  # "text" or "image"
    query: str | None  # the query text; None for an image query
    k: int
    gallery: str
    model: str
    index_kind: str
    hits: list[RetrievalHit]
    notes: list[str] = field(default_factory=list)
    ood: OodVerdict | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"query_kind": self.query_kind, "query": self.query, "k": self.k, "gallery": self.gallery,
                "model": self.model, "index_kind": self.index_kind, "hits": [h.to_dict() for h in self.hits],
                "notes": self.notes, "ood": self.ood.to_dict() if self.ood else None}


def check_k(k: int) -> int:
    """``k`` as an int, or a clear error when it is not a whole number from 1 to ``MAX_K``."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_K:
        raise TaskInputError(f"k (the number of results) must be a whole number from 1 to {MAX_K}, got {k!r}.")
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
    k = check_k(k)
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
    k = check_k(k)
    _check_model(model, index)
    embedding = model.encode_image([image]).cpu().numpy()
    return RetrievalResult("image", None, k, index.name, model.card.name, index.kind, index.search(embedding, k),
                           _gallery_notes(index, k), ood_verdict(model, embedding))


def image_to_reports(model: ClipModel, image: ImageLike, k: int = 5, corpus: Sequence[Report | str] | None = None,
                     cache_dir: str | os.PathLike | None = None, progress: Progress | None = None) -> RetrievalResult:
    """The ``k`` whole reports of ``corpus`` (see :func:`build_report_index`) closest to ``image``."""
    k = check_k(k)
    index = build_report_index(model, corpus, cache_dir=cache_dir, progress=progress)
    embedding = model.encode_image([image]).cpu().numpy()
    return RetrievalResult("image", None, k, index.name, model.card.name, index.kind, index.search(embedding, k),
                           _gallery_notes(index, k), ood_verdict(model, embedding))


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
    return float(np.mean([wanted <= set(hit.labels) for hit in result.hits]))


def labelled_precision(result: RetrievalResult, collection: Collection) -> float | None:
    """precision@k of a text query whose findings the gallery's labels can judge (a labelled
    ``collection`` and a query naming a known finding); None otherwise. What the CLI and the
    Retrieve tab show beside a gallery search."""
    if not (collection.labelled and result.query_kind == "text" and result.hits
            and labels_in_text(result.query or "")):
        return None
    return precision_at_k(result)
