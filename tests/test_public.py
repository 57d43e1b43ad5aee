"""Safe by default when public, bounded resources: the deployment mode, admin actions, model loading
limits, run request bounds, upload cleanup, and one concurrency limit shared by every model call."""
from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
import zipfile
from pathlib import Path

import pytest

from medclip_core import hosting
from medclip_core.errors import AccessDeniedError, ModelUnavailableError, TaskInputError
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
PHANTOM = ROOT / "assets" / "medclip-phantom"
MODE_ENV = ("SPACE_ID", "GRADIO_SERVER_NAME", "MEDCLIP_PUBLIC", "MEDCLIP_ADMIN_TOKEN", "MEDCLIP_MAX_MODEL_PARAMS",
            "MEDCLIP_MODEL_DIRS")


@pytest.fixture
def local(monkeypatch):
    for name in MODE_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def public(local):
    local.setenv("SPACE_ID", "someone/medclip-explorer")
    return local


def test_public_when_listening_beyond_loopback_or_on_a_space(local) -> None:
    assert not hosting.is_public()  # Gradio's default address is 127.0.0.1
    for host in ("127.0.0.1", "127.0.1.1", "localhost", "::1", "[::1]"):
        assert not hosting.is_public(host), host
    for host in ("0.0.0.0", "::", "192.168.1.20", "medclip.example.org"):
        assert hosting.is_public(host), host
    local.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    assert hosting.is_public()
    local.setenv("MEDCLIP_PUBLIC", "0")  # the host's explicit word wins (e.g. a container port bound to loopback)
    assert not hosting.is_public()
    local.delenv("MEDCLIP_PUBLIC")
    local.setenv("GRADIO_SERVER_NAME", "127.0.0.1")
    local.setenv("SPACE_ID", "someone/space")
    assert hosting.is_public()
    local.delenv("SPACE_ID")
    local.setenv("MEDCLIP_PUBLIC", "1")  # behind a reverse proxy on loopback
    assert hosting.is_public()


def test_admin_actions_are_open_locally_off_when_public_and_need_a_set_token(local) -> None:
    hosting.check_admin_token(None)  # local, no token: on, as before
    local.setenv("SPACE_ID", "someone/space")
    with pytest.raises(AccessDeniedError, match="off on this public server"):
        hosting.check_admin_token("anything")
    local.setenv("MEDCLIP_ADMIN_TOKEN", "s3cret")
    with pytest.raises(AccessDeniedError, match="need the admin token"):
        hosting.check_admin_token("")
    with pytest.raises(AccessDeniedError, match="wrong"):
        hosting.check_admin_token("guess")
    hosting.check_admin_token("s3cret")


def test_a_public_app_refuses_anonymous_training_and_uploads_caps_upload_size_and_deletes_old_files(
        public, tmp_path: Path) -> None:
    """The whole app as a Space would run it: training and dataset uploads are off, every model-calling
    endpoint is in one concurrency group, uploads over MEDCLIP_MAX_UPLOAD_MB are refused, and temporary
    files go after MEDCLIP_TEMP_MAX_AGE_S."""
    import httpx
    from gradio_client import Client, handle_file

    import app
    from medclip_core.train.runs import RunManager
    from pages.common import MODEL_CALLS

    public.setenv("MEDCLIP_MAX_UPLOAD_MB", "1")
    public.setenv("MEDCLIP_TEMP_MAX_AGE_S", "2")
    public.setenv("MEDCLIP_RUNS_DIR", str(tmp_path / "runs"))
    demo = app.build_app()
    groups = {fn.api_name: fn.concurrency_id for fn in demo.fns.values()}
    model_endpoints = ("zero_shot", "retrieve", "embedding_map", "heatmap", "segment", "report")
    assert {groups[name] for name in model_endpoints} == {MODEL_CALLS}
    assert MODEL_CALLS not in {groups[name] for name in ("inspect", "train_status", "banner_for")}

    demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                **app.launch_settings())
    try:
        client = Client(demo.local_url, verbose=False)
        with pytest.raises(Exception, match="off on this public server"):
            client.predict("anon", "tiny-test", "phantom:16", "contrastive", "full", 1, 16, 5e-3, 0, 2, 1, "",
                           api_name="/train_start")
        assert RunManager(tmp_path / "runs").list_runs() == []
        with zipfile.ZipFile(tmp_path / "set.zip", "w") as zf:
            zf.writestr("pairs.csv", "image,report\na.png,One.\n")
        with pytest.raises(Exception, match="off on this public server"):
            client.predict([handle_file(str(tmp_path / "set.zip"))], api_name="/train_validate")
        assert not any((tmp_path / "runs" / "datasets").glob("*"))

        (tmp_path / "big.png").write_bytes(os.urandom(int(1.5 * 1024 ** 2)))
        (tmp_path / "small.txt").write_bytes(b"fits")
        upload = f"{demo.local_url}gradio_api/upload"
        with open(tmp_path / "big.png", "rb") as big:
            assert httpx.post(upload, files={"files": big}).status_code == 413
        with open(tmp_path / "small.txt", "rb") as small:
            response = httpx.post(upload, files={"files": small})
        stored = Path(response.json()[0])
        assert stored.is_file()
        deadline = time.time() + 20
        while stored.exists():  # deleted on Gradio's schedule: every second, once older than 2 s
            assert time.time() < deadline, "the upload was not deleted"
            time.sleep(0.5)
    finally:
        demo.close()


