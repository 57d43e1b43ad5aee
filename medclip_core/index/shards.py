"""The on-disk state of an indexing job: its plan and its shards of embeddings.

The listed images are cut into shards of ``shard_size`` consecutive positions. A shard is written
when all its images are encoded: ``shards/NNNNN.npy`` (the embeddings of its readable images, in
position order) and then ``shards/NNNNN.jsonl`` (one line per image: position, id, SOP Instance
UID, report, labels, or the problem that kept it out), each staged under a temporary name and
renamed, the manifest last, so a shard is complete exactly when its manifest exists. A crash or
Ctrl-C therefore loses at most the shards being filled; running the same command again skips the
complete ones. ``plan.json`` records what the job indexes (source, model fingerprint, shard size,
a digest of the listing), so a resume against another source or model is refused.

Both engines feed :class:`ShardCollector`, which accepts rows in any order and any number of times
(a retried Ray task delivers a row again: the position keys it, so it is kept once).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from medclip_core.errors import MedclipError
from medclip_core.index.sources import SourceListing

PLAN_FILE = "plan.json"
SHARDS_DIR = "shards"
PLAN_KEYS = ("format", "source", "source_kind", "model_fingerprint", "shard_size", "n_items", "listing_digest")


@dataclass(frozen=True)
class ShardRow:
    """One image's outcome: its embedding, or the problem that kept it out."""

    position: int
    embedding: np.ndarray | None
    sop_instance_uid: str | None
    problem: str | None


def shard_name(shard: int) -> str:
    return f"{shard:05d}"


def shard_count(n_items: int, shard_size: int) -> int:
    return (n_items + shard_size - 1) // shard_size


def prepare_job(out: Path, plan: dict[str, Any]) -> None:
    """Create ``out`` and its plan, or check that the plan already there is this job's."""
    out.mkdir(parents=True, exist_ok=True)
    (out / SHARDS_DIR).mkdir(exist_ok=True)
    plan_path = out / PLAN_FILE
    if plan_path.is_file():
        existing = json.loads(plan_path.read_text())
        changed = [key for key in PLAN_KEYS if existing.get(key) != plan.get(key)]
        if changed:
            raise MedclipError(
                f"{out} holds an indexing job with a different {', '.join(changed)}; choose another --out "
                "folder, or delete this one to start again.")
        return
    staged = plan_path.with_suffix(".tmp")
    staged.write_text(json.dumps(plan, indent=1))
    os.replace(staged, plan_path)


def done_shards(out: Path) -> set[int]:
    """The shards whose manifest is on disk (complete)."""
    return {int(p.stem) for p in (out / SHARDS_DIR).glob("*.jsonl") if p.stem.isdigit()}


def write_shard(out: Path, shard: int, listing: SourceListing, rows: list[ShardRow], dim: int) -> None:
    """Write one complete shard: embeddings first, then the manifest that marks it done."""
    rows = sorted(rows, key=lambda row: row.position)
    vectors = [row.embedding for row in rows if row.problem is None]
    matrix = np.stack(vectors).astype(np.float32) if vectors else np.zeros((0, dim), np.float32)
    folder = out / SHARDS_DIR
    with open(folder / f"{shard_name(shard)}.npy.tmp", "wb") as handle:
        np.save(handle, matrix)
    os.replace(folder / f"{shard_name(shard)}.npy.tmp", folder / f"{shard_name(shard)}.npy")
    lines = []
    for row in rows:
        item = listing.items[row.position]
        lines.append(json.dumps({"position": row.position, "id": item.image_id, "sop_uid": row.sop_instance_uid,
                                 "report": item.report, "labels": list(item.labels) if item.labels is not None
                                 else None, "problem": row.problem}))
    staged = folder / f"{shard_name(shard)}.jsonl.tmp"
    staged.write_text("\n".join(lines) + "\n")
    os.replace(staged, folder / f"{shard_name(shard)}.jsonl")


def read_shards(out: Path) -> Iterator[tuple[list[dict[str, Any]], np.ndarray]]:
    """Every complete shard in order: its manifest rows and its embeddings (memory-mapped)."""
    for shard in sorted(done_shards(out)):
        stem = out / SHARDS_DIR / shard_name(shard)
        rows = [json.loads(line) for line in stem.with_suffix(".jsonl").read_text().splitlines() if line]
        yield rows, np.load(stem.with_suffix(".npy"), mmap_mode="r")


class ShardCollector:
    """Gathers rows (in any order, repeats ignored) and writes each shard as soon as it is complete."""

    def __init__(self, out: Path, listing: SourceListing, shard_size: int, dim: int) -> None:
        self.out, self.listing, self.shard_size, self.dim = out, listing, shard_size, dim
        self.pending: dict[int, dict[int, ShardRow]] = {}
        self.written: set[int] = set()

    def expected(self, shard: int) -> int:
        return min(self.shard_size, len(self.listing.items) - shard * self.shard_size)

    def add(self, row: ShardRow) -> bool:
        """Keep ``row``; True when it was new (not a repeat of a row already delivered)."""
        shard = row.position // self.shard_size
        rows = self.pending.setdefault(shard, {}) if shard not in self.written else {row.position: row}
        if row.position in rows:
            return False
        rows[row.position] = row
        if len(rows) == self.expected(shard):
            write_shard(self.out, shard, self.listing, list(rows.values()), self.dim)
            del self.pending[shard]
            self.written.add(shard)
        return True

    def check_complete(self) -> None:
        if self.pending:
            missing = sorted(self.pending)
            raise MedclipError(f"The indexing job ended with shard(s) {missing[:5]} incomplete; run the same "
                               "command again to finish them.")
