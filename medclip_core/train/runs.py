"""Background training runs that outlive the app: a run manager with a registry on disk.

Each run is its own process (``python -m medclip_core train ...``, or ``torchrun`` for several
processes), started in a new session so that it survives a restart of the app that launched it.
The registry is a SQLite file in the runs folder (``MEDCLIP_RUNS_DIR``, default
``~/.cache/medclip-explorer/runs``); each run has a folder there named after it, holding its
checkpoint (``--out``), ``metrics.jsonl``, ``train.log`` (stderr) and ``result.json`` (stdout).

States: queued -> running -> finished | failed | cancelled. At most one run per device runs at
a time; the others wait in order. ``refresh()`` (called by the app on a timer and by
``wait``) notices ended processes and starts queued runs; a new manager on the same folder
reconciles what happened while no app was watching: a run whose process died without
finishing is marked failed with the tail of its log. Cancel sends SIGTERM to the run's process
group; the trainer saves a checkpoint at the end of its current step and exits (SIGKILL after a
grace period).
"""
from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medclip_core.errors import TaskInputError
from medclip_core.models.trained_runs import DB_NAME, runs_dir
from medclip_core.train.tasks import TRAINING_TASKS, run_manager_tasks

LOG_NAME = "train.log"
RESULT_NAME = "result.json"
STATES = ("queued", "running", "finished", "failed", "cancelled")
ACTIVE_STATES = ("queued", "running")
# method -> contrastive config values
METHODS: dict[str, dict[str, Any]] = {
    "full": {"lock": "none"},
    "lit": {"lock": "image"},
    "text-only": {"lock": "image-all"},
    "lora": {"lock": "none", "lora_rank": 8},
}
METHOD_LABELS = {"full": "full fine-tune", "lit": "locked image tower (LiT)", "text-only": "text tower only",
                 "lora": "LoRA adapters (peft, rank 8)"}
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
PROJECT_ROOT = Path(__file__).resolve().parents[2]
CANCEL_GRACE_S = 30.0
DATASETS_FOLDER = "datasets"  # uploaded datasets live in this folder of the runs folder
LOG_TAIL_LINES = 30
# Bounds of a run request (inclusive): a shared server must not be asked for 1,000 processes or 10^9
# epochs. Generous for this project's models: the full phantom set is ~300 steps per epoch at batch 32.
REQUEST_BOUNDS: dict[str, tuple[float, float]] = {
    "epochs": (1e-3, 100),
    "max_steps": (1, 1_000_000),
    "batch_size": (2, 1024),
    "lr": (1e-8, 1.0),
    "seed": (0, 2 ** 31 - 1),
    "nproc": (1, 8),
    "warmup_steps": (0, 100_000),
    "checkpoint_every": (1, 1_000_000),
}
BOUND_LABELS = {"epochs": "epochs", "max_steps": "max steps", "batch_size": "batch size", "lr": "learning rate",
                "seed": "seed", "nproc": "number of processes", "warmup_steps": "warm-up steps",
                "checkpoint_every": "steps between checkpoints"}
DEVICE_PATTERN = re.compile(r"^(cpu|cuda(:\d{1,2})?)$")
MAX_EXTRA_ARGS = 16
MAX_QUEUE_ENV = "MEDCLIP_MAX_QUEUED_RUNS"
DEFAULT_MAX_QUEUE = 8


@dataclass
class RunRequest:
    """What to train. ``base_model``: an architecture of ``train/architectures`` (from scratch) or a
    checkpoint model (the registry's ``medclip-phantom``, a finished run) to fine-tune. ``data``:
    ``phantom``, ``phantom:N`` (the first N training reports, one image each) or a CSV path."""

    name: str
    base_model: str = "medclip-phantom"
    data: str = "phantom"
    task: str = "contrastive"
    method: str = "full"
    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 32
    lr: float = 1e-4
    seed: int = 0
    nproc: int = 1
    device: str = "cpu"
    warmup_steps: int = 10
    checkpoint_every: int = 50
    precision: str = "bf16"
    extra_args: list[str] = field(default_factory=list)


