"""Write every results table of the docs and model cards from the committed evaluation JSON.

A table lives between two markers in a markdown file::

    <!-- results:NAME ARG -->
    ...generated...
    <!-- /results -->

``NAME`` picks a table below, ``ARG`` (optional) the model folder under ``assets/``. Each figure is
thus written once, in its JSON; the prose around a table points at it instead of repeating figures.

    python scripts/release/results_tables.py           # rewrite the blocks of README.md, docs/*.md, assets/*/MODEL_CARD.md, experiments/results/*.md
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
    return [root / "README.md", *sorted((root / "docs").glob("*.md")), *sorted((root / "assets").glob("*/MODEL_CARD.md")),
            *sorted((root / "experiments" / "results").glob("*.md"))]


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


# -- heatmap sanity checks: bench/results/heatmap_sanity.json -------------------------------------

def heatmap_sanity(_: str | None = None) -> str:
    """Per model and method: median Spearman (IQR) of the map with the control phrase's and with the
    randomised model's map, and the flags (bench/bench_heatmap_sanity.py)."""
    data = _json("bench/results/heatmap_sanity.json")

    def cell(summary: dict | None) -> str:
        if summary is None or summary["median"] is None:
            return "–"
        low, high = summary["iqr"]
        return f"{_fmt(summary['median'], 2)} ({_fmt(low, 2)} to {_fmt(high, 2)})"
    rows = []
    for model, result in data["models"].items():
        for method, checks in result["methods"].items():
            rows.append([f"`{model}`", method, str(checks["prompt"]["n"]), cell(checks["prompt"]), cell(checks["weights"]),
                         ", ".join(checks["flags"]) or "–"])
        rows += [[f"`{model}`", method, "–", "not available", "", ""] for method in result["skipped"]]
    return _table(["model", "method", "images", f"ρ with '{data['control_phrase']}' (IQR)",
                   "ρ with last block randomised (IQR)", f"flag (median > {data['threshold']:g})"], rows)


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


def report_margins(model: str) -> str:
    """How far each drafting method beats each baseline in micro finding F1 (negative: it does not)."""
    margins = _json(f"assets/{model}/report/eval_report.json")["margins"]
    baselines = list(next(iter(margins.values())))
    return _table(["micro finding F1 over", *baselines],
                  [[method, *(f"{by_baseline[b]:+.3f}" for b in baselines)] for method, by_baseline in margins.items()])


def report_per_finding(model: str) -> str:
    """Finding F1 of each drafting method, per finding (from ``per_label_f1``)."""
    systems = _json(f"assets/{model}/report/eval_report.json")["systems"]
    methods = [m for m in ("retrieval", "generative") if m in systems]
    findings = systems[methods[0]]["per_label_f1"]
    return _table(["finding", *methods], [[f, *(_fmt(systems[m]["per_label_f1"].get(f), 2) for m in methods)]
                                          for f in findings])


def report_decoder_history(_: str | None = None) -> str:
    """The report decoder's development steps (a record of past runs, not re-run)."""
    result = _json("experiments/results/report_decoder_history.json")
    rows = [[v["decoder"], _fmt(v["micro_f1"]), _fmt(v["macro_f1"]), _fmt(v["bleu_1"])] for v in result["variants"]]
    subset = result["subset_80_images"]
    rows += [[f"the last two, {name} (first 80 images)", " / ".join(_fmt(f) for f in subset[key]), "", ""]
             for name, key in (("beam search only", "beam_search_only_micro_f1"),
                               ("with the choice among samples", "choice_among_samples_micro_f1"))]
    return _table(["decoder variant", "micro F1", "macro F1", "BLEU-1"], rows)


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


def zero_shot_devices(_: str | None = None) -> str:
    result = _json("experiments/results/zero_shot_devices.json")
    same = result["same_top_label_and_calibration"]
    rows = [[case, f"{difference:.1e}", ("yes" if same[case] else "**no**") if case in same else "–"]
            for case, difference in result["max_probability_difference"].items()]
    return _table([f"`{result['model']}`, {result['examples']} examples: {result['device']} (torch {result['torch']}) vs CPU",
                   "largest probability difference", "same top label"], rows)


