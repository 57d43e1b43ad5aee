"""Train the embedded default on a lent GPU within a fixed time: the run behind ``assets/medclip-phantom``.

The GPU machine has no internet and no copy of the MiniLM weights, and the text tower is frozen,
so its outputs are computed here first (``text-cache``, exact fp32 on CPU) and travel with the
code; the run on the GPU never calls the text tower (it stops if a text is missing from the cache).
The number of steps is chosen to fit the time budget: a short calibration run (a throwaway folder,
the same batch) measures the seconds per step, then the real run gets ``budget / step time`` steps,
so its warm-up + cosine schedule ends as planned. A deadline stops it early with a checkpoint if
the estimate was wrong.

    python scripts/release/train_default_gpu.py text-cache --out .gpu/text_cache.pt            # here, CPU
    python scripts/release/train_default_gpu.py train --text-cache .gpu/text_cache.pt \\
        --out runs/medclip-phantom-gpu --budget-s 360                              # on the GPU
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from medclip_core.train.contrastive import ContrastiveTrainer, TrainConfig, TrainResult
from medclip_core.train.data import phantom_pairs

ROOT = Path(__file__).resolve().parents[2]


def export_text_cache(out: Path, seed: int, val_reports: int) -> int:
    """Encode every training and validation text of the phantom run with the frozen tower; save them."""
    trainer = ContrastiveTrainer(TrainConfig(out_dir=str(out.parent), device="cpu", seed=seed))
    texts: list[str] = []
    for split, limit in (("train", None), ("val", val_reports)):
        pairs = phantom_pairs(split, 32, seed=seed, limit=limit)  # texts do not depend on the image size
        texts += [t for ts in pairs.texts for t in ts] + [s for ss in pairs.sentences for s in ss]
    trainer.text_cache.fill(texts)
    out.parent.mkdir(parents=True, exist_ok=True)
    trainer.text_cache.save(out)
    return len(set(texts))


def run(config: TrainConfig, text_cache: Path, deadline: float | None = None) -> TrainResult:
    trainer = ContrastiveTrainer(config, should_stop=lambda: deadline is not None and time.time() > deadline)
    print(f"text cache: {trainer.text_cache.load(text_cache, closed=True)} texts", flush=True)
    return trainer.run()


def train(args: argparse.Namespace) -> dict:
    import torch

    torch.backends.cudnn.benchmark = True
    started = time.time()
    common = dict(architecture="phantom-cnn-minilm", batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                  local_loss_weight=args.local_loss_weight, render_workers=args.render_workers, log_every=10)
    calibration = TrainConfig(out_dir=str(args.out) + "-calibration", phantom_variants=1, limit_reports=512,
                              max_steps=args.calibrate_steps, warmup_steps=1, val_reports=0,
                              checkpoint_every=args.calibrate_steps, **common)
    step_s = run(calibration, args.text_cache).steady_seconds_per_step()
    steps = max(args.calibrate_steps, int(args.budget_s / step_s))
    print(json.dumps({"calibration_s_per_step": step_s, "steps": steps}), flush=True)
    config = TrainConfig(out_dir=str(args.out), phantom_variants=args.variants, max_steps=steps,
                         warmup_steps=args.warmup_steps, checkpoint_every=max(1, steps // 4),
                         val_reports=args.val_reports, **common)
    result = run(config, args.text_cache, deadline=started + args.deadline_s)
    summary = {"calibration_s_per_step": step_s, "planned_steps": steps, "steps": result.steps,
               "stopped_early": result.stopped, "train_seconds": result.seconds,
               "images_per_second": result.images_per_second, "final_loss": result.final_loss,
               "val_loss": result.val_loss, "device": torch.cuda.get_device_name() if torch.cuda.is_available()
               else "cpu", "torch": torch.__version__, "wall_seconds": time.time() - started}
    (Path(args.out) / "gpu_run.json").write_text(json.dumps(summary, indent=2))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("text-cache")
    p.add_argument("--out", type=Path, required=True)
    for p in (p, sub.add_parser("train")):
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--val-reports", type=int, default=256)
    p.add_argument("--text-cache", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--budget-s", type=float, default=360, help="seconds of training steps")
    p.add_argument("--deadline-s", type=float, default=540, help="stop (with a checkpoint) this long after start")
    p.add_argument("--calibrate-steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=300)
    p.add_argument("--variants", type=int, default=24, help="rendered images per training report")
    p.add_argument("--render-workers", type=int, default=15)
    p.add_argument("--local-loss-weight", type=float, default=0.5)
    args = parser.parse_args()
    if args.command == "text-cache":
        print(json.dumps({"texts": export_text_cache(args.out, args.seed, args.val_reports), "out": str(args.out)}))
    else:
        print(json.dumps(train(args), indent=2))


if __name__ == "__main__":
    main()
