"""The CSV files users hand us (training pairs, support sets, galleries): one reader, one path rule.

Image paths in a CSV are relative to the CSV's folder; a path that leaves that folder (absolute,
``..``, or a link pointing outside) is refused, so a CSV cannot make the app read other files.
"""
from __future__ import annotations

import csv
from pathlib import Path

from medclip_core.errors import TaskInputError


def read_csv_rows(csv_path: str | Path, required: set[str]) -> list[dict[str, str]]:
    """Rows of a UTF-8 CSV as dicts with lower-case, stripped column names and stripped cells."""
    csv_path = Path(csv_path).expanduser()
    if not csv_path.is_file():
        raise TaskInputError(f"CSV file not found: {csv_path}.")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            raw_rows = list(reader)
            columns = {(c or "").strip().lower() for c in reader.fieldnames or []}
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise TaskInputError(f"{csv_path.name} is not a readable UTF-8 CSV file ({exc}).") from exc
    missing = required - columns
    if missing:
        raise TaskInputError(f"{csv_path.name} needs a header row with the column(s) {', '.join(sorted(required))}; "
                             f"missing {', '.join(sorted(missing))}.")
    # cells beyond the header come under the key None as a list: ignored
    return [{k.strip().lower(): (v or "").strip() for k, v in raw.items() if k is not None and not isinstance(v, list)}
            for raw in raw_rows]


def image_path_in(root: Path, relative: str, where: str) -> Path:
    """``relative`` resolved inside ``root``; refused with a clear message when it points outside."""
    root = root.resolve()
    path = (root / relative).resolve()
    if Path(relative).is_absolute() or not path.is_relative_to(root):
        raise TaskInputError(f"{where}: the image path '{relative}' leaves the dataset folder. "
                             "Use paths relative to the folder that holds the CSV.")
    return path