def variants(_: str | None = None) -> str:
    """The image towers tried for the embedded models (a record of past runs, not re-run)."""
    rows = [[v["image_tower"] + (f" — released as **`{v['released_as']}`**" if "released_as" in v else ""),
             f"{v['steps']:,}", v["train_images_seen"], v["global_loss"],
             f"{_fmt(v['macro_auc'], 2)} ({v['findings']} findings, n={v['n']})", v["note"]]
            for v in _json("experiments/results/default_model_variants.json")["variants"]]
    return _table(["image tower", "steps", "train images seen", "global loss (chance ≈ 4.85)", "zero-shot macro AUC",
                   "note"], rows)


def zero_shot_summary(model: str) -> str:
    zero_shot = _json(f"assets/{model}/eval_phantom.json")["zero_shot"]
    return _table(["macro AUC", "highest-scoring finding is one of the image's own", "calibration error (ECE)"],
                  [[f"**{_fmt(zero_shot['macro_auc'])}**", f"**{_fmt(zero_shot['top_finding_accuracy'])}**",
                    _fmt(zero_shot["calibration_error"])]])


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


# -- out-of-distribution guard: bench/results/ood.json ----------------------------------------------

def ood_guard(_: str | None = None) -> str:
    """Per embedded model: its threshold and how many images of each set its reference flags."""
    data = _json("bench/results/ood.json")

    def flagged(part: dict) -> str:
        return f"{part['flagged']} / {part['n']} ({part['fraction_flagged']:.1%})"

    rows = [[f"`{model}`", _fmt(part["threshold"], 2), flagged(part["phantom_test"]), flagged(part["examples"]),
             flagged(part["pydicom"]), flagged(part["skimage"])] for model, part in data["models"].items()]
    return _table(["model", "threshold (distance)", "phantom test images flagged (target ≤ 2 %)",
                   "committed phantom examples flagged", "pydicom's test images flagged (all should be)",
                   "scikit-image pictures flagged (all should be)"], rows) + \
        f"\n{len(data['pydicom_skipped'])} pydicom files could not be decoded and were skipped. " \
        f"Command: `{data['command']}`.\n"


# -- speed and memory benchmarks: bench/results/*.json ---------------------------------------------
# One row function per results file; each returns table rows (what, command, result). The command is
# the one the JSON records, else the script's plain invocation.

Row = list[str]


def _bench(name: str) -> tuple[dict, Callable[[dict | None], str]]:
    """The results of ``bench/bench_NAME.py`` and a function giving the command that made a part of them."""
    data = _json(f"bench/results/{name}.json")

    def command(part: dict | None = None) -> str:
        recorded = (part or {}).get("command") or data.get("command")
        return f"`{recorded or f'python bench/bench_{name}.py'}`"
    return data, command


def bench_io() -> list[Row]:
    data, command = _bench("io")
    rows = []
    for key, label in (("dicom_16bit", "16-bit DICOM"), ("png_16bit", "16-bit PNG")):
        r = data["results"][key]
        rows.append([f"`load_image` vs `{r['baseline']}`: {label}, {data['image']}", command(),
                     f"{r['load_image_s']:.3g} s vs {r['baseline_s']:.3g} s ({r['ratio_load_image_to_baseline']:.2f}×)"])
    return rows


def bench_render() -> list[Row]:
    data, command = _bench("render")
    return [[f"phantom renderer, {data['size']} px, one core, steady state", command(),
             f"{data['images_per_s']:.0f} images/s ({data['ms_per_image']:.2f} ms/image)"]]


