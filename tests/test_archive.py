"""The archive connection against a real Orthanc (DICOMweb plugin) on a free local port.

Orthanc holds pydicom's bundled test files (CT, MR, NM, multi-frame US, an SR, an RT plan), the
project's example chest DICOM, and a chest study built from it with an accession number, a
second image, an SR and an instance whose pixel data is cut short. Everything goes over DICOMweb.
"""
from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from medclip_core.archive.client import dataset_bytes
from tests.orthanc_server import ACCESSION, EXAMPLE, PATIENT, REJECTED_DESCRIPTION, orthanc_missing_reason, rehome, \
    run_orthanc

pytestmark = pytest.mark.skipif(orthanc_missing_reason() is not None, reason=str(orthanc_missing_reason()))

BUNDLED = ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "examples_ybr_color.dcm", "test-SR.dcm", "rtplan.dcm")
LABELS = ["pleural effusion", "cardiomegaly", "calcified granuloma"]


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """The running archive and what was put in it."""
    with run_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        for name in BUNDLED:
            server.upload(Path(get_testdata_file(name)))
        server.upload(EXAMPLE)
        phantom = pydicom.dcmread(EXAMPLE)
        chest = {"study": generate_uid(), "images": generate_uid(), "reports": generate_uid()}
        first = rehome(phantom, chest["study"], chest["images"], 1)
        second = rehome(phantom, chest["study"], chest["images"], 2)
        second.PixelData = (np.flipud(phantom.pixel_array)).astype(np.uint16).tobytes()
        broken = rehome(phantom, chest["study"], chest["images"], 3)
        broken.PixelData = phantom.PixelData[: len(phantom.PixelData) // 2]  # cut short: does not decode
        report = rehome(pydicom.dcmread(get_testdata_file("test-SR.dcm")), chest["study"], chest["reports"], 1)
        for dataset in (first, second, broken, report):
            server.upload(dataset_bytes(dataset))
        big = {"study": generate_uid(), "series": generate_uid()}
        ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        for number in range(1, 7):
            server.upload(dataset_bytes(rehome(ct, big["study"], big["series"], number, "MEDCLIP-ACC-2")))
        yield {"server": server, "chest": chest, "first": first, "second": second, "broken": broken,
               "report": report, "big": big, "phantom": phantom}


@pytest.fixture()
def client(archive, tmp_path):
    from medclip_core.archive.client import ArchiveClient
    from medclip_core.archive.config import ArchiveSettings

    settings = ArchiveSettings(url=archive["server"].url, timeout_s=10, write_enabled=True,
                               audit_log=tmp_path / "audit.jsonl", max_series_instances=5)
    return ArchiveClient(settings, session_id="test-session")


def test_settings_come_from_the_environment_and_never_show_credentials() -> None:
    from medclip_core.archive.config import ArchiveSettings
    from medclip_core.archive.errors import ArchiveNotConfiguredError

    env = {"MEDCLIP_DICOMWEB_URL": "https://pacs.example.org/dicom-web/", "MEDCLIP_DICOMWEB_USER": "svc",
           "MEDCLIP_DICOMWEB_PASSWORD": "s3cret-pw", "MEDCLIP_DICOMWEB_TIMEOUT": "7.5"}
    settings = ArchiveSettings.from_env(env)
    assert settings.verify is True and settings.write_enabled is False and settings.timeout_s == 7.5
    assert settings.safe_url == "https://pacs.example.org/dicom-web"
    assert "s3cret-pw" not in repr(settings) and "s3cret-pw" not in json.dumps(settings.describe())
    with pytest.raises(ArchiveNotConfiguredError, match="must not contain credentials") as caught:
        ArchiveSettings.from_env({"MEDCLIP_DICOMWEB_URL": "https://svc:s3cret-pw@pacs.example.org/dicom-web"})
    assert "s3cret-pw" not in str(caught.value)
    with pytest.raises(ArchiveNotConfiguredError, match="MEDCLIP_DICOMWEB_URL"):
        ArchiveSettings.from_env({})


def test_search_studies_by_accession_date_modality_and_uid(client, archive) -> None:
    chest = archive["chest"]["study"]
    by_accession = client.search_studies(accession_number=ACCESSION)
    assert [s.study_uid for s in by_accession] == [chest]
    assert by_accession[0].study_date == "20240102" and set(by_accession[0].modalities) == {"CR", "SR"}
    assert by_accession[0].identifiers == {}  # identifiers off screen unless the host allows them
    assert chest in [s.study_uid for s in client.search_studies(study_date="20240101-20240131")]
    assert chest not in [s.study_uid for s in client.search_studies(study_date="20040101-20041231")]
    ct_studies = {s.study_uid for s in client.search_studies(modality="CT")}
    assert pydicom.dcmread(get_testdata_file("CT_small.dcm")).StudyInstanceUID in ct_studies
    assert chest not in ct_studies
    assert [s.study_uid for s in client.search_studies(study_uid=chest)] == [chest]
    from medclip_core.errors import TaskInputError

    with pytest.raises(TaskInputError, match="YYYYMMDD"):
        client.search_studies(study_date="2 Jan 2024")


def test_identifiers_shown_only_when_the_host_allows(archive) -> None:
    from medclip_core.archive.client import ArchiveClient
    from medclip_core.archive.config import ArchiveSettings

    shown = ArchiveClient(ArchiveSettings(url=archive["server"].url, show_identifiers=True))
    study = shown.search_studies(accession_number=ACCESSION)[0]
    assert study.identifiers == {"patient_name": PATIENT, "patient_id": "PID-998877", "accession_number": ACCESSION}


def test_series_and_instances_mark_non_images(client, archive) -> None:
    chest = archive["chest"]
    series = client.list_series(chest["study"])
    assert {s.series_uid: s.modality for s in series} == {chest["images"]: "CR", chest["reports"]: "SR"}
    instances = client.list_instances(chest["study"])
    reasons = {i.sop_uid: i.skip_reason for i in instances}
    assert reasons[archive["report"].SOPInstanceUID] == "not an image (SR)"
    assert reasons[archive["first"].SOPInstanceUID] is None
    images = client.list_instances(chest["study"], chest["images"])
    assert [i.number for i in images] == [1, 2, 3] and all(i.rows == 224 for i in images)


def test_fetched_image_is_the_same_as_the_file_on_disk(client) -> None:
    from medclip_core.io import load_image

    path = get_testdata_file("CT_small.dcm")
    ct = pydicom.dcmread(path)
    image, dataset = client.fetch_image(ct.StudyInstanceUID, ct.SeriesInstanceUID, ct.SOPInstanceUID)
    np.testing.assert_array_equal(image.pixels, load_image(path).pixels)
    assert dataset.SOPInstanceUID == ct.SOPInstanceUID
    # a multi-frame image: the frame rule picks the same frame as reading the file does
    path = get_testdata_file("examples_ybr_color.dcm")
    us = pydicom.dcmread(path, stop_before_pixels=True)
    first, _ = client.fetch_image(us.StudyInstanceUID, us.SeriesInstanceUID, us.SOPInstanceUID, frame="first")
    np.testing.assert_array_equal(first.pixels, load_image(path, frame=0).pixels)
    middle, _ = client.fetch_image(us.StudyInstanceUID, us.SeriesInstanceUID, us.SOPInstanceUID)
    np.testing.assert_array_equal(middle.pixels, load_image(path).pixels)
    assert not np.array_equal(first.pixels, middle.pixels)


def test_findings_sr_round_trip(client, archive) -> None:
    from medclip_core.archive.sr import read_findings_sr
    from medclip_core.archive.writeback import diagnose_instance, push_findings

    chest, first = archive["chest"], archive["first"]
    result = diagnose_instance(client, chest["study"], chest["images"], first.SOPInstanceUID, LABELS)
    stored = push_findings(client, result, threshold=0.5)
    assert stored.study_uid == chest["study"] and stored.series_uid != chest["images"]
    found = client.list_instances(chest["study"], stored.series_uid)
    assert [i.sop_uid for i in found] == [stored.sop_uid] and found[0].modality == "SR"
    read_back = client.fetch_dataset(chest["study"], stored.series_uid, stored.sop_uid)
    assert read_back.PatientID == first.PatientID and read_back.VerificationFlag == "UNVERIFIED"
    findings = read_findings_sr(read_back)
    probabilities = result.diagnosis.scores[result.model]
    assert [f.probability for f in findings] == pytest.approx(probabilities, abs=1e-6)
    assert [f.above_threshold for f in findings] == [p >= 0.5 for p in probabilities]
    assert findings[0].code == ("60046008", "SCT") and findings[1].code == ("287272002", "SCT")
    assert findings[2].code[1] == "99MEDCLIP" and findings[2].label == "calcified granuloma"
    assert {f.source_sop_uid for f in findings} == {first.SOPInstanceUID}
    assert result.diagnosis.ood.in_distribution is True  # a phantom radiograph under the embedded default
    assert {(f.model, f.model_version, f.in_distribution) for f in findings} == {
        (result.model, result.model_version, "Yes")}
    # produced by an algorithm: the observer is a device
    observer = [item for item in read_back.ContentSequence if item.ConceptNameCodeSequence[0].CodeValue == "121005"]
    assert observer and observer[0].ConceptCodeSequence[0].CodeValue == "121007"


def test_report_sr_round_trip(client, archive) -> None:
    from medclip_core.archive.sr import report_sr_text
    from medclip_core.archive.writeback import push_report
    from medclip_core.models import default_model_name
    from medclip_core.tasks.report import draft_report

    chest, second = archive["chest"], archive["second"]
    image, source = client.fetch_image(chest["study"], chest["images"], second.SOPInstanceUID)
    draft = draft_report(image)
    sections = {"findings": draft.section_text("findings"), "impression": draft.section_text("impression")}
    stored = push_report(client, source, sections, default_model_name())
    read_back = client.fetch_dataset(chest["study"], stored.series_uid, stored.sop_uid)
    assert report_sr_text(read_back) == {k: v for k, v in sections.items() if v}
    assert read_back.CurrentRequestedProcedureEvidenceSequence[0].StudyInstanceUID == chest["study"]


def test_seg_round_trip(client, archive) -> None:
    import highdicom as hd

    from medclip_core.archive.writeback import push_segmentation

    chest, first = archive["chest"], archive["first"]
    _, source = client.fetch_image(chest["study"], chest["images"], first.SOPInstanceUID)
    rows, columns = np.mgrid[:224, :224]
    masks = {"left pleural effusion": (rows - 170) ** 2 + (columns - 60) ** 2 < 30 ** 2,
             "nodule": (rows > 40) & (rows < 70) & (columns > 120) & (columns < 160)}
    stored = push_segmentation(client, source, masks, model="test")
    assert [i.sop_uid for i in client.list_instances(chest["study"], stored.series_uid)] == [stored.sop_uid]
    segmentation = hd.seg.Segmentation.from_dataset(
        client.fetch_dataset(chest["study"], stored.series_uid, stored.sop_uid))
    pixels = segmentation.get_pixels_by_source_instance([first.SOPInstanceUID], segment_numbers=[1, 2])[0]
    np.testing.assert_array_equal(pixels[..., 0].astype(bool), masks["left pleural effusion"])
    np.testing.assert_array_equal(pixels[..., 1].astype(bool), masks["nodule"])
    assert segmentation.get_segment_description(1).segment_label == "left pleural effusion"


def test_writing_is_off_unless_the_host_allows(archive) -> None:
    from medclip_core.archive.client import ArchiveClient
    from medclip_core.archive.config import ArchiveSettings
    from medclip_core.archive.errors import ArchiveNotConfiguredError
    from medclip_core.archive.sr import ImageFindings, findings_sr

    reader = ArchiveClient(ArchiveSettings(url=archive["server"].url))
    document = findings_sr([ImageFindings(archive["first"], ["nodule"], [0.7])], "m", "v", deidentify=False)
    with pytest.raises(ArchiveNotConfiguredError, match="MEDCLIP_DICOMWEB_WRITE=1"):
        reader.store(document)
    assert reader.list_instances(archive["chest"]["study"], document.SeriesInstanceUID) == []


def test_stow_rejection_shows_the_archives_reason_and_nothing_is_reported_stored(client, archive) -> None:
    from medclip_core.archive.errors import ArchiveWriteError
    from medclip_core.archive.sr import ImageFindings, findings_sr

    document = findings_sr([ImageFindings(archive["first"], ["nodule"], [0.7])], "m", "v", deidentify=False)
    other_study = archive["big"]["study"]  # the archive refuses an object sent to a study it is not in
    with pytest.raises(ArchiveWriteError, match=r"HTTP 409.*0x0110 processing failure.*Nothing was stored"):
        client.store(document, other_study)
    # an archive policy that accepts the request and drops the object: not found -> not stored
    document.SeriesDescription = REJECTED_DESCRIPTION
    with pytest.raises(ArchiveWriteError, match="cannot be found in the study afterwards"):
        client.store(document)
    assert client.list_instances(archive["chest"]["study"], document.SeriesInstanceUID) == []
    audit = [json.loads(line) for line in client.settings.audit_log.read_text().splitlines()]
    assert {"http-409", "not-found-after-store"} <= {entry["outcome"] for entry in audit}
    assert "store-confirmed" not in {entry["action"] for entry in audit}


def test_unreachable_and_silent_archive_fail_within_the_timeout() -> None:
    from medclip_core.archive.client import ArchiveClient
    from medclip_core.archive.config import ArchiveSettings
    from medclip_core.archive.errors import ArchiveUnavailableError

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    unreachable = ArchiveClient(ArchiveSettings(url=f"http://127.0.0.1:{port}/dicom-web", timeout_s=2))
    with pytest.raises(ArchiveUnavailableError, match="could not be reached"):
        unreachable.search_studies(modality="CR")
    silent = socket.socket()  # accepts connections and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    held: list[socket.socket] = []
    accepting = threading.Thread(target=lambda: held.append(silent.accept()[0]), daemon=True)
    accepting.start()
    try:
        slow = ArchiveClient(ArchiveSettings(url=f"http://127.0.0.1:{silent.getsockname()[1]}/dicom-web",
                                             token="secret-token-123", timeout_s=1))
        start = time.monotonic()
        with pytest.raises(ArchiveUnavailableError, match="did not answer within 1 s") as caught:
            slow.search_studies(modality="CR")
        assert time.monotonic() - start < 5
        assert "secret-token-123" not in str(caught.value)
    finally:
        for connection in held:
            connection.close()
        silent.close()


def test_refused_credentials(tmp_path) -> None:
    from medclip_core.archive.client import ArchiveClient
    from medclip_core.archive.config import ArchiveSettings
    from medclip_core.archive.errors import ArchiveAuthError

    with run_orthanc(tmp_path / "auth", users={"medclip": "right-password"}) as server:
        wrong = ArchiveClient(ArchiveSettings(url=server.url, username="medclip", password="wrong-password"))
        with pytest.raises(ArchiveAuthError, match="refused the configured credentials") as caught:
            wrong.search_studies()
        assert "wrong-password" not in str(caught.value) and "medclip" not in str(caught.value)
        right = ArchiveClient(ArchiveSettings(url=server.url, username="medclip", password="right-password"))
        assert right.search_studies() == []


def test_empty_study_undecodable_instance_and_too_large_series(client, archive) -> None:
    from medclip_core.archive.errors import ArchiveLimitError
    from medclip_core.errors import ImageLoadError

    assert client.list_instances(generate_uid()) == []
    chest = archive["chest"]
    with pytest.raises(ImageLoadError, match="incomplete or corrupt"):
        client.fetch_image(chest["study"], chest["images"], archive["broken"].SOPInstanceUID)
    with pytest.raises(ImageLoadError, match="not an image"):
        client.fetch_image(chest["study"], chest["reports"], archive["report"].SOPInstanceUID)
    with pytest.raises(ArchiveLimitError, match="more than 5 instances"):
        client.list_instances(archive["big"]["study"], archive["big"]["series"])


def test_audit_log_has_uids_and_no_identifiers(client, archive) -> None:
    chest, first = archive["chest"], archive["first"]
    client.search_studies(accession_number=ACCESSION)
    client.fetch_image(chest["study"], chest["images"], first.SOPInstanceUID)
    text = client.settings.audit_log.read_text()
    entries = [json.loads(line) for line in text.splitlines()]
    for forbidden in (ACCESSION, PATIENT, "PID-998877", "ARCHIVE", "TESTPATIENT", "20240102"):
        assert forbidden not in text
    search = next(e for e in entries if e["action"] == "search-studies")
    assert search["criteria"] == ["AccessionNumber"] and search["session_id"] == "test-session"
    fetch = next(e for e in entries if e["action"] == "fetch-instance")
    assert (fetch["study_uid"], fetch["series_uid"], fetch["instance_uid"]) == (
        chest["study"], chest["images"], first.SOPInstanceUID)
    assert all(set(e) <= {"time", "action", "outcome", "session_id", "study_uid", "series_uid", "instance_uid",
                          "model", "result_series_uid", "count", "criteria"} for e in entries)


def _factory(client):
    return lambda: client


def test_whole_study_job_scores_images_skips_non_images_and_stores_one_sr(client, archive, tmp_path) -> None:
    from medclip_core.archive.jobs import JobSpec, create_job, read_rows, run_job
    from medclip_core.archive.sr import read_findings_sr
    from medclip_core.io import load_image
    from medclip_core.models import default_model_name, load_model
    from medclip_core.tasks.zero_shot import zero_shot

    chest = archive["chest"]
    from dataclasses import replace

    from medclip_core.archive.client import ArchiveClient

    # other tests store SR and SEG into this study: a limit above its size
    client = ArchiveClient(replace(client.settings, max_series_instances=50), session_id="test-session")
    job = create_job(JobSpec("study", LABELS, study_uid=chest["study"], write_sr=True), root=tmp_path)
    state = run_job(job, _factory(client))
    total = len(client.list_instances(chest["study"])) - 1  # less the SR the job stored
    assert state["status"] == "done" and state["done"] == state["total"] == total >= 4
    rows = {row.sop_uid: row for row in read_rows(job)}
    assert {row.sop_uid for row in rows.values() if row.status == "scored"} == {
        archive["first"].SOPInstanceUID, archive["second"].SOPInstanceUID}
    assert rows[archive["report"].SOPInstanceUID].status == "skipped"
    assert rows[archive["broken"].SOPInstanceUID].status == "failed"
    assert "incomplete or corrupt" in rows[archive["broken"].SOPInstanceUID].note
    scored = rows[archive["first"].SOPInstanceUID]
    on_disk = zero_shot(load_model(default_model_name()), load_image(EXAMPLE), LABELS)
    assert scored.probabilities == pytest.approx(on_disk.probabilities, abs=1e-5)
    csv_lines = (job / "results.csv").read_text().splitlines()
    assert len(csv_lines) == total + 1 and csv_lines[0].endswith(",".join(LABELS))
    (stored,) = state["stored"]
    sr = client.fetch_dataset(chest["study"], stored["series_uid"], stored["sop_uid"])
    findings = read_findings_sr(sr)
    assert {f.source_sop_uid for f in findings} == {archive["first"].SOPInstanceUID, archive["second"].SOPInstanceUID}
    assert [f.probability for f in findings if f.source_sop_uid == archive["first"].SOPInstanceUID] == \
        pytest.approx(scored.probabilities, abs=1e-6)
    assert scored.in_distribution is on_disk.ood.in_distribution is True  # a phantom under the embedded default
    for row in rows.values():  # each image's own verdict, as its row has it
        if row.status == "scored":
            assert {f.in_distribution for f in findings if f.source_sop_uid == row.sop_uid} == {
                {True: "Yes", False: "No"}[row.in_distribution]}
    assert csv_lines[0].split(",")[7] == "in distribution" and ",yes," in csv_lines[1 + list(rows).index(
        archive["first"].SOPInstanceUID)]


def test_job_survives_a_restart_and_skips_what_is_done(client, archive, tmp_path) -> None:
    from medclip_core.archive.jobs import JobSpec, create_job, read_rows, read_state, resume_unfinished, run_job

    chest = archive["chest"]
    job = create_job(JobSpec("series", LABELS[:1], study_uid=chest["study"], series_uid=chest["images"]),
                     root=tmp_path)

    def crash(done: int, total: int) -> None:
        if done == 2:
            raise SystemExit("the app stopped")

    with pytest.raises(SystemExit):
        run_job(job, _factory(client), progress=crash)
    assert read_state(job)["status"] == "running" and len(read_rows(job)) == 2
    (resumed,) = resume_unfinished(_factory(client), root=tmp_path)
    deadline = time.monotonic() + 60
    while read_state(resumed)["status"] == "running" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert read_state(job)["status"] == "done"
    keys = [row.key for row in read_rows(job)]
    assert len(keys) == len(set(keys)) == 3
    assert "resuming: 2 of 3 already done" in (job / "progress.log").read_text()


def test_folder_job_and_empty_study(client, tmp_path) -> None:
    import shutil

    from medclip_core.archive.jobs import JobSpec, create_job, read_rows, run_job

    folder = tmp_path / "images"
    folder.mkdir()
    shutil.copy(EXAMPLE, folder / "chest.dcm")
    shutil.copy(sorted((EXAMPLE.parent / "phantom").glob("[0-9]*.png"))[0], folder / "chest.png")
    shutil.copy(get_testdata_file("test-SR.dcm"), folder / "report.dcm")
    (folder / "notes.txt").write_text("not an image")
    job = create_job(JobSpec("folder", LABELS, folder=str(folder)), root=tmp_path / "jobs")
    assert run_job(job)["status"] == "done"
    status = {Path(row.key).name: row.status for row in read_rows(job)}
    assert status == {"chest.dcm": "scored", "chest.png": "scored", "report.dcm": "skipped", "notes.txt": "failed"}
    empty = create_job(JobSpec("study", LABELS, study_uid=generate_uid()), root=tmp_path / "jobs")
    state = run_job(empty, _factory(client))
    assert state["status"] == "failed" and "no instances" in state["error"]


def test_cli_search_fetch_and_push(archive, monkeypatch, capsys, tmp_path) -> None:
    from medclip_core.__main__ import main

    monkeypatch.setenv("MEDCLIP_DICOMWEB_URL", archive["server"].url)
    monkeypatch.setenv("MEDCLIP_AUDIT_LOG", str(tmp_path / "audit.jsonl"))
    chest, first = archive["chest"], archive["first"]
    assert main(["archive", "search", "--accession", ACCESSION]) == 0
    (study,) = json.loads(capsys.readouterr().out)
    assert study["study_uid"] == chest["study"] and study["identifiers"] == {}
    assert main(["archive", "fetch", chest["study"], chest["images"], first.SOPInstanceUID,
                 "--out", str(tmp_path / "preview.png")]) == 0
    fetched = json.loads(capsys.readouterr().out)
    assert (fetched["width"], fetched["metadata"]["modality"]) == (224, "CR")
    assert (tmp_path / "preview.png").exists()
    push = ["archive", "push", chest["study"], chest["images"], first.SOPInstanceUID, "--labels", "pleural effusion"]
    assert main(push) == 2 and "MEDCLIP_DICOMWEB_WRITE=1" in capsys.readouterr().err
    monkeypatch.setenv("MEDCLIP_DICOMWEB_WRITE", "1")
    assert main(push) == 0
    stored = json.loads(capsys.readouterr().out)["stored"]["findings_sr"]
    assert main(["archive", "list", chest["study"], "--series", stored["series_uid"]]) == 0
    assert [i["sop_uid"] for i in json.loads(capsys.readouterr().out)] == [stored["sop_uid"]]
    assert ACCESSION not in (tmp_path / "audit.jsonl").read_text()