@dataclass
class RunRecord:
    """One row of the registry."""

    id: int
    name: str
    state: str
    request: dict[str, Any]
    device: str
    created: float
    started: float | None
    ended: float | None
    pid: int | None
    run_dir: str
    last_metrics: dict[str, Any]
    error: str

    @property
    def checkpoint_path(self) -> Path:
        return Path(self.run_dir)

    @property
    def log_path(self) -> Path:
        return Path(self.run_dir) / LOG_NAME

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "checkpoint_path": str(self.checkpoint_path), "log_path": str(self.log_path)}


SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT UNIQUE NOT NULL,
    state TEXT NOT NULL,
    request TEXT NOT NULL,
    device TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    ended REAL,
    pid INTEGER,
    pid_start TEXT,
    cancel_requested REAL,
    run_dir TEXT NOT NULL,
    last_metrics TEXT NOT NULL DEFAULT '{}',
    error TEXT NOT NULL DEFAULT ''
)
"""
COLUMNS = ("id", "name", "state", "request", "device", "created", "started", "ended", "pid", "run_dir",
           "last_metrics", "error")


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux ``/proc``), None when it is gone or a zombie.

    Stored with the pid so that a recycled pid is not taken for the run's process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        if sys.platform.startswith("linux"):
            return None
        try:  # elsewhere: only whether the pid exists
            os.kill(pid, 0)
        except OSError:
            return None
        return "?"
    fields = stat[stat.rindex(")") + 2:].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The metric rows a run has written so far (``metrics.jsonl``), skipping a half-written last line."""
    rows = []
    try:
        lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return rows
    for line in lines:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file ('' when there is none)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 64 * 1024))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def architecture_names() -> list[str]:
    from medclip_core.train.contrastive import ARCHITECTURES_DIR

    return sorted(p.stem for p in ARCHITECTURES_DIR.glob("*.json"))


def checkpoint_models() -> dict[str, Path]:
    """Models a run can start from: the registry's checkpoint models that are present (finished runs included)."""
    from medclip_core.models import checkpoint
    from medclip_core.models.registry import all_specs

    return {name: spec.local_path for name, spec in all_specs().items()
            if spec.backend == "checkpoint" and checkpoint.is_checkpoint_dir(spec.local_path)}


def base_model_choices() -> list[str]:
    """Every valid ``RunRequest.base_model``: checkpoints to fine-tune, then architectures from scratch."""
    return list(checkpoint_models()) + architecture_names()


def _architecture_arg(base_model: str) -> str:
    if base_model in architecture_names():
        return base_model
    checkpoints = checkpoint_models()
    if base_model in checkpoints:
        return f"local-dir:{checkpoints[base_model]}"
    raise TaskInputError(f"Unknown base model '{base_model}'. Choose one of: {', '.join(base_model_choices())}.")


def _data_values(data: str) -> dict[str, str]:
    if data == "phantom":
        return {"data": "phantom"}
    if data.startswith("phantom:"):
        count = data[len("phantom:"):]
        if not count.isdigit() or int(count) < 2:
            raise TaskInputError(f"'{data}': write phantom:N with N >= 2 training reports.")
        return {"data": "phantom", "limit_reports": count, "phantom_variants": "1"}
    if not Path(data).is_file():
        raise TaskInputError(f"Dataset CSV not found: {data}.")
    return {"data": str(data)}


def _number(value: float) -> str:
    return f"{value:,}" if float(value).is_integer() else f"{value:g}"


