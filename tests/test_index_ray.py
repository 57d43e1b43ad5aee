"""Archive indexes, Ray engine, on a local Ray instance (2 CPUs): a job that survives a killed model
worker and gives the same ids and embeddings as the local engine (one job: Ray workers start slowly)."""
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


def encoder_processes() -> list[psutil.Process]:
    """The Ray model workers this test process started (Ray names them after the actor class)."""
    return [p for p in psutil.Process().children(recursive=True)
            if "ImageEncoder" in " ".join(p.cmdline()) or "ImageEncoder" in p.name()]


def test_a_ray_job_with_a_killed_model_worker_gives_the_local_engines_index(tmp_path, tiny_model_name):
    """One Ray job (two encoder actors) loses an actor mid-job: it still indexes every image exactly once,
    with the same ids, embeddings and problems as the local engine on the same folder."""
    copies = 27  # 243 extra images: the job outlives the kill
    source = make_archive(tmp_path / "archive", copies=copies)
    out = tmp_path / "ray"
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
    assert len(ids) == len(set(ids)) == N_PNG + 1 + copies * N_PNG
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    build_index(source, tiny_model_name, tmp_path / "local", BuildOptions(workers=0, batch_size=8, progress=False))
    local_ids, local_vectors = rows_and_vectors(tmp_path / "local")
    assert ids == local_ids
    np.testing.assert_allclose(vectors, local_vectors, atol=1e-5)
    assert (out / "problems.csv").read_text() == (tmp_path / "local" / "problems.csv").read_text()
