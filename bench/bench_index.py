"""Archive indexing benchmark (issue 17): engine throughput, memory, Ray scaling, and the index at 1M vectors.

    nice python bench/bench_index.py --part throughput|rss|ray|ann|engines-agree [--n N] [--work DIR]

Each part merges its figures into bench/results/index.json (with the command, the machine and its load).

* throughput: local engine images/s on N phantom PNGs (224 px, default model), steady and over the whole
  job, against bare batched ``encode_image`` of the same model on already-preprocessed tensors (same
  batch size).
* rss: peak RSS (driver + decode workers) of the local engine at 10k and 40k images. The images are
  48 rendered phantom PNGs hard-linked under distinct names (rendering 40k phantoms takes hours on two
  cores; every file is still opened and decoded), encoded with a tiny open_clip model so the pipeline,
  not the model, is what grows.
* ray: Ray engine images/s with 1 and 2 model workers, and the local engine with 1 decode worker: over
  the whole job of N images, and steady (after the first batch arrives: without the fixed start-up).
* ann: 1,000,000 model-like vectors (the default model's embeddings of phantom images, replicated with
  Gaussian noise and renormalised): IVF-PQ build time, bytes/vector, recall@10 against exact search,
  and query latency (FAISS + exact re-rank from the memory-mapped vectors) at the recorded nprobe and
  re-rank count, and for a grid of other settings on the same index.
* engines-agree: 2,000 phantom PNGs (the 392 test renders, hard-linked under distinct names) indexed
  with the default model by the local engine and by Ray Data (local instance): same ids, embeddings
  within 1e-5 (the issue's done-when check).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "index.json"
BATCH = 32


def machine() -> dict:
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "load_average_1m_at_start": os.getloadavg()[0],
            "note": "load_average_1m_at_start: how busy the machine was (other jobs share its cores)"}


def save(part: str, figures: dict, argv: list[str]) -> None:
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    shown = [a for i, a in enumerate(argv) if a != "--work" and (i == 0 or argv[i - 1] != "--work")]  # no machine paths
    figures.update(command=f"nice python bench/bench_index.py {' '.join(shown)}", machine=machine(),
                   date=time.strftime("%Y-%m-%d %H:%M"))
    results[part] = figures
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(figures, indent=1))


def phantom_folder(folder: Path, n: int, rendered: int = 48) -> Path:
    """``n`` phantom PNGs: ``rendered`` distinct renders hard-linked under n distinct names."""
    from medclip_core.data.phantom import write_examples

    if folder.is_dir() and len(list(folder.glob("*.png"))) == n:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    renders = folder.parent / f"{folder.name}-renders"
    if not renders.is_dir():
        write_examples(renders, n=rendered, size=224)
    sources = sorted(renders.glob("[0-9]*.png"))
    folder.mkdir(parents=True)
    for i in range(n):
        os.link(sources[i % len(sources)], folder / f"{i:06d}.png")
    return folder


def run_build(source: Path, out: Path, model: str | None, engine: str, workers: int) -> float:
    """Seconds of one fresh build (the index folder is removed first)."""
    from medclip_core.index import BuildOptions, build_index

    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    build_index(source, model, out, BuildOptions(engine=engine, workers=workers, batch_size=BATCH, progress=False))
    return time.perf_counter() - start


def timed_build(source: Path, out: Path, engine: str, workers: int) -> tuple[float, float]:
    """(whole-job images/s, steady images/s) of one fresh build with the default model. Steady counts the
    rows after the first batch over the time from its arrival to the last row's: the rate without the
    fixed start-up (Ray starting worker processes, each importing torch and the backends; model loads),
    as in an archive of millions of images."""
    from unittest import mock

    from medclip_core.index.build import ShardCollector

    arrivals: list[float] = []
    add = ShardCollector.add

    def timed_add(collector: ShardCollector, row) -> bool:
        arrivals.append(time.perf_counter())
        return add(collector, row)

    with mock.patch.object(ShardCollector, "add", timed_add):
        seconds = run_build(source, out, None, engine, workers)
    return len(arrivals) / seconds, (len(arrivals) - BATCH) / (arrivals[-1] - arrivals[BATCH - 1])


def part_throughput(args: argparse.Namespace) -> dict:
    import torch

    from medclip_core.io import load_image
    from medclip_core.models import load_model

    source = phantom_folder(args.work / f"phantom-{args.n}", args.n)
    model = load_model(None)
    pixels = torch.stack([model.preprocess(load_image(p)) for p in sorted(source.glob("*.png"))[:256]])
    model.encode_image(pixels[:BATCH])
    start = time.perf_counter()
    for _ in range(2):
        for i in range(0, len(pixels), BATCH):
            model.encode_image(pixels[i:i + BATCH])
    bare = 2 * len(pixels) / (time.perf_counter() - start)
    rates = {w: timed_build(source, args.work / "out", "local", w) for w in (1, 2)}
    steady = {w: rate[1] for w, rate in rates.items()}
    return {"model": model.card.name, "n_images": args.n, "batch_size": BATCH, "torch_threads": torch.get_num_threads(),
            "bare_encode_images_per_s": round(bare, 1),
            "local_engine_images_per_s": {f"{w}_decode_workers": round(v, 1) for w, v in steady.items()},
            "local_engine_images_per_s_whole_job": {f"{w}_decode_workers": round(r[0], 1) for w, r in rates.items()},
            "ratio_best_vs_bare": round(max(steady.values()) / bare, 3),
            "ratio_best_whole_job_vs_bare": round(max(r[0] for r in rates.values()) / bare, 3),
            "target": ">= 0.9 x bare encode"}


def part_rss(args: argparse.Namespace) -> dict:
    from tests.conftest import save_open_clip_layout

    tiny = save_open_clip_layout(args.work / "tiny-model")
    figures = {}
    for n in (10_000, 40_000):
        source = phantom_folder(args.work / f"rss-{n}", n)
        out = args.work / f"rss-out-{n}"
        shutil.rmtree(out, ignore_errors=True)
        code = ("import resource,sys,time;from medclip_core.index import build_index,BuildOptions;t=time.time();"
                f"build_index('{source}','local-dir:{tiny}','{out}',BuildOptions(workers=1,batch_size={BATCH},"
                "progress=False));print(time.time()-t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,"
                "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
        seconds, own, children = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, text=True,
                                                capture_output=True).stdout.split()
        figures[str(n)] = {"seconds": round(float(seconds), 1), "images_per_s": round(n / float(seconds), 1),
                           "peak_rss_mib_driver": round(int(own) / 1024, 1),
                           "peak_rss_mib_largest_decode_worker": round(int(children) / 1024, 1)}
        shutil.rmtree(source)
    growth = figures["40000"]["peak_rss_mib_driver"] / figures["10000"]["peak_rss_mib_driver"] - 1
    return {"model": "tiny open_clip ViT (tests/conftest.py), so the pipeline dominates", "images": figures,
            "driver_peak_rss_growth_10k_to_40k": round(growth, 3), "target": "within 10 %",
            "images_note": "48 phantom renders hard-linked under distinct names; each file decoded"}


def part_ray(args: argparse.Namespace) -> dict:
    """Ray engine with 1 and 2 encoder workers, and the local engine with 1 decode worker and one torch
    thread (the compute of one Ray encoder actor): whole-job and steady images/s (:func:`timed_build`)."""
    import ray
    import torch

    source = phantom_folder(args.work / f"phantom-{args.n}", args.n)
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    run_build(source, args.work / "ray-warm", None, "ray", 1)
    rates = {f"ray_{w}_workers": timed_build(source, args.work / "ray-out", "ray", w) for w in (1, 2)}
    ray.shutdown()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rates["local_1_worker"] = timed_build(source, args.work / "local-out", "local", 1)
    torch.set_num_threads(threads)
    whole = {name: rate[0] for name, rate in rates.items()}
    steady = {name: rate[1] for name, rate in rates.items()}

    def ratios(rate: dict[str, float]) -> dict[str, float]:
        return {"ray_2_vs_1": round(rate["ray_2_workers"] / rate["ray_1_workers"], 3),
                "ray_1_vs_local_1": round(rate["ray_1_workers"] / rate["local_1_worker"], 3)}

    return {"model": "medclip-phantom", "n_images": args.n, "batch_size": BATCH, "local_torch_threads": 1,
            "images_per_s_whole_job": {name: round(v, 1) for name, v in whole.items()},
            "images_per_s_steady": {name: round(v, 1) for name, v in steady.items()},
            "start_up_seconds": {name: round(args.n / whole[name] - args.n / steady[name], 1) for name in rates},
            "ratios_whole_job": ratios(whole), "ratios_steady": ratios(steady),
            "targets": {"ray_2_vs_1": ">= 1.6", "ray_1_vs_local_1": ">= 0.85"}}


def part_engines_agree(args: argparse.Namespace) -> dict:
    """The issue's done-when check: both engines on the same folder give the same ids and embeddings."""
    import ray

    from medclip_core.index import ArchiveIndex

    rendered = 392  # every phantom test render; the rest of the n files are hard links under other names
    source = phantom_folder(args.work / f"agree-{args.n}", args.n, rendered=rendered)
    seconds = {"local": run_build(source, args.work / "agree-local", None, "local", 2)}
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    seconds["ray"] = run_build(source, args.work / "agree-ray", None, "ray", 2)
    ray.shutdown()
    local, on_ray = ArchiveIndex.open(args.work / "agree-local"), ArchiveIndex.open(args.work / "agree-ray")
    local_ids = [local.row(i)["id"] for i in range(len(local))]
    ray_ids = [on_ray.row(i)["id"] for i in range(len(on_ray))]
    difference = float(np.max(np.abs(np.asarray(local.vectors) - np.asarray(on_ray.vectors)))) \
        if local_ids == ray_ids else None
    return {"model": local.info.model, "n_images": args.n, "distinct_renders": rendered, "batch_size": BATCH,
            "workers": 2, "n_indexed": {"local": len(local), "ray": len(on_ray)},
            "ids_identical": local_ids == ray_ids, "max_abs_embedding_difference": difference,
            "embeddings_within_1e-5": difference is not None and difference <= 1e-5,
            "seconds": {engine: round(s, 1) for engine, s in seconds.items()}}


