"""Write every results table of the docs and model cards from the committed evaluation JSON.

A table lives between two markers in a markdown file::

    <!-- results:NAME ARG -->
    ...generated...
    <!-- /results -->

``NAME`` picks a table below, ``ARG`` (optional) the model folder under ``assets/``. Each figure is
thus written once, in its JSON; the prose around a table points at it instead of repeating figures.

    python scripts/release/results_tables.py           # rewrite the blocks of README.md, docs/*.md, assets/*/MODEL_CARD.md
    python scripts/release/results_tables.py --check   # exit 1 and name the blocks that differ from their JSON
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"(<!-- results:(?P<name>[\w-]+)(?: (?P<arg>[\w.-]+))? -->\n)(?P<body>.*?)(<!-- /results -->)", re.S)
FOCAL = ("pleural effusion", "pneumothorax", "opacity", "nodule", "atelectasis", "calcified granuloma")
FOCAL_HEADERS = ("effusion", "pneumothorax", "opacity", "nodule", "atelectasis", "calc. granuloma")
EMBEDDED = ("medclip-phantom", "medclip-phantom-grounding")
CORE_FINDINGS = ("normal", "cardiomegaly", "pleural effusion", "opacity", "atelectasis", "nodule", "pneumothorax", "edema")


def markdown_files(root: Path = ROOT) -> list[Path]:
    """The files whose result blocks this script owns."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md")), *sorted((root / "assets").glob("*/MODEL_CARD.md"))]


def _json(path: str) -> dict:
    return json.loads((ROOT / path).read_text())


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


# -- embedded models: eval_phantom.json -------------------------------------------------------------

def zero_shot_auc(model: str) -> str:
    zero_shot = _json(f"assets/{model}/eval_phantom.json")["zero_shot"]
    rows = [[label, _fmt(auc), str(zero_shot["positives"].get(label, 0))]
            for label, auc in sorted(zero_shot["auc"].items(), key=lambda kv: -(kv[1] or 0))]
    summary = [["**macro mean**", f"**{_fmt(zero_shot['macro_auc'])}**", ""]]
    return _table(["finding", "AUC", "positives"], rows + summary)


def retrieval(model: str) -> str:
    result = _json(f"assets/{model}/eval_phantom.json")["retrieval"]
    return _table(["direction", "R@1", "R@5", "R@10", "P@5"],
                  [[name, *(_fmt(result[key][metric]) for metric in ("recall@1", "recall@5", "recall@10", "precision@5"))]
                   for name, key in (("image → text", "image_to_text"), ("text → image", "text_to_image"))])


def pointing(model: str) -> str:
    grounding = _json(f"assets/{model}/eval_phantom.json")["grounding"]
    parts = ("raw", "redundancy_removed", "chance")
    rows = [[label, *(_fmt(grounding[part]["per_finding"].get(label)) for part in parts)]
            for label in grounding["raw"]["per_finding"]]
    rows.append(["**mean**", *(_fmt(grounding[part]["mean"]) for part in parts)])
    return _table(["finding", "raw", "common part removed", "chance (box area)"], rows)


def embedded_models(_: str | None = None) -> str:
    """The two embedded models side by side on the measures of ``eval_phantom.json``."""
    evals = [_json(f"assets/{model}/eval_phantom.json") for model in EMBEDDED]

    def row(name: str, get: Callable[[dict], str]) -> list[str]:
        return [name, *(get(evaluation) for evaluation in evals)]

    def recall(direction: str) -> Callable[[dict], str]:
        return lambda e: " / ".join(_fmt(e["retrieval"][direction][k], 2) for k in ("recall@1", "recall@5", "recall@10")) + \
            f", {_fmt(e['retrieval'][direction]['precision@5'], 2)}"

    def core(e: dict) -> str:
        aucs = [e["zero_shot"]["auc"][label] for label in CORE_FINDINGS]
        return f"{_fmt(sum(aucs) / len(aucs))} ({', '.join(_fmt(a, 2) for a in aucs)})"

    def point(e: dict) -> str:
        g = e["grounding"]
        return ", ".join(f"{label} {_fmt(g['redundancy_removed']['per_finding'][label], 2)} / "
                         f"{_fmt(g['raw']['per_finding'][label], 2)}" for label in FOCAL)

    rows = [
        row("zero-shot macro AUC, all findings (pairwise, the model's own negatives)", lambda e: _fmt(e["zero_shot"]["macro_auc"])),
        row("zero-shot AUC, the 8 core findings (" + ", ".join(CORE_FINDINGS) + ")", core),
        row("the image's highest-scoring finding is one of its own", lambda e: _fmt(e["zero_shot"]["top_finding_accuracy"])),
        row("calibration error of the pairwise probabilities (ECE)", lambda e: _fmt(e["zero_shot"]["calibration_error"])),
        row("image → text recall@1 / @5 / @10, precision@5", recall("image_to_text")),
        row("text → image recall@1 / @5 / @10, precision@5", recall("text_to_image")),
        row("pointing game, patch similarity (common part removed / raw)", point),
    ]
    return _table(["measure", *(f"`{model}`" for model in EMBEDDED)], rows)