def bench_models() -> list[Row]:
    data, command = _bench("models")
    loaded = {name: m for name, m in data["models"].items() if m["loaded"]}
    offline = sorted(set(data["models"]) - set(loaded))
    return [[f"load `{name}` / encode one image / one text, 2 threads"
             + (f" ({len(offline)} hub models not in the cache when measured)" if offline else ""), command(),
             f"{m['load_s']:.2f} s, +{m['rss_growth_mb']:.0f} MB RSS; {m['encode_image_ms_median']:.0f} ms; "
             f"{m['encode_text_ms']:.0f} ms"] for name, m in loaded.items()]


def bench_train() -> list[Row]:
    data, command = _bench("train")
    return [[f"trainer vs a bare open_clip loop, same model, batch {data['batch']}, "
             f"{data['machine']['threads']} threads", command(),
             f"{data['medclip_trainer_global_loss']:.1f} vs {data['bare_open_clip_loop']:.1f} images/s "
             f"(ratio {data['ratio_trainer_to_bare']:.2f}: the frozen text tower is cached); "
             f"{data['medclip_trainer_global_plus_local_loss']:.1f} with the local loss "
             f"({data['ratio_trainer_with_local_to_bare']:.2f})"]]


def bench_grounding() -> list[Row]:
    data, command = _bench("grounding")
    models = data["models"]

    def cell(method: str) -> str:
        parts = []
        for result in models.values():
            m = result["methods"].get(method, {"unavailable": ""})
            if "unavailable" in m:
                parts.append("–")
                continue
            before = m.get("before")
            was = f", was {before['ratio_to_forward']:.1f}× with {_settings(before['settings'])}" if before else ""
            parts.append(f"{m['ms']:,.0f} ms ({m['ratio_to_forward']:.1f}×{was})")
        return f"{method} " + " / ".join(parts)
    methods = next(iter(models.values()))["methods"]
    load = data.get("machine", {}).get("load_average") or {}
    loads = ", ".join(f"{v[0]}" for v in load.values()) if isinstance(load, dict) else f"{load[0]}"
    return [[f"one heatmap (one phrase, 512² input) at default settings, {data['threads']} thread(s), vs one bare "
             "forward timed just before it (ratio of CPU seconds): " + " / ".join(f"`{name}`" for name in models)
             + (f" (load average {loads})" if load else ""), command(), "; ".join(cell(m) for m in methods)]]


def _settings(settings: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items())


def bench_app_speed() -> list[Row]:
    rows = []
    for name in ("app_speed", "app_speed_embedded"):
        if not (ROOT / f"bench/results/{name}.json").exists():
            continue
        data, command = _bench(name)
        cells = [f"`/{endpoint}` {r['app_ms']:,.0f} ms vs {r['gradio_floor_ms']:,.0f} + {r['bare_forward_ms']:,.0f} ms "
                 f"({r['ratio_app_to_floor_plus_forward']:.2f}×"
                 + (f"; {r['ratio_without_file_downloads']:.2f}× without fetching output files"
                    if "ratio_without_file_downloads" in r else "") + ")"
                 for endpoint, r in data["endpoints"].items()]
        rows.append([f"each tab's main endpoint through `gradio_client` vs a do-nothing Gradio app + the bare forward, "
                     f"{data['model']} (load average {data['machine']['load_average'][0]}; target ≤ 1.3×)", command(),
                     "; ".join(cells)])
    return rows


def bench_runs() -> list[Row]:
    data, command = _bench("runs")
    manager, ddp = data["manager_vs_direct"], data["ddp"]
    return [
        [f"a run through the run manager vs `train()` called directly ({data['model']}, batch {data['batch']}, "
         f"{data['steps']} steps, side by side)", f"{command()[:-1]} --part manager`",
         f"{manager['manager_images_per_s']:.2f} vs {manager['direct_images_per_s']:.2f} images/s (ratio "
         f"{manager['ratio_manager_to_direct']:.2f}; pairs {', '.join(f'{r:.2f}' for r in manager['ratio_per_pair'])})"],
        [f"DDP, `torchrun` with 2 gloo CPU processes (1 thread each) vs one process, global batch {data['batch']}",
         f"{command()[:-1]} --part ddp`",
         f"{ddp['torchrun_2_processes_1_thread_each_images_per_s']:.2f} vs "
         f"{ddp['one_process_1_thread_images_per_s']:.2f} images/s with 1 thread "
         f"({ddp['ddp_speedup_vs_1_process_1_thread']:.2f}×), vs {ddp['one_process_2_threads_images_per_s']:.2f} "
         f"with 2 threads; start-up {ddp['startup_s']['torchrun_2']:.0f} vs {ddp['startup_s']['one_process']:.0f} s"],
    ]


