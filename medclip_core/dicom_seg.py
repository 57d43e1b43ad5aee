"""DICOM SEG export of phrase masks, referencing the DICOM image they were drawn on (highdicom).

A binary Segmentation object, one segment per phrase, each marked as made by an algorithm (this
software), with the source's series and instance listed as the referenced image. PACS viewers show
it as an overlay on the source. Masks are boolean at the source's resolution (rows x columns); the
source must be a single-frame image (multi-frame sources are refused with a clear message).

Two copies can be written (``deidentify``):

* **de-identified** (the default, for sharing): the patient and study attributes are taken from
  :func:`deidentified_source`, a copy of the source cleaned in the spirit of the DICOM PS3.15
  Basic Application Level Confidentiality Profile for the attributes highdicom copies: patient
  name and ID replaced by a pseudonym, birth date, sex, age, accession number, study date/time/ID,
  referring and other physicians, institution and station removed or emptied, private tags
  dropped, and the study, series, instance and frame-of-reference UIDs replaced by new ones
  (derived with a per-process secret, so the same source gets the same new UIDs in one session and
  a SEG and an SR shared together still match, yet nothing links back to the archive). The object
  says so: Patient Identity Removed ``YES``, De-identification Method and its code (DCM 113100).
* **kept patient module** (for returning the object to the archive the source came from): in the
  source's study, patient and study modules copied by highdicom, source UIDs referenced as they are.
"""
from __future__ import annotations

import copy
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np
from PIL import Image

from medclip_core.errors import ImageLoadError, TaskInputError

if TYPE_CHECKING:
    import pydicom

# A source image: a DICOM file's path or its pydicom Dataset.
DicomSource = Union[str, Path, "pydicom.Dataset"]

_TYPE2_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                   "ReferringPhysicianName", "StudyID", "AccessionNumber")
SOFTWARE_NAME = "MedCLIP Explorer"
SOFTWARE_VERSION = "0.1"

# De-identification (PS3.15 Annex E, Basic Profile, for the patient/study/series/equipment attributes
# highdicom copies into a SEG or SR): emptied (Z, type 2 where highdicom needs them present) ...
DEID_EMPTIED = ("PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID",
                "AccessionNumber")
# ... removed (X) ...
DEID_REMOVED = ("PatientBirthTime", "PatientAge", "PatientSize", "PatientWeight", "PatientAddress",
                "PatientTelephoneNumbers", "PatientMotherBirthName", "OtherPatientIDs", "OtherPatientIDsSequence",
                "OtherPatientNames", "PatientBirthName", "EthnicGroup", "PatientComments", "MedicalRecordLocator",
                "IssuerOfPatientID", "AdditionalPatientHistory", "Occupation", "InstitutionName",
                "InstitutionAddress", "InstitutionalDepartmentName", "StationName", "PerformingPhysicianName",
                "NameOfPhysiciansReadingStudy", "PhysiciansOfRecord", "OperatorsName", "RequestingPhysician",
                "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers", "StudyDescription",
                "SeriesDescription", "RequestAttributesSequence", "ReferencedStudySequence",
                "ReferencedPatientSequence", "AcquisitionDateTime", "SeriesDate", "SeriesTime", "AcquisitionDate",
                "AcquisitionTime", "ContentDate", "ContentTime", "InstanceCreationDate", "InstanceCreationTime",
                "DeviceSerialNumber", "ClinicalTrialSponsorName", "ClinicalTrialSubjectID", "ClinicalTrialSiteName")
