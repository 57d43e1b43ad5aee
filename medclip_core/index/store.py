"""A finished archive index on disk, how it is built from the job's shards, and how it is searched.

Layout of an index folder (everything a search needs; copy the folder to move the index)::

    index.json            what it is: model + fingerprint, source root, counts, FAISS kind and parameters
    index.faiss           the FAISS index (inner product = cosine: every vector is L2-normalised)
    vectors.npy           the float32 embeddings, row i = manifest line i (exact re-ranking, export)
    manifest.jsonl        one line per row: id (path relative to the source root), SOP Instance UID,
                          report, labels
    manifest.offsets.npy  byte offset of each manifest line, so a hit's line is read without loading all
    problems.csv          files left out: unreadable, or a repeat of an image already indexed
    plan.json             the job's plan (see :mod:`medclip_core.index.shards`)

Up to ``EXACT_INDEX_MAX`` vectors the index is exact (``IndexFlatIP``). Above, it is IVF-PQ (Jégou et
al., "Product quantization for nearest neighbor search", TPAMI 2011; FAISS ``index_factory``
"IVF{nlist},PQ{m}"): ``nlist`` ≈ sqrt(N) coarse cells trained by k-means on a sample of 50 vectors per
cell, ``m`` = D/2 sub-quantisers of 8 bits (2 dimensions each), so a vector costs m bytes of codes + 8
bytes of id in RAM. D/4 was tried first: on model-like vectors (bench/bench_index.py --part ann) its
scores were too coarse for the exact re-ranking to recover the true neighbours (recall@10 ≤ 0.94 at any
nprobe tried). A query visits ``nprobe`` = nlist/16 cells and its ``RERANK`` best PQ
candidates are re-scored exactly against
``vectors.npy``, read memory-mapped, as autofaiss/clip-retrieval advise for high recall at low memory.
Both the IVF lists (``faiss.IO_FLAG_MMAP``) and the vectors are memory-mapped, so an index larger than
RAM is searched from disk; the parameters chosen are recorded in ``index.json``.

An index records the fingerprint of the model that embedded it and refuses queries from another model
(their vectors would live in a different space and the scores would mean nothing).
"""
from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from medclip_core.errors import MedclipError, TaskInputError
from medclip_core.index.shards import PLAN_FILE, SHARDS_DIR, read_shards
from medclip_core.index.sources import SourceListing
from medclip_core.models.embedding_cache import model_fingerprint
from medclip_core.models.ood import ood_verdict
from medclip_core.tasks.retrieval import RetrievalHit, RetrievalResult, check_k, text_exceeds_context
from medclip_core.io import MedicalImage, load_image
from medclip_core.models.base import ClipModel, ImageLike

INDEX_FORMAT = 1
INDEX_FILE = "index.json"
FAISS_FILE = "index.faiss"
VECTORS_FILE = "vectors.npy"
MANIFEST_FILE = "manifest.jsonl"
OFFSETS_FILE = "manifest.offsets.npy"
PROBLEMS_FILE = "problems.csv"
INDEX_ROOT_ENV = "MEDCLIP_INDEX_ROOT"
SOURCES_ENV = "MEDCLIP_INDEX_SOURCES"  # NAME=DIR pairs (os.pathsep-separated): where a moved index's images live
EXACT_INDEX_MAX = 100_000
TRAIN_PER_CELL = 50  # k-means training vectors per IVF cell (FAISS warns under 39)
NPROBE_FRACTION = 16  # a query visits 1/16 of the IVF cells (bench/bench_index.py --part ann)
RERANK = 1000  # PQ candidates re-scored exactly (at least 10 per result asked)
ADD_CHUNK = 65_536


