"""Embedding maps: one point per input for every method, the modality gap, the cache, the figure."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medclip_core.data.galleries import Collection, GalleryItem
from medclip_core.errors import MedclipError
from medclip_core.io import image_from_array
from medclip_core.models.registry import load_local_dir
from medclip_core.tasks.embedding import (
    CUSTOMDATA_FIELDS, EmbeddingMapCache, embedding_map, figure, modality_gap, project,
)


@pytest.fixture(scope="module")
def model(open_clip_dir):
    return load_local_dir(open_clip_dir, torch.device("cpu"))


def _images(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.random((32, 32)).astype(np.float32) for _ in range(n)]


TEXTS = ["pleural effusion", "cardiomegaly", "normal chest", "left lung nodule", "no pleural effusion",
         "right pleural effusion"]
LABELS = ["pleural effusion", "cardiomegaly", "normal", "nodule", "normal", "pleural effusion"]


def _counting(monkeypatch, model, method: str) -> list[int]:
    calls: list[int] = []
    original = getattr(model, method)
    monkeypatch.setattr(model, method, lambda batch: calls.append(len(batch)) or original(batch))
    return calls


@pytest.mark.parametrize("method", ["pca", "tsne", "umap"])
def test_one_point_per_input_for_every_method(model, method):
    data = (_images(6), TEXTS, LABELS)  # six image-text pairs, one label per pair
    result = embedding_map(model, data, method=method, cache=None)
    assert result.coordinates.shape == (12, 2) and np.isfinite(result.coordinates).all()
    assert result.modality == ["image"] * 6 + ["text"] * 6
    assert result.label == LABELS * 2 and result.hover_text[6:] == TEXTS
    assert all(t.startswith("data:image/png;base64,") for t in result.thumbnails[:6])
    assert result.thumbnails[6:] == [None] * 6
    assert result.modality_gap is not None and -1.0 <= result.centroid_cosine <= 1.0
    again = embedding_map(model, data, method=method, cache=None)
    np.testing.assert_allclose(again.coordinates, result.coordinates, atol=1e-6)  # seeded


def _five_cases() -> Collection:
    """Five images, the first with two findings, the first three with a report."""
    items = [GalleryItem(f"case{i}", frozenset({"cardiomegaly", "edema"} if i == 0 else {"normal"}),
                         f"Report {i}." if i < 3 else None, None,
                         lambda i=i: image_from_array(np.full((20, 24), i / 5, np.float32))) for i in range(5)]
    return Collection("five", items, "five-v1")


def test_map_of_a_collection_has_every_image_and_every_report(model, tmp_path):
    collection = _five_cases()
    progress: list[tuple[int, int]] = []
    result = embedding_map(model, collection, method="pca", cache=None, cache_dir=tmp_path,
                           progress=lambda d, t: progress.append((d, t)))
    assert len(result) == 8 and result.modality.count("text") == 3
    assert result.item_ids == [f"case{i}" for i in range(5)] + ["case0", "case1", "case2"]
    assert result.label[0] == "several findings" and result.label[1] == "normal"
    assert result.labels[0] == ["cardiomegaly", "edema"]
    assert result.hover_text[5] == "Report 0." and result.thumbnails[5] == result.thumbnails[0]
    assert progress[-1] == (8, 8)
    as_json = json.loads(json.dumps(result.to_dict()))
    assert len(as_json["points"]) == 8 and "thumbnail" not in as_json["points"][0]
    assert as_json["modality_gap"] == pytest.approx(result.modality_gap)
    assert result.to_dict(include_thumbnails=True)["points"][0]["thumbnail"].startswith("data:image/png")


def test_modality_gap_known_answers():
    e1, e2 = np.eye(4)[0], np.eye(4)[1]
    opposite = modality_gap(np.stack([e1, e1]), np.stack([-e1, -e1, -e1]))
    assert opposite.distance == pytest.approx(2.0) and opposite.centroid_cosine == pytest.approx(-1.0)
    same = modality_gap(np.stack([e1, e2]), np.stack([e2, e1]))
    assert same.distance == pytest.approx(0.0) and same.centroid_cosine == pytest.approx(1.0)
    orthogonal = modality_gap(np.stack([3 * e1]), np.stack([e2]))  # rows are normalised first
    assert orthogonal.distance == pytest.approx(np.sqrt(2)) and orthogonal.centroid_cosine == pytest.approx(0.0)
    with pytest.raises(MedclipError, match="at least one image and one text"):
        modality_gap(np.zeros((0, 4)), np.stack([e1]))


def test_map_reports_the_gap_of_constructed_embeddings(model, monkeypatch):
    e1 = torch.eye(24)[0]
    monkeypatch.setattr(model, "encode_image", lambda batch: e1.repeat(len(batch), 1))
    monkeypatch.setattr(model, "encode_text", lambda texts: -e1.repeat(len(texts), 1))
    result = embedding_map(model, (_images(3), TEXTS[:4], None), method="pca", cache=None)
    assert result.modality_gap == pytest.approx(2.0) and result.centroid_cosine == pytest.approx(-1.0)
    assert result.label == ["unlabelled"] * 7
    assert "modality gap 2.000" in figure(result).layout.title.text


def test_second_call_is_served_from_the_cache(model, monkeypatch):
    cache = EmbeddingMapCache()
    calls = _counting(monkeypatch, model, "encode_image")
    data = (_images(4), TEXTS[:4], LABELS[:4])
    first = embedding_map(model, data, method="pca", cache=cache)
    assert cache.misses == 1 and len(calls) == 1
    second = embedding_map(model, data, method="pca", color_by="modality", cache=cache)
    assert cache.hits == 1 and len(calls) == 1 and second.color_by == "modality" and first.color_by == "label"
    np.testing.assert_array_equal(second.coordinates, first.coordinates)
    embedding_map(model, data, method="tsne", cache=cache)  # another method is another entry
    assert cache.misses == 2 and len(calls) == 2


def test_figure_groups_points_and_carries_thumbnails(model):
    result = embedding_map(model, (_images(6), TEXTS, LABELS), method="pca", cache=None)
    by_label = figure(result)
    assert {trace.name for trace in by_label.data} == {"pleural effusion", "cardiomegaly", "normal", "nodule"}
    assert sum(len(trace.x) for trace in by_label.data) == 12
    first = by_label.data[0].customdata[0]
    assert len(first) == len(CUSTOMDATA_FIELDS) and first[0].startswith("data:image/png")
    assert "modality gap" in by_label.layout.title.text
    by_modality = figure(embedding_map(model, (_images(6), TEXTS, LABELS), "pca", color_by="modality", cache=None))
    assert [trace.name for trace in by_modality.data] == ["image", "text"]


def test_tiny_inputs_and_bad_arguments(model):
    coordinates, notes = project(np.random.default_rng(0).random((2, 8)), "umap")
    assert coordinates.shape == (2, 2) and "PCA is shown instead" in notes[0]
    assert project(np.ones((1, 8)), "pca")[0].shape == (1, 2)
    only_texts = embedding_map(model, ([], TEXTS[:3], None), method="tsne", cache=None)
    assert len(only_texts) == 3 and only_texts.modality_gap is None and "only texts" in only_texts.notes[-1]
    with pytest.raises(MedclipError, match="method must be one of"):
        embedding_map(model, (_images(2), [], None), method="lda")
    with pytest.raises(MedclipError, match="color_by must be one of"):
        embedding_map(model, (_images(2), [], None), color_by="size")
    with pytest.raises(MedclipError, match="one label per point"):
        embedding_map(model, (_images(2), TEXTS[:3], ["a", "b"]), method="pca", cache=None)
    with pytest.raises(MedclipError, match="at least one image or text"):
        embedding_map(model, ([], [], None), method="pca", cache=None)
