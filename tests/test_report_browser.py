"""The Report tab in a real browser at 1280 px: the first draft comes within 5 s or with progress text, never
holds the corpus's de-identification token, and its sentence table fits beside the heatmap."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.test_browser import page, pytestmark  # noqa: F401  (the browser fixture and its skip rule)

EXAMPLE_DICOM = Path(__file__).resolve().parents[1] / "assets" / "examples" / "phantom_effusion.dcm"
FIRST_USE_S = 5.0
ANSWER_TIMEOUT_S = 300


@pytest.fixture(scope="module", autouse=True)
def empty_cache(tmp_path_factory):
    """An empty embedding cache for the app of this module: only the shipped files are there (first use)."""
    before = os.environ.get("MEDCLIP_CACHE_DIR")
    os.environ["MEDCLIP_CACHE_DIR"] = str(tmp_path_factory.mktemp("empty-cache"))
    yield
    if before is None:
        os.environ.pop("MEDCLIP_CACHE_DIR")
    else:
        os.environ["MEDCLIP_CACHE_DIR"] = before


def test_report_tab_first_draft_is_quick_or_says_what_it_does(page) -> None:  # noqa: F811
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Report").click()
    page.locator("#report-upload input[type=file]").set_input_files(str(EXAMPLE_DICOM))
    page.get_by_role("button", name="Draft report").click()
    draft = page.locator("#report-draft textarea")
    progress = page.locator(".progress-level-inner")
    start, progress_texts = time.monotonic(), set()
    while not draft.input_value() and time.monotonic() - start < ANSWER_TIMEOUT_S:
        progress_texts.update(text.strip() for text in progress.all_inner_texts())  # no wait: it may be gone
        page.wait_for_timeout(250)
    waited = time.monotonic() - start
    text = draft.input_value()
    assert text.startswith("FINDINGS:") or text.startswith("IMPRESSION:"), text
    assert waited <= FIRST_USE_S or any(t for t in progress_texts), (waited, progress_texts)
    assert "xxxx" not in text.lower()

    table = page.locator("#report-sentences")
    for header in ("sentence", "similarity", "states"):
        cell = table.get_by_role("columnheader", name=header).first
        expect(cell).to_be_visible()
        box = cell.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 1280, (header, box)
    # one-word cells (headers, section names) are not broken mid-word: each such text sits on one line
    lines = page.evaluate("""(words) => {
        const walker = document.createTreeWalker(document.querySelector('#report-sentences'), NodeFilter.SHOW_TEXT);
        const found = [];
        for (let node = walker.nextNode(); node; node = walker.nextNode()) {
            const word = node.nodeValue.trim();
            if (!words.includes(word)) continue;
            const range = document.createRange();
            range.selectNodeContents(node);
            const tops = new Set([...range.getClientRects()].filter(r => r.width > 0).map(r => Math.round(r.top)));
            found.push([word, tops.size]);
        }
        return found;
    }""", ["section", "similarity", "states", "findings", "impression"])
    assert {word for word, _ in lines} >= {"similarity", "states", "findings", "impression"}, lines
    assert all(count == 1 for _, count in lines), lines