@dataclass(frozen=True)
class IndexInfo:
    """The contents of ``index.json``."""

    name: str
    model: str
    model_fingerprint: str
    source: str
    source_kind: str
    source_root: str
    n_vectors: int
    n_listed: int
    n_problems: int
    dim: int
    kind: str  # "exact" or "ivfpq"
    faiss: dict[str, Any]
    build_seconds: float
    format: int = INDEX_FORMAT

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def ivfpq_parameters(n_vectors: int, dim: int) -> dict[str, Any]:
    """IVF-PQ settings for ``n_vectors`` of ``dim``: see the module docstring for the rules."""
    nlist = max(16, 2 ** round(math.log2(math.sqrt(n_vectors))))
    m = max(1, dim // 2)
    while dim % m:
        m -= 1
    return {"factory": f"IVF{nlist},PQ{m}", "nlist": nlist, "pq_m": m, "pq_bits": 8,
            "train_size": min(n_vectors, TRAIN_PER_CELL * nlist), "nprobe": max(1, nlist // NPROBE_FRACTION),
            "rerank": RERANK,
            "bytes_per_vector_ram": m + 8, "bytes_per_vector_disk": m + 8 + 4 * dim}


def build_faiss(vectors: np.ndarray, exact_max: int = EXACT_INDEX_MAX) -> tuple[Any, dict[str, Any]]:
    """A FAISS inner-product index of ``vectors`` (may be memory-mapped) and the parameters used."""
    n, dim = vectors.shape
    if n <= exact_max:
        index, params = faiss.IndexFlatIP(dim), {"factory": "Flat", "bytes_per_vector_ram": 4 * dim}
    else:
        params = ivfpq_parameters(n, dim)
        index = faiss.index_factory(dim, params["factory"], faiss.METRIC_INNER_PRODUCT)
        index.do_polysemous_training = False  # only serves Hamming pre-filtering, which we do not use; slow
        sample = np.sort(np.random.default_rng(0).choice(n, params["train_size"], replace=False))
        index.train(np.ascontiguousarray(vectors[sample], dtype=np.float32))
    for start in range(0, n, ADD_CHUNK):
        index.add(np.ascontiguousarray(vectors[start:start + ADD_CHUNK], dtype=np.float32))
    return index, params


def finalize_index(out: Path, listing: SourceListing, model_name: str, fingerprint: str,
                   exact_max: int = EXACT_INDEX_MAX, started: float | None = None) -> IndexInfo:
    """Merge the complete shards into the index folder layout and remove the shards.

    Images with a SOP Instance UID already seen (in source order) are left out as repeats, so a
    study copied twice into an archive is indexed once whichever engine ran. ``index.json`` is
    written last: an index folder without it is an unfinished job.
    """
    problems = [(path, reason) for path, reason in listing.repeats]
    keep: list[tuple[int, int]] = []  # (shard number, row in that shard's vectors) of each kept image
    seen_uids: dict[str, str] = {}
    manifest_rows: list[dict[str, Any]] = []
    dim = 0
    for shard, (rows, vectors) in enumerate(read_shards(out)):
        dim = dim or vectors.shape[1]
        vector_row = 0
        for row in rows:
            if row["problem"] is not None:
                problems.append((row["id"], row["problem"]))
                continue
            uid = row["sop_uid"]
            if uid is not None and uid in seen_uids:
                problems.append((row["id"], f"same SOP Instance UID as {seen_uids[uid]}; indexed once"))
            else:
                if uid is not None:
                    seen_uids[uid] = row["id"]
                keep.append((shard, vector_row))
                manifest_rows.append({key: row[key] for key in ("id", "sop_uid", "report", "labels")})
            vector_row += 1
    if not keep:
        raise MedclipError(f"None of the {len(listing.items)} images of {listing.source} could be read; "
                           f"see {out / PROBLEMS_FILE}.")
    _write_problems(out / PROBLEMS_FILE, problems)
    vectors = _write_vectors(out / VECTORS_FILE, out, keep, dim)
    _write_manifest(out, manifest_rows)
    index, params = build_faiss(vectors, exact_max)
    faiss.write_index(index, str(out / FAISS_FILE))
    info = IndexInfo(out.name, model_name, fingerprint, listing.source, listing.kind, listing.root, len(keep),
                     len(listing.items) + len(listing.repeats), len(problems), dim,
                     "exact" if params["factory"] == "Flat" else "ivfpq", params,
                     round(time.time() - (started or time.time()), 3))
    staged = out / (INDEX_FILE + ".tmp")
    staged.write_text(json.dumps(info.to_dict(), indent=1))
    os.replace(staged, out / INDEX_FILE)
    for shard_file in sorted((out / SHARDS_DIR).iterdir()):
        shard_file.unlink()
    (out / SHARDS_DIR).rmdir()
    return info


def _write_problems(path: Path, problems: list[tuple[str, str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "reason"])
        writer.writerows(problems)


def _write_vectors(path: Path, out: Path, keep: list[tuple[int, int]], dim: int) -> np.ndarray:
    merged = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(len(keep), dim))
    by_shard: dict[int, list[int]] = {}
    for shard, row in keep:
        by_shard.setdefault(shard, []).append(row)
    start = 0
    for shard, (_, vectors) in enumerate(read_shards(out)):
        rows = by_shard.get(shard, [])
        merged[start:start + len(rows)] = vectors[rows]
        start += len(rows)
    merged.flush()
    return np.load(path, mmap_mode="r")


def _write_manifest(out: Path, rows: list[dict[str, Any]]) -> None:
    offsets = np.zeros(len(rows), dtype=np.int64)
    with open(out / MANIFEST_FILE, "wb") as handle:
        for i, row in enumerate(rows):
            offsets[i] = handle.tell()
            handle.write(json.dumps(row).encode() + b"\n")
    np.save(out / OFFSETS_FILE, offsets)


# ---------------------------------------------------------------------------------------------
# Opening and searching


def index_root() -> Path | None:
    """``$MEDCLIP_INDEX_ROOT``: the folder whose subfolders are the indexes the host registered."""
    root = os.environ.get(INDEX_ROOT_ENV, "").strip()
    return Path(root).expanduser() if root else None


def registered_indexes(root: Path | None = None) -> list[str]:
    """Names of the finished indexes under ``root`` (default ``$MEDCLIP_INDEX_ROOT``)."""
    root = root or index_root()
    if root is None or not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / INDEX_FILE).is_file())