def bench_report() -> list[Row]:
    data, command = _bench("report")
    methods = data["methods"]
    return [[f"draft one report from a loaded image, `medclip-phantom` ({' / '.join(methods)}: first call, then "
             f"median of {data['n']}), {data['torch_threads']} threads", f"{command()[:-1]} --n {data['n']}`",
             " / ".join(f"{m['first_call_s']:.2f} s then {m['median_s']:.2f} s" for m in methods.values())]]


def bench_concurrency() -> list[Row]:
    data, command = _bench("concurrency")
    median = data["median_s"]
    return [[f"encode one image in the app process on {data['cores']} cores: alone / {data['callers']} requests "
             "at once / beside a busy 2-thread torch process; app torch threads 2 (1)", command(),
             " / ".join(f"{median[f'2 thread(s), {case}'] * 1000:.0f} ({median[f'1 thread(s), {case}'] * 1000:.0f}) ms"
                        for case in ("1 caller", f"{data['callers']} callers", "1 caller, background process on 2"))]]


def bench_tasks() -> list[Row]:
    data, command = _bench("tasks")
    latency, build = data["zero_shot_latency"], data["index_build"]
    exact, approx = data["query_latency"]
    efs = approx["image_like_recall_at_10_by_ef_search"]
    umap = data["umap"]
    return [
        [f"`zero_shot` / `diagnose` ({latency['labels']} labels, warm prompt cache) vs the bare forward", command(),
         f"{latency['zero_shot_ms']:.1f} / {latency['diagnose_ms']:.1f} ms vs {latency['module_forward_ms']:.1f} ms "
         f"(ratio {latency['zero_shot_over_module_forward']:.2f}; target {latency['target']})"],
        [f"gallery index build ({build['images']} PNGs from a folder) vs loading them and batched `encode_image`",
         command(), f"{build['build_index_images_per_s']:.1f} vs {build['bare_images_per_s']:.1f} images/s (ratio "
         f"{build['ratio']:.2f}; target {build['target']}); cached reload {build['cached_reload_s'] * 1000:.0f} ms"],
        [f"query latency, search alone / text query with encoding: {exact['vectors']:,} vectors ({exact['kind']}) "
         f"and {approx['vectors']:,} vectors ({approx['kind']})", command(),
         f"{exact['search_ms']:.2f} / {exact['text_query_ms']:.1f} ms and {approx['search_ms']:.2f} / "
         f"{approx['text_query_ms']:.1f} ms; HNSW recall@10 against exact "
         f"{approx['recall_at_10_image_like_queries']:.2f} for image-like queries (efSearch "
         + ", ".join(f"{ef}: {r:.2f}" for ef, r in efs.items())
         + f"), {approx['recall_at_10_random_directions']:.2f} for random directions; build {approx['build_s']:.1f} s"],
        ["UMAP (`project(..., \"umap\")`, one thread)", command(),
         " / ".join(f"{run['points']:,} points {run['seconds']:.1f} s" for run in umap["runs"])
         + f", plus {umap['first_call_200_points_s']:.1f} s for the first call (import and JIT)"],
    ]


def _ray_rates(ray: dict, kind: str) -> str:
    """Ray 1 / 2 workers vs local 1 worker, images/s of ``kind`` (``steady`` or ``whole_job``)."""
    rate = ray[f"images_per_s_{kind}"]
    return f"{rate['ray_1_workers']:.1f} / {rate['ray_2_workers']:.1f} vs {rate['local_1_worker']:.1f}"


