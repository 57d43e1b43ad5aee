"""Every tab in a real browser at 1280 x 800, as a new user meets it: a preview as soon as a file is
chosen, no answer left on screen after an error, captions and legends readable, methods a model cannot
serve not offered, implausible masks marked, status that follows a training run.

One browser and one app for the module. With ``MEDCLIP_SCREENSHOTS=docs`` each tab's screenshot is
refreshed there (``scripts/release/screenshots.sh`` runs exactly that).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from tests.test_browser import CHROMIUM, EXAMPLES, browser_page, save_for_docs

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
VIEWPORT = (1280, 800)
DICOM_EXAMPLE = EXAMPLES.parent / "phantom_effusion.dcm"
ERROR_TOAST = "[data-testid=toast-body]"


@pytest.fixture(scope="module")
def page(app_url):
    with browser_page(app_url, VIEWPORT) as page:
        page.get_by_text("MedCLIP Explorer").first.wait_for(timeout=30_000)
        yield page


def open_tab(page, name: str) -> None:
    from playwright.sync_api import expect

    page.get_by_role("tab", name=name, exact=True).click()
    expect(page.get_by_role("tab", name=name, exact=True)).to_have_attribute("aria-selected", "true")


def plotly(page, selector: str) -> dict:
    """The plotly figure drawn in the page: its traces' names, colours and values, and its layout."""
    return page.evaluate("""(selector) => {
        const plot = document.querySelector(selector + ' .js-plotly-plot');
        return {data: plot.data.map(t => ({name: t.name, x: Array.from(t.x), y: Array.from(t.y),
                                          color: t.marker && t.marker.color})),
                layout: {yaxis: plot.layout.yaxis, shapes: plot.layout.shapes || []}};
    }""", selector)


def fail_and_expect_cleared(page, button: str, cleared) -> None:
    """Press ``button`` on an input that fails: an error toast, and ``cleared`` (a locator of the previous
    answer) gone from the page rather than left under the toast."""
    from playwright.sync_api import expect

    page.get_by_role("button", name=button, exact=True).click()
    expect(page.locator(ERROR_TOAST).first).to_be_visible(timeout=30_000)
    expect(cleared).to_have_count(0, timeout=10_000)
    page.locator(ERROR_TOAST).first.click()  # the toast closes on a click elsewhere; do not let it pile up
    for close in page.get_by_label("Close").all():
        if close.is_visible():
            close.click()


def inside(inner: dict, outer: dict, slack: float = 1.0) -> bool:
    return (inner["x"] >= outer["x"] - slack and inner["y"] >= outer["y"] - slack
            and inner["x"] + inner["width"] <= outer["x"] + outer["width"] + slack
            and inner["y"] + inner["height"] <= outer["y"] + outer["height"] + slack)


def captions_fit(page, gallery: str, wrap: str = ".grid-wrap", caption: str = ".caption-label") -> None:
    """Each gallery caption lies inside the gallery and the viewport (once scrolled to) and is not cut
    (``wrap`` and ``caption`` select the grid and captions: a Gradio gallery's by default)."""
    wrap = page.locator(f"{gallery} {wrap}")
    captions = page.locator(f"{gallery} {caption}")
    assert captions.count() > 0
    for caption in captions.all():
        caption.scroll_into_view_if_needed()
        box, viewport = caption.bounding_box(), {"x": 0, "y": 0, "width": VIEWPORT[0], "height": VIEWPORT[1]}
        assert inside(box, wrap.bounding_box()) and inside(box, viewport), caption.inner_text()
        assert caption.evaluate("e => e.scrollWidth <= e.clientWidth + 1"), f"cut: {caption.inner_text()}"
    fits = page.locator(f"{gallery} img").first.evaluate("e => getComputedStyle(e).objectFit")
    assert fits == "contain"  # whole images, not square crops


