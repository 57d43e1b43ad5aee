"""Precompute the embeddings the embedded models need on first use and ship them in ``assets/embeddings/``.

    PYTHONPATH=. OMP_NUM_THREADS=1 nice python scripts/release/precompute_embeddings.py [--models medclip-phantom ...]

A fresh install would otherwise embed, on the first query of a tab, the 3,142 Open-i training reports
(Retrieve, image → reports), the 5,457 corpus sentences and 64 reference images (Report), and the
phantom test gallery (Retrieve) and its first 200 images and their reports (Embeddings): about a minute each on a CPU.
For each model this script runs exactly those code paths once with an empty cache folder, then
writes every cache entry they made as ``assets/embeddings/<entry name>.npz`` (float16 vectors and
the entry's fingerprint, :func:`~medclip_core.models.embedding_cache.write_shipped`), and the 64-px
thumbnails of the Embeddings tab's default map (``thumbnails-*.json``, no model involved). The model's
old shipped files are removed first. Run it again whenever an embedded model's weights, the phantom
renderer or the report corpus change: ``tests/test_first_use.py`` fails until the shipped files
match.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from medclip_core.models.embedding_cache import (
    CACHE_DIR_ENV, FINGERPRINT_NAME, SHIPPED_DIR, SHIPPED_SUFFIX, VECTORS_NAME, write_shipped,
)

EMBEDDED_MODELS = ("medclip-phantom", "medclip-phantom-grounding")
EMBEDDINGS_GALLERY_SPEC = "phantom:200"  # the Embeddings tab's default collection


def first_use_paths(model_name: str) -> None:
    """What the app's tabs compute on a model's first use, written into the current cache folder."""
    from medclip_core.data.galleries import collection_from_spec
    from medclip_core.models import load_model
    from medclip_core.tasks.embedding import embedding_map
    from medclip_core.tasks.report import REFERENCE_CACHE
    from medclip_core.tasks.retrieval import build_index, build_report_index

    model = load_model(model_name)
    build_report_index(model)                       # Retrieve: image -> reports
    REFERENCE_CACHE.get(model)                      # Report: sentence corpus and reference images
    build_index(model, collection_from_spec("phantom"))                  # Retrieve: the default gallery
    embedding_map(model, collection_from_spec(EMBEDDINGS_GALLERY_SPEC), method="pca", cache=None)  # Embeddings:
    # the default map's images and report texts


def shipped_model_name(path: Path) -> str | None:
    """The model a shipped file belongs to (from its fingerprint), None when unreadable."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            return json.loads(str(stored["fingerprint"])).get("model_name")
    except (OSError, ValueError, KeyError):
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(EMBEDDED_MODELS))
    args = parser.parse_args()

    for old in sorted(SHIPPED_DIR.glob(f"*{SHIPPED_SUFFIX}")):
        if shipped_model_name(old) in (*args.models, None):
            old.unlink()
    with tempfile.TemporaryDirectory(prefix="medclip-precompute-") as cache:
        os.environ[CACHE_DIR_ENV] = cache  # read by default_cache_dir() on every call
        for name in args.models:
            first_use_paths(name)
        for entry in sorted(Path(cache).iterdir()):
            if not (entry / VECTORS_NAME).is_file():
                continue
            fingerprint = json.loads((entry / FINGERPRINT_NAME).read_text())
            path = write_shipped(entry.name, fingerprint, np.load(entry / VECTORS_NAME))
            print(f"{path.relative_to(SHIPPED_DIR.parents[1])}: {path.stat().st_size / 1e6:.2f} MB")
    write_thumbnails()


def write_thumbnails() -> None:
    """The Embeddings default map's image thumbnails (model-independent), replacing stale ones."""
    from medclip_core.data.galleries import collection_from_spec
    from medclip_core.tasks.embedding import write_shipped_thumbnails

    for old in SHIPPED_DIR.glob("thumbnails-*.json"):
        old.unlink()
    path = write_shipped_thumbnails(collection_from_spec(EMBEDDINGS_GALLERY_SPEC))
    print(f"{path.relative_to(SHIPPED_DIR.parents[1])}: {path.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
