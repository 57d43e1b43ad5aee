"""First use of the phantom gallery: the shipped lung-mask list, the render cache and the Embeddings map's
shipped report embeddings (bench/bench_first_use.py measures the times; these check the behaviour)."""
from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from medclip_core.data import phantom
from medclip_core.data.galleries import PHANTOM_RENDERS, RenderCache, collection_from_spec
from medclip_core.models import load_model
from medclip_core.tasks.embedding import EmbeddingMapCache, embedding_map, thumbnail_data_uri


def test_shipped_lung_mask_list_is_what_a_scan_of_the_archive_finds() -> None:
    shipped = json.loads(phantom.LUNG_MASK_LIST.read_text())
    assert shipped["source"] == phantom.lung_mask_source_digest(), \
        "the mask archive or a decoding library changed: run scripts/release/phantom_lung_masks.py"
    assert tuple(shipped["names"]) == phantom.scan_usable_lung_masks()
    assert phantom.usable_lung_mask_names() == tuple(shipped["names"])
    assert len(shipped["names"]) == 418  # of the 517 masks, as the bank's docstring says


def test_render_cache_renders_each_image_once_and_keeps_the_renderer_output() -> None:
    dataset = phantom.phantom_dataset("test", seed=0, size=224)
    cache = RenderCache(max_entries=3)
    first = [cache.image(dataset, i) for i in range(3)]
    again = [cache.image(dataset, i) for i in range(3)]
    assert (cache.renders, cache.hits) == (3, 3)
    assert all(a is b for a, b in zip(first, again))
    for i, image in enumerate(first):  # bit-identical to a fresh render
        assert np.array_equal(image.pixels, dataset[i].image)
        assert not image.pixels.flags.writeable  # shared: nobody may draw on it
    cache.image(dataset, 3)  # evicts the least recently used (index 0)
    cache.image(dataset, 0)
    assert cache.renders == 5


def test_a_warm_retrieval_call_renders_no_thumbnail_again(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("MEDCLIP_CACHE_DIR", str(tmp_path))
    from pages.retrieve import run_retrieval
    from tests.test_pages_ui import inline_thumbnails

    query = ("text → images", "pleural effusion", None, "phantom", 8, "medclip-phantom")
    grid, rows, _, _, _ = run_retrieval(*query)
    assert len(inline_thumbnails(grid)) == len(rows) == 8 and phantom.is_warm(224)
    renders = PHANTOM_RENDERS.renders
    again, rows_again, _, _, _ = run_retrieval(*query)
    assert PHANTOM_RENDERS.renders == renders  # all 8 thumbnails came from the cache
    assert rows_again == rows and again == grid


@pytest.mark.parametrize("name", ["medclip-phantom", "medclip-phantom-grounding"])
def test_embeddings_default_map_embeds_nothing_on_first_use(name, monkeypatch, tmp_path) -> None:
    """The default map's 200 images and 200 report texts are shipped (scripts/release/precompute_embeddings.py)."""
    monkeypatch.setenv("MEDCLIP_CACHE_DIR", str(tmp_path))
    model = load_model(name)
    expected = model.encode_text([item.report for item in collection_from_spec("phantom:200").items[:4]]).numpy()

    def refuse(*_args, **_kwargs):
        raise AssertionError(f"{name}: the Embeddings tab's default map is not shipped or is stale")

    monkeypatch.setattr(model, "encode_text", refuse)
    monkeypatch.setattr(model, "encode_image", refuse)
    renders = PHANTOM_RENDERS.renders
    gallery = collection_from_spec("phantom:200")
    result = embedding_map(model, gallery, method="pca", cache=None)
    assert PHANTOM_RENDERS.renders == renders  # the thumbnails are shipped too
    assert result.thumbnails[:2] == [thumbnail_data_uri(item.image()) for item in gallery.items[:2]]
    assert result.modality.count("image") == result.modality.count("text") == 200
    assert result.modality_gap is not None and result.modality_gap > 0
    from medclip_core.tasks.retrieval import build_report_index

    shipped = build_report_index(model, [item.report for item in collection_from_spec("phantom:200").items]).vectors
    assert np.abs(shipped[:4] - expected).max() < 2e-3  # float16 rounding, nothing more


def test_a_map_asked_for_while_it_is_being_computed_is_computed_once(monkeypatch) -> None:
    """The start-up warm-up and a first click ask for the same map: the second waits for the first."""
    model = load_model("medclip-phantom")
    pixels = [np.full((32, 32), v, np.float32) for v in (0.1, 0.4, 0.7, 0.9)]
    data = (pixels, ["effusion", "nodule", "normal", "edema"], None)
    encoded, second_started = [], threading.Event()
    encode_image = model.encode_image

    def counting(images):
        encoded.append(len(images))
        return encode_image(images)

    def hold_first(done, total):  # the first computation pauses until the second caller has asked
        if threading.current_thread().name == "first" and done == total:
            second_started.wait(10)
            time.sleep(0.5)

    monkeypatch.setattr(model, "encode_image", counting)
    cache = EmbeddingMapCache()
    results = {}

    def ask(name):
        results[name] = embedding_map(model, data, method="pca", cache=cache, progress=hold_first)

    first = threading.Thread(target=ask, args=("first",), name="first")
    first.start()
    deadline = time.monotonic() + 30
    while not encoded and time.monotonic() < deadline:
        time.sleep(0.01)
    second = threading.Thread(target=ask, args=("second",), name="second")
    second.start()
    second_started.set()
    first.join(30), second.join(30)
    assert encoded == [4] and (cache.misses, cache.hits) == (1, 1)
    assert np.array_equal(results["first"].coordinates, results["second"].coordinates)
