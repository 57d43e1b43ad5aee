#!/bin/bash
# Paired ablation of the GLoRIA-style local loss: same seed, data and steps; only --local-loss-weight
# differs. Each arm is evaluated on 1,000 phantom test images (AUC, retrieval, pointing game) and by
# the grounding benchmark (pointing game, IoU, Dice of the similarity heatmaps). Compare the JSONs in
# runs/ablation/. About 45 min on 2 free CPU cores (set OMP_NUM_THREADS=1 to share them with other work).   Usage: bash experiments/ablation_local_loss.sh
set -e
cd "$(dirname "$0")/.."
mkdir -p runs/ablation
for weight in 0.5 0; do
  out=runs/ablation/local-$weight
  python -m medclip_core train --preset phantom --out "$out" --max-steps 200 --batch-size 64 \
     --warmup-steps 20 --checkpoint-every 50 --local-loss-weight "$weight" --seed 0 > "$out.train.json" 2> "$out.train.log"
  python -m medclip_core eval --model "local-dir:$out" --n 1000 > "$out.eval.json" 2> "$out.eval.log"
  python -m medclip_core eval --task grounding --methods similarity --model "local-dir:$out" --n 1000 \
     > "$out.grounding.json" 2> "$out.grounding.log"
done
