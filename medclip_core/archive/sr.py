"""DICOM Structured Reports of the app's results, built with highdicom (https://github.com/ImagingDataCommons/highdicom).

* :func:`findings_sr`: a TID 1500 *Measurement Report* (Comprehensive 3D SR). One image measurement
  group per (source image, finding): the finding as a coded concept (SNOMED CT where the code
  dictionary of pydicom has one, else a project code ``99MEDCLIP`` with the finding as its meaning),
  its probability (DCM 122157, unitless), the decision threshold (DCM 122411), whether the
  probability reached it, and whether the input was within what the model was trained on: the
  image's out-of-distribution verdict (:mod:`medclip_core.models.ood`) as SNOMED CT Yes / No, or
  *not assessed* (:data:`IN_DISTRIBUTION_NOT_ASSESSED`) when the model has no reference, rather than
  guessed. Each group names the algorithm (model
  name and version) and references its source image; the observer is a device (this software),
  which marks the document as produced by an algorithm.
* :func:`report_sr`: the draft report as a text SR (Comprehensive SR: a container with FINDINGS and
  IMPRESSION text items and the source image), observer again the device.
* :func:`read_findings_sr`: the findings back from such an SR (round trip, display).

Both documents are new series, unverified and incomplete: a clinician must review them. With
``deidentify`` (the default, for sharing) they are written from
:func:`~medclip_core.dicom_seg.deidentified_source` copies of the sources: no patient name, ID,
birth date, accession number, institution or physician of the source, new study/series/instance
UIDs (the same ones a de-identified SEG of the same image gets in this session), Patient Identity
Removed ``YES``. With ``deidentify=False`` (write-back to the archive the source came from) they go
into the source's study, patient and study modules copied by highdicom from the source.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from typing import Any, Sequence

from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from medclip_core.dicom_seg import deidentified_source, mark_deidentified
from medclip_core.errors import TaskInputError

SOFTWARE_NAME = "MedCLIP Explorer"
SOFTWARE_VERSION = "0.1"
# Device observer UID of this software (a fixed UID under the pydicom root: same software, same UID).
DEVICE_UID = "1.2.826.0.1.3680043.8.498.1900116"
PROJECT_SCHEME = "99MEDCLIP"
ABOVE_THRESHOLD = Code("ABOVE_THRESHOLD", PROJECT_SCHEME, "Probability at or above decision threshold")
IN_DISTRIBUTION = Code("IN_DISTRIBUTION", PROJECT_SCHEME, "Input within the model's training distribution")
IN_DISTRIBUTION_NOT_ASSESSED = Code("NOT_ASSESSED", PROJECT_SCHEME, "Not assessed")
UNITLESS = Code("1", "UCUM", "no units")
# Finding labels -> pydicom code dictionary names (SNOMED CT); other labels get a project code.
SNOMED_FINDINGS = {"cardiomegaly": "Cardiomegaly", "pleural effusion": "PleuralEffusion",
                   "pneumothorax": "Pneumothorax", "nodule": "Nodule", "edema": "PulmonaryEdema",
                   "normal": "Normal", "no finding": "Normal", "mass": "Mass",
                   "lung lesion": "CoinLesionOfLung"}
FINDINGS_SERIES_NUMBER = 9101
REPORT_SERIES_NUMBER = 9102


def finding_code(label: str) -> Code:
    """The coded concept of a finding label: SNOMED CT where one exists, else ``99MEDCLIP`` with the label as meaning."""
    from pydicom.sr.codedict import codes

    name = SNOMED_FINDINGS.get(label.lower())
    code = getattr(codes.SCT, name, None) if name else None
    if code is not None:
        return code
    slug = "".join(ch if ch.isalnum() else "_" for ch in label.upper()).strip("_")
    value = slug if len(slug) <= 16 else f"{slug[:10]}_{hashlib.sha1(label.encode()).hexdigest()[:5]}"
    return Code(value, PROJECT_SCHEME, label[:64])


def model_version(card: Any) -> str:
    """A version string for a model: 'card-' + 12 hex digits of its card (weights' source, calibration, metrics)."""
    payload = json.dumps(card.to_dict() if hasattr(card, "to_dict") else card, sort_keys=True, default=str)
    return f"card-{hashlib.sha256(payload.encode()).hexdigest()[:12]}"


@dataclass(frozen=True)
class ImageFindings:
    """The zero-shot findings of one source image: ``probabilities[i]`` belongs to ``labels[i]``."""

    source: Dataset
    labels: Sequence[str]
    probabilities: Sequence[float]
    frame: int | None = None  # 0-based frame scored in a multi-frame source
    in_distribution: bool | None = None  # the image's OOD verdict; None: not assessed


@dataclass(frozen=True)
class SrFinding:
    """One finding as read back from a findings SR."""

    source_sop_uid: str
    label: str
    code: tuple[str, str]
    probability: float
    threshold: float
    above_threshold: bool
    in_distribution: str
    model: str
    model_version: str


# What highdicom copies from an SR's evidence: patient and study modules, and the reference itself.
EVIDENCE_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                     "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber", "SeriesInstanceUID",
                     "SOPClassUID", "SOPInstanceUID", "Modality", "SpecificCharacterSet")


