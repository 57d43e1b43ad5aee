"""Retrieval: collections, the on-disk index cache, text/image/report queries, precision@k, errors.

Tiny random-weight models test structure, ordering and caching; retrieval quality is tested with
hand-made embeddings whose right answer is known.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medclip_core.data.galleries import Collection, GalleryItem, csv_collection, folder_collection, phantom_collection
from medclip_core.errors import MedclipError
from medclip_core.io import image_from_array
from medclip_core.models.base import image_to_rgb_array
from medclip_core.models.embedding_cache import model_fingerprint
from medclip_core.models.registry import load_local_dir
from medclip_core.tasks import retrieval
from medclip_core.tasks.retrieval import (
    build_index, image_to_reports, labels_in_text, precision_at_k, search_image, search_text, text_exceeds_context,
)


@pytest.fixture(scope="module")
def model(open_clip_dir):
    return load_local_dir(open_clip_dir, torch.device("cpu"))


def _pattern(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((32, 32)).astype(np.float32)


def _save_png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((_pattern(seed) * 255).astype(np.uint8)).save(path)


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """8 PNGs at the top, 2 in a sub-folder, one corrupt PNG, one text file, one hidden file."""
    folder = tmp_path / "gallery"
    for i in range(8):
        _save_png(folder / f"img{i}.png", i)
    for i in range(8, 10):
        _save_png(folder / "sub" / f"img{i}.png", i)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (folder / "notes.txt").write_text("not an image")
    (folder / ".DS_Store").write_bytes(b"junk")
    return folder


def _counting(monkeypatch, model, method: str) -> list[int]:
    """Replace ``model.<method>`` by a wrapper that records each call's batch size."""
    calls: list[int] = []
    original = getattr(model, method)

    def wrapper(batch):
        calls.append(len(batch))
        return original(batch)

    monkeypatch.setattr(model, method, wrapper)
    return calls


def test_folder_collection_skips_corrupt_file_and_counts_it(image_folder):
    collection = folder_collection(image_folder)
    assert len(collection) == 10
    assert {item.item_id for item in collection.items} >= {"img0.png", "sub/img9.png"}
    assert [s.path for s in collection.skipped] == ["broken.png"]
    assert "broken.png" in collection.skipped[0].reason
    assert collection.to_dict()["n_skipped"] == 1 and not collection.labelled
    assert collection.items[0].image().pixels.shape == (32, 32)


def test_folder_without_readable_images_is_refused(tmp_path):
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "bad.dcm").write_bytes(b"")
    with pytest.raises(MedclipError, match="No readable images"):
        folder_collection(tmp_path / "only")
    with pytest.raises(MedclipError, match="not found"):
        folder_collection(tmp_path / "missing")


def test_csv_collection_reads_reports_and_labels_and_skips_missing(tmp_path):
    _save_png(tmp_path / "a.png", 1)
    _save_png(tmp_path / "imgs" / "b.png", 2)
    (tmp_path / "data.csv").write_text(
        "image,report,labels\n"
        "a.png,Small left effusion.,Pleural Effusion\n"
        "imgs/b.png,Heart is enlarged.,cardiomegaly|pleural effusion\n"
        "gone.png,,\n"
        "./a.png,again,\n")
    collection = csv_collection(tmp_path / "data.csv")
    assert [item.item_id for item in collection.items] == ["a.png", "imgs/b.png"]
    assert collection.items[0].labels == {"pleural effusion"}
    assert collection.items[1].labels == {"cardiomegaly", "pleural effusion"}
    assert collection.items[1].report == "Heart is enlarged."
    assert collection.labelled
    assert [s.path for s in collection.skipped] == ["gone.png", "a.png"]


@pytest.mark.parametrize("path", ["../outside.png", "imgs/../../outside.png", "/etc/passwd"])
def test_csv_paths_leaving_the_folder_are_refused(tmp_path, path):
    _save_png(tmp_path / "outside.png", 1)
    (tmp_path / "set").mkdir()
    _save_png(tmp_path / "set" / "ok.png", 2)
    (tmp_path / "set" / "data.csv").write_text(f"image\nok.png\n{path}\n")
    with pytest.raises(MedclipError, match="leaves the dataset folder"):
        csv_collection(tmp_path / "set" / "data.csv")


