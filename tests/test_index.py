"""Archive indexes, local engine: a folder of phantom radiographs (PNG and DICOM) with a corrupt file
and a DICOM copied twice; the index must hold every readable image once, with the model's own
embeddings, survive Ctrl-C, and refuse another model."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from medclip_core.errors import TaskInputError
from medclip_core.index import ArchiveIndex, BuildOptions, build_index, search_index_image, search_index_text
from medclip_core.index.store import IndexInfo, build_faiss
from medclip_core.io import load_image
from medclip_core.models import load_model
from tests.test_io import write_dicom

REPO = Path(__file__).resolve().parents[1]
PHANTOMS = sorted((REPO / "assets" / "examples" / "phantom").glob("[0-9]*.png"))  # committed renders, 224 px
N_PNG = len(PHANTOMS)


def make_archive(folder: Path, copies: int = 0) -> Path:
    """The N_PNG committed phantom PNGs in two sub-folders, one DICOM plus a copy with the same SOP
    Instance UID, a corrupt PNG, and ``copies`` extra hard links of each PNG (cheap bulk for tests
    that must catch a job while it runs)."""
    for i, png in enumerate(PHANTOMS):
        target = folder / ("left" if i % 2 else "right") / png.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(png, target)
    pixels = (np.asarray(load_image(folder / "left" / "001.png").pixels) * 4095).astype(np.uint16)
    (folder / "study" / "copy").mkdir(parents=True)
    dicom = write_dicom(folder / "study" / "image.dcm", pixels, bits_stored=12)
    shutil.copy(dicom, folder / "study" / "copy" / "same-instance.dcm")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    if copies:
        (folder / "bulk").mkdir()
    for i in range(copies):
        for png in PHANTOMS:
            os.link(folder / ("left" if int(png.stem) % 2 else "right") / png.name, folder / "bulk" / f"{i:03d}-{png.name}")
    return folder


@pytest.fixture(scope="module")
def tiny_model_name(open_clip_dir: Path) -> str:
    return f"local-dir:{open_clip_dir}"


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    return make_archive(tmp_path_factory.mktemp("archive"))


@pytest.fixture(scope="module")
def built(archive: Path, tiny_model_name: str, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("indexes") / "archive"
    build_index(archive, tiny_model_name, out, BuildOptions(workers=1, batch_size=5, shard_size=7, progress=False))
    return out


def read_problems(out: Path) -> dict[str, str]:
    lines = (out / "problems.csv").read_text().splitlines()[1:]
    return {line.split(",", 1)[0]: line.split(",", 1)[1] for line in lines}


def test_local_engine_indexes_each_readable_image_once_with_the_models_embedding(built, archive, tiny_model_name):
    index = ArchiveIndex.open(built)
    ids = [index.row(i)["id"] for i in range(len(index))]
    expected = sorted([p.relative_to(archive).as_posix() for p in archive.rglob("*.png") if p.name != "broken.png"]
                      + ["study/copy/same-instance.dcm"])
    assert ids == expected  # the first of the two DICOMs with one SOP Instance UID, in sorted order
    assert len(ids) == N_PNG + 1 and index.info.n_problems == 2 and index.info.kind == "exact"
    problems = read_problems(built)
    assert set(problems) == {"broken.png", "study/image.dcm"}
    assert "SOP Instance UID" in problems["study/image.dcm"] and "study/copy/same-instance.dcm" in problems[
        "study/image.dcm"]
    dicom_row = ids.index("study/copy/same-instance.dcm")
    assert index.row(dicom_row)["sop_uid"] is not None
    model = load_model(tiny_model_name)
    bare = model.encode_image([load_image(archive / image_id) for image_id in ids]).numpy()
    np.testing.assert_allclose(np.asarray(index.vectors), bare, atol=1e-5)


def test_image_query_finds_itself_first_and_text_query_ranks_all(built, archive, tiny_model_name):
    model = load_model(tiny_model_name)
    index = ArchiveIndex.open(built)
    result = search_index_image(model, index, load_image(archive / "right" / "004.png"), k=3)
    assert result.hits[0].item_id == "right/004.png" and result.hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert Path(result.hits[0].path) == archive / "right" / "004.png"
    assert result.ood is not None and result.ood.in_distribution is None  # the tiny model has no reference
    everything = search_index_text(model, index, "pleural effusion", k=100)
    assert len(everything.hits) == len(index)
    assert [h.score for h in everything.hits] == sorted((h.score for h in everything.hits), reverse=True)


def test_a_copied_index_finds_its_images_through_the_host_setting(built, archive, tmp_path, monkeypatch):
    moved_images = shutil.copytree(archive, tmp_path / "elsewhere" / "images")
    copied = shutil.copytree(built, tmp_path / "indexes" / "moved")
    monkeypatch.setenv("MEDCLIP_INDEX_SOURCES", f"moved={moved_images}")
    index = ArchiveIndex.open(copied)
    assert index.image_path("left/001.png") == moved_images / "left" / "001.png"
    assert index.load_image("left/001.png").size == (224, 224)


def test_another_model_is_refused(built, clip_dir):
    other = load_model(f"local-dir:{clip_dir}")
    with pytest.raises(TaskInputError, match="built with"):
        search_index_text(other, ArchiveIndex.open(built), "pleural effusion")


def build_command(source: Path, model: str, out: Path) -> list[str]:
    return ["index", "build", "--source", str(source), "--model", model, "--out", str(out), "--workers", "0",
            "--batch-size", "2", "--shard-size", "6"]


def test_ctrl_c_then_the_same_command_resumes_to_the_same_index(tmp_path, tiny_model_name, built, capsys):
    from medclip_core.__main__ import main

    copies = 30  # 270 extra images, so the job is still running when interrupted
    source = make_archive(tmp_path / "archive", copies=copies)
    out = tmp_path / "index"
    command = build_command(source, tiny_model_name, out)
    job = subprocess.Popen([sys.executable, "-m", "medclip_core", *command], cwd=REPO,
                           env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    deadline = time.time() + 60
    while len(list((out / "shards").glob("*.jsonl"))) < 2 and time.time() < deadline and job.poll() is None:
        time.sleep(0.05)
    job.send_signal(signal.SIGINT)
    _, stderr = job.communicate(timeout=60)
    assert job.returncode == 2 and "resume" in stderr
    kept = len(list((out / "shards").glob("*.jsonl")))
    assert kept >= 2 and not (out / "index.json").exists()
    assert main(command) == 0  # the same command again, in this process (no second interpreter start-up)
    stdout, stderr = capsys.readouterr()
    assert f"{kept}/" in stderr  # the progress line says how many shards were already done
    info = json.loads(stdout)
    assert info["n_vectors"] == N_PNG + 1 + copies * N_PNG and info["n_problems"] == 2
    index = ArchiveIndex.open(out)
    reference = ArchiveIndex.open(built)  # the same images (and more) indexed in one go elsewhere
    ids = [index.row(i)["id"] for i in range(len(index))]
    assert len(set(ids)) == len(ids)
    for row, image_id in enumerate(ids):
        if not image_id.startswith("bulk/"):
            reference_row = [reference.row(i)["id"] for i in range(len(reference))].index(image_id)
            np.testing.assert_allclose(index.vectors[row], reference.vectors[reference_row], atol=1e-5)


def test_ivf_pq_index_recalls_the_exact_neighbours(tmp_path):
    """Clustered vectors above ``exact_max``: IVF-PQ visiting 8 of 32 cells and re-ranking its 100 best PQ
    candidates (of 2,000) finds the exact top 10 of queries near the data."""
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(40, 32))
    vectors = (centres[rng.integers(0, 40, 2000)] + 0.5 * rng.normal(size=(2000, 32))).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    faiss_index, params = build_faiss(vectors, exact_max=1000)
    assert params["factory"] == "IVF32,PQ16" and params["nprobe"] == 2 and params["train_size"] == 1600
    assert faiss_index.ntotal == 2000
    params.update(nprobe=8, rerank=100)
    faiss_index.nprobe = params["nprobe"]
    info = IndexInfo("random", "none", "", "", "folder", "", len(vectors), len(vectors), 0, 32, "ivfpq", params, 0.0)
    index = ArchiveIndex(tmp_path, info, faiss_index, vectors, np.zeros(len(vectors), np.int64))
    queries = vectors[:50] + 0.1 * rng.normal(size=(50, 32)).astype(np.float32)
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    found = [index.search(queries[q], 10) for q in range(len(queries))]
    recall = np.mean([len(set(exact[q]) & {row for _, row in found[q]}) / 10 for q in range(len(queries))])
    assert recall >= 0.95
    scores = [score for score, _ in found[0]]
    assert scores == sorted(scores, reverse=True)
    np.testing.assert_allclose(scores, queries[0] @ vectors[[row for _, row in found[0]]].T, atol=1e-5)  # exact re-rank


def test_retrieve_tab_searches_a_registered_index_and_reads_thumbnails_from_the_archive(built, tiny_model_name,
                                                                                      archive, monkeypatch):
    from pages.retrieve import run_retrieval
    from tests.test_pages_ui import inline_thumbnails

    monkeypatch.setenv("MEDCLIP_INDEX_ROOT", str(built.parent))
    grid, rows, summary, result, _ = run_retrieval("image → images", "", str(archive / "right" / "004.png"),
                                                "phantom", 3, tiny_model_name, built.name)
    thumbnails = inline_thumbnails(grid)
    assert len(thumbnails) == 3 and thumbnails[0][0].size == (224, 224) and "right/004.png" in thumbnails[0][1]
    assert result["hits"][0]["id"] == "right/004.png" and f"{N_PNG + 1:,} images in archive index" in summary