def evidence_header(source: Dataset) -> Dataset:
    """The attributes of ``source`` an SR references and inherits (no pixel data); absent type 2 ones empty."""
    header = Dataset()
    for keyword in EVIDENCE_KEYWORDS:
        if keyword in source:
            setattr(header, keyword, source[keyword].value)
        elif keyword not in ("Modality", "SpecificCharacterSet"):
            setattr(header, keyword, "")
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID"):
        if not header.get(keyword):
            raise TaskInputError(f"The source has no {keyword}; a structured report cannot reference it.")
    return header


def _observation_context():
    import highdicom as hd

    device = hd.sr.DeviceObserverIdentifyingAttributes(uid=DEVICE_UID, name=SOFTWARE_NAME,
                                                        manufacturer_name=SOFTWARE_NAME, model_name=SOFTWARE_NAME)
    from pydicom.sr.codedict import codes

    return hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device))


def _check_sources(sources: Sequence[Dataset]) -> None:
    if not sources:
        raise TaskInputError("A structured report needs at least one source image.")
    studies = {str(s.StudyInstanceUID) for s in sources}
    if len(studies) != 1:
        raise TaskInputError("A structured report covers one study; the sources come from "
                             f"{len(studies)} studies.")


def findings_sr(images: Sequence[ImageFindings], model_name: str, version: str, threshold: float = 0.5,
                mode: str = "pairwise", deidentify: bool = True) -> Dataset:
    """A TID 1500 measurement report of zero-shot findings for images of one study (see module doc);
    ``deidentify=False`` keeps the sources' patient module, for the archive they came from."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    _check_sources([i.source for i in images])
    if deidentify:
        images = [replace(image, source=deidentified_source(image.source)) for image in images]
    headers = {str(i.source.SOPInstanceUID): evidence_header(i.source) for i in images}
    if not 0.0 < threshold < 1.0:
        raise TaskInputError(f"The decision threshold must be between 0 and 1, got {threshold}.")
    algorithm = hd.sr.AlgorithmIdentification(name=model_name[:64], version=version[:64],
                                              parameters=[f"mode={mode}", f"threshold={threshold:g}"])
    groups = []
    for image in images:
        if len(image.labels) != len(image.probabilities) or not image.labels:
            raise TaskInputError("Each image needs one probability per finding label.")
        frames = None if image.frame is None else [image.frame + 1]
        source = hd.sr.SourceImageForMeasurementGroup(
            referenced_sop_class_uid=image.source.SOPClassUID, referenced_sop_instance_uid=image.source.SOPInstanceUID,
            referenced_frame_numbers=frames)
        inside = {True: codes.SCT.Yes, False: codes.SCT.No}.get(image.in_distribution, IN_DISTRIBUTION_NOT_ASSESSED)
        for number, (label, probability) in enumerate(zip(image.labels, image.probabilities), start=1):
            measurements = [
                hd.sr.Measurement(name=codes.DCM.Probability, value=round(float(probability), 6), unit=UNITLESS,
                                  algorithm_id=algorithm),
                hd.sr.Measurement(name=codes.DCM.ThresholdValue, value=float(threshold), unit=UNITLESS)]
            evaluations = [
                hd.sr.QualitativeEvaluation(ABOVE_THRESHOLD, codes.SCT.Yes if probability >= threshold else codes.SCT.No),
                hd.sr.QualitativeEvaluation(IN_DISTRIBUTION, inside)]
            groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=hd.UID(), identifier=f"{label[:40]} / image {image.source.SOPInstanceUID}"[:64]),
                finding_type=finding_code(label), algorithm_id=algorithm, measurements=measurements,
                qualitative_evaluations=evaluations, source_images=[source]))
    report = hd.sr.MeasurementReport(observation_context=_observation_context(),
                                     procedure_reported=codes.SCT.ImagingProcedure, imaging_measurements=groups)
    first = images[0].source
    document = hd.sr.Comprehensive3DSR(
        evidence=list(headers.values()), content=report, series_instance_uid=hd.UID(),
        series_number=FINDINGS_SERIES_NUMBER, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer=SOFTWARE_NAME, series_description=f"{SOFTWARE_NAME} zero-shot findings (research only)"[:64],
        is_complete=False, is_final=False, is_verified=False,
        institution_name=getattr(first, "InstitutionName", None) or None)
    if deidentify:
        mark_deidentified(document)
    return document


def report_sr(source: Dataset, text_sections: dict[str, str], model_name: str, version: str,
              frame: int | None = None, deidentify: bool = True) -> Dataset:
    """A text SR holding a draft report (``{"findings": ..., "impression": ...}``) about ``source``;
    ``deidentify=False`` keeps the source's patient module, for the archive it came from."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    _check_sources([source])
    if deidentify:
        source = deidentified_source(source)
    header = evidence_header(source)
    sections = {name: " ".join(text.split()) for name, text in text_sections.items() if text and text.strip()}
    if not sections:
        raise TaskInputError("The draft report is empty; nothing to store.")
    names = {"findings": codes.DCM.Findings, "impression": codes.DCM.Impression}
    items = list(_observation_context())
    items.append(hd.sr.TextContentItem(
        name=codes.DCM.AlgorithmName, value=f"{model_name} ({version}), draft for review, research only"[:1024],
        relationship_type=hd.sr.RelationshipTypeValues.HAS_OBS_CONTEXT))
    frames = None if frame is None else [frame + 1]
    items.append(hd.sr.ImageContentItem(
        name=codes.DCM.SourceImage, referenced_sop_class_uid=source.SOPClassUID,
        referenced_sop_instance_uid=source.SOPInstanceUID, referenced_frame_numbers=frames,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    for name, text in sections.items():
        items.append(hd.sr.TextContentItem(name=names.get(name, codes.DCM.Findings), value=text[:10240],
                                           relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    root = hd.sr.ContainerContentItem(name=codes.LN.DiagnosticImagingReport, template_id="2000")
    root.ContentSequence = hd.sr.ContentSequence(items)
    document = hd.sr.ComprehensiveSR(
        evidence=[header], content=root, series_instance_uid=hd.UID(), series_number=REPORT_SERIES_NUMBER,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer=SOFTWARE_NAME,
        series_description=f"{SOFTWARE_NAME} draft report (research only)"[:64],
        is_complete=False, is_final=False, is_verified=False)
    if deidentify:
        mark_deidentified(document)
    return document


def read_findings_sr(dataset: Dataset) -> list[SrFinding]:
    """The findings of a :func:`findings_sr` document (any TID 1500 report with the same items)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    document = dataset if isinstance(dataset, hd.sr.Comprehensive3DSR) else hd.sr.Comprehensive3DSR.from_dataset(dataset)
    findings = []
    for group in document.content.get_image_measurement_groups():
        probability = group.get_measurements(name=codes.DCM.Probability)
        threshold = group.get_measurements(name=codes.DCM.ThresholdValue)
        above = group.get_qualitative_evaluations(name=ABOVE_THRESHOLD)
        inside = group.get_qualitative_evaluations(name=IN_DISTRIBUTION)
        if not (probability and threshold and above and inside):
            continue
        algorithm = _algorithm(probability[0])
        finding = group.finding_type
        findings.append(SrFinding(
            group.source_images[0].referenced_sop_instance_uid, finding.meaning,
            (finding.value, finding.scheme_designator), float(probability[0].value), float(threshold[0].value),
            above[0].value == codes.SCT.Yes, inside[0].value.meaning,
            algorithm.get("name", ""), algorithm.get("version", "")))
    return findings


def _algorithm(measurement: Dataset) -> dict[str, str]:
    """Algorithm name and version from the items of a measurement (TID 4019)."""
    from pydicom.sr.codedict import codes

    wanted = {codes.DCM.AlgorithmName.value: "name", codes.DCM.AlgorithmVersion.value: "version"}
    found = {}
    for item in getattr(measurement[0], "ContentSequence", []):
        key = wanted.get(item.ConceptNameCodeSequence[0].CodeValue)
        if key and getattr(item, "ValueType", "") == "TEXT":
            found[key] = str(item.TextValue)
    return found


def report_sr_text(dataset: Dataset) -> dict[str, str]:
    """The text sections (findings, impression) of a :func:`report_sr` document."""
    from pydicom.sr.codedict import codes

    sections = {}
    for item in getattr(dataset, "ContentSequence", []):
        if getattr(item, "ValueType", "") == "TEXT" and item.RelationshipType == "CONTAINS":
            concept = item.ConceptNameCodeSequence[0]
            key = {codes.DCM.Findings.value: "findings", codes.DCM.Impression.value: "impression"}.get(
                concept.CodeValue, concept.CodeMeaning)
            sections[key] = str(item.TextValue)
    return sections