def test_one_limit_is_shared_by_every_model_call(local) -> None:
    """Two slow model calls on two endpoints overlap with a limit per endpoint (Gradio's default),
    and run one after the other once share_model_limit(…, 1) groups them."""
    import gradio as gr
    from gradio_client import Client

    from pages import common

    def serve(shared: bool) -> list[tuple[float, float]]:
        spans: list[tuple[float, float]] = []
        lock = threading.Lock()

        def slow(model: str) -> str:
            start = time.monotonic()
            time.sleep(0.8)
            with lock:
                spans.append((start, time.monotonic()))
            return model

        with gr.Blocks() as demo:
            picker, _ = common.model_picker()
            out = gr.Textbox()
            gr.Button("a").click(slow, inputs=picker, outputs=out, api_name="first")
            gr.Button("b").click(lambda m: slow(m), inputs=picker, outputs=out, api_name="second")
        if shared:
            assert len(common.share_model_limit(demo, picker, 1)) == 2
        demo.queue(default_concurrency_limit=2)
        demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
        try:
            client = Client(demo.local_url, verbose=False)
            jobs = [client.submit("medclip-phantom", api_name=name) for name in ("/first", "/second")]
            assert [job.result(timeout=30) for job in jobs] == ["medclip-phantom"] * 2
        finally:
            demo.close()
        return sorted(spans)

    (_, first_end), (second_start, _) = serve(shared=False)
    assert second_start < first_end  # today: each endpoint has its own limit, the calls overlap
    (_, first_end), (second_start, _) = serve(shared=True)
    assert second_start >= first_end


def test_run_requests_are_bounded(tmp_path: Path, local) -> None:
    from medclip_core.train.runs import REQUEST_BOUNDS, RunManager, RunRequest, train_command

    def shown(value: float) -> str:
        return f"{value:,}" if float(value).is_integer() else f"{value:g}"

    base = dict(name="bounded", base_model="tiny-test", data="phantom:16")
    train_command(RunRequest(**base, epochs=100, batch_size=1024, nproc=8, max_steps=1_000_000), tmp_path)
    for field, value in (("nproc", 1000), ("epochs", 1e9), ("batch_size", 10 ** 7), ("max_steps", 10 ** 9),
                         ("lr", 5.0), ("lr", 0.0), ("seed", -1), ("warmup_steps", 10 ** 7),
                         ("checkpoint_every", 0), ("epochs", float("nan"))):
        low, high = REQUEST_BOUNDS[field]
        with pytest.raises(TaskInputError, match=re.escape(f"between {shown(low)} and {shown(high)}")):
            train_command(RunRequest(**base, **{field: value}), tmp_path)
    with pytest.raises(TaskInputError, match="Unknown device"):
        train_command(RunRequest(**base, device="cuda; rm -rf /"), tmp_path)
    with pytest.raises(TaskInputError, match="Unknown precision"):
        train_command(RunRequest(**base, precision="fp8"), tmp_path)

    local.setenv("MEDCLIP_MAX_QUEUED_RUNS", "1")
    manager = RunManager(tmp_path / "runs")
    try:
        manager.submit(RunRequest(name="first", base_model="tiny-test", data="phantom:16", max_steps=100000))
        with pytest.raises(TaskInputError, match="1 runs are queued or running"):
            manager.submit(RunRequest(name="second", base_model="tiny-test", data="phantom:16"))
        with pytest.raises(TaskInputError, match="folder of uploaded datasets"):
            manager.submit(RunRequest(name="datasets", base_model="tiny-test", data="phantom:16"))
    finally:
        manager.cancel("first", wait_s=30)
        manager.stop_monitor()
    assert [r.name for r in manager.list_runs()] == ["first"]


def test_expired_uploads_are_deleted_unless_a_run_uses_them(tmp_path: Path) -> None:
    from medclip_core.train.datasets import remove_expired_uploads

    root = tmp_path / "datasets"
    for name in ("fresh", "old", "old_in_use"):
        (root / name).mkdir(parents=True)
        (root / name / "pairs.clean.csv").write_text("image,report,labels\n")
    hour_ago = time.time() - 3600
    for name in ("old", "old_in_use"):
        os.utime(root / name, (hour_ago, hour_ago))
    removed = remove_expired_uploads(root, [root / "old_in_use" / "pairs.clean.csv"], max_age_s=1800)
    assert removed == [root / "old"]
    assert sorted(p.name for p in root.iterdir()) == ["fresh", "old_in_use"]