def test_diagnose_preview_sorted_chart_labels_in_effect_and_error(page) -> None:
    from playwright.sync_api import expect

    open_tab(page, "Diagnose")
    page.locator("#diagnose-upload input[type=file]").set_input_files(str(EXAMPLES / "002.png"))
    expect(page.locator("#diagnose-upload-preview img")).to_be_visible(timeout=30_000)  # before any button
    page.get_by_role("button", name="Diagnose", exact=True).click()
    expect(page.locator("#diagnose-chart .barlayer .point").first).to_be_visible(timeout=60_000)
    expect(page.locator("#diagnose-upload-preview img")).to_be_visible()  # the answer leaves the preview shown
    figure = plotly(page, "#diagnose-chart")
    probability = dict(zip(figure["data"][0]["y"], figure["data"][0]["x"]))
    order = figure["layout"]["yaxis"]["categoryarray"]
    assert sorted(order) == sorted(probability) and len(order) == 12
    assert [probability[label] for label in order] == sorted(probability.values(), reverse=True)
    drawn = page.locator("#diagnose-chart .ytick text").all_text_contents()
    ys = [t.bounding_box()["y"] for t in page.locator("#diagnose-chart .ytick text").all()]
    assert [label for _, label in sorted(zip(ys, drawn))] == order  # top to bottom on screen
    assert [s["x0"] for s in figure["layout"]["shapes"]] == [0.5]  # pairwise: the 0.5 threshold
    save_for_docs(page, "diagnose")

    custom = page.get_by_label("Or your own labels, one per line")
    custom.fill("x" * 300)  # longer than a label may be: Diagnose fails
    expect(page.get_by_text("Label set (not in effect)")).to_be_visible(timeout=10_000)
    fail_and_expect_cleared(page, "Diagnose", page.locator("#diagnose-chart .barlayer .point"))
    custom.fill("")
    expect(page.get_by_text("Label set (not in effect)")).to_have_count(0, timeout=10_000)


def test_retrieve_captions_whole_images_and_error(page) -> None:
    from playwright.sync_api import expect

    open_tab(page, "Retrieve")
    page.locator("#retrieve-collection textarea").fill("phantom:16")
    page.get_by_role("button", name="Search", exact=True).click()
    expect(page.get_by_text("8 of 16 images", exact=False).first).to_be_visible(timeout=120_000)
    expect(page.locator("#retrieve-gallery img")).to_have_count(8, timeout=30_000)
    captions_fit(page, "#retrieve-gallery", wrap=".thumbnail-grid", caption="figcaption")
    assert page.locator("#retrieve-gallery img").first.evaluate("img => img.complete && img.naturalWidth > 0")
    save_for_docs(page, "retrieve")
    page.get_by_label("Text query").fill(" ")
    fail_and_expect_cleared(page, "Search", page.locator("#retrieve-gallery img"))


def test_embeddings_legend_colours_are_distinct_and_below_the_map(page) -> None:
    from playwright.sync_api import expect

    open_tab(page, "Embeddings")
    page.get_by_label("Collection").fill("phantom:16")  # the Retrieve test's index: embedded once
    page.get_by_text("pca", exact=True).click()
    page.get_by_role("button", name="Compute map").click()
    expect(page.locator("#embedding-plot .scatterlayer .point").first).to_be_visible(timeout=120_000)
    traces = plotly(page, "#embedding-plot")["data"]
    colours = [t["color"] for t in traces]
    assert len(traces) > 5 and len(set(colours)) == len(colours), colours
    legend = page.locator("#embedding-plot .legend").bounding_box()
    plot_area = page.locator("#embedding-plot .draglayer .nsewdrag").first.bounding_box()
    assert legend["y"] >= plot_area["y"] + plot_area["height"] - 1  # below the map: a hover label cannot cover it

    page.get_by_label("Highlight a finding").click()
    page.get_by_role("option", name="pleural effusion", exact=True).click()
    expect(page.locator("#embedding-plot .legendtext").filter(has_text="other (not pleural effusion)")).to_have_count(
        1, timeout=30_000)
    highlighted = {t["name"]: t["color"] for t in plotly(page, "#embedding-plot")["data"]}
    assert highlighted["pleural effusion"] not in {c for n, c in highlighted.items() if n != "pleural effusion"}
    save_for_docs(page, "embeddings")


