"""The training skeleton every task runs in: optimiser, schedule, seeding, checkpoint/resume, stop
signals, ``metrics.jsonl`` and DDP set-up, written once.

A task supplies a :class:`TrainingRun` (its model, data and step) and :func:`fit` drives it:
AdamW that decays matrices only (Loshchilov & Hutter, "Decoupled Weight Decay Regularization",
2019), linear warm-up then cosine decay (Loshchilov & Hutter, SGDR, 2017), gradient clipping, a
checkpoint every ``checkpoint_every`` steps plus the optimiser state (``train_state.pt``), so that
the same command resumes an interrupted run at its last checkpoint. Batches are the task's
business but must be derived from (seed, step), so a resumed run sees the same batches as an
uninterrupted one. SIGTERM or SIGINT (how the run manager cancels a run) ends the run at the end of
its current step with a checkpoint. Under ``torchrun`` the process group is set up here (NCCL on
GPUs, gloo on CPU) for tasks that support it; only rank 0 writes.
"""
from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch

from medclip_core.errors import MedclipError

STATE_NAME = "train_state.pt"
METRICS_NAME = "metrics.jsonl"
CONFIG_NAME = "train_config.json"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclass
class TrainResult:
    """How a run ended; ``metrics`` are the rows written to ``metrics.jsonl`` by this process."""

    out_dir: str
    steps: int
    stopped: bool
    final_loss: float
    val_loss: float | None
    seconds: float
    images_per_second: float
    val: dict[str, Any] | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)

    def steady_seconds_per_step(self) -> float:
        """Seconds per step between the first and the last logged row (the first interval holds the warm-up)."""
        first, last = self.metrics[0], self.metrics[-1]
        return (last["elapsed_s"] - first["elapsed_s"]) / (last["step"] - first["step"])


def lr_at(step: int, total: int, warmup: int, base_lr: float) -> float:
    """Learning rate of ``step`` (0-based): linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def adamw(parameters: Iterable[torch.nn.Parameter], lr: float, weight_decay: float,
          betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.AdamW:
    """AdamW that decays matrices only (biases, norm scales and other vectors are left alone)."""
    parameters = list(parameters)
    return torch.optim.AdamW([{"params": [p for p in parameters if p.ndim >= 2], "weight_decay": weight_decay},
                              {"params": [p for p in parameters if p.ndim < 2], "weight_decay": 0.0}],
                             lr=lr, betas=betas)


def seed_everything(seed: int) -> None:
    """Seed torch's global generator (weight initialisation, dropout); numpy draws use their own seeded generators."""
    torch.manual_seed(seed)


def save_train_state(out_dir: Path, step: int, optimizer: torch.optim.Optimizer, **extra: Any) -> None:
    """Write the optimiser state beside a run's checkpoint (staged, then renamed), for resuming."""
    tmp = out_dir / (STATE_NAME + ".tmp")
    torch.save({"step": step, "optimizer": optimizer.state_dict(), **extra}, tmp)
    tmp.replace(out_dir / STATE_NAME)