def check_request_bounds(request: RunRequest) -> None:
    """Refuse a request outside :data:`REQUEST_BOUNDS` (or with an unknown precision or device), with a
    message naming the field, its value and the allowed range."""
    from medclip_core.train.configs import TrainConfig

    for name, (low, high) in REQUEST_BOUNDS.items():
        value = getattr(request, name)
        if value is None and name == "max_steps":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise TaskInputError(f"The {BOUND_LABELS[name]} must be between {_number(low)} and {_number(high)} "
                                 f"(got {value!r}).")
    precisions = TrainConfig.__dataclass_fields__["precision"].metadata["choices"]
    if request.precision not in precisions:
        raise TaskInputError(f"Unknown precision '{request.precision}'. Known: {', '.join(precisions)}.")
    if not DEVICE_PATTERN.match(str(request.device)):
        raise TaskInputError(f"Unknown device '{request.device}': use cpu, cuda or cuda:N.")
    if len(request.extra_args) > MAX_EXTRA_ARGS or any(len(str(arg)) > 256 for arg in request.extra_args):
        raise TaskInputError(f"At most {MAX_EXTRA_ARGS} extra training arguments of 256 characters each.")


def max_queued_runs() -> int:
    """How many runs may be queued or running at once (``MEDCLIP_MAX_QUEUED_RUNS``, default 8)."""
    return int(os.environ.get(MAX_QUEUE_ENV, "") or DEFAULT_MAX_QUEUE)


def train_command(request: RunRequest, out_dir: Path) -> list[str]:
    """The command line of a run: the CLI's ``train``, under torchrun when ``nproc`` > 1. Only the
    flags of the task's config are passed (a segmentation run has no ``--lock`` or ``--epochs``)."""
    if request.task not in run_manager_tasks():
        raise TaskInputError(f"Unknown task '{request.task}'. Known: {', '.join(run_manager_tasks())}.")
    if request.method not in METHODS:
        raise TaskInputError(f"Unknown method '{request.method}'. Known: {', '.join(METHODS)}.")
    check_request_bounds(request)
    if request.batch_size % request.nproc:
        raise TaskInputError(f"The batch size ({request.batch_size}) is the global batch: make it a multiple "
                             f"of the number of processes ({request.nproc}).")
    task = TRAINING_TASKS[request.task]
    # contrastive runs fine-tune the base model; the other tasks train a head on it, frozen
    base = (_architecture_arg(request.base_model) if task.base_flag == "architecture" else request.base_model)
    values = {task.base_flag: base, **_data_values(request.data), "epochs": request.epochs,
              "batch_size": request.batch_size, "lr": request.lr, "seed": request.seed,
              "warmup_steps": request.warmup_steps, "checkpoint_every": request.checkpoint_every, "log_every": 1,
              "precision": request.precision, "device": request.device, **METHODS[request.method],
              "max_steps": request.max_steps or None}
    accepted = task.field_names()
    if not set(METHODS[request.method]) <= accepted and request.method != "full":
        raise TaskInputError(f"The method '{request.method}' fine-tunes a CLIP model; a {request.task} run "
                             "trains a head on a frozen one (use full).")
    args = ["train", "--task", request.task, "--out", str(out_dir)]
    for name, value in values.items():
        if name in accepted and value is not None:
            args += [f"--{name.replace('_', '-')}", str(value)]
    args += request.extra_args
    if request.nproc > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={request.nproc}",
                "-m", "medclip_core", *args]
    return [sys.executable, "-m", "medclip_core", *args]


# An evaluation run: ``python -m medclip_core eval --data CSV --model ...`` (``RunRequest.task``)
EVALUATION_TASK = "evaluate"


def _evaluation_flags() -> "argparse.ArgumentParser":
    """The ``eval`` flags an evaluation request may carry in ``extra_args`` (nothing that names files)."""
    import argparse

    parser = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    parser.add_argument("--model", action="append", required=True)
    parser.add_argument("--tasks", nargs="+", choices=("classification", "retrieval", "grounding", "segmentation"))
    parser.add_argument("--methods", nargs="+")
    parser.add_argument("--bootstrap", type=int)
    parser.add_argument("--threshold", type=float)
    parser.add_argument("--uncertain", choices=("positive", "negative", "ignore"))
    parser.add_argument("--relevance", choices=("report", "labels"))
    return parser


