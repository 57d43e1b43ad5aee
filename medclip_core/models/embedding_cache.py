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