def test_csv_without_image_column_is_refused(tmp_path):
    (tmp_path / "data.csv").write_text("file,report\na.png,x\n")
    with pytest.raises(MedclipError, match="needs a header row"):
        csv_collection(tmp_path / "data.csv")


def test_search_text_returns_k_hits_sorted_by_score(model, image_folder, tmp_path):
    index = build_index(model, folder_collection(image_folder), cache_dir=tmp_path / "cache", batch_size=4)
    assert index.vectors.shape == (10, 24) and index.kind == "exact"
    np.testing.assert_allclose(np.linalg.norm(index.vectors, axis=1), 1.0, atol=1e-5)
    result = search_text(model, index, "pleural effusion", k=5)
    scores = [hit.score for hit in result.hits]
    assert len(result.hits) == 5 and scores == sorted(scores, reverse=True)
    assert [hit.rank for hit in result.hits] == [1, 2, 3, 4, 5]
    assert len({hit.item_id for hit in result.hits}) == 5 and result.notes == []
    # the scores are the cosine similarities of the query with those items
    query = model.encode_text(["pleural effusion"]).numpy()[0]
    for hit in result.hits:
        row = [item.item_id for item in index.items].index(hit.item_id)
        assert hit.score == pytest.approx(float(index.vectors[row] @ query), abs=1e-5)
    everything = search_text(model, index, "pleural effusion", k=50)
    assert len(everything.hits) == 10 and "10 item(s)" in everything.notes[0]
    json.dumps(everything.to_dict())


def test_index_is_reused_from_disk_and_rebuilt_when_the_model_changes(model, clip_dir, image_folder, tmp_path,
                                                                     monkeypatch):
    collection = folder_collection(image_folder)
    cache = tmp_path / "cache"
    calls = _counting(monkeypatch, model, "encode_image")
    progress: list[tuple[int, int]] = []

    def record(done: int, total: int) -> None:
        progress.append((done, total))

    first = build_index(model, collection, cache_dir=cache, batch_size=4, progress=record)
    assert calls == [4, 4, 2] and progress == [(4, 10), (8, 10), (10, 10)] and not first.from_cache
    assert {p.name for p in first.path.iterdir()} == {"vectors.npy", "items.json", "fingerprint.json"}

    again = build_index(model, folder_collection(image_folder), cache_dir=cache, progress=record)
    assert calls == [4, 4, 2] and again.from_cache and progress[-1] == (10, 10)
    np.testing.assert_array_equal(again.vectors, first.vectors)

    other = load_local_dir(clip_dir, torch.device("cpu"))
    rebuilt = build_index(other, collection, cache_dir=cache)
    assert not rebuilt.from_cache and rebuilt.path != first.path

    # same model object, weights changed in place (e.g. a training step): a new fingerprint, a new index
    fingerprint = model_fingerprint(model)
    with torch.no_grad():
        next(model.module.parameters()).add_(0.01)
    try:
        assert model_fingerprint(model) != fingerprint
        assert not build_index(model, collection, cache_dir=cache).from_cache
        with pytest.raises(MedclipError, match="another model"):
            search_text(model, first, "effusion", k=3)
    finally:
        with torch.no_grad():
            next(model.module.parameters()).sub_(0.01)
    with pytest.raises(MedclipError, match="another model"):
        search_text(other, first, "effusion", k=3)


def test_unwritable_cache_still_gives_a_working_index(model, image_folder, tmp_path):
    (tmp_path / "not-a-folder").write_text("a file where the cache folder should be")
    index = build_index(model, folder_collection(image_folder), cache_dir=tmp_path / "not-a-folder" / "cache")
    assert index.path is None and not index.from_cache
    assert len(search_text(model, index, "nodule", k=3).hits) == 3


