"""The user documentation: results tables agree with their committed JSON, the README stays short, links resolve."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def results_tables():
    """scripts/release/results_tables.py, loaded from its file (scripts are not a package)."""
    spec = importlib.util.spec_from_file_location("results_tables", ROOT / "scripts" / "release" / "results_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_results_table_matches_its_json() -> None:
    tables = results_tables()
    blocks = sum(len(tables.BLOCK.findall(path.read_text())) for path in tables.markdown_files())
    assert blocks >= 20, "the docs and model cards should hold their results as generated blocks"
    assert tables.stale_blocks() == [], "run: python scripts/release/results_tables.py"


def test_a_changed_figure_is_caught(tmp_path: Path) -> None:
    tables = results_tables()
    card = (ROOT / "assets" / "medclip-phantom" / "MODEL_CARD.md").read_text()
    block = next(tables.BLOCK.finditer(card))
    figure = re.search(r"\d\.\d{3}", block["body"]).group(0)
    edited = card.replace(block.group(0), block.group(0).replace(figure, "0.123", 1))
    assert tables.render(edited) == card


def test_readme_is_short() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


def test_every_relative_link_points_at_a_file() -> None:
    files = [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "assets").glob("*/MODEL_CARD.md")]
    broken = []
    for path in files:
        for target in LINK.findall(path.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            if not (path.parent / target.split("#")[0]).exists():
                broken.append(f"{path.relative_to(ROOT)} -> {target}")
    assert broken == []