# ... and UIDs replaced (U) by new ones, consistent within one session.
DEID_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")
DEID_PATIENT_NAME = "ANONYMOUS^"  # family name only (the caret says so)
DEID_METHOD = f"PS3.15 Basic Profile (patient/study), {SOFTWARE_NAME}"
_UID_SECRET = secrets.token_hex(16)  # per process: new UIDs cannot be recomputed from the source's
SEGMENT_LABEL_CHARS = 64  # the LO value representation's limit
# SNOMED CT concepts for phrases that name one (by key word); other phrases are a generic "Finding".
_PROPERTY_WORDS = (("effusion", "PleuralEffusion"), ("pneumothorax", "Pneumothorax"), ("nodule", "Nodule"),
                   ("mass", "Mass"), ("atelectasis", "Atelectasis"), ("cardiomegaly", "Cardiomegaly"))


def _read_source(source_dicom: DicomSource) -> "pydicom.Dataset":
    import pydicom
    from pydicom.errors import InvalidDicomError

    if isinstance(source_dicom, pydicom.Dataset):
        return source_dicom
    path = Path(source_dicom)
    try:
        return pydicom.dcmread(path)
    except (InvalidDicomError, OSError, ValueError) as exc:
        raise ImageLoadError(f"A DICOM SEG needs a DICOM source image; '{path.name}' could not be read as "
                             f"DICOM ({exc}).") from exc


def _with_type2_attributes(source):
    """A copy of ``source`` fit for highdicom: type 2 patient/study attributes present (empty if absent).

    They are type 2 in the DICOM modules highdicom copies (present, may be empty); phantom and
    anonymised files often omit them altogether. The original dataset is left untouched.
    """
    missing = [k for k in _TYPE2_KEYWORDS if k not in source]
    projection = "ImageOrientationPatient" not in source and "PixelSpacing" in source
    if not missing and not projection:
        return source
    filled = copy.deepcopy(source)
    for keyword in missing:
        setattr(filled, keyword, "")
    if projection:
        # A projection radiograph has no patient-frame geometry; highdicom would copy its Pixel Spacing
        # into a Pixel Measures item without the Slice Thickness that reading it back requires. The SEG
        # keeps its place through the referenced source image (spatial locations preserved) instead.
        del filled.PixelSpacing
    return filled


def _pseudonym(value: str, keyword: str) -> str:
    """A new UID for the ``keyword`` attribute's ``value``, derived from both and the per-process secret."""
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[_UID_SECRET, keyword, value])


def deidentified_source(source: "pydicom.Dataset") -> "pydicom.Dataset":
    """A copy of ``source`` with its identifying patient, study, series and equipment attributes removed,
    emptied or replaced (see the module docstring), marked Patient Identity Removed; the original is
    left untouched. Writing a SEG or SR from it gives the shareable, de-identified copy."""
    clean = copy.deepcopy(source)
    clean.remove_private_tags()
    for keyword in DEID_REMOVED:
        if keyword in clean:
            delattr(clean, keyword)
    for keyword in DEID_EMPTIED:
        setattr(clean, keyword, "")
    for keyword in DEID_UIDS:
        if keyword in clean:
            setattr(clean, keyword, _pseudonym(str(clean[keyword].value), keyword))
    clean.PatientName = DEID_PATIENT_NAME
    clean.PatientID = "ANON-" + _pseudonym(str(source.get("PatientID", "")), "PatientID").rsplit(".", 1)[-1][:12]
    mark_deidentified(clean)
    return clean


def mark_deidentified(dataset: "pydicom.Dataset") -> None:
    """Set Patient Identity Removed ``YES``, the De-identification Method and its code (DCM 113100, Basic
    Application Confidentiality Profile) on ``dataset``: what a de-identified SEG or SR must say."""
    from pydicom.dataset import Dataset

    dataset.PatientIdentityRemoved = "YES"
    dataset.DeidentificationMethod = DEID_METHOD
    method = Dataset()
    method.CodeValue, method.CodingSchemeDesignator = "113100", "DCM"
    method.CodeMeaning = "Basic Application Confidentiality Profile"
    dataset.DeidentificationMethodCodeSequence = [method]


def _property_type(phrase: str):
    from pydicom.sr.codedict import codes

    words = phrase.lower()
    for word, name in _PROPERTY_WORDS:
        code = getattr(codes.SCT, name, None)
        if word in words and code is not None:
            return code
    return codes.SCT.Finding