def test_changed_image_file_rebuilds_the_index(model, image_folder, tmp_path):
    cache = tmp_path / "cache"
    first = build_index(model, folder_collection(image_folder), cache_dir=cache)
    _save_png(image_folder / "img0.png", 99)
    assert not build_index(model, folder_collection(image_folder), cache_dir=cache).from_cache
    assert first.path.is_dir()


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_query_image_is_searched_but_never_added(model, image_folder, tmp_path):
    cache = tmp_path / "cache"
    index = build_index(model, folder_collection(image_folder), cache_dir=cache)
    before = _tree(cache)
    query = image_from_array(_pattern(3))  # the same pixels as img3.png
    result = search_image(model, index, query, k=3)
    assert result.hits[0].item_id == "img3.png" and result.hits[0].score == pytest.approx(1.0, abs=1e-3)
    assert len(index) == 10 and index.faiss_index.ntotal == 10 and len(index.vectors) == 10
    assert _tree(cache) == before
    assert build_index(model, folder_collection(image_folder), cache_dir=cache).from_cache  # entry still valid


def test_hnsw_index_above_the_exact_limit(model, image_folder, tmp_path, monkeypatch):
    collection = folder_collection(image_folder)
    exact = build_index(model, collection, cache_dir=tmp_path / "exact")
    monkeypatch.setattr(retrieval, "EXACT_INDEX_MAX", 4)
    approximate = build_index(model, collection, cache_dir=tmp_path / "hnsw")
    assert approximate.kind.startswith("approximate") and (approximate.path / "index.faiss").is_file()
    reloaded = build_index(model, collection, cache_dir=tmp_path / "hnsw")
    assert reloaded.from_cache and reloaded.kind.startswith("approximate")
    top = [h.item_id for h in search_text(model, exact, "nodule", k=3).hits]
    assert [h.item_id for h in search_text(model, reloaded, "nodule", k=3).hits] == top


class _HandMade:
    """Hand-made embeddings: bright images at e1, dark ones at e2, 'effusion' texts at e1, others at e2."""

    def __init__(self, model, monkeypatch):
        def encode_image(batch):
            means = [float(image_to_rgb_array(image).mean()) for image in batch]
            return torch.stack([self.vector(1 if mean > 0.5 else 2, mean) for mean in means])

        def encode_text(texts):
            return torch.stack([self.vector(1 if "effusion" in t else 2, 0.0) for t in texts])

        monkeypatch.setattr(model, "encode_image", encode_image)
        monkeypatch.setattr(model, "encode_text", encode_text)

    @staticmethod
    def vector(axis: int, tilt: float) -> torch.Tensor:
        vector = torch.zeros(24)
        vector[axis - 1] = 1.0
        vector[5] = 0.1 * tilt  # a small, distinct offset per image so that scores differ
        return vector / vector.norm()


def _labelled_collection() -> Collection:
    """Three bright 'pleural effusion' images and three dark 'cardiomegaly' ones, interleaved."""
    items = []
    for i in range(6):
        effusion = i % 2 == 0
        level = (0.6 + 0.1 * i / 6) if effusion else 0.2 + 0.05 * i
        pixels = np.full((16, 16), level, np.float32)
        items.append(GalleryItem(f"case{i}", frozenset({"pleural effusion"} if effusion else {"cardiomegaly"}),
                                 "report", None, lambda pixels=pixels: image_from_array(pixels)))
    return Collection("hand-made", items, "hand-made-v1")


def test_precision_at_k_on_a_known_answer(model, tmp_path, monkeypatch):
    _HandMade(model, monkeypatch)
    index = build_index(model, _labelled_collection(), cache_dir=tmp_path / "cache")
    top3 = search_text(model, index, "pleural effusion", k=3)
    assert {hit.item_id for hit in top3.hits} == {"case0", "case2", "case4"}
    assert precision_at_k(top3) == 1.0  # labels taken from the query text
    assert precision_at_k(top3, "cardiomegaly") == 0.0
    assert precision_at_k(search_text(model, index, "pleural effusion", k=6)) == 0.5
    assert precision_at_k(search_text(model, index, "pleural effusion", k=4), ["Pleural Effusion"]) == 0.75
    by_image = search_image(model, index, np.full((16, 16), 0.9, np.float32), k=3)
    assert precision_at_k(by_image, "pleural effusion") == 1.0
    with pytest.raises(MedclipError, match="which finding"):
        precision_at_k(by_image)
    with pytest.raises(MedclipError, match="names none"):
        precision_at_k(search_text(model, index, "something else", k=3))


