"""Choose the retrieval drafter's settings on the phantom *validation* split (never the test split).

Sweeps the zero-shot support threshold (an abnormal sentence is kept only when the image's
pairwise probability for its finding reaches it; 0 = no check) and the number of findings
sentences, scoring micro finding F1 against the MeSH labels; the nearest whole report is scored
alongside as the baseline to beat. Image features are cached, so each setting costs only the
retrieval itself.

    python experiments/tune_report_retrieval.py [--model medclip-phantom]   # -> experiments/results/report_retrieval_tuning.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from medclip_core.eval.report_eval import evaluate_reports
from medclip_core.models import load_model

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="medclip-phantom")
    parser.add_argument("--supports", type=float, nargs="+", default=[0.0, 0.4, 0.5, 0.6, 0.7, 0.8])
    parser.add_argument("--ks", type=int, nargs="+", default=[4, 6])
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "results" / "report_retrieval_tuning.json")
    args = parser.parse_args()
    model = load_model(args.model)
    rows, baseline = [], None
    for k in args.ks:
        for support in args.supports:
            start = time.perf_counter()
            result = evaluate_reports(model, None, split="val", k=k, support=support)
            retrieval = result.systems["retrieval"]
            baseline = result.systems["nearest whole report"]["finding_f1_micro"]
            rows.append({"k": k, "support": support, "micro_f1": retrieval["finding_f1_micro"],
                         "macro_f1": retrieval["finding_f1_macro"], "seconds": time.perf_counter() - start})
            print(json.dumps(rows[-1]), flush=True)
    best = max(rows, key=lambda row: row["micro_f1"])
    summary = {"model": args.model, "split": "val", "n_images": result.n_images,
               "nearest_whole_report_micro_f1": baseline, "best": best, "settings": rows,
               "command": "python experiments/tune_report_retrieval.py"}
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({"best": best, "nearest whole report": baseline}))


if __name__ == "__main__":
    main()