# -- grounding methods: eval_grounding.json (+ gScoreCAM on fewer images) ---------------------------

def grounding_methods(model: str) -> str:
    full = _json(f"assets/{model}/eval_grounding.json")
    methods = dict(full["methods"])
    slow = ROOT / f"assets/{model}/eval_grounding_gscorecam.json"
    slow_images = None
    if slow.is_file():
        extra = json.loads(slow.read_text())
        slow_images = extra["n_images"]
        methods.update(extra["methods"])
    ranked = sorted(methods, key=lambda m: -methods[m]["pointing"]["mean"])
    rows = []
    for rank, method in enumerate(ranked, 1):
        result = methods[method]
        name = method if method not in ("gscorecam",) or slow_images is None else f"{method} ({slow_images} images)"
        near = result.get("pointing_15px")
        cells = [f"{_fmt(result['pointing'][label], 2)} / {_fmt(near[label], 2) if near else '–'}" for label in FOCAL]
        mean = f"{_fmt(result['pointing']['mean'], 2)} / {_fmt(near['mean'], 2) if near else '–'}"
        rows.append([str(rank), name, *cells, mean, _fmt(result["iou"]["mean"], 2), _fmt(result["dice"]["mean"], 2),
                     f"{result['seconds_per_map'] * 1000:,.0f}"])
    rows.append(["–", "chance (box area / grown by 15 px)",
                 *(f"{_fmt(full['chance'][label], 3)} / {_fmt(full['chance_15px'][label], 2)}" for label in FOCAL),
                 "", "", "", ""])
    return _table(["rank", "method", *FOCAL_HEADERS, "mean", "mean IoU", "mean Dice", "ms/map"], rows)


def grounding_dice(model: str) -> str:
    methods = _json(f"assets/{model}/eval_grounding.json")["methods"]
    return _table(["zero-shot mask", *FOCAL_HEADERS],
                  [[method, *(_fmt(result["dice"][label], 2) for label in FOCAL)] for method, result in methods.items()])


# -- trained segmentation decoder: segmentation/eval.json ------------------------------------------

def segmentation(model: str) -> str:
    result = _json(f"assets/{model}/segmentation/eval.json")
    rows = [[row["finding"], str(row["n_positive"]), _fmt(row["dice_mean"], 2), _fmt(row["dice_median"], 2),
             _fmt(row["empty_on_negatives"], 2)]
            for row in sorted(result["findings"], key=lambda r: -r["n_positive"])]
    return _table(["finding", "images with it", "Dice mean", "Dice median", "empty when absent"], rows)


# -- report drafts: report/eval_report.json --------------------------------------------------------

def report(model: str) -> str:
    systems = _json(f"assets/{model}/report/eval_report.json")["systems"]
    rows = [[name, f"**{_fmt(s['finding_f1_micro'])}**", _fmt(s["finding_f1_macro"]),
             _fmt(s["finding_f1_micro_vs_labelled_reference"]),
             *(_fmt(s[f"bleu_{n}"]) for n in range(1, 5)), _fmt(s["rouge_l"]), f"{s['mean_words']:.0f}"]
            for name, s in systems.items()]
    return _table(["system", "finding F1 (micro, vs MeSH)", "macro", "micro vs labelled text", "BLEU-1", "BLEU-2",
                   "BLEU-3", "BLEU-4", "ROUGE-L", "words"], rows)


def report_labeller(model: str) -> str:
    labeller = _json(f"assets/{model}/report/eval_report.json")["labeller"]
    return _table(["reports", "micro F1", "macro F1", "same label set"],
                  [[str(labeller["n_reports"]), _fmt(labeller["micro_f1"]), _fmt(labeller["macro_f1"]),
                    _fmt(labeller["exact_match"])]])


# -- experiments/results ---------------------------------------------------------------------------

def zero_shot_negatives(_: str | None = None) -> str:
    test = _json("experiments/results/zero_shot_prompts.json")["negatives"]["test"]
    styles = (("pairwise/negated", "negation (CheXzero)"), ("pairwise/normal", "a normal study's sentences"),
              ("softmax", "softmax across labels"))
    rows = [[f"`{model}`", *(f"{_fmt(test[model][key]['macro_auc'])} / {_fmt(test[model][key]['top_finding_accuracy'])}"
                             for key, _ in styles)] for model in test]
    return _table(["test split, macro AUC / top finding is the image's own (uncalibrated)", *(name for _, name in styles)],
                  rows)