def test_precision_needs_a_labelled_gallery(model, image_folder, tmp_path):
    index = build_index(model, folder_collection(image_folder), cache_dir=tmp_path / "cache")
    with pytest.raises(MedclipError, match="no finding labels"):
        precision_at_k(search_text(model, index, "pleural effusion", k=3))


def test_labels_in_text():
    assert labels_in_text("Pleural effusion") == {"pleural effusion"}
    assert labels_in_text("left pleural fluid and an enlarged heart size") == {"pleural effusion", "cardiomegaly"}
    assert labels_in_text("no pleural effusion") == frozenset()
    assert labels_in_text("no pneumothorax but there is a large pleural effusion") == {"pleural effusion"}


def test_bad_queries_are_refused_with_clear_errors(model, image_folder, tmp_path):
    index = build_index(model, folder_collection(image_folder), cache_dir=tmp_path / "cache")
    for text in ("", "   \n"):
        with pytest.raises(MedclipError, match="Type a description"):
            search_text(model, index, text, k=3)
    for k in (0, -1, 1001, 2.5, True):
        with pytest.raises(MedclipError, match="from 1 to 1000"):
            search_text(model, index, "effusion", k=k)
    with pytest.raises(MedclipError, match="no images"):
        build_index(model, Collection("empty", [], "empty"), cache_dir=tmp_path / "cache")


def test_long_query_is_truncated_with_a_note(model, image_folder, tmp_path):
    index = build_index(model, folder_collection(image_folder), cache_dir=tmp_path / "cache")
    long_text = "left pleural effusion with basal atelectasis " * 5  # far beyond the tiny model's 16 tokens
    assert text_exceeds_context(model, long_text) and not text_exceeds_context(model, "pleural effusion")
    result = search_text(model, index, long_text, k=3)
    assert len(result.hits) == 3 and "16 tokens" in result.notes[0]


def test_image_to_reports_caches_the_corpus_embeddings(model, tmp_path, monkeypatch):
    corpus = ["Small left pleural effusion.", "Heart size is normal.", "Cardiomegaly.", "Right upper lobe nodule."]
    calls = _counting(monkeypatch, model, "encode_text")
    result = image_to_reports(model, _pattern(1), k=3, corpus=corpus, cache_dir=tmp_path / "cache")
    assert len(calls) == 1 and len(result.hits) == 3
    assert [hit.score for hit in result.hits] == sorted((hit.score for hit in result.hits), reverse=True)
    assert {hit.report for hit in result.hits} <= set(corpus)
    again = image_to_reports(model, _pattern(1), k=3, corpus=corpus, cache_dir=tmp_path / "cache")
    assert len(calls) == 1 and [h.item_id for h in again.hits] == [h.item_id for h in result.hits]
    assert len(image_to_reports(model, _pattern(1), k=10, corpus=corpus, cache_dir=tmp_path / "cache").hits) == 4


def test_phantom_collection_is_the_labelled_default_gallery(model, tmp_path):
    collection = phantom_collection(n=8, size=32)
    assert len(collection) == 8 and collection.labelled
    assert all(item.report and item.path is None for item in collection.items)
    assert collection.items[0].image().pixels.shape == (32, 32)
    assert phantom_collection(n=8, size=32).fingerprint == collection.fingerprint
    assert phantom_collection(n=7, size=32).fingerprint != collection.fingerprint
    index = build_index(model, collection, cache_dir=tmp_path / "cache")
    result = search_text(model, index, "cardiomegaly", k=4)
    assert len(result.hits) == 4 and all(hit.labels for hit in result.hits)
    assert 0.0 <= precision_at_k(result) <= 1.0
    with pytest.raises(MedclipError, match="choose n between 1 and"):
        phantom_collection(n=0)


def test_collection_spec_confines_server_paths(tmp_path) -> None:
    from medclip_core.data.galleries import collection_from_spec

    assert len(collection_from_spec("phantom:3")) == 3
    with pytest.raises(MedclipError, match="must lie inside"):
        collection_from_spec("/etc", allowed_root=tmp_path)
    with pytest.raises(MedclipError, match="only serves the phantom gallery"):
        collection_from_spec(str(tmp_path), allow_paths=False)
    with pytest.raises(MedclipError, match="whole number"):
        collection_from_spec("phantom:many")
