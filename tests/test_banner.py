"""The banner under the model picker says which models load here now and how to add BiomedCLIP offline."""
from __future__ import annotations

from pathlib import Path

from medclip_core.models import describe_models
from pages.common import banner_for, usable_models_line

DOCS = Path(__file__).resolve().parents[1] / "docs" / "models.md"


def test_banner_lists_the_models_usable_here_and_how_to_add_biomedclip() -> None:
    rows = describe_models()
    usable = [r["name"] for r in rows if r["availability"] in ("available", "cached")]
    assert {"medclip-phantom", "medclip-phantom-grounding"} <= set(usable)  # embedded: always here
    banner = banner_for("medclip-phantom")
    line = next(part for part in banner.split("\n\n") if part.startswith("Usable on this machine now"))
    assert all(f"`{name}`" in line.split(".")[0] for name in usable)
    biomedclip = next(r for r in rows if r["name"] == "biomedclip")
    if biomedclip["availability"] == "unavailable":  # this offline machine: the banner says how to add it
        assert "local-dir:" in banner and "Hugging Face cache" in banner and "Adding BiomedCLIP offline" in banner
        assert "`biomedclip`" in line.split("Not here")[1]
    else:
        assert "pick `biomedclip`" in banner
    assert line in banner_for("biomedclip")  # every model's banner says what is usable


def test_usable_models_line_sorts_models_by_availability() -> None:
    rows = [{"name": "a", "availability": "available"}, {"name": "b", "availability": "cached"},
            {"name": "c", "availability": "downloadable"}, {"name": "d", "availability": "unavailable"},
            {"name": "e", "availability": "not trained"}]
    assert usable_models_line(rows) == ("Usable on this machine now: `a`, `b`. From the hub on first use: `c`. "
                                        "Not here (no local copy, no hub): `d`, `e`.")


def test_the_banner_points_at_a_section_that_exists() -> None:
    text = DOCS.read_text()
    assert "## Adding BiomedCLIP offline" in text
    section = text.split("## Adding BiomedCLIP offline")[1].split("\n## ")[0]
    assert "local-dir:" in section and "HF_HOME" in section