def phantom_embeddings(work: Path) -> np.ndarray:
    """The default model's embeddings of the 392 phantom test images (cached in ``work``)."""
    cached = work / "ann-real.npy"
    if cached.is_file():
        return np.load(cached)
    from medclip_core.data.phantom import phantom_dataset
    from medclip_core.io import image_from_array
    from medclip_core.models import load_model

    model = load_model(None)
    dataset = phantom_dataset("test", 0, 224)
    real = np.concatenate([model.encode_image([image_from_array(dataset[i].image) for i in range(s, min(s + 32, 392))])
                           .numpy() for s in range(0, 392, 32)])
    np.save(cached, real)
    return real


def model_like_vectors(path: Path, real: np.ndarray, n: int, noise: float, seed: int = 0) -> np.ndarray:
    """``n`` rows of ``real`` picked at random, plus N(0, noise) per dimension, renormalised (memory-mapped)."""
    rng = np.random.default_rng(seed)
    vectors = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, real.shape[1]))
    for start in range(0, n, 100_000):
        block = real[rng.integers(0, len(real), min(100_000, n - start))]
        block = block + noise * rng.standard_normal(block.shape, dtype=np.float32)
        vectors[start:start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    vectors.flush()
    return np.load(path, mmap_mode="r")


def part_ann(args: argparse.Namespace) -> dict:
    """IVF-PQ at ``args.n`` vectors; recall and latency at the recorded (nprobe, rerank) and around them."""
    from dataclasses import replace

    import faiss

    from medclip_core.index.store import ArchiveIndex, IndexInfo, build_faiss

    real = phantom_embeddings(args.work)
    n, dim = args.n, real.shape[1]
    noise = float(np.std(real - real.mean(0))) * 0.5  # copies stay closer to their source than to others
    vectors = model_like_vectors(args.work / "ann-vectors.npy", real, n, noise)
    start = time.perf_counter()
    index, params = build_faiss(vectors)
    build_seconds = time.perf_counter() - start
    faiss.write_index(index, str(args.work / "ann.faiss"))
    del index
    mapped = faiss.read_index(str(args.work / "ann.faiss"), faiss.IO_FLAG_MMAP)
    info = IndexInfo("ann", "medclip-phantom", "", "", "folder", "", n, n, 0, dim, "ivfpq", params, build_seconds)
    rng = np.random.default_rng(1)
    queries = real[rng.integers(0, len(real), 200)] + noise * rng.standard_normal((200, dim), dtype=np.float32)
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    exact = faiss.IndexFlatIP(dim)
    for s in range(0, n, 100_000):
        exact.add(np.ascontiguousarray(vectors[s:s + 100_000]))
    _, truth = exact.search(queries, 10)
    del exact

    def measure(nprobe: int, rerank: int) -> dict:
        mapped.nprobe = nprobe
        archive = ArchiveIndex(args.work, replace(info, faiss={**params, "rerank": rerank}), mapped, vectors,
                               np.zeros(n, np.int64))
        latencies, recalls = [], []
        for q, query in enumerate(queries):
            t = time.perf_counter()
            found = archive.search(query, 10)
            latencies.append(time.perf_counter() - t)
            recalls.append(len(set(truth[q]) & {row for _, row in found}) / 10)
        return {"nprobe": nprobe, "rerank": rerank, "recall_at_10_vs_exact": round(float(np.mean(recalls)), 4),
                "query_ms_median": round(1000 * float(np.median(latencies)), 2),
                "query_ms_p95": round(1000 * float(np.percentile(latencies, 95)), 2)}

    chosen = measure(params["nprobe"], params["rerank"])
    grid = [measure(params["nlist"] // cells, rerank) for cells in (16, 8, 4) for rerank in (100, 1000)]
    return {"n_vectors": n, "dim": dim, "vectors": "default model embeddings of 392 phantom test images, "
            f"replicated with N(0, {noise:.4f}) noise per dimension and renormalised",
            "faiss": params, "build_seconds": round(build_seconds, 1), **chosen,
            "index_file_mib": round((args.work / "ann.faiss").stat().st_size / 2 ** 20, 1),
            "bytes_per_vector_ram": params["bytes_per_vector_ram"], "bytes_per_vector_disk": params["bytes_per_vector_disk"],
            "other_settings": grid, "queries": len(queries), "faiss_threads": faiss.omp_get_max_threads(),
            "targets": {"recall_at_10": ">= 0.95", "query_ms": "< 10"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("throughput", "rss", "ray", "ann", "engines-agree"), required=True,
                        help="what to measure; docs/scale.md's table follows with scripts/release/results_tables.py")
    parser.add_argument("--n", type=int)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-index"))
    args = parser.parse_args()
    args.n = args.n or {"throughput": 512, "rss": 0, "ray": 512, "ann": 1_000_000, "engines-agree": 2000}[args.part]
    args.work.mkdir(parents=True, exist_ok=True)
    figures = globals()[f"part_{args.part.replace('-', '_')}"](args)
    save(args.part, figures, sys.argv[1:])


if __name__ == "__main__":
    main()