def bench_index() -> list[Row]:
    data, command = _bench("index")
    throughput, ray, rss = data["throughput"], data["ray"], data["rss"]
    workers = throughput["local_engine_images_per_s"]
    sizes = rss["images"]
    return [
        [f"archive index, local engine ({throughput['n_images']} images, batch {throughput['batch_size']}) vs bare "
         "batched encode, steady", command(throughput),
         f"{' / '.join(f'{v:.1f}' for v in workers.values())} images/s with "
         f"{' / '.join(k.split('_')[0] for k in workers)} decode workers vs {throughput['bare_encode_images_per_s']:.1f} "
         f"(best ratio {throughput['ratio_best_vs_bare']:.2f}, whole job "
         f"{throughput['ratio_best_whole_job_vs_bare']:.2f}; target {throughput['target']})"],
        ["archive index, Ray engine, 1 / 2 workers vs the local engine with 1, steady (whole job of "
         f"{ray['n_images']} images)", command(ray), _ray_rates(ray, "steady") + " images/s ("
         + _ray_rates(ray, "whole_job") + f"); 2 vs 1: {ray['ratios_steady']['ray_2_vs_1']:.2f} "
         f"({ray['ratios_whole_job']['ray_2_vs_1']:.2f}), target {ray['targets']['ray_2_vs_1']}; Ray 1 vs local 1: "
         f"{ray['ratios_steady']['ray_1_vs_local_1']:.2f} ({ray['ratios_whole_job']['ray_1_vs_local_1']:.2f}), "
         f"target {ray['targets']['ray_1_vs_local_1']}"],
        [f"archive index memory, {rss['model']}", command(rss),
         "; ".join(f"{int(n):,} images: {s['images_per_s']:.0f} images/s, driver peak {s['peak_rss_mib_driver']:.0f} MiB"
                   for n, s in sizes.items())
         + f" (growth {rss['driver_peak_rss_growth_10k_to_40k']:.1%}; target {rss['target']})"],
    ]


def bench_archive() -> list[Row]:
    data, command = _bench("archive")
    return [[f"{data['what']} ({data['images']} images, {data['labels']} labels, {data['torch_threads']} thread)",
             command(), f"{data['dicomweb_seconds']:.2f} s vs {data['disk_seconds']:.2f} s (ratio {data['ratio']:.2f}; "
             f"target ≤ {data['target_ratio']:g}); fetch alone {data['dicomweb_fetch_only_seconds']:.2f} s"]]


def bench_evaluate() -> list[Row]:
    data, command = _bench("evaluate")
    throughput, bootstrap, reproduction = data["throughput"], data["bootstrap"], data["reproduction"]
    return [
        [f"evaluation engine vs bare batched `encode_image` ({data['model']}, {data['n_images']} exported phantom "
         f"TIFFs, {data['findings']} findings, {data['resamples']} resamples, {data['decode_workers']} decode worker)",
         command(), f"{throughput['engine_images_per_second']:.1f} vs {throughput['bare_encode_images_per_second']:.1f} "
         f"images/s (ratio {throughput['ratio']:.2f}; target {throughput['target']}; {data['machine']})"],
        ["evaluation: bootstrap intervals, ROC and calibration as a share of the run", command(),
         f"{bootstrap['seconds_classification_summary']:.2f} of {bootstrap['seconds_total']:.1f} s "
         f"({100 * bootstrap['share_of_run']:.1f} %; target {bootstrap['target']})"],
        ["evaluation: exported phantom test split vs the committed phantom AUCs", command(),
         f"largest difference {reproduction['max_abs_auc_difference']:.1e} over {reproduction['findings_compared']} "
         f"findings (target {reproduction['target']})"],
    ]


BENCHMARKS = (bench_io, bench_render, bench_models, bench_train, bench_grounding, bench_runs, bench_report,
              bench_concurrency, bench_tasks, bench_index, bench_archive, bench_app_speed,
              bench_evaluate)


