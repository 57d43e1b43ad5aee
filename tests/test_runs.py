"""Run manager: real background processes through the CLI, a SQLite registry that survives restarts."""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from medclip_core.errors import TaskInputError
from medclip_core.train.runs import RunManager, RunRequest, _process_start, read_metrics

TINY = dict(base_model="tiny-test", data="phantom:16", batch_size=16, lr=5e-3, warmup_steps=1, checkpoint_every=1,
            precision="fp32", extra_args=["--val-reports", "4"])


@pytest.fixture
def manager(tmp_path: Path, monkeypatch) -> RunManager:
    monkeypatch.setenv("MEDCLIP_RUNS_DIR", str(tmp_path / "runs"))
    manager = RunManager()
    yield manager
    for record in manager.list_runs():  # never leave a training process behind
        if record.state in ("queued", "running"):
            manager.cancel(record.name, wait_s=30)


def _wait_for_steps(manager: RunManager, name: str, steps: int = 1, timeout_s: float = 90) -> None:
    deadline = time.time() + timeout_s
    while len(read_metrics(manager.get(name).run_dir)) < steps:
        assert manager.refresh_one(name).state == "running", manager.get(name).error
        assert time.time() < deadline, "the run wrote no metrics in time"
        time.sleep(0.2)


def test_a_run_goes_queued_running_finished_and_loads_through_the_registry(manager: RunManager) -> None:
    from medclip_core.models import describe_models, load_model

    first = manager.submit(RunRequest(name="tiny-a", max_steps=2, **TINY))
    second = manager.submit(RunRequest(name="tiny-b", max_steps=2, **TINY))
    assert first.state == "running" and first.pid is not None
    assert second.state == "queued"  # one run per device
    assert manager.cancel("tiny-b").state == "cancelled"

    done = manager.wait("tiny-a", timeout_s=120)
    assert done.state == "finished", done.error
    assert [row["step"] for row in read_metrics(done.run_dir)] == [1, 2]
    assert done.last_metrics["step"] == 2 and done.last_metrics["result"]["steps"] == 2
    config = json.loads((done.checkpoint_path / "medclip_config.json").read_text())
    assert config["final"] is True and config["step"] == 2

    assert "tiny-a" in [row["name"] for row in describe_models()]
    model = load_model("tiny-a", device="cpu")
    assert model.card.embed_dim == 24

    with pytest.raises(TaskInputError, match="exists already"):
        manager.submit(RunRequest(name="tiny-b", max_steps=2, **TINY))
    for taken in ("tiny-a", "medclip-phantom"):
        with pytest.raises(TaskInputError, match="already a model name"):
            manager.submit(RunRequest(name=taken, **TINY))


def test_cancel_stops_the_process_and_keeps_the_last_checkpoint(manager: RunManager) -> None:
    record = manager.submit(RunRequest(name="long", max_steps=100000, **TINY))
    _wait_for_steps(manager, "long")
    cancelled = manager.cancel("long", wait_s=60)
    assert cancelled.state == "cancelled"
    assert _process_start(record.pid) is None  # the process is gone
    config = json.loads((cancelled.checkpoint_path / "medclip_config.json").read_text())
    assert config["final"] is False and 1 <= config["step"] < 100000
    assert "stopped at step" in cancelled.log_path.read_text()


def test_a_killed_run_is_failed_after_a_restart_and_queued_runs_start(manager: RunManager) -> None:
    victim = manager.submit(RunRequest(name="victim", max_steps=100000, **TINY))
    manager.submit(RunRequest(name="waiting", max_steps=2, **TINY))
    _wait_for_steps(manager, "victim")
    os.killpg(victim.pid, signal.SIGKILL)  # from outside, while no manager looks
    deadline = time.time() + 10
    while _process_start(victim.pid) is not None:  # dead (a zombie until its parent reaps it)
        assert time.time() < deadline
        time.sleep(0.05)

    restarted = RunManager(manager.root)  # what a new app process does on start
    failed = restarted.get("victim")
    assert failed.state == "failed"
    assert "ended without finishing" in failed.error and '"step": 1' in failed.error  # the log tail
    assert restarted.get("waiting").state == "running"


def test_two_processes_under_torchrun_follow_the_one_process_loss_curve(manager: RunManager, tmp_path: Path) -> None:
    from medclip_core.train.contrastive import TrainConfig, train

    ddp = manager.submit(RunRequest(name="ddp", max_steps=3, nproc=2, **TINY))
    assert "torch.distributed.run" in ddp.log_path.read_text().splitlines()[0]
    single = train(TrainConfig(out_dir=str(tmp_path / "single"), architecture="tiny-test", limit_reports=16,
                               phantom_variants=1, max_steps=3, batch_size=16, lr=5e-3, warmup_steps=1,
                               log_every=1, checkpoint_every=1, val_reports=4, precision="fp32"),
                   log=lambda _: None)
    done = manager.wait("ddp", timeout_s=180)
    assert done.state == "finished", done.error
    ddp_rows = read_metrics(done.run_dir)
    assert [row["step"] for row in ddp_rows] == [1, 2, 3]
    for ours, reference in zip(ddp_rows, single.metrics):
        for key in ("loss", "global_loss", "local_loss", "grad_norm", "logit_scale"):
            assert ours[key] == pytest.approx(reference[key], rel=1e-4), key


def test_a_run_command_carries_only_the_flags_of_its_task(tmp_path: Path) -> None:
    from medclip_core.__main__ import build_parser
    from medclip_core.train.runs import train_command

    command = train_command(RunRequest(name="seg", task="segmentation", max_steps=5), tmp_path)
    args = build_parser().parse_args(command[command.index("train"):])
    assert (args.task, args.model, args.max_steps, args.batch_size) == ("segmentation", "medclip-phantom", 5, 32)
    assert args.epochs is None and args.lock is None and args.precision is None  # contrastive-only flags
    command = train_command(RunRequest(name="lora", method="lora", **TINY), tmp_path)
    args = build_parser().parse_args(command[command.index("train"):])
    assert (args.architecture, args.lock, args.lora_rank, args.limit_reports) == ("tiny-test", "none", 8, 16)
    with pytest.raises(TaskInputError, match="trains a head on a frozen one"):
        train_command(RunRequest(name="seg", task="segmentation", method="lit"), tmp_path)
    with pytest.raises(TaskInputError, match="Unknown task 'report'"):  # not offered to the run manager
        train_command(RunRequest(name="rep", task="report"), tmp_path)
