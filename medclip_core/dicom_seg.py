"""DICOM SEG export of phrase masks, referencing the DICOM image they were drawn on (highdicom).

A binary Segmentation object, one segment per phrase, each marked as made by an algorithm (this
software), in the source's study (same Study Instance UID, patient module copied by highdicom)
with the source's series and instance listed as the referenced image. PACS viewers show it as an
overlay on the source. Masks are boolean at the source's resolution (rows x columns); the source
must be a single-frame image (multi-frame sources are refused with a clear message).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np

from medclip_core.errors import ImageLoadError, TaskInputError

if TYPE_CHECKING:
    import pydicom

# A source image: a DICOM file's path or its pydicom Dataset.
DicomSource = Union[str, Path, "pydicom.Dataset"]

_TYPE2_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                   "ReferringPhysicianName", "StudyID", "AccessionNumber")
SOFTWARE_NAME = "MedCLIP Explorer"
SOFTWARE_VERSION = "0.1"
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


def _property_type(phrase: str):
    from pydicom.sr.codedict import codes

    words = phrase.lower()
    for word, name in _PROPERTY_WORDS:
        code = getattr(codes.SCT, name, None)
        if word in words and code is not None:
            return code
    return codes.SCT.Finding


def _mask_stack(source, masks: dict[str, np.ndarray]) -> np.ndarray:
    """Masks -> (1, rows, columns, segments) bool; clear errors for wrong shapes or a multi-frame source."""
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
        mask = np.asarray(mask)
        if mask.shape != (rows, cols):
            raise TaskInputError(f"The mask for '{phrase}' has shape {mask.shape}, the source image needs "
                                 f"({rows}, {cols}) (rows, columns); masks must be at the source's resolution.")
        stack.append(mask.astype(bool))
    return np.stack(stack, axis=-1)[None]


def write_dicom_seg(source_dicom: DicomSource, masks: dict[str, np.ndarray], out_path: str | Path) -> Path:
    """Write a binary DICOM SEG of ``masks`` (phrase -> bool mask) referencing ``source_dicom``.

    ``source_dicom`` is a path or a pydicom Dataset of a single-frame image; masks are (rows,
    columns) at its resolution. Raises ImageLoadError for a non-DICOM source or one without pixel
    data, TaskInputError for no masks, a mask of the wrong size or a multi-frame source.
    Returns ``out_path``.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    source = _with_type2_attributes(_read_source(source_dicom))
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
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(out_path)
    return out_path