def evaluation_command(request: RunRequest, out_dir: Path) -> list[str]:
    """The command line of an evaluation run: the CLI's ``eval`` on ``request.data`` (a labelled set's
    CSV or folder), writing its JSON, CSV and HTML into the run folder. ``extra_args`` holds the
    models and options (``--model A --model B --tasks ...``), checked against :func:`_evaluation_flags`."""
    import argparse

    if not Path(request.data).exists():
        raise TaskInputError(f"Evaluation data not found: {request.data}.")
    try:
        flags, unknown = _evaluation_flags().parse_known_args(request.extra_args)
    except (argparse.ArgumentError, SystemExit) as error:
        raise TaskInputError(f"Evaluation options {request.extra_args}: {error}") from None
    if unknown:
        raise TaskInputError(f"Unknown evaluation option(s): {' '.join(unknown)}.")
    if flags.bootstrap is not None and not 0 <= flags.bootstrap <= 10_000:
        raise TaskInputError("Bootstrap resamples: between 0 and 10,000.")
    return [sys.executable, "-m", "medclip_core", "eval", "--data", str(request.data), *request.extra_args,
            "--device", request.device, "--out", str(out_dir)]


def run_command(request: RunRequest, out_dir: Path) -> list[str]:
    """The command of a run of any kind: an evaluation, or training (:func:`train_command`)."""
    if request.task == EVALUATION_TASK:
        return evaluation_command(request, out_dir)
    return train_command(request, out_dir)


