"""The Diagnose, Retrieve and Embeddings tasks against the bare model and libraries they wrap.

* **zero-shot latency**: ``zero_shot`` and ``diagnose`` (12 phantom labels, pairwise, warm text
  cache) on one committed example against the bare forward on the same image, both
  ``encode_image`` (our interface, preprocessing included) and the module's own
  ``encode_image`` on the preprocessed tensor; median of ``--repeats`` calls. Target: ratio <= 1.3.
* **index build throughput**: ``build_index`` over a folder of rendered phantom PNGs (fresh
  cache folder) against loading the same files and calling ``encode_image`` in the same batches.
  Target: ratio >= 0.9.
* **query latency** at 10,000 vectors (exact ``IndexFlatIP``) and 100,000 (approximate HNSW,
  above ``EXACT_INDEX_MAX``): the gallery's real image embeddings, each copied with noise (cosine
  about 0.9 to its source) up to that many; search alone and a text query (``encode_text`` +
  search); recall@10 against exact search for image-like queries (other noisy copies) and for
  random directions (the hard case, every neighbour about equally far).
* **UMAP time** for 2,000 and 10,000 points (``project(..., "umap")``, one thread as in the app),
  on clustered unit vectors of the default's width; the first call's import and JIT time apart.

    python bench/bench_tasks.py [--out bench/results/tasks.json]   # about 5 min on 2 cores
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from timing import median_seconds

from medclip_core.data.findings import LABEL_PRESETS
from medclip_core.data.galleries import GalleryItem, folder_collection
from medclip_core.data.phantom import write_examples
from medclip_core.io import load_image
from medclip_core.models import load_model
from medclip_core.tasks.diagnose import diagnose
from medclip_core.tasks.embedding import project
from medclip_core.tasks.retrieval import (
    EXACT_INDEX_MAX, HNSW_EF_SEARCH, VectorIndex, build_index, faiss_index_for,
)
from medclip_core.tasks.zero_shot import zero_shot

ROOT = Path(__file__).resolve().parents[1]

MODEL = "medclip-phantom"



def zero_shot_latency(repeats: int) -> dict:
    model = load_model(MODEL, device="cpu")
    image = load_image(ROOT / "assets" / "examples" / "phantom" / "002.png")
    labels = list(LABEL_PRESETS["Phantom findings"])
    pixels = model.preprocess_batch([image])
    zero_shot(model, image, labels)  # warm: the prompt embeddings are now cached
    diagnose(image, labels, model=MODEL)
    with torch.no_grad():
        module_forward = median_seconds(lambda: model.module.encode_image(pixels), repeats)
    encode = median_seconds(lambda: model.encode_image([image]), repeats)
    task = median_seconds(lambda: zero_shot(model, image, labels), repeats)
    served = median_seconds(lambda: diagnose(image, labels, model=MODEL), repeats)
    return {"labels": len(labels), "repeats": repeats, "module_forward_ms": 1000 * module_forward,
            "encode_image_ms": 1000 * encode, "zero_shot_ms": 1000 * task, "diagnose_ms": 1000 * served,
            "zero_shot_over_encode_image": task / encode, "zero_shot_over_module_forward": task / module_forward,
            "diagnose_over_encode_image": served / encode, "target": "zero_shot / bare forward <= 1.3"}


def index_throughput(n_images: int, batch_size: int) -> tuple[dict, np.ndarray]:
    """The timings, and the gallery's embeddings (the query-latency part grows its galleries from them)."""
    model = load_model(MODEL, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "gallery"
        write_examples(folder, n=n_images, split="test")
        (folder / "contact_sheet.png").unlink()
        paths = sorted(folder.glob("*.png"))
        start = time.perf_counter()
        collection = folder_collection(folder)
        scan = time.perf_counter() - start

        start = time.perf_counter()
        for lo in range(0, len(paths), batch_size):
            model.encode_image([load_image(p) for p in paths[lo:lo + batch_size]])
        bare = time.perf_counter() - start

        start = time.perf_counter()
        index = build_index(model, collection, cache_dir=Path(tmp) / "cache", batch_size=batch_size)
        built = time.perf_counter() - start
        start = time.perf_counter()
        build_index(model, collection, cache_dir=Path(tmp) / "cache", batch_size=batch_size)
        reused = time.perf_counter() - start
    timings = {"images": len(index), "batch_size": batch_size, "folder_scan_s": scan,
               "bare_images_per_s": len(paths) / bare, "build_index_images_per_s": len(index) / built,
               "ratio": bare / built, "cached_reload_s": reused, "target": "ratio >= 0.9"}
    return timings, index.vectors


def noisy_copies(sources: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` unit vectors, each a random source plus noise of norm about 0.5 (cosine ~0.9 to it)."""
    picked = sources[rng.integers(0, len(sources), n)]
    vectors = picked + rng.normal(scale=0.5 / np.sqrt(sources.shape[1]), size=picked.shape)
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def recall_at_10(index: VectorIndex, vectors: np.ndarray, queries: np.ndarray) -> float:
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    found = [{int(h.item_id) for h in index.search(q, 10)} for q in queries]
    return float(np.mean([len(f & set(e.tolist())) / 10 for f, e in zip(found, exact)]))


def query_latency(sources: np.ndarray, sizes: list[int], repeats: int) -> list[dict]:
    model = load_model(MODEL, device="cpu")
    rng = np.random.default_rng(0)
    image_like = noisy_copies(sources, repeats, rng)
    random_directions = rng.normal(size=(repeats, sources.shape[1])).astype(np.float32)
    random_directions /= np.linalg.norm(random_directions, axis=1, keepdims=True)
    rows = []
    for size in sizes:
        vectors = noisy_copies(sources, size, rng)
        items = [GalleryItem(str(i), None, None, None, lambda: None) for i in range(size)]
        start = time.perf_counter()
        index = VectorIndex("noisy copies", "image", items, vectors, "", "", None, False, faiss_index_for(vectors))
        build = time.perf_counter() - start
        search = median_seconds(lambda: index.search(image_like[0], 10), repeats)
        text = median_seconds(lambda: index.search(model.encode_text(["left pleural effusion"]).numpy()[0], 10),
                              repeats)
        rows.append({"vectors": size, "kind": index.kind, "build_s": build, "search_ms": 1000 * search,
                     "text_query_ms": 1000 * text,
                     "recall_at_10_image_like_queries": recall_at_10(index, vectors, image_like),
                     "recall_at_10_random_directions": recall_at_10(index, vectors, random_directions)})
        if size > EXACT_INDEX_MAX:  # how the HNSW search width trades recall for time (the index is the same)
            exact = np.argsort(-(image_like @ vectors.T), axis=1)[:, :10]
            rows[-1]["image_like_recall_at_10_by_ef_search"] = {}
            for ef in (64, 128, 256, 512):
                index.faiss_index.hnsw.efSearch = ef
                _, found = index.faiss_index.search(image_like, 10)
                rows[-1]["image_like_recall_at_10_by_ef_search"][ef] = float(
                    np.mean([len(set(f.tolist()) & set(e.tolist())) / 10 for f, e in zip(found, exact)]))
    return rows


def umap_time(sizes: list[int], dim: int) -> dict:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(12, dim))

    def clustered(n: int) -> np.ndarray:
        points = centres[rng.integers(0, len(centres), n)] + 0.6 * rng.normal(size=(n, dim))
        return points / np.linalg.norm(points, axis=1, keepdims=True)

    start = time.perf_counter()
    project(clustered(200), "umap")
    first = time.perf_counter() - start
    rows = []
    for n in sizes:
        start = time.perf_counter()
        coordinates, _ = project(clustered(n), "umap")
        rows.append({"points": n, "seconds": time.perf_counter() - start, "shape": list(coordinates.shape)})
    return {"first_call_200_points_s": first, "runs": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--images", type=int, default=320, help="index build: gallery size")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "tasks.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    index_build, gallery_vectors = index_throughput(args.images, 32)
    result = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "model": MODEL,
        "zero_shot_latency": zero_shot_latency(args.repeats),
        "index_build": index_build,
        "query_latency": query_latency(gallery_vectors, [10_000, 100_000], args.repeats),
        "exact_index_max": EXACT_INDEX_MAX, "hnsw_ef_search": HNSW_EF_SEARCH,
        "umap": umap_time([2_000, 10_000], load_model(MODEL, device="cpu").card.embed_dim),
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
