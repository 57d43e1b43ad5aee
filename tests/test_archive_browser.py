"""The Archive tab in a real browser against a real Orthanc: search, Diagnose, store SR and SEG, whole-series job.

The app runs in this process with MEDCLIP_DICOMWEB_URL pointing at the local Orthanc and writing
allowed; what the app reports as stored is checked independently over QIDO-RS.
"""
from __future__ import annotations

import re
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from medclip_core.archive.client import dataset_bytes
from medclip_core.archive.jobs import JobSpec, create_job, read_state
from tests.orthanc_server import EXAMPLE, free_port, orthanc_missing_reason, rehome, run_orthanc
from tests.test_browser import CHROMIUM, browser_page

pytestmark = [
    pytest.mark.skipif(orthanc_missing_reason() is not None, reason=str(orthanc_missing_reason())),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed"),
]
ACCESSION = "MEDCLIP-WEB-1"
UID_TEXT = r"Series UID ([0-9.]+[0-9])"


@pytest.fixture(scope="module")
def archive_app(tmp_path_factory):
    """Orthanc holding the example chest DICOM (and an SR) in one study, and the app connected to it."""
    folder = tmp_path_factory.mktemp("archive-app")
    with run_orthanc(folder / "orthanc") as server, pytest.MonkeyPatch.context() as env:
        study = generate_uid()
        image = rehome(pydicom.dcmread(EXAMPLE), study, generate_uid(), 1, ACCESSION)
        report = rehome(pydicom.dcmread(get_testdata_file("test-SR.dcm")), study, generate_uid(), 1, ACCESSION)
        other = rehome(pydicom.dcmread(EXAMPLE), generate_uid(), generate_uid(), 1, "MEDCLIP-WEB-2")
        for dataset in (image, report, other):
            server.upload(dataset_bytes(dataset))
        # a job an earlier app process left queued: the app resumes it when it starts
        left_over = create_job(JobSpec("series", ["pleural effusion"], study_uid=study,
                                       series_uid=image.SeriesInstanceUID), root=folder / "jobs")
        env.setenv("MEDCLIP_DICOMWEB_URL", server.url)
        env.setenv("MEDCLIP_DICOMWEB_WRITE", "1")
        env.setenv("MEDCLIP_AUDIT_LOG", str(folder / "audit.jsonl"))
        env.setenv("MEDCLIP_ARCHIVE_JOBS", str(folder / "jobs"))
        from app import build_app

        demo = build_app()
        demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
        try:
            yield {"url": demo.local_url, "server": server, "study": study, "image": image, "other": other,
                   "folder": folder, "left_over": left_over, "demo": demo}
        finally:
            demo.close()


@pytest.fixture(scope="module")
def page(archive_app):
    with browser_page(archive_app["url"]) as page:
        yield page


def test_search_diagnose_and_store_sr_and_seg_in_the_source_study(page, archive_app) -> None:
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Archive").click()
    page.locator("#archive-accession textarea, #archive-accession input").first.fill(ACCESSION)
    page.get_by_role("button", name="Search archive").click()
    expect(page.get_by_text("1 study found.")).to_be_visible(timeout=30_000)
    # the study, its image series and its first image are picked; the image gets a thumbnail
    expect(page.locator("#archive-thumbnails img").first).to_be_visible(timeout=30_000)
    assert "ARCHIVE^TESTPATIENT" not in page.content() and "PID-998877" not in page.content()
    page.get_by_role("button", name="Diagnose archived image").click()
    bars = page.locator("#archive-chart .barlayer .point")
    expect(bars.first).to_be_visible(timeout=60_000)
    assert bars.count() == 12  # the phantom label preset

    page.get_by_role("button", name="Store findings SR").click()
    expect(page.locator("#archive-stored-sr")).to_contain_text("Findings SR: stored", timeout=30_000)
    page.get_by_role("button", name="Store SEG").click()
    expect(page.locator("#archive-stored-seg")).to_contain_text("SEG: stored", timeout=60_000)
    sr_series = re.search(UID_TEXT, page.locator("#archive-stored-sr").inner_text().replace("\n", " "))
    seg_series = re.search(UID_TEXT, page.locator("#archive-stored-seg").inner_text().replace("\n", " "))
    assert sr_series and seg_series
    assert "ARCHIVE^TESTPATIENT" not in page.content() and "PID-998877" not in page.content()

    # independently of the app: QIDO-RS finds both new series in the source study
    answer = requests.get(f"{archive_app['server'].url}/studies/{archive_app['study']}/series", timeout=10)
    answer.raise_for_status()
    modalities = {item["0020000E"]["Value"][0]: item["00080060"]["Value"][0] for item in answer.json()}
    assert modalities[sr_series.group(1)] == "SR" and modalities[seg_series.group(1)] == "SEG"
    assert len(modalities) == 4  # the image, the SR that was there, and the two new series


