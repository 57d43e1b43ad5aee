"""The Evaluate tab in a real browser: upload a zipped labelled set, see what was read, run an evaluation in
the background, get its table and downloads; then the same run through the API (/evaluate_status)."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from tests.test_browser import browser_page

EXAMPLES = Path(__file__).resolve().parents[1] / "assets" / "evaluation"


@pytest.fixture(scope="module")
def set_zip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("upload") / "my-set.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.write(EXAMPLES / "labels.csv", "my-set/labels.csv")
        for image in sorted((EXAMPLES / "images").glob("*.png")):
            archive.write(image, f"my-set/images/{image.name}")
    return path


def test_a_zip_uploaded_in_the_browser_is_read_evaluated_and_downloadable(app_url, set_zip) -> None:
    from gradio_client import Client
    from playwright.sync_api import expect

    with browser_page(app_url) as page:
        page.get_by_role("tab", name="Evaluate").click()
        page.locator("#evaluate-upload input[type=file]").set_input_files(str(set_zip))
        page.get_by_role("button", name="Read upload").click()
        summary = page.locator("#evaluate-summary")
        expect(summary).to_contain_text("14 rows, 12 images", timeout=30_000)
        expect(summary).to_contain_text("kidney stone")
        expect(summary).to_contain_text("1 × missing file")
        page.get_by_label("Bootstrap resamples").fill("100")
        page.get_by_role("button", name="Start evaluation").click()
        expect(page.locator("#evaluate-progress")).to_contain_text("finished", timeout=150_000)
        table = page.locator("#evaluate-table")
        expect(table).to_contain_text("too few to trust", timeout=20_000)
        expect(table).to_contain_text("not defined")
        downloads = page.locator("#evaluate-downloads")
        expect(downloads.get_by_role("link")).to_have_count(3)
        links = [downloads.get_by_role("link").nth(i).get_attribute("href") for i in range(3)]
        assert sorted(link.rsplit("/", 1)[1] for link in links) == ["evaluation.csv", "evaluation.html",
                                                                     "evaluation.json"]
        name = page.get_by_role("combobox", name="Evaluation").input_value()

    progress, text, table_value, *_, files = Client(app_url, verbose=False).predict(name, api_name="/evaluate_status")
    assert progress["state"] == "finished" and progress["fraction"] == 1.0
    saved = {Path(f["value"] if isinstance(f, dict) else f).name: f for f in files}
    assert set(saved) == {"evaluation.json", "evaluation.csv", "evaluation.html"}
    json_file = saved["evaluation.json"]
    payload = json.loads(Path(json_file["value"] if isinstance(json_file, dict) else json_file).read_text())
    assert payload["data"]["unmatched"] == ["kidney stone"] and payload["n_images"] == 12
    assert len(table_value["data"]) == len(payload["data"]["findings"])
