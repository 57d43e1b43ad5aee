"""Dice per finding of a trained segmentation decoder on the phantom test split (threshold 0.5).

Evaluates a decoder run folder (``train --task segmentation --out RUN``) or, by default, the one
shipped with ``medclip-phantom``; with ``--release RUN`` copies the run's decoder (weights, config,
metrics; not its optimizer state or feature cache) into ``assets/medclip-phantom/segmentation``
first. Writes ``eval.json`` next to the decoder evaluated.

    python scripts/release/eval_segmentation.py                                  # the shipped decoder, 1,176 images
    python scripts/release/eval_segmentation.py --release runs/seg-phantom       # ship a run, then evaluate it
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

from medclip_core.eval.segmentation_eval import evaluate_segmentation
from medclip_core.models import load_model
from medclip_core.models.segmentation_decoder import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    decoder_dir_for,
    load_segmentation_decoder,
)

ROOT = Path(__file__).resolve().parents[2]

SHIPPED_FILES = (CONFIG_NAME, WEIGHTS_NAME, "metrics.jsonl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="medclip-phantom")
    parser.add_argument("--decoder", type=Path, help="a run folder (default: the model's shipped decoder)")
    parser.add_argument("--release", type=Path, help="copy this run's decoder into the model's folder first")
    parser.add_argument("--n", type=int, default=1000, help="at least this many images (every report equally often)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)

    directory = args.decoder
    if args.release:
        directory = decoder_dir_for(args.model)
        directory.mkdir(parents=True, exist_ok=True)
        for name in SHIPPED_FILES:
            shutil.copy2(args.release / name, directory / name)
    model = load_model(args.model)
    decoder = load_segmentation_decoder(model, directory)
    result = evaluate_segmentation(model, decoder, n=args.n, seed=args.seed,
                                   progress=lambda done, total: print(f"{done}/{total}", file=sys.stderr, flush=True))
    payload = {**result.to_dict(), "command": "python scripts/release/eval_segmentation.py" +
               (f" --decoder {args.decoder}" if args.decoder and not args.release else "")}
    out = (directory or decoder.directory) / "eval.json"
    out.write_text(json.dumps(payload, indent=1))
    print(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()
