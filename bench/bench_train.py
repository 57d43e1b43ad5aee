"""Trainer throughput against a bare open_clip training loop on the same model and batch.

Both train the medclip-phantom architecture (phantom-cnn-minilm) on the same rendered phantom pairs with batch 64:
the bare loop is what open_clip's own training does per step (tokenise, ``model(images, texts)``,
``ClipLoss``, backward, AdamW step) with the frozen MiniLM tower run under no_grad; our trainer
caches the frozen tower's pooled outputs and adds semantic-matching targets (and, in the second
row, the local sentence-region loss). Images/s over the timed steps (after one warm-up step).

    python bench/bench_train.py [--steps 8] [--batch 64] [--out bench/results/train.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from open_clip.loss import ClipLoss

from medclip_core.train.contrastive import ContrastiveTrainer, TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def bare_open_clip(trainer: ContrastiveTrainer, data, steps: int, batch: int) -> float:
    module, loss_fn = trainer.module, ClipLoss()
    module.train()
    module.text.transformer.eval()
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)
    rng = np.random.default_rng(0)
    elapsed = 0.0
    for step in range(steps + 1):
        rows = rng.choice(len(data), batch, replace=False)
        start = time.perf_counter()
        texts = [data.texts[r][0] for r in data.report_index[rows]]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            image_features, text_features, logit_scale = module(trainer._pixels(data.images, rows),
                                                                trainer.tokenizer(texts))[:3]
            loss = loss_fn(image_features.float(), text_features.float(), logit_scale)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step:  # the first step warms up
            elapsed += time.perf_counter() - start
    return steps * batch / elapsed


def ours(local_weight: float, steps: int, batch: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(out_dir=out, limit_reports=batch * 2, phantom_variants=1, max_steps=steps + 1,
                             batch_size=batch, log_every=1, checkpoint_every=10_000, local_loss_weight=local_weight,
                             val_reports=0)
        return batch / ContrastiveTrainer(config, log=lambda _: None).run().steady_seconds_per_step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "train.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        trainer = ContrastiveTrainer(TrainConfig(out_dir=out), log=lambda _: None)
        data = trainer.load_data("train", args.batch * 2)
        bare = bare_open_clip(trainer, data, args.steps, args.batch)
    global_only = ours(0.0, args.steps, args.batch)
    with_local = ours(0.5, args.steps, args.batch)
    result = {
        "benchmark": "training images/s, medclip-phantom architecture, bf16 autocast on CPU",
        "batch": args.batch, "timed_steps": args.steps,
        "bare_open_clip_loop": round(bare, 2),
        "medclip_trainer_global_loss": round(global_only, 2),
        "medclip_trainer_global_plus_local_loss": round(with_local, 2),
        "ratio_trainer_to_bare": round(global_only / bare, 3),
        "ratio_trainer_with_local_to_bare": round(with_local / bare, 3),
        "machine": {"python": platform.python_version(), "processor": platform.machine(),
                    "threads": torch.get_num_threads()},
    }
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
