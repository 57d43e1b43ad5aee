"""Archive indexes, Ray engine, on one local Ray instance (2 CPUs) shared by the module: the same
ids and embeddings as the local engine, and a job that survives a killed model worker."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from medclip_core.index import ArchiveIndex, BuildOptions, build_index
from tests.test_index import N_PNG, make_archive

ray = pytest.importorskip("ray", reason='the Ray engine is optional: pip install "ray[data]"')


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny_model_name(open_clip_dir: Path) -> str:
    return f"local-dir:{open_clip_dir}"


def rows_and_vectors(out: Path) -> tuple[list[str], np.ndarray]:
    index = ArchiveIndex.open(out)
    return [index.row(i)["id"] for i in range(len(index))], np.asarray(index.vectors)


def test_ray_engine_gives_the_local_engines_index(tmp_path, tiny_model_name):
    source = make_archive(tmp_path / "archive")
    options = dict(workers=2, batch_size=4, shard_size=5, progress=False)
    build_index(source, tiny_model_name, tmp_path / "local", BuildOptions(engine="local", **options))
    build_index(source, tiny_model_name, tmp_path / "ray", BuildOptions(engine="ray", **options))
    local_ids, local_vectors = rows_and_vectors(tmp_path / "local")
    ray_ids, ray_vectors = rows_and_vectors(tmp_path / "ray")
    assert ray_ids == local_ids and len(ray_ids) == N_PNG + 1
    np.testing.assert_allclose(ray_vectors, local_vectors, atol=1e-5)
    assert (tmp_path / "ray" / "problems.csv").read_text() == (tmp_path / "local" / "problems.csv").read_text()


def encoder_processes() -> list[psutil.Process]:
    """The Ray model workers this test process started (Ray names them after the actor class)."""
    return [p for p in psutil.Process().children(recursive=True)
            if "ImageEncoder" in " ".join(p.cmdline()) or "ImageEncoder" in p.name()]


def test_a_killed_model_worker_does_not_lose_or_repeat_an_image(tmp_path, tiny_model_name):
    source = make_archive(tmp_path / "archive", copies=20)  # 240 extra images: the job outlives the kill
    out = tmp_path / "index"
    failures: list[BaseException] = []

    def job() -> None:
        try:
            build_index(source, tiny_model_name, out, BuildOptions(engine="ray", workers=2, batch_size=4,
                                                                  shard_size=10, progress=False))
        except BaseException as error:  # reported by the assertion below
            failures.append(error)

    thread = threading.Thread(target=job)
    thread.start()
    deadline = time.time() + 120
    while not list((out / "shards").glob("*.jsonl")) and time.time() < deadline:
        time.sleep(0.05)
    victims = encoder_processes()
    assert victims, "no Ray model worker found to kill"
    victims[0].kill()
    thread.join(timeout=300)
    assert not thread.is_alive() and not failures, failures
    ids, vectors = rows_and_vectors(out)
    listed = sorted(p.relative_to(source).as_posix() for p in source.rglob("*.png") if p.name != "broken.png")
    assert sorted(ids) == sorted(listed + ["study/copy/same-instance.dcm"])  # every image, once
    assert len(ids) == len(set(ids)) == N_PNG + 1 + 240
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