def test_public_local_dir_reads_only_known_folders_and_does_not_reveal_others(public, tmp_path: Path) -> None:
    from medclip_core.models import load_model

    messages = set()
    for path in ("/etc", "/no/such/folder", str(PHANTOM / ".." / ".." / "medclip_core"), str(tmp_path)):
        with pytest.raises(AccessDeniedError) as caught:
            load_model(f"local-dir:{path}", device="cpu")
        messages.add(str(caught.value))
    assert len(messages) == 1 and "MEDCLIP_MODEL_DIRS" in messages.pop()
    assert load_model(f"local-dir:{PHANTOM}", device="cpu").card.embed_dim == 256  # the registry's own folder
    public.setenv("MEDCLIP_MODEL_DIRS", str(tmp_path))
    with pytest.raises(ModelUnavailableError, match="not found"):  # the host's folder: ordinary errors again
        load_model(f"local-dir:{tmp_path / 'missing'}", device="cpu")


def _open_clip_folder(folder: Path, model_cfg: dict) -> Path:
    folder.mkdir(parents=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    (folder / "open_clip_model.safetensors").write_bytes(b"")
    return folder


def _rss_mib(field: str) -> int:
    """A memory figure of this process from /proc/self/status (VmRSS now, VmHWM peak) in MiB."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field))
    return int(line.split()[1]) // 1024


def test_a_small_config_naming_a_large_model_is_refused_before_it_is_built(public, tmp_path: Path) -> None:
    """The issue's 462-byte open_clip config naming ViT-L, on a public server: refused by its parameter
    count, and the process's peak memory never grows by the 1.7 GB such a model takes."""
    import open_clip

    from medclip_core.models import load_model

    folder = _open_clip_folder(tmp_path / "vit-l", open_clip.get_model_config("ViT-L-14"))
    assert (folder / "open_clip_config.json").stat().st_size < 600
    public.setenv("MEDCLIP_MODEL_DIRS", str(tmp_path))
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) restarts from the present size
    before = _rss_mib("VmRSS")
    with pytest.raises(ModelUnavailableError, match="has 427,616,513 parameters; this public server builds at "
                                                    "most 300,000,000"):
        load_model(f"local-dir:{folder}", device="cpu")
    assert _rss_mib("VmHWM") - before < 300


def test_architectures_and_text_towers_outside_the_allow_lists_are_refused(local, tmp_path: Path, clip_dir) -> None:
    from medclip_core.models import load_model
    from medclip_core.models.checkpoint import save_checkpoint
    from tests.conftest import TINY_TEXT, tiny_open_clip_module

    swin = _open_clip_folder(tmp_path / "swin", {"embed_dim": 24, "vision_cfg": {
        "timm_model_name": "swin_tiny_patch4_window7_224", "image_size": 224}, "text_cfg": TINY_TEXT})
    with pytest.raises(ModelUnavailableError, match="swin_tiny_patch4_window7_224.*allow-list"):
        load_model(f"local-dir:{swin}", device="cpu")
    bert = _open_clip_folder(tmp_path / "bert", {"embed_dim": 24, "vision_cfg": {"image_size": 32, "layers": 1,
                                                 "width": 32, "patch_size": 8}, "text_cfg": {"hf_model_name": "/etc"}})
    with pytest.raises(ModelUnavailableError, match="text tower '/etc'.*allow-list"):
        load_model(f"local-dir:{bert}", device="cpu")

    # a checkpoint naming an installed module as its text-tower package: refused, the module never imported
    (tmp_path / "side_effect.py").write_text(f"open({str(tmp_path / 'imported')!r}, 'w').close()\n")
    local.syspath_prepend(str(tmp_path))
    card = {"name": "c", "backend": "checkpoint", "source": "test", "modality": "test", "image_size": 32,
            "embed_dim": 24, "licence": "MIT"}
    model_cfg = {"embed_dim": 24, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8},
                 "text_cfg": TINY_TEXT}
    ckpt = save_checkpoint(tiny_open_clip_module(), tmp_path / "ckpt", model_cfg, card, {}, "side_effect")
    with pytest.raises(ModelUnavailableError, match="'side_effect'.*allow-list"):
        load_model(f"local-dir:{ckpt}", device="cpu")
    assert not (tmp_path / "imported").exists()

    # the transformers backend counts its parameters from the config too (a copy: not the cached model)
    clip = Path(shutil.copytree(clip_dir, tmp_path / "clip"))
    local.setenv("MEDCLIP_MAX_MODEL_PARAMS", "1000")
    with pytest.raises(ModelUnavailableError, match=r"has \d{2,3},\d{3} parameters.*at most 1,000 for a model"):
        load_model(f"local-dir:{clip}", device="cpu")
