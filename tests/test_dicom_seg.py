"""DICOM SEG export: a SEG written for the example DICOM reads back with pydicom and highdicom."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medclip_core.dicom_seg import SOFTWARE_NAME, write_dicom_seg
from medclip_core.errors import ImageLoadError, TaskInputError

SOURCE = Path(__file__).resolve().parents[1] / "assets" / "examples" / "phantom_effusion.dcm"


def _masks() -> dict[str, np.ndarray]:
    effusion = np.zeros((224, 224), bool)
    effusion[120:180, 30:90] = True
    nodule = np.zeros((224, 224), bool)
    nodule[60:70, 150:158] = True
    return {"right pleural effusion": effusion, "nodule": nodule}


def test_seg_round_trip_references_the_source(tmp_path: Path) -> None:
    import highdicom as hd

    masks = _masks()
    out = write_dicom_seg(SOURCE, masks, tmp_path / "seg.dcm", deidentify=False)
    source = pydicom.dcmread(SOURCE)
    seg = pydicom.dcmread(out)
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == source.StudyInstanceUID and seg.SeriesInstanceUID != source.SeriesInstanceUID
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == source.SeriesInstanceUID
    assert referenced.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert [s.SegmentLabel for s in seg.SegmentSequence] == list(masks)
    assert all(s.SegmentAlgorithmType == "AUTOMATIC" and s.SegmentAlgorithmName == SOFTWARE_NAME
               for s in seg.SegmentSequence)
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Pleural effusion"
    frames = seg.pixel_array  # one frame per segment
    assert np.array_equal(frames[0] > 0, masks["right pleural effusion"])
    assert np.array_equal(frames[1] > 0, masks["nodule"])

    read = hd.seg.segread(out)
    pixels = read.get_pixels_by_source_instance([source.SOPInstanceUID], combine_segments=False)
    assert pixels.shape == (1, 224, 224, 2)
    assert np.array_equal(pixels[0, ..., 0] > 0, masks["right pleural effusion"])
    assert np.array_equal(pixels[0, ..., 1] > 0, masks["nodule"])


def test_seg_accepts_a_dataset_and_leaves_it_untouched(tmp_path: Path) -> None:
    source = pydicom.dcmread(SOURCE)
    before = copy.deepcopy(source)
    write_dicom_seg(source, {"effusion": _masks()["right pleural effusion"]}, tmp_path / "seg.dcm")
    assert source == before


def test_seg_clear_errors(tmp_path: Path) -> None:
    masks = _masks()
    with pytest.raises(ImageLoadError, match="DICOM source"):
        write_dicom_seg(Path(__file__), masks, tmp_path / "x.dcm")
    with pytest.raises(TaskInputError, match=r"needs \(224, 224\)"):
        write_dicom_seg(SOURCE, {"effusion": np.zeros((100, 224), bool)}, tmp_path / "x.dcm")
    with pytest.raises(TaskInputError, match="at least one mask"):
        write_dicom_seg(SOURCE, {}, tmp_path / "x.dcm")
    multi = pydicom.dcmread(SOURCE)
    multi.NumberOfFrames = 3
    multi.PixelData = multi.PixelData * 3
    with pytest.raises(TaskInputError, match="single-frame source images; this one has 3 frames"):
        write_dicom_seg(multi, masks, tmp_path / "x.dcm")


# ---------------------------------------------------------------------------------------------
# De-identified copy (for sharing) versus kept patient module (for the source's archive)

IDENTIFYING = {"PatientName": "DOE^JANE", "PatientID": "MRN-1234567", "PatientBirthDate": "19610412",
               "PatientSex": "F", "AccessionNumber": "ACC-998877", "ReferringPhysicianName": "HOUSE^GREGORY",
               "InstitutionName": "St Elsewhere Hospital", "StudyDate": "20240102", "StudyID": "S-42",
               "OtherPatientIDs": "OLD-55", "PatientAge": "063Y"}


def _identified_source() -> pydicom.Dataset:
    """The example DICOM with every identifying attribute a real archive image carries, and a private tag."""
    source = pydicom.dcmread(SOURCE)
    for keyword, value in IDENTIFYING.items():
        setattr(source, keyword, value)
    source.private_block(0x0011, "HOSPITAL PACS", create=True).add_new(0x01, "LO", "internal note")
    return source


def _assert_deidentified(written: pydicom.Dataset, source: pydicom.Dataset) -> None:
    for keyword, value in IDENTIFYING.items():
        assert str(written.get(keyword, "")) != value, keyword
    assert written.PatientIdentityRemoved == "YES"
    assert written.DeidentificationMethod and written.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert written.StudyInstanceUID != source.StudyInstanceUID
    assert not any(element.tag.is_private for element in written)
    # no element at any depth (sequences included) spells an identifier or links back to the source's UIDs
    values = [str(element.value) for element in written.iterall() if element.VR not in ("SQ", "OB", "OW")]
    secrets = [v for v in IDENTIFYING.values() if len(v) > 1]
    for value in [*secrets, source.StudyInstanceUID, source.SeriesInstanceUID, source.SOPInstanceUID]:
        assert not any(value in v for v in values), value


def test_seg_deidentified_by_default_and_kept_on_request(tmp_path: Path) -> None:
    source = _identified_source()
    masks = _masks()
    shared = pydicom.dcmread(write_dicom_seg(source, masks, tmp_path / "shared.dcm"))
    _assert_deidentified(shared, source)
    referenced = shared.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID != source.SeriesInstanceUID
    # the masks are unchanged, and a second copy of the same source gets the same new UIDs (a SEG and an SR
    # shared together still point at the same image)
    assert np.array_equal(shared.pixel_array[0] > 0, masks["right pleural effusion"])
    again = pydicom.dcmread(write_dicom_seg(source, masks, tmp_path / "again.dcm"))
    assert again.StudyInstanceUID == shared.StudyInstanceUID

    kept = pydicom.dcmread(write_dicom_seg(source, masks, tmp_path / "kept.dcm", deidentify=False))
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
                    "ReferringPhysicianName", "StudyID"):
        assert str(kept[keyword].value) == IDENTIFYING[keyword], keyword
    assert kept.StudyInstanceUID == source.StudyInstanceUID and "PatientIdentityRemoved" not in kept
    assert kept.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID


def test_structured_reports_deidentified_by_default_and_kept_on_request(tmp_path: Path) -> None:
    from medclip_core.archive.sr import ImageFindings, findings_sr, read_findings_sr, report_sr, report_sr_text

    source = _identified_source()
    sections = {"findings": "Small right pleural effusion.", "impression": "Effusion."}
    documents = {
        "findings": lambda deidentify: findings_sr([ImageFindings(source, ["pleural effusion"], [0.8])], "m", "v",
                                                   deidentify=deidentify),
        "report": lambda deidentify: report_sr(source, sections, "m", "v", deidentify=deidentify)}
    for name, make in documents.items():
        shared, kept = make(True), make(False)
        shared.save_as(tmp_path / f"{name}-shared.dcm")
        kept.save_as(tmp_path / f"{name}-kept.dcm")
        shared, kept = (pydicom.dcmread(tmp_path / f"{name}-{copy_}.dcm") for copy_ in ("shared", "kept"))
        _assert_deidentified(shared, source)
        assert kept.PatientName == IDENTIFYING["PatientName"] and kept.PatientID == IDENTIFYING["PatientID"]
        assert kept.AccessionNumber == IDENTIFYING["AccessionNumber"]
        assert kept.StudyInstanceUID == source.StudyInstanceUID
    # the content survives de-identification
    shared_findings = read_findings_sr(pydicom.dcmread(tmp_path / "findings-shared.dcm"))
    assert [(f.label, round(f.probability, 3)) for f in shared_findings] == [("Pleural effusion", 0.8)]
    assert report_sr_text(pydicom.dcmread(tmp_path / "report-shared.dcm")) == sections
