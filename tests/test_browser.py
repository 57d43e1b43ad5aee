"""The app in a real browser (Debian's Chromium, headless, reaching nothing but the app)."""
from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists() and not os.environ.get("CI"),
                                reason="Debian's chromium is not installed (bash .ci/run installs it)")
SCREENSHOTS = os.environ.get("MEDCLIP_SCREENSHOTS")  # a folder (docs/) to refresh the README's screenshots in
EXAMPLES = Path(__file__).resolve().parents[1] / "assets" / "examples" / "phantom"


@contextlib.contextmanager
def browser_page(url: str, viewport: tuple[int, int] = (1280, 900)):
    """Headless Debian Chromium on ``url`` at ``viewport`` (width, height), with every host name but
    localhost unresolvable."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1"],
        )
        page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
        page.goto(url)
        try:
            yield page
        finally:
            browser.close()


@pytest.fixture(scope="module")
def page(app_url):
    with browser_page(app_url) as page:
        yield page


def save_for_docs(page, tab: str) -> None:
    """With MEDCLIP_SCREENSHOTS set, a full-page screenshot of the page as it is: screenshot-TAB.png there."""
    if SCREENSHOTS:
        page.screenshot(path=str(Path(SCREENSHOTS) / f"screenshot-{tab}.png"), full_page=True)


def upload_block(page):
    return page.locator("#inspect-upload")


def upload_input(page):
    return upload_block(page).locator("input[type=file]")


def clear_upload(page) -> None:
    """Clear the Inspect upload and wait until the app has handled it: the cleared file's change event
    reached the app and no output is pending any more. Otherwise that event can still be running when
    the next upload's event starts, and finish after it, blanking the new file's outputs."""
    import json

    from playwright.sync_api import expect

    def clears(request) -> bool:
        return "/queue/join" in request.url and json.loads(request.post_data or "{}").get("data", [0])[0] is None

    with page.expect_request(clears, timeout=30_000):
        upload_block(page).get_by_label("Clear").click()
    expect(upload_block(page).get_by_label("Click to upload or drop files")).to_be_visible()
    expect(page.locator("[data-testid=status-tracker]:not(.hide)")).to_have_count(0, timeout=30_000)


def test_upload_dicom_shows_windowed_image_and_safe_metadata(page, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    expect(page.get_by_text("MedCLIP Explorer").first).to_be_visible(timeout=30_000)
    expect(page.get_by_text("not for diagnosis", exact=False).first).to_be_visible()
    page.get_by_role("tab", name="Inspect image").click()
    dicom = tmp_path / "ct.dcm"
    shutil.copy(get_testdata_file("CT_small.dcm"), dicom)
    upload_input(page).set_input_files(str(dicom))
    expect(page.get_by_text('"CT"').first).to_be_visible(timeout=30_000)
    expect(page.locator("img[alt]").or_(page.locator("img")).first).to_be_visible()
    assert "PatientName" not in page.content() and "CompressedSamples" not in page.content()
    save_for_docs(page, "inspect")


def test_bad_upload_shows_an_error_and_the_app_keeps_working(page, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Inspect image").click()
    bad = tmp_path / "report.png"
    bad.write_text("not an image at all")
    clear_upload(page)
    upload_input(page).set_input_files(str(bad))
    expect(page.get_by_text("is not an image this app can read").first).to_be_visible(timeout=30_000)
    good = tmp_path / "mr.dcm"
    shutil.copy(get_testdata_file("MR_small.dcm"), good)
    clear_upload(page)
    upload_input(page).set_input_files(str(good))
    expect(page.get_by_text('"MR"').first).to_be_visible(timeout=30_000)


def test_embedding_map_shows_the_hovered_points_thumbnail(page) -> None:
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Embeddings").click()
    page.get_by_label("Collection").fill("phantom:12")
    page.get_by_text("pca", exact=True).click()
    page.get_by_role("button", name="Compute map").click()
    expect(page.get_by_text("Modality gap", exact=False).first).to_be_visible(timeout=120_000)
    point = page.locator("#embedding-plot .scatterlayer .point").first
    expect(point).to_be_visible(timeout=30_000)
    point.hover(force=True)
    expect(page.locator("#embedding-hover img")).to_have_attribute("src", re.compile(r"^data:image/png;base64,"),
                                                                    timeout=10_000)
    save_for_docs(page, "embeddings")


def test_retrieve_tab_shows_what_a_text_query_finds(page) -> None:
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Retrieve").click()
    page.locator("#retrieve-collection textarea").fill("phantom:100")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_text("8 of 100 images", exact=False).first).to_be_visible(timeout=120_000)
    expect(page.get_by_text("Precision@8 against the labels", exact=False).first).to_be_visible()
    thumbnails = page.locator("#retrieve-gallery img")
    expect(thumbnails.first).to_be_visible(timeout=30_000)
    assert thumbnails.count() == 8
    save_for_docs(page, "retrieve")


def test_diagnose_tab_draws_the_chart_of_an_uploaded_image(page, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Diagnose").click()
    page.locator("#diagnose-upload input[type=file]").set_input_files(str(EXAMPLES / "002.png"))
    expect(page.locator("#diagnose-upload-preview img")).to_be_visible(timeout=30_000)  # the upload has arrived
    page.get_by_role("button", name="Diagnose", exact=True).click()
    bars = page.locator("#diagnose-chart .barlayer .point")
    expect(bars.first).to_be_visible(timeout=60_000)
    assert bars.count() == 12                                  # one bar per label of the phantom preset
    expect(page.locator("#diagnose-chart").get_by_text("pleural effusion").first).to_be_visible()
    shot = tmp_path / "diagnose.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 50_000
    save_for_docs(page, "diagnose")