def index_figures(_: str | None = None) -> str:
    """The figures of docs/scale.md: bench/bench_index.py's measurements against the issue's targets."""
    results = _json("bench/results/index.json")
    rows = []
    if "throughput" in results:
        t = results["throughput"]
        best = max(t["local_engine_images_per_s"].values())
        rows.append([f"local engine vs bare `encode_image` ({t['model']}, {t['n_images']} PNGs, batch {t['batch_size']}, "
                     "CPU), steady (whole job)", f"{best} vs {t['bare_encode_images_per_s']} img/s = "
                     f"{t['ratio_best_vs_bare']}× ({t['ratio_best_whole_job_vs_bare']}×)", t["target"]])
    if "ray" in results:
        r = results["ray"]
        for kind, label in (("steady", "steady"), ("whole_job", f"whole job of {r['n_images']} images")):
            rate, ratio = r[f"images_per_s_{kind}"], r[f"ratios_{kind}"]
            rows.append([f"Ray 2 workers vs 1 (local Ray, {r['machine']['cpus']} cores), {label}",
                         f"{rate['ray_2_workers']} vs {rate['ray_1_workers']} img/s = {ratio['ray_2_vs_1']}×",
                         r["targets"]["ray_2_vs_1"]])
            rows.append([f"Ray 1 worker vs local engine 1 worker, {label}", f"{rate['ray_1_workers']} vs "
                         f"{rate['local_1_worker']} img/s = {ratio['ray_1_vs_local_1']}×",
                         r["targets"]["ray_1_vs_local_1"]])
        start_up = r["start_up_seconds"]
        rows.append(["fixed start-up of a job (Ray 1 / 2 workers, local 1 worker)",
                     f"{start_up['ray_1_workers']} / {start_up['ray_2_workers']} / {start_up['local_1_worker']} s",
                     "stated"])
    if "rss" in results:
        m = results["rss"]
        small, large = (m["images"][n]["peak_rss_mib_driver"] for n in sorted(m["images"], key=int))
        rows.append([f"driver peak RSS, {' vs '.join(f'{int(n):,}' for n in sorted(m['images'], key=int))} images "
                     "(tiny model, hard-linked phantom PNGs)",
                     f"{small} vs {large} MiB ({100 * m['driver_peak_rss_growth_10k_to_40k']:+.1f} %)", m["target"]])
    if "ann" in results:
        a = results["ann"]
        rows.append([f"IVF-PQ at {a['n_vectors']:,} model-like vectors ({a['faiss']['factory']}, nprobe {a['nprobe']}, "
                     f"{a['rerank']} re-ranked): recall@10 vs exact / query median (p95)",
                     f"{a['recall_at_10_vs_exact']} / {a['query_ms_median']} ({a['query_ms_p95']}) ms",
                     f"{a['targets']['recall_at_10']} / {a['targets']['query_ms']} ms"])
        rows.append(["same index: bytes per vector (RAM: PQ code + id / disk: + float32 vector), build time",
                     f"{a['bytes_per_vector_ram']} / {a['bytes_per_vector_disk']} B, {a['build_seconds']} s", "stated"])
    if "engines-agree" in results:
        e = results["engines-agree"]
        rows.append([f"local vs Ray engine on {e['n_images']:,} phantom PNGs ({e['model']}): same ids, largest "
                     "embedding difference", f"{'yes' if e['ids_identical'] else 'NO'}, "
                     f"{e['max_abs_embedding_difference']:.1e}", "same ids, ≤ 1e-5"])
    table = "| figure | measured | target |\n|---|---|---|\n" + "".join(f"| {' | '.join(map(str, row))} |\n" for row in rows)
    if "ann" in results:
        grid = results["ann"]["other_settings"]
        probes = sorted({g["nprobe"] for g in grid})
        reranks = sorted({g["rerank"] for g in grid})
        cell = {(g["nprobe"], g["rerank"]): f"{g['recall_at_10_vs_exact']} / {g['query_ms_median']} ms" for g in grid}
        table += (f"\nRecall@10 / median query time at {results['ann']['n_vectors']:,} vectors, other settings "
                  "(same index):\n\n| nprobe \\ re-ranked | " + " | ".join(map(str, reranks)) + " |\n|---|"
                  + "---|" * len(reranks) + "\n" + "".join(
                      f"| {p} | " + " | ".join(cell[p, r] for r in reranks) + " |\n" for p in probes))
    return table