def resolve_index(name: str, root: Path | None = None, allow_paths: bool = True) -> Path:
    """The folder of index ``name``: a registered name, or (when ``allow_paths``) an index folder path."""
    name = (name or "").strip()
    root = root or index_root()
    if root is not None and name in registered_indexes(root):
        return root / name
    if allow_paths and (Path(name).expanduser() / INDEX_FILE).is_file():
        return Path(name).expanduser()
    known = ", ".join(registered_indexes(root)) or "none"
    where = f"under {root}" if root else f"(set {INDEX_ROOT_ENV} to the folder that holds the indexes)"
    raise TaskInputError(f"No index '{name}' {where}; registered indexes: {known}.")


def source_root_override(name: str) -> str | None:
    """The images' folder for index ``name`` from ``$MEDCLIP_INDEX_SOURCES`` (``NAME=DIR`` pairs)."""
    for pair in os.environ.get(SOURCES_ENV, "").split(os.pathsep):
        key, sep, value = pair.partition("=")
        if sep and key.strip() == name:
            return value.strip()
    return None


@dataclass
class ArchiveIndex:
    """An index folder opened for search; vectors, IVF lists and manifest stay on disk (memory-mapped)."""

    path: Path
    info: IndexInfo
    faiss_index: Any = field(repr=False)
    vectors: np.ndarray = field(repr=False)
    offsets: np.ndarray = field(repr=False)

    @classmethod
    def open(cls, path: str | os.PathLike) -> "ArchiveIndex":
        path = Path(path)
        try:
            info = IndexInfo(**json.loads((path / INDEX_FILE).read_text()))
        except (OSError, ValueError, TypeError) as error:
            raise MedclipError(f"{path} is not a finished index ({INDEX_FILE} missing or unreadable: {error}).")
        if info.format != INDEX_FORMAT:
            raise MedclipError(f"{path} was written in index format {info.format}; this version reads "
                               f"{INDEX_FORMAT}. Build it again.")
        index = faiss.read_index(str(path / FAISS_FILE), faiss.IO_FLAG_MMAP)
        if info.kind == "ivfpq":
            index.nprobe = info.faiss["nprobe"]
        return cls(path, info, index, np.load(path / VECTORS_FILE, mmap_mode="r"),
                   np.load(path / OFFSETS_FILE, mmap_mode="r"))

    def __len__(self) -> int:
        return self.info.n_vectors

    @property
    def source_root(self) -> Path:
        """Where the images are: the ``$MEDCLIP_INDEX_SOURCES`` entry for this index, else the recorded root."""
        return Path(source_root_override(self.path.name) or self.info.source_root)

    def row(self, i: int) -> dict[str, Any]:
        with open(self.path / MANIFEST_FILE, "rb") as handle:
            handle.seek(int(self.offsets[i]))
            return json.loads(handle.readline())

    def image_path(self, image_id: str) -> Path:
        return self.source_root / image_id

    def load_image(self, image_id: str) -> MedicalImage:
        """The image ``image_id`` read from the source (lazily, e.g. for a result thumbnail)."""
        return load_image(self.image_path(image_id))

    def check_model(self, model: ClipModel) -> None:
        if model_fingerprint(model) != self.info.model_fingerprint:
            raise TaskInputError(
                f"The index '{self.info.name}' was built with {self.info.model} (other weights than "
                f"{model.card.name} has here); search it with that model, or build an index for this one.")

    def search(self, query: np.ndarray, k: int) -> list[tuple[float, int]]:
        """(score, row) of the ``k`` rows most similar to ``query``, best first (ties in row order)."""
        query = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        k = min(k, len(self))
        if self.info.kind == "exact":
            scores, rows = self.faiss_index.search(query, k)
            found = [(float(s), int(r)) for s, r in zip(scores[0], rows[0]) if r >= 0]
        else:
            rerank = self.info.faiss["rerank"]
            _, candidates = self.faiss_index.search(query, min(len(self), max(k * 10, rerank)))
            rows = np.sort(candidates[0][candidates[0] >= 0])
            exact = np.asarray(self.vectors[rows], dtype=np.float32) @ query[0]
            found = [(float(s), int(r)) for s, r in zip(exact, rows)]
        return sorted(found, key=lambda pair: (-pair[0], pair[1]))[:k]

    def hits(self, query: np.ndarray, k: int) -> list[RetrievalHit]:
        hits = []
        for rank, (score, row) in enumerate(self.search(query, k), start=1):
            entry = self.row(row)
            hits.append(RetrievalHit(rank, score, entry["id"], entry["report"], entry["labels"],
                                     str(self.image_path(entry["id"]))))
        return hits


