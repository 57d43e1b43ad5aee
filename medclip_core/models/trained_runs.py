"""Where training runs keep their checkpoints, and which runs have finished: what the model
registry lists besides its specs.

The run manager (:mod:`medclip_core.train.runs`) records every run in a SQLite file in the runs
folder (``MEDCLIP_RUNS_DIR``, default ``~/.cache/medclip-explorer/runs``): one row per run in the
table ``runs`` with its ``name``, ``state`` and ``run_dir`` (the checkpoint folder). The model
registry reads that file here, read-only, so that the models layer finds trained checkpoints
without importing the trainer.
"""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path

RUNS_DIR_ENV = "MEDCLIP_RUNS_DIR"
DB_NAME = "runs.sqlite"


def runs_dir() -> Path:
    """The runs folder: ``MEDCLIP_RUNS_DIR`` or ``~/.cache/medclip-explorer/runs``."""
    configured = os.environ.get(RUNS_DIR_ENV, "").strip()
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "medclip-explorer" / "runs"


def finished_runs(root: Path | None = None) -> dict[str, Path]:
    """Finished runs by name -> checkpoint folder (what the model registry lists); {} without a registry."""
    db = (root or runs_dir()) / DB_NAME
    if not db.is_file():
        return {}
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            rows = conn.execute("SELECT name, run_dir FROM runs WHERE state = 'finished' ORDER BY id").fetchall()
    except sqlite3.Error:
        return {}
    return {name: Path(path) for name, path in rows}
