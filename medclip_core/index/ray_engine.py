"""The Ray engine of ``index build``: the same decode and encode steps as Ray Data stages.

Pipeline (Ray Data's streaming executor, the pattern of its batch-inference guide):
``from_items`` (position, id of each pending image) → ``map_batches(decode_batch)``: CPU tasks read
and preprocess → ``map_batches(ImageEncoder)``: an actor pool of ``workers`` model replicas (one GPU
each when the cluster has GPUs, autocast) → ``iter_batches`` on the driver, which writes the shards
(so the output lands in ``--out`` on the machine that ran the command). Ray retries a task whose
worker died and restarts a killed actor (Ray Data's actor pools default to unlimited restarts and
task retries); a row that arrives twice is kept once by the shard collector, keyed by position.

Ray is optional: ``pip install "ray[data]"``. The model is loaded by name in each encoder actor (the
registry's per-process cache keeps one copy per process), so ``--model local-dir:PATH`` needs PATH on
every node; decode tasks get only the model's :class:`Preprocessing` and never load it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

import numpy as np

from medclip_core.errors import MedclipError
from medclip_core.index.shards import ShardRow
from medclip_core.index.sources import SourceItem, SourceListing, decode_item
from medclip_core.models import Preprocessing, load_model

if TYPE_CHECKING:
    from medclip_core.index.build import BuildOptions

DECODE_CPUS = 0.25  # per decode task: on CPU-only nodes the encoder actors take the rest
ENCODER_CPUS_WITHOUT_GPU = 0.75
# Without GPUs one decode task feeds this many encoder actors (a 224-px PNG decodes in about 1.3 ms, a
# CPU encode of the default model takes about 40 ms), and each worker process not started saves about
# 5 s of CPU importing torch and the backends. With GPUs Ray Data scales decoding itself.
ENCODERS_PER_DECODE_TASK_WITHOUT_GPU = 16


def decode_batch(batch: dict[str, np.ndarray], root: str, preprocessing: Preprocessing) -> dict[str, np.ndarray]:
    """Ray Data stage: read and preprocess a batch; unreadable files keep zero pixels and a problem. Decode
    tasks get the model's ``preprocessing`` alone: they never load the model."""
    decoded = [decode_item(root, SourceItem(int(p), str(i)), preprocessing)
               for p, i in zip(batch["position"], batch["image_id"])]
    shape = next((d.pixels.shape for d in decoded if d.pixels is not None), (3, 1, 1))
    return {"position": np.array([d.position for d in decoded], dtype=np.int64),
            "pixels": np.stack([d.pixels if d.pixels is not None else np.zeros(shape, np.float32) for d in decoded]),
            "sop_uid": np.array([d.sop_instance_uid or "" for d in decoded], dtype=object),
            "problem": np.array([d.problem or "" for d in decoded], dtype=object)}


class ImageEncoder:
    """Ray Data actor: one model replica that encodes the readable rows of each batch."""

    def __init__(self, model_name: str | None, device: str) -> None:
        from medclip_core.index.build import encode_pixels  # the local engine's encode, so outputs match

        self.model = load_model(model_name, device=device)
        self.encode = encode_pixels

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        readable = np.array([not p for p in batch["problem"]], dtype=bool)
        embeddings = np.zeros((len(readable), 1), np.float32)  # a batch with no readable image
        if readable.any():
            vectors = self.encode(self.model, np.ascontiguousarray(batch["pixels"][readable]))
            embeddings = np.zeros((len(readable), vectors.shape[1]), np.float32)
            embeddings[readable] = vectors
        return {"position": batch["position"], "embedding": embeddings, "sop_uid": batch["sop_uid"],
                "problem": batch["problem"]}


def ray_rows(model_name: str | None, preprocessing: Preprocessing, listing: SourceListing, items: list[SourceItem],
             options: BuildOptions) -> Iterator[ShardRow]:
    """Rows of the pending ``items``, computed on the Ray cluster at ``options.address``; ``preprocessing`` is
    the model's (its decode tasks need only that)."""
    try:
        import ray
        import ray.data
    except ImportError as error:
        raise MedclipError('The Ray engine needs Ray Data: pip install "ray[data]".') from error
    if not items:
        return
    if not ray.is_initialized():
        ray.init(address=options.address, log_to_driver=False)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    gpus = int(ray.cluster_resources().get("GPU", 0))
    workers = max(1, options.workers)
    decode_tasks = -(-workers // ENCODERS_PER_DECODE_TASK_WITHOUT_GPU)
    dataset = ray.data.from_items([{"position": item.position, "image_id": item.image_id} for item in items],
                                  override_num_blocks=max(1, min(len(items) // options.batch_size, 1000)))
    dataset = dataset.map_batches(decode_batch, fn_kwargs={"root": listing.root, "preprocessing": preprocessing},
                                  batch_size=options.batch_size, num_cpus=DECODE_CPUS,
                                  compute=None if gpus else ray.data.TaskPoolStrategy(size=decode_tasks))
    dataset = dataset.map_batches(
        ImageEncoder, fn_constructor_kwargs={"model_name": model_name, "device": "cuda" if gpus else "cpu"},
        batch_size=options.batch_size, compute=ray.data.ActorPoolStrategy(size=min(workers, gpus) if gpus else workers),
        num_gpus=1 if gpus else 0, num_cpus=1 if gpus else ENCODER_CPUS_WITHOUT_GPU)
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        for position, embedding, uid, problem in zip(batch["position"], batch["embedding"], batch["sop_uid"],
                                                     batch["problem"]):
            yield ShardRow(int(position), None if problem else np.asarray(embedding, np.float32),
                           uid or None, problem or None)