def zero_shot_calibration(_: str | None = None) -> str:
    result = _json("experiments/results/zero_shot_calibration.json")
    rows = []
    for model, entry in result.items():
        if not isinstance(entry, dict):
            continue
        measured = entry["measured"]
        rows.append([f"`{model}`", *(_fmt(measured[key][metric]) for key in ("test/uncalibrated", "test/calibrated")
                                     for metric in ("calibration_error", "top_finding_accuracy"))])
    return _table(["test split", "ECE before", "top finding before", "ECE after", "top finding after"], rows)


def few_shot(_: str | None = None) -> str:
    result = _json("experiments/results/few_shot.json")
    zero = result["zero_shot"]
    rows = [["zero-shot", "0", _fmt(zero["macro_auc"]), _fmt(zero["top_label_accuracy"])]]
    for shots, entry in result["shots"].items():
        for key, name in (("tip_adapter", f"Tip-Adapter (α {result['alpha']:g}, β {result['beta']:g})"),
                          ("linear_probe", "linear probe")):
            rows.append([name, shots, _fmt(entry[key]["macro_auc"]), _fmt(entry[key]["top_label_accuracy"])])
    return _table(["series", "train images per label", "macro AUC", "top label is the image's own"], rows)


def ablation_local_loss(_: str | None = None) -> str:
    result = _json("experiments/results/ablation_local_loss.json")
    rows = [[arm, _fmt(r["macro_auc"]), _fmt(r["retrieval"]["image_to_text"]["recall@10"]),
             _fmt(r["retrieval"]["image_to_text"]["precision@5"]), _fmt(r["retrieval"]["text_to_image"]["recall@10"]),
             *(_fmt(r["pointing"][label], 2) for label in ("pleural effusion", "opacity", "nodule", "pneumothorax")),
             _fmt(r["pointing"]["mean"]), _fmt(r["dice"]["mean"])] for arm, r in result.items()]
    return _table(["arm", "macro AUC", "i→t R@10", "i→t P@5", "t→i R@10", "pointing effusion", "pointing opacity",
                   "pointing nodule", "pointing pneumothorax", "mean pointing (6 findings)", "mean Dice"], rows)


def report_retrieval_tuning(model: str) -> str:
    name = "report_retrieval_tuning" + ("" if model == "medclip-phantom" else "_grounding")
    result = _json(f"experiments/results/{name}.json")
    rows = [[str(row["k"]), f"{row['support']:g}" + (" (off)" if row["support"] == 0 else ""), _fmt(row["micro_f1"]),
             _fmt(row["macro_f1"])] for row in result["settings"]]
    rows.append(["nearest whole report", "", _fmt(result["nearest_whole_report_micro_f1"]), ""])
    return _table([f"findings sentences ({result['split']} split, {result['n_images']} images)", "support threshold",
                   "micro finding F1", "macro"], rows)


TABLES: dict[str, Callable[[str | None], str]] = {
    "embedded-models": embedded_models, "zero-shot-auc": zero_shot_auc, "retrieval": retrieval, "pointing": pointing,
    "grounding-methods": grounding_methods, "grounding-dice": grounding_dice, "segmentation": segmentation,
    "report": report, "report-labeller": report_labeller, "zero-shot-negatives": zero_shot_negatives,
    "zero-shot-calibration": zero_shot_calibration, "few-shot": few_shot, "ablation-local-loss": ablation_local_loss,
    "report-retrieval-tuning": report_retrieval_tuning,
}


def render(text: str) -> str:
    """``text`` with every results block regenerated from its JSON."""
    def fill(match: re.Match) -> str:
        name = match["name"]
        if name not in TABLES:
            raise KeyError(f"unknown results table {name!r}")
        return match.group(1) + TABLES[name](match["arg"]) + match.group(5)
    return BLOCK.sub(fill, text)


def stale_blocks(root: Path = ROOT) -> list[str]:
    """``FILE: NAME ARG`` for every block whose table differs from what its JSON gives (empty: all agree)."""
    stale = []
    for path in markdown_files(root):
        text = path.read_text()
        for match in BLOCK.finditer(text):
            if match.group(1) + match["body"] + match.group(5) != render(match.group(0)):
                stale.append(f"{path.relative_to(root)}: {match['name']} {match['arg'] or ''}".rstrip())
    return stale


def update(root: Path = ROOT) -> list[Path]:
    """Rewrite the blocks of every owned file; returns the files that changed."""
    changed = []
    for path in markdown_files(root):
        text = path.read_text()
        new = render(text)
        if new != text:
            path.write_text(new)
            changed.append(path)
    return changed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when a table differs from its JSON")
    args = parser.parse_args()
    if args.check:
        stale = stale_blocks()
        for line in stale:
            print(f"stale: {line}", file=sys.stderr)
        sys.exit(1 if stale else 0)
    for path in update():
        print(f"rewrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
