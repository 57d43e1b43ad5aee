"""Model fingerprints and the on-disk embedding cache they key.

Embeddings are worth keeping between sessions only while the model and the inputs are the same,
so every cache entry is named by two fingerprints: the model's (:func:`model_fingerprint`: card
name/source/image size + a strided sample of every weight tensor, so changed weights give a new
entry) and the source's (:func:`content_digest` of whatever defines the inputs). Users: the
retrieval indexes (:mod:`medclip_core.tasks.retrieval`), the report features and reference
statistics (:mod:`medclip_core.tasks.report_features`, :mod:`medclip_core.tasks.report`), the
report decoder's record of the weights it was trained on, and the evaluations.

The cache folder is ``$MEDCLIP_CACHE_DIR`` or ``~/.cache/medclip-explorer/indexes``. An entry is a
folder holding ``vectors.npy`` (float32), ``items.json`` (one record per row),
``fingerprint.json`` and any files its owner adds; it is written to a temporary folder and renamed
into place, so a crash or a concurrent build never leaves half an entry.

Entries the embedded models need on first use (report corpus, sentence corpus, phantom galleries,
reference images) also ship with the package in ``assets/embeddings/``: one ``<entry name>.npz``
each, float16 vectors and the same fingerprint (:func:`write_shipped`, run by
``scripts/release/precompute_embeddings.py``). :func:`load_shipped` reads them when the cache has
no entry, so the first query of a fresh install answers in seconds instead of a minute; a changed
model or source has another fingerprint, misses the shipped copy and is computed as before.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from medclip_core.models.base import ClipModel

CACHE_DIR_ENV = "MEDCLIP_CACHE_DIR"
DEFAULT_CACHE_DIR = Path("~/.cache/medclip-explorer/indexes")
WEIGHT_SAMPLES_PER_TENSOR = 64  # values of each weight tensor that enter the model fingerprint
VECTORS_NAME = "vectors.npy"
ITEMS_NAME = "items.json"
FINGERPRINT_NAME = "fingerprint.json"
SHIPPED_DIR = Path(__file__).resolve().parents[2] / "assets" / "embeddings"
SHIPPED_SUFFIX = ".npz"


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


def content_digest(*parts: Any) -> str:
    """SHA-256 of ``parts`` as sorted-key JSON (other objects by ``str``): a source fingerprint."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def default_cache_dir() -> Path:
    """``$MEDCLIP_CACHE_DIR`` if set, else ``~/.cache/medclip-explorer/indexes``."""
    return Path(os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR).expanduser()


def load_vectors(folder: Path, fingerprint: dict[str, Any]) -> np.ndarray | None:
    """The vectors of the entry in ``folder`` if it holds exactly this fingerprint; None when it does
    not, or is missing or damaged (the caller computes them again)."""
    try:
        if json.loads((folder / FINGERPRINT_NAME).read_text()) != fingerprint:
            return None
        return np.load(folder / VECTORS_NAME)
    except (OSError, ValueError):
        return None


def save_entry(folder: Path, fingerprint: dict[str, Any], vectors: np.ndarray, items: list[dict[str, Any]],
               write_more: Callable[[Path], None] | None = None) -> Path | None:
    """Write the entry (staged, then renamed into place); ``write_more(staging_folder)`` adds the
    owner's files. None when the cache cannot be written: a read-only or full cache disk only costs
    the reuse, the vectors in memory work all the same.
    """
    staging = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".building-", dir=folder.parent))
        np.save(staging / VECTORS_NAME, vectors)
        if write_more is not None:
            write_more(staging)
        (staging / ITEMS_NAME).write_text(json.dumps(items))
        (staging / FINGERPRINT_NAME).write_text(json.dumps(fingerprint))
        if folder.exists():  # a stale or damaged entry under the same name
            shutil.rmtree(folder)
        os.replace(staging, folder)
    except (OSError, RuntimeError):  # FAISS, writing in write_more, reports write errors as RuntimeError
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        return None
    return folder


def shipped_path(entry_name: str, shipped_dir: Path | None = None) -> Path:
    """Where the shipped copy of the cache entry ``entry_name`` lives."""
    return (shipped_dir or SHIPPED_DIR) / f"{entry_name}{SHIPPED_SUFFIX}"


def load_shipped(entry_name: str, fingerprint: dict[str, Any], shipped_dir: Path | None = None) -> np.ndarray | None:
    """The shipped vectors of ``entry_name`` as float32, rows L2-normalised again after the float16
    rounding, if the shipped file holds exactly this fingerprint; None otherwise."""
    try:
        with np.load(shipped_path(entry_name, shipped_dir), allow_pickle=False) as stored:
            if json.loads(str(stored["fingerprint"])) != fingerprint:
                return None
            vectors = stored["vectors"].astype(np.float32)
    except (OSError, ValueError, KeyError):
        return None
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def write_shipped(entry_name: str, fingerprint: dict[str, Any], vectors: np.ndarray,
                  shipped_dir: Path | None = None) -> Path:
    """Write the shipped copy of a cache entry (float16 vectors + fingerprint, compressed): release time only."""
    path = shipped_path(entry_name, shipped_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, vectors=np.asarray(vectors, dtype=np.float16), fingerprint=np.array(json.dumps(fingerprint)))
    return path


def cached_vectors(entry_name: str, fingerprint: dict[str, Any], compute: Callable[[], np.ndarray],
                   cache_dir: str | os.PathLike | None = None) -> np.ndarray:
    """The vectors of ``entry_name`` from the cache, else from the shipped copy, else ``compute()``d and
    saved to the cache: for owners that keep nothing but the vectors (see :func:`save_entry`)."""
    folder = Path(cache_dir or default_cache_dir()).expanduser() / entry_name
    vectors = load_vectors(folder, fingerprint)
    if vectors is None:
        vectors = load_shipped(entry_name, fingerprint)
    if vectors is None:
        vectors = np.ascontiguousarray(compute(), dtype=np.float32)
        save_entry(folder, fingerprint, vectors, [])
    return vectors