def _mask_stack(source, masks: dict[str, np.ndarray]) -> np.ndarray:
    """Masks -> (1, rows, columns, segments) bool, drawn up to the source's size when computed on a reduced
    copy; clear errors for other shapes or a multi-frame source."""
    if not masks:
        raise TaskInputError("A DICOM SEG needs at least one mask.")
    if "PixelData" not in source or "Rows" not in source:
        raise ImageLoadError("The source DICOM has no image (no Pixel Data), so a SEG cannot reference it.")
    rows, cols = int(source.Rows), int(source.Columns)
    frames = int(getattr(source, "NumberOfFrames", 1) or 1)
    if frames != 1:
        # highdicom has no frame-to-frame reference for multi-frame projection images: refuse rather
        # than write a SEG that a viewer would place on the wrong frame
        raise TaskInputError(f"DICOM SEG export takes single-frame source images; this one has {frames} frames. "
                             "Save the mask as PNG instead.")
    stack = []
    for phrase, mask in masks.items():
        mask = np.asarray(mask).astype(bool)
        if mask.shape != (rows, cols):
            height, width = mask.shape[:2] if mask.ndim == 2 else (0, 0)
            if not 0 < height <= rows or not 0 < width <= cols or abs(height * cols - width * rows) > max(rows, cols):
                raise TaskInputError(f"The mask for '{phrase}' has shape {mask.shape}, the source image needs "
                                     f"({rows}, {cols}) (rows, columns): masks must be at the source's resolution "
                                     "or a reduced copy of it (the working size of load_image).")
            # a mask at the working size (medclip_core.io.WORKING_MAX_SIDE) drawn up, nearest pixel
            mask = np.asarray(Image.fromarray(mask).resize((cols, rows), Image.Resampling.NEAREST))
        stack.append(mask)
    return np.stack(stack, axis=-1)[None]


def write_dicom_seg(source_dicom: DicomSource, masks: dict[str, np.ndarray], out_path: str | Path,
                    deidentify: bool = True) -> Path:
    """Write a binary DICOM SEG of ``masks`` (phrase -> bool mask) referencing ``source_dicom``.

    ``source_dicom`` is a path or a pydicom Dataset of a single-frame image; masks are (rows,
    columns) at its resolution. ``deidentify`` (default) writes the shareable copy, False keeps the
    source's patient module and UIDs for the archive it came from (see the module docstring).
    Raises ImageLoadError for a non-DICOM source or one without pixel data, TaskInputError for no
    masks, a mask of the wrong size or a multi-frame source. Returns ``out_path``.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    source = _read_source(source_dicom)
    source = _with_type2_attributes(deidentified_source(source) if deidentify else source)
    pixel_array = _mask_stack(source, masks)
    algorithm = hd.AlgorithmIdentificationSequence(
        name=SOFTWARE_NAME, version=SOFTWARE_VERSION, family=codes.cid7162.ArtificialIntelligence)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number, segment_label=phrase[:SEGMENT_LABEL_CHARS],
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=_property_type(phrase),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm)
        for number, phrase in enumerate(masks, start=1)]
    try:
        seg = hd.seg.Segmentation(
            source_images=[source], pixel_array=pixel_array,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
            series_instance_uid=hd.UID(), series_number=int(getattr(source, "SeriesNumber", 0) or 0) + 1000,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer=SOFTWARE_NAME,
            manufacturer_model_name=SOFTWARE_NAME, software_versions=SOFTWARE_VERSION,
            device_serial_number="0", series_description="MedCLIP Explorer segmentation (research only)",
            omit_empty_frames=False)
    except (ValueError, AttributeError, TypeError) as exc:
        raise TaskInputError(f"Could not build a DICOM SEG for this source image: {exc}") from exc
    if deidentify:
        mark_deidentified(seg)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(out_path)
    return out_path
