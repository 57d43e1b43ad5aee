"""The phantom evaluation set written out in the labelled-set formats of ``docs/evaluation.md``.

Exactly the samples :func:`~medclip_core.eval.phantom_eval.evaluate_phantom` measures (same ``n``,
split and seed), so evaluating the exported files with the engine reproduces the phantom figures:
images are written as 32-bit float TIFF, which keeps the rendered pixels bit for bit (an 8-bit
PNG would round them and move the AUCs in the third decimal).

Formats: ``chexpert`` (``labels.csv``: image + one 1/0 column per finding), ``pairs``
(``pairs.csv``: image,report,labels), ``boxes`` (``boxes.csv``: image,phrase,x,y,w,h per box of the
grounding findings) and ``masks`` (``masks.csv``: image,phrase,mask with PNG masks).
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medclip_core.data.findings import FINDINGS, GROUNDING_FINDINGS
from medclip_core.eval.phantom_eval import Progress, phantom_eval_samples

EXPORT_FORMATS: dict[str, str] = {"chexpert": "labels.csv", "pairs": "pairs.csv", "boxes": "boxes.csv",
                                  "masks": "masks.csv"}


def export_phantom(out_dir: str | Path, export_format: str, n: int = 1000, split: str = "test", seed: int = 0,
                   progress: Progress | None = None) -> dict[str, Any]:
    """Write the phantom evaluation samples to ``out_dir`` in ``export_format``; returns what was written."""
    if export_format not in EXPORT_FORMATS:
        raise ValueError(f"Unknown export format '{export_format}'; choose one of {', '.join(EXPORT_FORMATS)}.")
    folder = Path(out_dir)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    samples = phantom_eval_samples(n, split, seed, progress)
    rows: list[dict[str, Any]] = []
    for i, sample in enumerate(samples):
        image = f"images/{i:04d}.tiff"
        Image.fromarray(sample.image.astype(np.float32), mode="F").save(folder / image)
        if export_format == "chexpert":
            rows.append({"image": image, **{f: int(f in sample.labels) for f in FINDINGS}})
        elif export_format == "pairs":
            rows.append({"image": image, "report": sample.report.text, "labels": "|".join(sorted(sample.labels))})
        elif export_format == "boxes":
            rows += [{"image": image, "phrase": f, "x": x0, "y": y0, "w": x1 - x0, "h": y1 - y0}
                     for f in GROUNDING_FINDINGS for x0, y0, x1, y1 in (sample.boxes or {}).get(f, [])]
        else:
            for f in GROUNDING_FINDINGS:
                if f in sample.masks and sample.masks[f].any():
                    mask = f"masks/{i:04d}_{f.replace(' ', '_')}.png"
                    (folder / "masks").mkdir(exist_ok=True)
                    Image.fromarray(sample.masks[f].astype(np.uint8) * 255).save(folder / mask)
                    rows.append({"image": image, "phrase": f, "mask": mask})
    csv_path = folder / EXPORT_FORMATS[export_format]
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["image"])
        writer.writeheader()
        writer.writerows(rows)
    return {"format": export_format, "csv": str(csv_path), "n_images": len(samples), "rows": len(rows),
            "split": split, "seed": seed}