def _kind_label(index: ArchiveIndex) -> str:
    return "exact" if index.info.kind == "exact" else f"approximate ({index.info.faiss['factory']}, re-ranked)"


def search_index_text(model: ClipModel, index: ArchiveIndex, text: str, k: int = 10) -> RetrievalResult:
    """The ``k`` archive images most similar to ``text``."""
    k = check_k(k)
    if not isinstance(text, str) or not text.strip():
        raise TaskInputError("Type a description to search for, e.g. 'pleural effusion'.")
    index.check_model(model)
    notes = ([f"The query is longer than {model.card.name}'s text context; only its beginning was used."]
             if text_exceeds_context(model, text.strip()) else [])
    hits = index.hits(model.encode_text([text.strip()]).cpu().numpy(), k)
    return RetrievalResult("text", text.strip(), k, index.info.name, model.card.name, _kind_label(index), hits, notes)


def search_index_image(model: ClipModel, index: ArchiveIndex, image: ImageLike, k: int = 10) -> RetrievalResult:
    """The ``k`` archive images most similar to ``image`` (embedded only, never added to the index)."""
    k = check_k(k)
    index.check_model(model)
    embedding = model.encode_image([image]).cpu().numpy()
    return RetrievalResult("image", None, k, index.info.name, model.card.name, _kind_label(index),
                           index.hits(embedding, k), [], ood_verdict(model, embedding[0]))