def restore_train_state(out_dir: Path, config: str, weights: str, module: torch.nn.Module,
                        optimizer: torch.optim.Optimizer, device: torch.device,
                        strict: bool = True) -> dict[str, Any] | None:
    """Resume a run folder written by its trainer: when ``config`` and the saved state are there, load
    ``weights`` into ``module`` and the optimiser state; the saved state (``step`` ...), or None."""
    from safetensors.torch import load_file

    state_path = out_dir / STATE_NAME
    if not (state_path.is_file() and (out_dir / config).is_file()):
        return None
    module.load_state_dict(load_file(str(out_dir / weights)), strict=strict)
    state = torch.load(state_path, map_location=device, weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    return state


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job (``WORLD_SIZE`` 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "Distributed":
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def gather(self, local: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's ``local`` in rank order; only the own slice keeps its gradient."""
        import torch.distributed as dist

        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(parts, local.detach().contiguous())
        parts[self.rank] = local
        return torch.cat(parts)

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when ``flag`` is true on one (so all ranks stop at the same step)."""
        if not self.enabled:
            return flag
        import torch.distributed as dist

        value = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())


@dataclass
class RunContext:
    """Where a run happens: its folder, device, place in a torchrun job and log (silent off rank 0)."""

    out_dir: Path
    device: torch.device
    dist: Distributed
    log: Callable[[str], None]

    @classmethod
    def create(cls, out_dir: str, device: str | None, log: Callable[[str], None] = print,
               distributed: bool = False) -> "RunContext":
        """Pick the device and, under torchrun, join the process group (``distributed``: the task supports it)."""
        dist = Distributed.from_env()
        if dist.enabled and not distributed:
            raise MedclipError("This training task runs in one process; start it without torchrun.")
        return cls(Path(out_dir), _init_device(device, dist), dist, log if dist.is_main else (lambda _: None))


def _init_device(requested: str | None, dist: Distributed) -> torch.device:
    cuda = torch.cuda.is_available() and requested != "cpu"
    if not dist.enabled:
        return torch.device(requested or ("cuda" if cuda else "cpu"))
    import torch.distributed as torch_dist

    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend="nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(dist.local_rank)
        return torch.device("cuda", dist.local_rank)
    return torch.device("cpu")


class TrainingRun(ABC):
    """One run of a training task, driven by :func:`fit`.

    The constructor creates the :class:`RunContext`; :func:`fit` seeds, then calls :meth:`prepare`.
    The config (a dataclass) has at least ``out_dir``, ``seed``, ``lr``, ``weight_decay``,
    ``warmup_steps``, ``grad_clip``, ``log_every`` and ``checkpoint_every``. ``checkpoint_files``
    names the config and weights files that :meth:`save` writes (resuming reads them back).
    """

    config: Any
    context: RunContext
    should_stop: Callable[[], bool]  # asked before every step: True ends the run with a checkpoint
    module: torch.nn.Module  # the trained module, checkpointed and restored (set by the constructor or prepare)
    checkpoint_files: tuple[str, str]
    betas: tuple[float, float] = (0.9, 0.999)
    strict_resume: bool = True

    @abstractmethod
    def prepare(self) -> int:
        """Build what the run needs after seeding (data, the trained module); returns the total steps."""

    @abstractmethod
    def step_loss(self, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of (0-based) ``step``'s batch, from batches derived from (seed, step), and named parts to log."""

    @abstractmethod
    def validate(self) -> dict[str, Any]:
        """Validation figures added to the metric row of a checkpoint step (``val_loss`` ...)."""

    @abstractmethod
    def save(self, step: int, final: bool, val: dict[str, Any]) -> None:
        """Write the checkpoint files (``checkpoint_files``) for ``step``."""

    def parameters(self) -> list[torch.nn.Parameter]:
        """The parameters the optimiser updates."""
        return [p for p in self.module.parameters() if p.requires_grad]

    def train_mode(self) -> None:
        """Put the module in training mode (called before the first step)."""
        self.module.train()

    def scale_gradients(self) -> None:
        """Adjust gradients after backward, before clipping (e.g. parameters that see the gathered batch)."""

    def after_step(self) -> None:
        """Called after each optimiser step (e.g. clamp a parameter into range)."""

    def log_fields(self, done: int) -> dict[str, Any]:
        """Task figures for the metric row after ``done`` steps."""
        return {}

    def extra_state(self) -> dict[str, Any]:
        """Saved with the optimiser state, and given back to :meth:`resume`."""
        return {}

    def resume(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` saved."""

    def images_per_step(self) -> int:
        """Images a step trains on (for the throughput figure); 0 when not meaningful."""
        return 0

    def run(self) -> TrainResult:
        """Train (or resume) to the last step; see :func:`fit`."""
        return fit(self, self.should_stop)


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGTERM or SIGINT while the block runs (handlers only on the main thread; restored after)."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in STOP_SIGNALS}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def fit(run: TrainingRun, should_stop: Callable[[], bool] = lambda: False) -> TrainResult:
    """Run (or resume) ``run`` to its last step; stops early with a checkpoint when ``should_stop``
    says so or on SIGTERM/SIGINT (``TrainResult.stopped``)."""
    try:
        with stop_on_signals() as signalled:
            return _fit(run, lambda: signalled.is_set() or should_stop())
    finally:
        if run.context.dist.enabled:
            import torch.distributed as torch_dist

            if torch_dist.is_initialized():
                torch_dist.destroy_process_group()


def _fit(run: TrainingRun, should_stop: Callable[[], bool]) -> TrainResult:
    cfg, ctx = run.config, run.context
    main = ctx.dist.is_main
    if main:
        ctx.out_dir.mkdir(parents=True, exist_ok=True)
        (ctx.out_dir / CONFIG_NAME).write_text(json.dumps(asdict(cfg), indent=2))
    seed_everything(cfg.seed)
    total = run.prepare()
    params = run.parameters()
    optimizer = adamw(params, cfg.lr, cfg.weight_decay, betas=run.betas)
    state = restore_train_state(ctx.out_dir, *run.checkpoint_files, run.module, optimizer, ctx.device,
                                strict=run.strict_resume)
    start = int(state["step"]) if state else 0
    if state:
        run.resume(state)
        ctx.log(f"resuming at step {start}/{total}")
    run.train_mode()

    def save(step: int, final: bool, val: dict[str, Any]) -> None:
        run.save(step, final, val)
        save_train_state(ctx.out_dir, step, optimizer, **run.extra_state())

    metrics_file = (ctx.out_dir / METRICS_NAME).open("a") if main else None
    history: list[dict[str, Any]] = []
    t0, seen, loss, stopped, step = time.time(), 0, torch.tensor(float("nan")), False, start
    val: dict[str, Any] = {}
    try:
        for step in range(start, total):
            if ctx.dist.any(should_stop(), ctx.device):
                stopped = True
                break
            lr = lr_at(step, total, cfg.warmup_steps, cfg.lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss, parts = run.step_loss(step)
            optimizer.zero_grad(set_to_none=True)
            (loss * ctx.dist.world_size).backward()  # DDP averages gradients over ranks
            run.scale_gradients()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            run.after_step()
            seen += run.images_per_step()
            done = step + 1
            checkpoint_now = main and (done % cfg.checkpoint_every == 0 or done == total)
            if main and (done % cfg.log_every == 0 or checkpoint_now):
                row = {"step": done, **run.log_fields(done), "loss": float(loss.detach()), **parts, "lr": lr,
                       "grad_norm": float(grad_norm), "images_per_s": seen / (time.time() - t0),
                       "elapsed_s": time.time() - t0}
                if checkpoint_now:
                    val = run.validate()
                    row.update(val)
                metrics_file.write(json.dumps(row) + "\n")
                metrics_file.flush()
                history.append(row)
                ctx.log(json.dumps(row))
            if checkpoint_now:
                save(done, done == total, val)
        if main and stopped:
            ctx.log(f"stopped at step {step}/{total}; checkpoint saved")
            save(step, False, val)
        if main and start >= total:
            save(total, True, run.validate())
    finally:
        if metrics_file is not None:
            metrics_file.close()
    elapsed = time.time() - t0
    val_loss = next((row["val_loss"] for row in reversed(history) if "val_loss" in row), None)
    return TrainResult(str(ctx.out_dir), step if stopped else total, stopped, float(loss.detach()), val_loss,
                       elapsed, seen / elapsed if elapsed > 0 else 0.0, val or None, history)

