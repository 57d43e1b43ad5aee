"""``index build``: embed every image of a source into an index folder, on one machine or on Ray.

The local engine decodes in ``workers`` processes (a torch ``DataLoader`` over the file list, so the
decoding of the next batches overlaps the encoding of this one) and encodes batches in this process,
on the GPU with autocast (float16) when there is one. The Ray engine (:mod:`medclip_core.index.ray_engine`)
runs the same decode and encode steps as Ray Data stages. Both hand rows to the same shard writer,
then :func:`~medclip_core.index.store.finalize_index` merges the shards, so their indexes are the same.
"""
from __future__ import annotations

import contextlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from medclip_core.errors import MedclipError
from medclip_core.index.shards import ShardCollector, ShardRow, done_shards, prepare_job, shard_count
from medclip_core.index.sources import DecodedItem, SourceItem, SourceListing, decode_item, list_source
from medclip_core.index.store import EXACT_INDEX_MAX, INDEX_FILE, INDEX_FORMAT, IndexInfo, finalize_index
from medclip_core.models.embedding_cache import model_fingerprint
from medclip_core.models import load_model
from medclip_core.models.base import ClipModel

ENGINES = ("local", "ray")


@dataclass(frozen=True)
class BuildOptions:
    """How to run a job; none of these changes the index it produces."""

    engine: str = "local"
    address: str | None = None  # Ray: "auto", "HOST:PORT" or None (a Ray instance on this machine)
    workers: int = 2  # local: decode processes; Ray: encoder actors (one per GPU when there are GPUs)
    batch_size: int = 32
    shard_size: int = 1024
    exact_max: int = EXACT_INDEX_MAX
    progress: bool = True


def encode_pixels(model: ClipModel, pixels: np.ndarray) -> np.ndarray:
    """(B, 3, S, S) preprocessed pixels -> (B, D) float32 embeddings; autocast on a GPU."""
    batch = torch.from_numpy(pixels)
    if model.device.type == "cuda":
        with torch.autocast("cuda", dtype=torch.float16):
            return model.encode_image(batch).float().cpu().numpy()
    return model.encode_image(batch).float().cpu().numpy()


def encode_decoded(model: ClipModel, decoded: list[DecodedItem]) -> list[ShardRow]:
    """Rows of one batch: the readable images encoded together, the others as problems."""
    readable = [d for d in decoded if d.problem is None]
    vectors = encode_pixels(model, np.stack([d.pixels for d in readable])) if readable else []
    embedding = dict(zip((d.position for d in readable), vectors))
    return [ShardRow(d.position, embedding.get(d.position), d.sop_instance_uid, d.problem) for d in decoded]


class _DecodeDataset(torch.utils.data.Dataset):
    """The pending items, decoded one by one in DataLoader worker processes."""

    def __init__(self, root: str, items: list[SourceItem], preprocess: Callable[..., torch.Tensor]) -> None:
        self.root, self.items, self.preprocess = root, items, preprocess

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> DecodedItem:
        return decode_item(self.root, self.items[i], self.preprocess)


def _as_list(batch: list[DecodedItem]) -> list[DecodedItem]:
    return batch


def local_rows(model: ClipModel, listing: SourceListing, items: list[SourceItem],
               options: BuildOptions) -> Iterator[ShardRow]:
    """The local engine: decode in ``options.workers`` processes, encode batches here."""
    loader = torch.utils.data.DataLoader(
        _DecodeDataset(listing.root, items, model.preprocessing), batch_size=options.batch_size,
        num_workers=options.workers, collate_fn=_as_list, prefetch_factor=4 if options.workers else None)
    for decoded in loader:
        yield from encode_decoded(model, decoded)


def _progress_bar(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc="indexing", file=sys.stderr, disable=not enabled, smoothing=0.1)


def build_index(source: str | Path, model_name: str | None, out: str | Path,
                options: BuildOptions = BuildOptions()) -> IndexInfo:
    """Index the images of ``source`` with model ``model_name`` into the folder ``out``.

    Resumable: run it again after a crash or Ctrl-C and only the unfinished shards are embedded;
    run it on a finished index and it returns that index's info. See the module docstring.
    """
    if options.engine not in ENGINES:
        raise MedclipError(f"Unknown engine '{options.engine}'; choose one of {', '.join(ENGINES)}.")
    if options.batch_size < 1 or options.shard_size < 1 or options.workers < 0:
        raise MedclipError("--batch-size and --shard-size must be at least 1, --workers at least 0.")
    started = time.time()
    out = Path(out).expanduser()
    listing = list_source(source)
    model = load_model(model_name)
    fingerprint = model_fingerprint(model)
    plan = {"format": INDEX_FORMAT, "source": listing.source, "source_kind": listing.kind,
            "model": model.card.name, "model_fingerprint": fingerprint, "shard_size": options.shard_size,
            "n_items": len(listing.items), "listing_digest": listing.digest()}
    prepare_job(out, plan)
    if (out / INDEX_FILE).is_file():
        return IndexInfo(**json.loads((out / INDEX_FILE).read_text()))
    finished = done_shards(out)
    pending = [item for item in listing.items if item.position // options.shard_size not in finished]
    dim = int(model.encode_text(["a"]).shape[1])
    collector = ShardCollector(out, listing, options.shard_size, dim)
    if options.engine == "ray":
        from medclip_core.index.ray_engine import ray_rows

        rows = ray_rows(model_name, model.preprocessing, listing, pending, options)
    else:
        rows = local_rows(model, listing, pending, options)
    with _progress_bar(len(pending), options.progress) as bar, contextlib.closing(rows):
        bar.set_postfix_str(f"{len(finished)}/{shard_count(len(listing.items), options.shard_size)} shards done "
                            "before this run")
        for row in rows:
            if collector.add(row):
                bar.update(1)
    collector.check_complete()
    return finalize_index(out, listing, model.card.name, fingerprint, options.exact_max, started)