def test_grounding_offers_only_served_methods_and_shows_captions(page) -> None:
    from playwright.sync_api import expect

    open_tab(page, "Grounding")
    methods = page.locator("#grounding-methods")
    expect(methods.get_by_text("Not offered for this model: Attention relevance")).to_be_visible(timeout=30_000)
    expect(methods.get_by_label("Attention relevance")).to_have_count(0)  # the default model's ResNet cannot
    page.locator("#grounding-upload input[type=file]").set_input_files(str(EXAMPLES / "002.png"))
    expect(page.locator("#grounding-upload-preview img")).to_be_visible(timeout=30_000)
    methods.get_by_label("CLIP Surgery").check()
    page.get_by_role("button", name="Show heatmaps").click()
    expect(page.locator("#grounding-gallery img")).to_have_count(2, timeout=60_000)
    captions_fit(page, "#grounding-gallery")
    assert page.locator("#grounding-gallery .caption-label").all_inner_texts() == [
        "pleural effusion · Patch-token similarity", "pleural effusion · CLIP Surgery"]
    save_for_docs(page, "grounding")
    methods.get_by_label("CLIP Surgery").uncheck()
    methods.get_by_label("Patch-token similarity").uncheck()
    fail_and_expect_cleared(page, "Show heatmaps", page.locator("#grounding-gallery img"))


def test_segment_marks_an_implausible_mask_and_keeps_it_out_of_the_seg(page) -> None:
    from playwright.sync_api import expect

    open_tab(page, "Segment")
    page.locator("#segment-upload input[type=file]").set_input_files(str(DICOM_EXAMPLE))
    expect(page.locator("#segment-upload-preview img")).to_be_visible(timeout=30_000)
    page.locator("#segment-method input").click()
    expect(page.get_by_role("option", name="zero-shot:relevance")).to_have_count(0)
    page.get_by_role("option", name="zero-shot:surgery").click()
    page.locator("#segment-phrases textarea").fill("pleural effusion\nnodule")
    page.get_by_role("button", name="Segment", exact=True).click()
    note = page.locator("#segment-note")
    expect(note.get_by_text("nodule", exact=False)).to_be_visible(timeout=60_000)
    expect(note).to_contain_text("left out of the DICOM SEG")
    expect(page.locator("#segment-masks").get_by_text("nodule (implausible)")).to_be_visible()
    expect(page.get_by_text("segmentation.dcm").first).to_be_visible()
    save_for_docs(page, "segment")
    page.locator("#segment-phrases textarea").fill(" ")
    fail_and_expect_cleared(page, "Segment", page.locator("#segment-masks img"))
    expect(note).to_have_text("")


def test_inspect_says_not_recorded_for_a_zero_pixel_spacing(page, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    dataset.PixelSpacing = [0, 0]
    unspaced = tmp_path / "unspaced.dcm"
    dataset.save_as(unspaced)
    open_tab(page, "Inspect image")
    page.locator("#inspect-upload input[type=file]").set_input_files(str(unspaced))
    expect(page.get_by_text('"not recorded"').first).to_be_visible(timeout=30_000)
    save_for_docs(page, "inspect")


def test_training_headers_whole_and_status_follows_the_run(page) -> None:
    from playwright.sync_api import expect

    from medclip_core.train.runs import RunManager

    open_tab(page, "Training")
    page.get_by_label("Run name").fill("ui-tiny")
    page.get_by_label("Max steps (0: by epochs)").fill("1")
    page.get_by_role("button", name="Start run").click()
    expect(page.get_by_text("Run ui-tiny is running.")).to_be_visible(timeout=30_000)
    RunManager().cancel("ui-tiny", wait_s=30)  # ended elsewhere (the API, another page): no click here
    expect(page.get_by_text("Run ui-tiny is cancelled.")).to_be_visible(timeout=15_000)  # the tab's timer
    headers = page.locator("#train-runs th").all()
    assert len(headers) == 12
    for header in headers:
        text = header.inner_text().strip()
        lines = header.locator("span.text").evaluate(
            "e => { const r = document.createRange(); r.selectNodeContents(e);"
            " return new Set(Array.from(r.getClientRects()).map(c => Math.round(c.top))).size; }")
        assert lines <= max(1, len(text.split())), f"header {text!r} broken over {lines} lines"
    save_for_docs(page, "training")
