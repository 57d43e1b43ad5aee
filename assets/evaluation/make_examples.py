"""Writes the small example labelled sets of docs/evaluation.md into this folder (8-bit PNG images).

Run from the repository root: ``python assets/evaluation/make_examples.py``. The first 12 phantom
evaluation samples, exported in the four formats, with the imperfections real sets have added to
``labels.csv``: an uncertain label (-1), an unknown one (blank), a study column (Sex), a column that
names no finding, a row whose image is missing and a duplicated row.
"""
from __future__ import annotations

import csv
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from medclip_core.eval.phantom_export import EXPORT_FORMATS, export_phantom

HERE = Path(__file__).resolve().parent
N = 12


def main() -> None:
    for sub in ("images", "masks"):
        shutil.rmtree(HERE / sub, ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        for export_format, name in EXPORT_FORMATS.items():
            export_phantom(tmp, export_format, n=N)
            with open(Path(tmp) / name, newline="", encoding="utf-8") as handle:
                rows = list(csv.DictReader(handle))
            for row in rows:
                row["image"] = row["image"].replace(".tiff", ".png")
            if export_format == "chexpert":
                rows = _with_imperfections(rows)
            with open(HERE / name, "w", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
        (HERE / "images").mkdir()
        for tiff in sorted((Path(tmp) / "images").glob("*.tiff")):
            pixels = np.asarray(Image.open(tiff), dtype=np.float32)
            Image.fromarray(np.round(np.clip(pixels, 0, 1) * 255).astype(np.uint8)).save(
                HERE / "images" / f"{tiff.stem}.png", optimize=True)
        shutil.copytree(Path(tmp) / "masks", HERE / "masks")


def _with_imperfections(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    rows = [{"image": r["image"], "Sex": "F" if i % 2 else "M", **{k: v for k, v in r.items() if k != "image"},
             "Kidney Stone": "0"} for i, r in enumerate(rows)]
    rows[1]["opacity"] = "-1"
    rows[2]["cardiomegaly"] = ""
    rows.append({**rows[0], "image": "images/missing.png"})
    rows.append(dict(rows[3]))
    return rows


if __name__ == "__main__":
    main()
