"""The embedded models' first-use embeddings ship in assets/embeddings/ and are the ones the app would compute.

Each tab's first use with an embedded model reads them instead of embedding thousands of texts or
hundreds of rendered images (bench/bench_first_use.py measures the effect). The shipped files are
keyed by the model and source fingerprints: when a model, the renderer or the corpus changes, the
first test here fails until ``scripts/release/precompute_embeddings.py`` is run again.
"""
from __future__ import annotations

import numpy as np
import pytest

from medclip_core.data.galleries import collection_from_spec
from medclip_core.data.reports import load_reports, report_splits
from medclip_core.models import load_model
from medclip_core.models.embedding_cache import SHIPPED_DIR, load_shipped, write_shipped
from medclip_core.tasks.report import reference_embeddings, sentence_corpus
from medclip_core.tasks.retrieval import build_index, build_report_index

EMBEDDED_MODELS = ("medclip-phantom", "medclip-phantom-grounding")
SHIPPED_MB_LIMIT = 12  # all shipped files together


class WouldEmbed(AssertionError):
    pass


@pytest.fixture(params=EMBEDDED_MODELS)
def shipped_only_model(request, monkeypatch, tmp_path):
    """An embedded model that refuses to embed anything, over an empty cache folder."""
    monkeypatch.setenv("MEDCLIP_CACHE_DIR", str(tmp_path))
    model = load_model(request.param)

    def refuse(*_args, **_kwargs):
        raise WouldEmbed(f"{request.param}: a first-use embedding is not shipped or is stale; run "
                         "PYTHONPATH=. python scripts/release/precompute_embeddings.py")

    monkeypatch.setattr(model, "encode_text", refuse)
    monkeypatch.setattr(model, "encode_image", refuse)
    monkeypatch.setattr(model, "encode_image_and_patches", refuse)
    return model


def test_every_first_use_embedding_of_the_embedded_models_is_shipped(shipped_only_model) -> None:
    model = shipped_only_model
    indexes = [build_report_index(model), build_report_index(model, [s.text for s in sentence_corpus()]),
               build_index(model, collection_from_spec("phantom")), build_index(model, collection_from_spec("phantom:200"))]
    for index in indexes:
        assert index.from_cache and index.path.parent == SHIPPED_DIR
        assert np.allclose(np.linalg.norm(index.vectors, axis=1), 1.0, atol=1e-5)
    assert reference_embeddings(model).shape == (64, model.card.embed_dim)


def test_shipped_vectors_are_what_the_model_computes() -> None:
    model = load_model("medclip-phantom")
    reports = report_splits(load_reports(), seed=0)["train"][:6]
    shipped = build_report_index(model).vectors[:6]
    computed = model.encode_text([r.text for r in reports]).numpy()
    assert np.abs(shipped - computed).max() < 2e-3  # float16 rounding, nothing more
    gallery = collection_from_spec("phantom:200")
    images = np.stack([model.encode_image([item.image()]).numpy()[0] for item in gallery.items[:3]])
    assert np.abs(build_index(model, gallery).vectors[:3] - images).max() < 2e-3


def test_shipped_copy_is_only_read_for_its_exact_fingerprint(tmp_path) -> None:
    vectors = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    fingerprint = {"model": "a" * 64, "source": "b" * 64, "ids": ["1", "2", "3", "4", "5"]}
    write_shipped("text-entry", fingerprint, vectors, tmp_path)
    loaded = load_shipped("text-entry", fingerprint, tmp_path)
    assert loaded.dtype == np.float32 and np.abs(loaded - vectors).max() < 1e-3
    assert load_shipped("text-entry", {**fingerprint, "model": "c" * 64}, tmp_path) is None  # changed weights
    assert load_shipped("other-entry", fingerprint, tmp_path) is None
    (tmp_path / "text-entry.npz").write_bytes(b"damaged")
    assert load_shipped("text-entry", fingerprint, tmp_path) is None


def test_shipped_embeddings_stay_small() -> None:
    files = list(SHIPPED_DIR.glob("*.npz"))
    assert files and sum(f.stat().st_size for f in files) < SHIPPED_MB_LIMIT * 1e6