def test_whole_series_job_shows_its_table_and_csv(page, archive_app) -> None:
    from playwright.sync_api import expect

    page.get_by_text("Whole study or series").click()
    page.get_by_role("button", name="Run job").click()
    status = page.locator("#archive-job-status")
    expect(status).to_contain_text("done: 1 of 1 done (1 scored)", timeout=60_000)
    expect(page.get_by_text(archive_app["image"].SOPInstanceUID).first).to_be_visible()
    csv_files = [path for path in (archive_app["folder"] / "jobs").glob("*/results.csv")
                 if path.parent != archive_app["left_over"]]
    assert len(csv_files) == 1 and archive_app["image"].SOPInstanceUID in csv_files[0].read_text()
    download = page.locator("#archive-job-csv a[href$='.csv']")
    expect(download).to_have_count(1, timeout=10_000)
    assert download.first.get_attribute("href").endswith(f"{csv_files[0].parent.name}.csv")
    # the job left queued before the app started was resumed at start and has finished
    assert read_state(archive_app["left_over"])["status"] == "done"


def test_write_backs_that_run_a_model_share_the_model_call_limit(archive_app) -> None:
    from app import MODEL_CONCURRENCY
    from pages.common import MODEL_CALLS

    groups = {fn.name: (fn.concurrency_id, fn.concurrency_limit) for fn in archive_app["demo"].fns.values()}
    assert groups["store_report"] == groups["store_segmentation"] == (MODEL_CALLS, MODEL_CONCURRENCY)
    assert groups["store_findings"][0] != MODEL_CALLS  # writes an SR of scores already computed


def test_a_refused_write_says_not_stored_with_the_archives_reason(archive_app) -> None:
    from dataclasses import replace

    from medclip_core.archive.client import ArchiveClient
    from medclip_core.archive.writeback import diagnose_instance
    from pages.archive import store_findings, store_report

    image = archive_app["image"]
    result = diagnose_instance(ArchiveClient(), archive_app["study"], image.SeriesInstanceUID, image.SOPInstanceUID,
                               ["pleural effusion"])
    stored = store_report(result, None)
    assert stored.startswith("✅ **Draft report SR: stored**")
    series = re.search(r"Series UID `([0-9.]+)`", stored).group(1)
    assert ArchiveClient().list_instances(archive_app["study"], series)[0].modality == "SR"
    # the archive refuses an object sent to a study it is not in (HTTP 409): not stored, and why
    elsewhere = replace(result, study_uid=archive_app["other"].StudyInstanceUID)
    refused = store_findings(elsewhere, 0.5, None)
    assert refused.startswith("❌ **Findings SR: not stored.**") and "HTTP 409" in refused
    assert "stored**" not in refused


def test_without_an_archive_url_there_is_no_archive_tab(monkeypatch) -> None:
    import gradio as gr

    from app import build_app

    monkeypatch.delenv("MEDCLIP_DICOMWEB_URL", raising=False)
    demo = build_app()
    tabs = {block.label for block in demo.blocks.values() if isinstance(block, gr.Tab)}
    assert "Diagnose" in tabs and "Archive" not in tabs
