"""Ship a trained report decoder with the embedded default, and write its model-card section.

    python scripts/release/release_report_decoder.py runs/report-decoder     # copy the decoder into assets/medclip-phantom/report
    python -m medclip_core eval --task report                        # -> assets/medclip-phantom/report/eval_report.json
    python scripts/release/release_report_decoder.py --card                    # the "Report generation" section of MODEL_CARD.md
    python scripts/release/release_report_decoder.py --card --asset assets/medclip-phantom-grounding   # another shipped model's

Only the decoder config, weights and loss curve are copied (no features, no optimizer state); the
config gets the parameter fingerprint of the shipped default, which the app checks before use.
The card section sits between two HTML comments and is replaced on each run.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from results_tables import render  # scripts/release/results_tables.py, beside this script

ROOT = Path(__file__).resolve().parents[2]
ASSET = ROOT / "assets" / "medclip-phantom"
TARGET = ASSET / "report"
FILES = ("report_decoder.json", "report_decoder.safetensors", "metrics.jsonl")
START, END = "<!-- report-generation:start -->", "<!-- report-generation:end -->"
MAX_BYTES = 30 * 1024 * 1024


def release(run: Path) -> None:
    TARGET.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        shutil.copy2(run / name, TARGET / name)
    stamp_base_fingerprint(TARGET / "report_decoder.json")
    name_run_as_documented(TARGET / "report_decoder.json")
    size = sum((TARGET / name).stat().st_size for name in FILES)
    if size > MAX_BYTES:
        sys.exit(f"The decoder is {size / 2**20:.1f} MB, above the 30 MB budget.")
    print(f"copied {', '.join(FILES)} to {TARGET.relative_to(ROOT)} ({size / 2**20:.1f} MB)")


def stamp_base_fingerprint(config_path: Path) -> None:
    """Record the shipped default's parameter fingerprint (what ``decoder_for`` checks) in the config."""
    from medclip_core.models import load_model
    from medclip_core.models.embedding_cache import model_fingerprint

    config = json.loads(config_path.read_text())
    if config["base_model"] != "medclip-phantom":
        sys.exit(f"The run was trained on {config['base_model']}, not the embedded default.")
    config["base_fingerprint"] = model_fingerprint(load_model("medclip-phantom"), buffers=False)
    config_path.write_text(json.dumps(config, indent=1))


def name_run_as_documented(config_path: Path) -> None:
    """The shipped config names its run folder as the README's command does, whatever it was called here."""
    config = json.loads(config_path.read_text())
    config["train_config"] = {**config["train_config"], "out_dir": "runs/report-decoder", "feature_dir": None}
    config_path.write_text(json.dumps(config, indent=1))


def prompts_text(config: dict) -> str:
    """How the card describes the decoder's diagnosis prompts (empty for a decoder without them)."""
    if not config.get("findings"):
        return ""
    switched_off = [name for name, t in zip(config["findings"], config["thresholds"]) if t > 1]
    return (f", plus diagnosis prompts (PromptMRG style): a classifier head on the same features decides each of the "
            f"{len(config['findings'])} findings at thresholds that maximise micro F1 on the validation split "
            f"(micro F1 there {config['val_classifier_micro_f1']:.3f}"
            + (f"; never prompted: {', '.join(switched_off)}" if switched_off else "")
            + f"), and each decision is one more memory token (training: true labels as prompts, "
            f"{train_share(config, 'prompt_noise')} flipped, image tokens dropped on "
            f"{train_share(config, 'prompt_only_fraction')} of the rows)")


def train_share(config: dict, key: str) -> str:
    return f"{config['train_config'].get(key, 0):.0%}"


def support_text(support: float) -> str:
    if support <= 0:
        return " (no zero-shot support check)"
    return (f", nor abnormal findings whose calibrated zero-shot probability is below {support:g} (the threshold "
            "chosen on the validation split with `experiments/tune_report_retrieval.py`)")


def card_section(result: dict, asset: Path = ASSET) -> str:
    config = json.loads((asset / "report" / "report_decoder.json").read_text())
    train = config["train_config"]
    lines = [
        START, "## Report generation", "",
        "Two ways to draft a report from an image with this model (`python -m medclip_core report IMAGE --method "
        "retrieval|generative`, the app's Report tab):", "",
        "- **retrieval** (CXR-RePaiR style): the sentences of the Open-i training reports, scored by similarity to "
        "the image minus their mean similarity to 64 phantom validation images, taken greedily without "
        f"near-duplicates or contradictions{support_text(result['settings'].get('support', 0))} "
        "(4 findings sentences + 1 impression sentence);",
        f"- **generative**: a {train['layers']}-layer Transformer decoder (width {train['width']}, "
        f"{len(config['vocab'])} words) with cross-attention over this model's frozen pooled embedding and 7×7 "
        f"patch tokens{prompts_text(config)}, trained {config['step']} steps of {train['batch_size']} on the "
        f"phantom train split ({train['phantom_variants']} renderings per report) with `python -m medclip_core "
        f"train --task report --out runs/report-decoder --max-steps {config['step']}` (weights in `report/`); "
        + ("the draft is the candidate, among the beam-search result (width 3) and 16 seeded nucleus samples, that "
           "does not contradict itself and whose findings (read by the labeller) agree best with the prompts."
           if config.get("findings") else
           "beam search of width 3."), "",
        f"Protocol: `python -m medclip_core eval --task report` — phantom {result['split']} split, "
        f"{result['n_images']} images, each scored against the real report it was rendered from. *Finding F1*: the "
        "rule-based labeller (`medclip_core/data/labeller.py`, negation and uncertainty handled, uncertain = "
        "present) reads the draft; micro F1 over the 22 findings against the report's MeSH labels, macro over the "
        "findings present; also against the labeller's reading of the reference text. Full output: "
        "`report/eval_report.json`.", "",
        f"<!-- results:report {asset.name} -->", "<!-- /results -->", "",
        "Margins in micro finding F1 (negative: the method does not beat that baseline):", "",
        f"<!-- results:report-margins {asset.name} -->", "<!-- /results -->", "",
        "The labeller against the curated MeSH labels of the Open-i reports (the ceiling of the finding F1 above):", "",
        f"<!-- results:report-labeller {asset.name} -->", "<!-- /results -->", "", END,
    ]
    return render("\n".join(lines))


def write_card(asset: Path = ASSET) -> None:
    result = json.loads((asset / "report" / "eval_report.json").read_text())
    card_path = asset / "MODEL_CARD.md"
    card = card_path.read_text()
    section = card_section(result, asset)
    if START in card and END in card:
        card = card[:card.index(START)] + section + card[card.index(END) + len(END):]
    else:
        card = card.rstrip("\n") + "\n\n" + section + "\n"
    card_path.write_text(card)
    print(f"wrote the report-generation section of {card_path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, nargs="?", help="a report-decoder run folder to ship")
    parser.add_argument("--card", action="store_true", help="write the model-card section from eval_report.json")
    parser.add_argument("--asset", type=Path, default=ASSET, help="--card: the shipped model folder (default: the default's)")
    args = parser.parse_args()
    if args.run:
        release(args.run)
    if args.card:
        write_card(args.asset)
    if not args.run and not args.card:
        parser.error("give a run folder, --card, or both")


if __name__ == "__main__":
    main()
