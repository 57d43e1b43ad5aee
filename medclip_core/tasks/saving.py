"""Results that save themselves: one ``save(out_dir)`` per task result, so the CLI and the app write
the same files and neither carries its own export code.

Every result writes its ``to_dict()`` as ``<prefix><name>.json``; results with pictures (heatmaps,
masks) add their PNG / .npy / DICOM SEG files next to it. ``save`` returns what it wrote as
``{kind: path or [paths]}`` (kinds such as ``"json"``, ``"png"``, ``"masks"``), the fields the CLI
adds to its JSON answer; :func:`saved_paths` flattens that for a download list.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from medclip_core.errors import TaskInputError

SavedFiles = dict[str, str | list[str]]


def output_folder(out_dir: str | Path) -> Path:
    """``out_dir`` as a folder that exists (created with its parents); a file in the way is a clear error."""
    folder = Path(out_dir)
    if folder.exists() and not folder.is_dir():
        raise TaskInputError(f"'{folder}' is a file; give a folder to save the results in.")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_json(path: Path, payload: Any) -> Path:
    """``payload`` as indented JSON at ``path`` (values JSON does not know, e.g. paths, as text)."""
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def saved_paths(saved: SavedFiles) -> list[str]:
    """Every path of a ``save()`` answer, in the order written."""
    return [path for value in saved.values() for path in ([value] if isinstance(value, str) else value)]


class SavesJson:
    """Mixin for a result dataclass with ``to_dict()``: ``save`` writes it as ``<prefix><SAVED_NAME>.json``."""

    SAVED_NAME: ClassVar[str]

    def save(self, out_dir: str | Path, *, prefix: str = "") -> SavedFiles:
        """Write the result's JSON into ``out_dir`` (created if needed); returns ``{"json": path}``."""
        folder = output_folder(out_dir)
        return {"json": str(write_json(folder / f"{prefix}{self.SAVED_NAME}.json", self.to_dict()))}
