"""One archived image end to end: fetch, diagnose, and store the results back into its study.

The write functions build the DICOM object, store it with STOW-RS and return only what QIDO-RS
found in the study afterwards (:meth:`ArchiveClient.store`); any failure raises, so a write that
failed is never reported as stored.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from medclip_core.archive.client import ArchiveClient, StoredObject, frame_index
from medclip_core.archive.sr import ImageFindings, findings_sr, model_version, report_sr
from medclip_core.dicom_seg import write_dicom_seg
from medclip_core.io import MedicalImage
from medclip_core.models import default_model_name, load_model
from medclip_core.tasks.diagnose import Diagnosis, diagnose
from medclip_core.tasks.grounding import check_phrases
from medclip_core.tasks.report import draft_report
from medclip_core.tasks.segmentation import segment

DEFAULT_THRESHOLD = 0.5


@dataclass
class ArchivedDiagnosis:
    """Zero-shot findings of one archived instance (frame: the 0-based frame scored, None for single-frame)."""

    study_uid: str
    series_uid: str
    sop_uid: str
    frame: int | None
    image: MedicalImage
    source: Dataset
    diagnosis: Diagnosis
    model: str
    model_version: str

    def to_dict(self) -> dict[str, Any]:
        return {"study_uid": self.study_uid, "series_uid": self.series_uid, "sop_uid": self.sop_uid,
                "frame": self.frame, "model": self.model, "model_version": self.model_version,
                "image": {k: v for k, v in self.image.metadata.items()}, **self.diagnosis.to_dict()}


def diagnose_instance(client: ArchiveClient, study_uid: str, series_uid: str, sop_uid: str, labels: Sequence[str],
                      model: str | None = None, frame: str | int | None = None, mode: str = "pairwise",
                      negatives: str | None = None) -> ArchivedDiagnosis:
    """Fetch an instance over WADO-RS and run the Diagnose task on it."""
    image, source = client.fetch_image(study_uid, series_uid, sop_uid, frame)
    frames = int(getattr(source, "NumberOfFrames", 1) or 1)
    chosen = frame_index(frame, frames)
    scored_frame = (frames // 2 if chosen is None else chosen) if frames > 1 else None
    name = model or default_model_name()
    diagnosis = diagnose(image, labels, mode=mode, model=name, negatives=negatives)
    client.audit.record("diagnose", session_id=client.session_id, study_uid=study_uid, series_uid=series_uid,
                        instance_uid=sop_uid, model=name)
    return ArchivedDiagnosis(study_uid, series_uid, sop_uid, scored_frame, image, source, diagnosis, name,
                             model_version(load_model(name).card))


def push_findings(client: ArchiveClient, result: ArchivedDiagnosis,
                  threshold: float = DEFAULT_THRESHOLD) -> StoredObject:
    """Store the TID 1500 findings SR of one diagnosed instance in its study (patient module kept: it goes
    back to the archive the source came from)."""
    verdict = result.diagnosis.ood
    findings = ImageFindings(result.source, result.diagnosis.labels, result.diagnosis.scores[result.model],
                             result.frame, verdict.in_distribution if verdict else None)
    document = findings_sr([findings], result.model, result.model_version, threshold, result.diagnosis.mode,
                           deidentify=False)
    return client.store(document, result.study_uid, model=result.model)


def push_report(client: ArchiveClient, source: Dataset, sections: dict[str, str], model: str,
                frame: int | None = None) -> StoredObject:
    """Store a draft report (``{"findings": ..., "impression": ...}``) as a text SR in the source's study
    (patient module kept)."""
    document = report_sr(source, sections, model, model_version(load_model(model).card), frame, deidentify=False)
    return client.store(document, str(source.StudyInstanceUID), model=model)


def push_segmentation(client: ArchiveClient, source: Dataset, masks: dict[str, np.ndarray],
                      model: str | None = None) -> StoredObject:
    """Store a DICOM SEG of ``masks`` (phrase -> bool mask at the source's size) in the source's study
    (patient module kept)."""
    with tempfile.TemporaryDirectory(prefix="medclip-seg-") as folder:
        path = write_dicom_seg(source, masks, Path(folder) / "segmentation.dcm", deidentify=False)
        segmentation = pydicom.dcmread(path)
    return client.store(segmentation, str(source.StudyInstanceUID), model=model)


def push_draft_report(client: ArchiveClient, result: ArchivedDiagnosis) -> StoredObject:
    """Draft a report of a diagnosed instance with its model (:func:`draft_report`) and store it as a text SR."""
    draft = draft_report(result.image, model=result.model)
    sections = {"findings": draft.section_text("findings"), "impression": draft.section_text("impression")}
    return push_report(client, result.source, sections, result.model, result.frame)


def push_segment(client: ArchiveClient, result: ArchivedDiagnosis, phrases: Sequence[str],
                 method: str | None = None) -> StoredObject:
    """Segment ``phrases`` on a diagnosed instance (the Segment task, its default method unless given)
    and store the masks as a DICOM SEG in its study."""
    options = {"method": method} if method else {}
    masks = segment(result.image, check_phrases(phrases), model=result.model, **options)
    return push_segmentation(client, result.source, dict(zip(masks.phrases, masks.masks)), result.model)