def benchmarks(_: str | None = None) -> str:
    """Every benchmark of ``bench/``, one or more rows per results file."""
    return _table(["what", "command", "result"], [row for rows in BENCHMARKS for row in rows()])


def evaluate_example(_: str | None = None) -> str:
    """The example report of docs/evaluation.md: two models on assets/evaluation/pairs.csv, AUC with intervals,
    counts, status, and the paired difference."""
    report = _json("assets/evaluation/example_report/evaluation.json")
    first, second = report["models"][:2]
    pair = report["comparisons"][f"{first} vs {second}"]["findings"]

    def auc(model: str, finding: str) -> str:
        m = report["classification"][model]["findings"][finding]
        return "not defined" if m["auc"] is None else (
            f"{m['auc']:.3f} [{m['ci'][0]:.3f}, {m['ci'][1]:.3f}]" if m["ci"] else f"{m['auc']:.3f}")

    rows = []
    for finding, m in report["classification"][first]["findings"].items():
        diff = pair[finding]
        rows.append([finding, f"{m['n_positives']} / {m['n_negatives']}", m["status"], auc(first, finding),
                     auc(second, finding), "–" if diff["difference"] is None else
                     f"{diff['difference']:+.3f}" + (f" [{diff['ci'][0]:+.3f}, {diff['ci'][1]:+.3f}]" if diff["ci"] else "")])
    table = _table(["finding", "positives / negatives", "status", f"`{first}` AUC [95 % CI]",
                    f"`{second}` AUC [95 % CI]", "paired difference [95 % CI]"], rows)
    recall = [[f"`{model}`", direction.replace("_to_", " → "), *(
        f"{r[direction][f'recall@{k}']['value']:.2f} [{r[direction][f'recall@{k}']['ci'][0]:.2f}, "
        f"{r[direction][f'recall@{k}']['ci'][1]:.2f}]" for k in (1, 5, 10))]
        for model, r in report["retrieval"].items() for direction in ("image_to_text", "text_to_image")]
    return table + (f"\nRetrieval over {report['retrieval'][first]['n_texts']} distinct report texts "
                    f"({report['retrieval'][first]['n_images']} images; hit: {report['retrieval'][first]['relevance']}):\n\n"
                    + _table(["model", "direction", "recall@1", "recall@5", "recall@10"], recall))


def evaluate_figures(_: str | None = None) -> str:
    """The figures of bench/bench_evaluate.py for docs/evaluation.md."""
    return _table(["what", "command", "result"], bench_evaluate())


TABLES: dict[str, Callable[[str | None], str]] = {
    "embedded-models": embedded_models, "zero-shot-auc": zero_shot_auc, "retrieval": retrieval, "pointing": pointing,
    "grounding-methods": grounding_methods, "grounding-dice": grounding_dice, "segmentation": segmentation,
    "report": report, "report-margins": report_margins, "report-labeller": report_labeller,
    "report-per-finding": report_per_finding, "report-decoder-history": report_decoder_history, "zero-shot-negatives": zero_shot_negatives,
    "zero-shot-calibration": zero_shot_calibration, "few-shot": few_shot, "zero-shot-devices": zero_shot_devices, "ablation-local-loss": ablation_local_loss,
    "variants": variants, "zero-shot-summary": zero_shot_summary,
    "report-retrieval-tuning": report_retrieval_tuning, "benchmarks": benchmarks, "index-figures": index_figures,
    "heatmap-sanity": heatmap_sanity, "ood-guard": ood_guard, "evaluate-example": evaluate_example,
    "evaluate-figures": evaluate_figures,
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