class RunManager:
    """Starts, watches and cancels background runs recorded in ``root/runs.sqlite``.

    Safe to use from several threads (one lock) and from several processes (SQLite). Processes
    this manager started are reaped through their ``Popen``; others are followed by pid.
    """

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root or runs_dir())
        self.root.mkdir(parents=True, exist_ok=True)
        self.db = self.root / DB_NAME
        self._lock = threading.RLock()
        self._children: dict[int, subprocess.Popen] = {}
        self._monitor: threading.Thread | None = None
        self._stop_monitor = threading.Event()
        with self._connect() as conn:
            conn.execute(SCHEMA)
        self.refresh()

    # -- registry ---------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.db, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        return conn

    def _update(self, run_id: int, **values: Any) -> None:
        encoded = {k: json.dumps(v) if isinstance(v, dict) else v for k, v in values.items()}
        with self._connect() as conn:
            conn.execute(f"UPDATE runs SET {', '.join(f'{k} = ?' for k in encoded)} WHERE id = ?",
                         (*encoded.values(), run_id))

    def _rows(self, where: str = "", params: tuple = ()) -> list[tuple]:
        with self._connect() as conn:
            return conn.execute(f"SELECT {', '.join(COLUMNS)}, pid_start, cancel_requested FROM runs {where} "
                                "ORDER BY id", params).fetchall()

    @staticmethod
    def _record(row: tuple) -> RunRecord:
        values = dict(zip(COLUMNS, row))
        values["request"] = json.loads(values["request"])
        values["last_metrics"] = json.loads(values["last_metrics"] or "{}")
        return RunRecord(**values)

    def list_runs(self) -> list[RunRecord]:
        """Every run, oldest first."""
        return [self._record(row) for row in self._rows()]

    def get(self, name_or_id: str | int) -> RunRecord:
        column = "id" if isinstance(name_or_id, int) else "name"
        rows = self._rows(f"WHERE {column} = ?", (name_or_id,))
        if not rows:
            raise TaskInputError(f"No run named '{name_or_id}'.")
        return self._record(rows[0])

    # -- actions ----------------------------------------------------------------------------
    def submit(self, request: RunRequest) -> RunRecord:
        """Record a run as queued (validated first) and start it if its device is free."""
        from medclip_core.models.registry import list_models

        if not NAME_PATTERN.match(request.name or ""):
            raise TaskInputError("A run name is 1-64 letters, digits, '.', '_' or '-' (starting with a letter "
                                 "or digit).")
        if request.name in list_models() or request.name in architecture_names():
            raise TaskInputError(f"'{request.name}' is already a model name; choose another run name.")
        if request.name == DATASETS_FOLDER:
            raise TaskInputError(f"'{DATASETS_FOLDER}' is the folder of uploaded datasets; choose another run name.")
        run_dir = self.root / request.name
        run_command(request, run_dir)  # validates the request before anything is recorded
        with self._lock:
            active = sum(r.state in ACTIVE_STATES for r in self.list_runs())
            if active >= max_queued_runs():
                raise TaskInputError(f"{active} runs are queued or running, the most this server takes "
                                     f"({MAX_QUEUE_ENV}): wait for one to end or cancel one.")
            try:
                with self._connect() as conn:
                    cursor = conn.execute(
                        "INSERT INTO runs (name, state, request, device, created, run_dir) VALUES (?, ?, ?, ?, ?, ?)",
                        (request.name, "queued", json.dumps(asdict(request)), request.device, time.time(),
                         str(run_dir)))
                    run_id = int(cursor.lastrowid)
            except sqlite3.IntegrityError:
                raise TaskInputError(f"A run named '{request.name}' exists already.") from None
            self.refresh()
        return self.get(run_id)

    def cancel(self, name: str, wait_s: float = 0.0) -> RunRecord:
        """Cancel a queued run at once, or ask a running one to stop (it keeps its last checkpoint)."""
        with self._lock:
            record = self.get(name)
            if record.state == "queued":
                self._update(record.id, state="cancelled", ended=time.time())
            elif record.state == "running":
                self._update(record.id, cancel_requested=time.time())
                self._signal(record, signal.SIGTERM)
            else:
                raise TaskInputError(f"Run '{name}' is {record.state}; only queued or running runs can be cancelled.")
        deadline = time.time() + wait_s
        while wait_s and time.time() < deadline and self.refresh_one(name).state == "running":
            time.sleep(0.2)
        return self.get(name)

    def _signal(self, record: RunRecord, sig: int) -> None:
        if record.pid is None:
            return
        try:
            os.killpg(record.pid, sig)  # the run is its own session: torchrun and its workers get it too
        except ProcessLookupError:
            pass

    def _start(self, record: RunRecord) -> None:
        """Start a queued run's process. The queued -> running step holds the database's write lock, so
        of several managers on one runs folder (the app's, a CLI's) exactly one starts it."""
        request = RunRequest(**record.request)
        run_dir = Path(record.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        command = run_command(request, run_dir)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT),
                                                                        os.environ.get("PYTHONPATH")]))}
        env.pop("WORLD_SIZE", None)
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            if conn.execute("SELECT state FROM runs WHERE id = ?", (record.id,)).fetchone() != ("queued",):
                conn.rollback()
                return  # another manager started (or cancelled) it meanwhile
            with open(run_dir / LOG_NAME, "ab") as log, open(run_dir / RESULT_NAME, "wb") as out:
                log.write(f"$ {' '.join(command)}\n".encode())
                log.flush()
                process = subprocess.Popen(command, stdout=out, stderr=log, stdin=subprocess.DEVNULL,
                                           cwd=PROJECT_ROOT, env=env, start_new_session=True)
            self._children[record.id] = process
            conn.execute("UPDATE runs SET state = 'running', started = ?, pid = ?, pid_start = ? WHERE id = ?",
                         (time.time(), process.pid, _process_start(process.pid) or "?", record.id))
            conn.commit()
        finally:
            conn.close()

    # -- watching ---------------------------------------------------------------------------
    def refresh(self) -> list[RunRecord]:
        """Settle ended processes, kill runs past their cancel grace, start queued runs on free devices."""
        with self._lock:
            for row in self._rows("WHERE state = 'running'"):
                self._settle(self._record(row), row[-2], row[-1])
            for run_id, child in list(self._children.items()):  # reap processes another manager settled
                if child.poll() is not None:
                    self._children.pop(run_id)
            busy = {r.device for r in map(self._record, self._rows("WHERE state = 'running'"))}
            for row in self._rows("WHERE state = 'queued'"):
                record = self._record(row)
                if record.device not in busy:
                    busy.add(record.device)
                    try:
                        self._start(record)
                    except Exception as exc:  # a run that cannot start fails alone, the queue goes on
                        self._update(record.id, state="failed", ended=time.time(), error=str(exc))
                        busy.discard(record.device)
            return self.list_runs()

    def refresh_one(self, name: str) -> RunRecord:
        self.refresh()
        return self.get(name)

    def _alive(self, record: RunRecord, pid_start: str | None) -> bool:
        child = self._children.get(record.id)
        if child is not None:
            return child.poll() is None
        if record.pid is None:
            return False
        now = _process_start(record.pid)
        return now is not None and (pid_start in (None, "?") or now == pid_start)

    def _settle(self, record: RunRecord, pid_start: str | None, cancel_requested: float | None) -> None:
        metrics = read_metrics(record.run_dir)
        if metrics:
            self._update(record.id, last_metrics=metrics[-1])
        if self._alive(record, pid_start):
            if cancel_requested and time.time() - cancel_requested > CANCEL_GRACE_S:
                self._signal(record, signal.SIGKILL)
            return
        child = self._children.pop(record.id, None)
        result = self._result(record)
        if cancel_requested:
            state, error = "cancelled", ""
        elif (child is None or child.returncode == 0) and result is not None and not result.get("stopped"):
            state, error = "finished", ""
        else:
            code = f" (exit status {child.returncode})" if child is not None else ""
            state, error = "failed", f"The training process ended without finishing{code}.\n{log_tail(record.log_path)}"
        self._update(record.id, state=state, ended=time.time(), error=error,
                     last_metrics={**(metrics[-1] if metrics else {}), **({"result": result} if result else {})})

    @staticmethod
    def _result(record: RunRecord) -> dict[str, Any] | None:
        """The CLI's JSON result, present only when the process completed its command."""
        try:
            result = json.loads((Path(record.run_dir) / RESULT_NAME).read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return result if isinstance(result, dict) else None

    def wait(self, name: str, states: tuple[str, ...] = ("finished", "failed", "cancelled"),
             timeout_s: float = 120.0, poll_s: float = 0.2) -> RunRecord:
        """Refresh until run ``name`` is in one of ``states``; TimeoutError otherwise."""
        deadline = time.time() + timeout_s
        while True:
            record = self.refresh_one(name)
            if record.state in states:
                return record
            if time.time() > deadline:
                raise TimeoutError(f"run {name} still {record.state} after {timeout_s} s")
            time.sleep(poll_s)

    def start_monitor(self, interval_s: float = 2.0) -> None:
        """Refresh in a daemon thread, so queued runs start and ended runs settle with nobody watching."""
        if self._monitor is not None:
            return

        def loop() -> None:
            while not self._stop_monitor.wait(interval_s):
                try:
                    self.refresh()
                except Exception:  # keep watching; the next refresh retries
                    pass

        self._monitor = threading.Thread(target=loop, name="medclip-run-monitor", daemon=True)
        self._monitor.start()

    def stop_monitor(self) -> None:
        self._stop_monitor.set()


def metrics_figure(rows: list[dict[str, Any]], title: str = ""):
    """Plotly curves of a run: training losses, learning rate, and validation loss against the step."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=3, subplot_titles=("training loss", "learning rate", "validation loss"))
    steps = [r["step"] for r in rows]
    for key in ("loss", "global_loss", "local_loss"):
        if any(key in r for r in rows):
            fig.add_trace(go.Scatter(x=steps, y=[r.get(key) for r in rows], mode="lines", name=key), row=1, col=1)
    fig.add_trace(go.Scatter(x=steps, y=[r.get("lr") for r in rows], mode="lines", name="lr"), row=1, col=2)
    val = [(r["step"], r["val_loss"]) for r in rows if r.get("val_loss") is not None]
    fig.add_trace(go.Scatter(x=[s for s, _ in val], y=[v for _, v in val], mode="lines+markers", name="val_loss"),
                  row=1, col=3)
    fig.update_layout(title=title, height=320, margin=dict(l=40, r=20, t=60, b=40), legend=dict(orientation="h"))
    fig.update_xaxes(title_text="step")
    return fig
