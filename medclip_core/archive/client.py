"""DICOMweb access to the host's archive: QIDO-RS search, WADO-RS retrieve, STOW-RS store.

Built on ``dicomweb-client`` (https://github.com/ImagingDataCommons/dicomweb-client). Every call
is bounded by the host's timeout, retried never (a slow archive answers the user within the
timeout), audited (:mod:`medclip_core.archive.audit`), and every failure becomes one of the
errors of :mod:`medclip_core.archive.errors` with a message free of credentials.

Patient identifiers (name, ID, birth date, accession number) are read from QIDO answers only when
the host allows them on screen (``MEDCLIP_SHOW_IDENTIFIERS=1``); otherwise they are dropped here,
before any result object exists.
"""
from __future__ import annotations

import io
import json
import re
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence, TypeVar

import requests
from PIL import Image
from pydicom.dataset import Dataset

from medclip_core.archive.audit import AuditLog
from medclip_core.archive.config import ArchiveSettings
from medclip_core.archive.errors import (
    ArchiveAuthError,
    ArchiveError,
    ArchiveLimitError,
    ArchiveNotConfiguredError,
    ArchiveNotFoundError,
    ArchiveUnavailableError,
    ArchiveWriteError,
)
from medclip_core.errors import ImageLoadError, TaskInputError
from medclip_core.io import MedicalImage, load_image

T = TypeVar("T")
UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")
DATE_PATTERN = re.compile(r"^(\d{8})?(-(\d{8})?)?$")
# Modalities whose instances hold no image to score (structured reports, presentation states, key
# object selections, our own results, RT objects, documents, waveforms).
NON_IMAGE_MODALITIES = frozenset({"SR", "PR", "KO", "SEG", "RTPLAN", "RTSTRUCT", "RTRECORD", "DOC", "ECG", "REG",
                                  "AU", "HD", "PLAN", "FID"})
# DICOM PS3.18 / PS3.4 failure reasons a STOW-RS answer may carry.
FAILURE_REASONS = {
    0x0110: "processing failure", 0x0112: "no such object instance", 0x0122: "SOP class not supported",
    0x0124: "not authorised", 0xA700: "out of resources", 0xA900: "data set does not match SOP class",
    0xC000: "cannot understand", 0xC122: "transfer syntax not supported", 0xB000: "coercion of data elements",
    0xB006: "elements discarded", 0xB007: "data set does not match SOP class (warning)",
}
IDENTIFIER_TAGS = {"patient_name": "00100010", "patient_id": "00100020", "accession_number": "00080050"}


def _value(item: dict[str, Any], tag: str, default: Any = None) -> Any:
    values = item.get(tag, {}).get("Value")
    if not values:
        return default
    value = values[0]
    return value.get("Alphabetic", "") if isinstance(value, dict) else value


def _values(item: dict[str, Any], tag: str) -> list[Any]:
    return list(item.get(tag, {}).get("Value") or [])


def check_uid(uid: str, what: str = "UID") -> str:
    """A DICOM UID (digits and dots, at most 64 characters), or TaskInputError."""
    uid = (uid or "").strip()
    if not uid or len(uid) > 64 or not UID_PATTERN.match(uid):
        raise TaskInputError(f"'{uid[:70]}' is not a valid {what} (digits and dots, at most 64 characters).")
    return uid


@dataclass
class StudySummary:
    """What a user needs to pick a study; ``identifiers`` is empty unless the host allows them."""

    study_uid: str
    study_date: str
    description: str
    modalities: list[str]
    series_count: int | None
    instance_count: int | None
    identifiers: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SeriesSummary:
    study_uid: str
    series_uid: str
    modality: str
    description: str
    number: int | None
    instance_count: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class InstanceSummary:
    """One instance as QIDO-RS lists it; ``skip_reason`` says why it holds no image to score (or None)."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    modality: str
    number: int | None
    rows: int | None
    columns: int | None
    frames: int

    @property
    def skip_reason(self) -> str | None:
        if self.modality in NON_IMAGE_MODALITIES:
            return f"not an image ({self.modality})"
        if not self.rows:
            return "not an image (no pixel data)"
        return None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "skip_reason": self.skip_reason}


@dataclass
class StoredObject:
    """An object the archive stored and QIDO-RS found again in the study."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def frame_index(rule: str | int | None, frames: int) -> int | None:
    """Which frame of a ``frames``-frame image a rule picks: "middle" (None), "first", "last" or a 0-based index."""
    if rule in (None, "middle"):
        return None
    if rule == "first":
        return 0
    if rule == "last":
        return max(frames - 1, 0)
    try:
        index = int(rule)
    except (TypeError, ValueError) as exc:
        raise TaskInputError(f"Frame rule must be 'middle', 'first', 'last' or a frame number, got {rule!r}.") from exc
    if not 0 <= index < max(frames, 1):
        raise TaskInputError(f"Frame {index} does not exist; this image has {frames} frame(s) (0-based).")
    return index


def dataset_bytes(dataset: Dataset) -> bytes:
    """A dataset as a DICOM Part 10 file in memory."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _failure_text(body: bytes | str) -> str:
    """The archive's reason from a STOW-RS answer: failure reasons and any error comment it gave."""
    try:
        answer = Dataset.from_json(json.loads(body)) if body else Dataset()
    except (ValueError, TypeError):
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
        return " ".join(text.split())[:300]
    reasons = []
    for item in getattr(answer, "FailedSOPSequence", []):
        code = int(getattr(item, "FailureReason", 0) or 0)
        reasons.append(f"0x{code:04X} {FAILURE_REASONS.get(code, 'unknown failure')}")
    comment = str(getattr(answer, "ErrorComment", "") or "")
    return "; ".join(reasons + ([comment] if comment else [])) or "no reason given"


class ArchiveClient:
    """One connection to the host's archive, with its policy, audit log and the caller's session id."""

    def __init__(self, settings: ArchiveSettings | None = None, session_id: str | None = None,
                 audit: AuditLog | None = None) -> None:
        from dicomweb_client import DICOMwebClient

        self.settings = settings or ArchiveSettings.from_env()
        self.session_id = session_id or uuid.uuid4().hex[:12]
        self.audit = audit or AuditLog(self.settings.audit_log)
        http = requests.Session()
        http.verify = self.settings.verify
        http.trust_env = False  # the host's archive address is used as given, not through a user proxy
        if self.settings.token:
            http.headers["Authorization"] = f"Bearer {self.settings.token}"
        elif self.settings.username:
            http.auth = (self.settings.username, self.settings.password)
        self._web = DICOMwebClient(self.settings.safe_url, session=http, timeout=self.settings.timeout_s)
        self._web.set_http_retry_params(retry=False)

    # --- error translation ------------------------------------------------------------------

    def _call(self, action: str, fn: Callable[[], T], audit_fields: dict[str, Any] | None = None) -> T:
        """Run one archive request; audit it; turn every failure into an ArchiveError without credentials."""
        fields = {"session_id": self.session_id, **(audit_fields or {})}
        where = f"The archive at {self.settings.safe_url}"
        try:
            result = fn()
        except requests.exceptions.SSLError as exc:
            self.audit.record(action, "tls-error", **fields)
            raise ArchiveUnavailableError(
                f"{where} could not be reached securely: its TLS certificate was not accepted. The host can "
                "set MEDCLIP_DICOMWEB_CA_BUNDLE to the hospital's CA certificates.") from None
        except requests.exceptions.Timeout:
            self.audit.record(action, "timeout", **fields)
            raise ArchiveUnavailableError(
                f"{where} did not answer within {self.settings.timeout_s:g} s. Try again later, or ask the host "
                "to check the archive (MEDCLIP_DICOMWEB_TIMEOUT sets the limit).") from None
        except requests.exceptions.ConnectionError:
            self.audit.record(action, "unreachable", **fields)
            raise ArchiveUnavailableError(f"{where} could not be reached. Check that it is running and that this "
                                          "machine may connect to it.") from None
        except requests.exceptions.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            if status in (401, 403):
                self.audit.record(action, "auth-refused", **fields)
                raise ArchiveAuthError(f"{where} refused the configured credentials (HTTP {status}). Ask the host "
                                       "to check MEDCLIP_DICOMWEB_USER/PASSWORD or MEDCLIP_DICOMWEB_TOKEN.") from None
            if status == 404:
                self.audit.record(action, "not-found", **fields)
                raise ArchiveNotFoundError(f"{where} has no such object (HTTP 404).") from None
            self.audit.record(action, f"http-{status}", **fields)
            if action.startswith("store"):
                raise ArchiveWriteError(f"{where} refused to store the object (HTTP {status}): "
                                        f"{_failure_text(exc.response.content)}. Nothing was stored.") from None
            raise ArchiveError(f"{where} answered HTTP {status} to a {action} request.") from None
        except requests.exceptions.RequestException as exc:
            self.audit.record(action, "error", **fields)
            raise ArchiveUnavailableError(f"{where} could not be used ({type(exc).__name__}).") from None
        except ValueError as exc:  # dicomweb-client: an answer it could not parse
            self.audit.record(action, "bad-answer", **fields)
            raise ArchiveError(f"{where} sent an answer that could not be read ({exc}).") from None
        self.audit.record(action, count=len(result) if isinstance(result, list) else None, **fields)
        return result

    # --- QIDO-RS ------------------------------------------------------------------------------

    def search_studies(self, accession_number: str | None = None, study_date: str | None = None,
                       modality: str | None = None, study_uid: str | None = None,
                       limit: int | None = None) -> list[StudySummary]:
        """Studies matching every given criterion. ``study_date``: YYYYMMDD or a range YYYYMMDD-YYYYMMDD."""
        filters: dict[str, str] = {}
        if accession_number and accession_number.strip():
            filters["AccessionNumber"] = accession_number.strip()[:16]
        if study_date and study_date.strip():
            date = study_date.strip().replace("/", "").replace(" ", "")
            if not DATE_PATTERN.match(date) or date in ("", "-"):
                raise TaskInputError(f"Study date must be YYYYMMDD or a range YYYYMMDD-YYYYMMDD, got '{study_date}'.")
            filters["StudyDate"] = date
        if modality and modality.strip():
            if not re.fullmatch(r"[A-Za-z]{1,16}", modality.strip()):
                raise TaskInputError(f"Modality must be a DICOM modality code such as CR, DX, CT or MR, "
                                     f"got '{modality[:20]}'.")
            filters["ModalitiesInStudy"] = modality.strip().upper()
        if study_uid and study_uid.strip():
            filters["StudyInstanceUID"] = check_uid(study_uid, "Study Instance UID")
        limit = min(limit or self.settings.max_study_results, self.settings.max_study_results)
        fields = ["StudyDescription", "ModalitiesInStudy", "NumberOfStudyRelatedSeries",
                  "NumberOfStudyRelatedInstances"]
        answers = self._call("search-studies", lambda: self._web.search_for_studies(
            search_filters=filters, fields=fields, limit=limit),
            {"criteria": sorted(filters), "study_uid": filters.get("StudyInstanceUID")})
        return [self._study(item) for item in answers]

    def _study(self, item: dict[str, Any]) -> StudySummary:
        identifiers = ({key: str(_value(item, tag, "") or "") for key, tag in IDENTIFIER_TAGS.items()}
                       if self.settings.show_identifiers else {})
        return StudySummary(str(_value(item, "0020000D", "")), str(_value(item, "00080020", "") or ""),
                            str(_value(item, "00081030", "") or ""), [str(m) for m in _values(item, "00080061")],
                            _value(item, "00201206"), _value(item, "00201208"), identifiers)

    def list_series(self, study_uid: str) -> list[SeriesSummary]:
        study_uid = check_uid(study_uid, "Study Instance UID")
        answers = self._call("list-series", lambda: self._web.search_for_series(
            study_uid, fields=["SeriesDescription", "NumberOfSeriesRelatedInstances"]), {"study_uid": study_uid})
        series = [SeriesSummary(study_uid, str(_value(s, "0020000E", "")), str(_value(s, "00080060", "") or ""),
                                str(_value(s, "0008103E", "") or ""), _value(s, "00200011"), _value(s, "00201209"))
                  for s in answers]
        return sorted(series, key=lambda s: (s.number is None, s.number or 0, s.series_uid))

    def list_instances(self, study_uid: str, series_uid: str | None = None,
                       limit: int | None = None) -> list[InstanceSummary]:
        """The instances of a series (or of a whole study); more than the host's limit is refused."""
        study_uid = check_uid(study_uid, "Study Instance UID")
        series_uid = check_uid(series_uid, "Series Instance UID") if series_uid else None
        limit = limit or self.settings.max_series_instances
        fields = ["SOPClassUID", "Modality", "InstanceNumber", "Rows", "Columns", "NumberOfFrames"]
        answers = self._call("list-instances", lambda: self._web.search_for_instances(
            study_uid, series_uid, fields=fields, limit=limit + 1),
            {"study_uid": study_uid, "series_uid": series_uid})
        if len(answers) > limit:
            self.audit.record("list-instances", "over-limit", session_id=self.session_id, study_uid=study_uid,
                              series_uid=series_uid, count=len(answers))
            raise ArchiveLimitError(
                f"This {'series' if series_uid else 'study'} has more than {limit} instances, the most this app "
                "takes at once. Pick a smaller series (the host sets the limit with MEDCLIP_DICOMWEB_MAX_SERIES).")
        instances = [InstanceSummary(
            study_uid, str(_value(i, "0020000E", series_uid or "")), str(_value(i, "00080018", "")),
            str(_value(i, "00080016", "")), str(_value(i, "00080060", "") or ""), _value(i, "00200013"),
            _value(i, "00280010"), _value(i, "00280011"), int(_value(i, "00280008", 1) or 1)) for i in answers]
        return sorted(instances, key=lambda i: (i.series_uid, i.number is None, i.number or 0, i.sop_uid))

    # --- WADO-RS ------------------------------------------------------------------------------

    def fetch_dataset(self, study_uid: str, series_uid: str, sop_uid: str) -> Dataset:
        """The whole instance (in the transfer syntax the archive holds it in)."""
        uids = {"study_uid": check_uid(study_uid, "Study Instance UID"),
                "series_uid": check_uid(series_uid, "Series Instance UID"),
                "instance_uid": check_uid(sop_uid, "SOP Instance UID")}
        return self._call("fetch-instance", lambda: self._web.retrieve_instance(
            uids["study_uid"], uids["series_uid"], uids["instance_uid"]), uids)

    def fetch_image(self, study_uid: str, series_uid: str, sop_uid: str,
                    frame: str | int | None = None) -> tuple[MedicalImage, Dataset]:
        """The instance decoded by :func:`medclip_core.io.load_image` (``frame``: see :func:`frame_index`)."""
        dataset = self.fetch_dataset(study_uid, series_uid, sop_uid)
        if "PixelData" not in dataset and "FloatPixelData" not in dataset:
            raise ImageLoadError(f"Instance {sop_uid} is not an image ({getattr(dataset, 'Modality', '?')}); "
                                 "pick an image instance.")
        frames = int(getattr(dataset, "NumberOfFrames", 1) or 1)
        image = load_image(dataset_bytes(dataset), frame=frame_index(frame, frames))
        return image, dataset

    def thumbnails(self, instances: Sequence[InstanceSummary], limit: int = 12,
                   size: int = 160) -> list[tuple[Image.Image, InstanceSummary]]:
        """Small previews (default frame) of the first ``limit`` instances that hold an image; an
        instance whose image does not decode gets no preview (diagnosing it says why)."""
        previews = []
        for instance in [i for i in instances if not i.skip_reason][:limit]:
            try:
                image, _ = self.fetch_image(instance.study_uid, instance.series_uid, instance.sop_uid)
            except ImageLoadError:
                continue
            preview = image.to_pil()
            preview.thumbnail((size, size))
            previews.append((preview, instance))
        return previews

    def fetch_metadata(self, study_uid: str, series_uid: str, sop_uid: str) -> Dataset:
        """The instance's attributes without bulk data (enough to reference it from an SR)."""
        uids = {"study_uid": check_uid(study_uid), "series_uid": check_uid(series_uid),
                "instance_uid": check_uid(sop_uid)}
        answer = self._call("fetch-metadata", lambda: self._web.retrieve_instance_metadata(
            uids["study_uid"], uids["series_uid"], uids["instance_uid"]), uids)
        return Dataset.from_json(answer, bulk_data_uri_handler=lambda *_: b"")  # bulk data (pixels) not fetched

    # --- STOW-RS ------------------------------------------------------------------------------

    def store(self, dataset: Dataset, study_uid: str | None = None, model: str | None = None) -> StoredObject:
        """Store one object in ``study_uid`` (default: its own study) with STOW-RS, then find it again by
        QIDO-RS; only then is it stored.

        Needs ``MEDCLIP_DICOMWEB_WRITE=1``. Raises ArchiveWriteError with the archive's reason when
        the archive refuses it, or when it cannot be found afterwards (an archive policy may accept
        and drop an object).
        """
        if not self.settings.write_enabled:
            raise ArchiveNotConfiguredError("Writing to the archive is off; the host allows it with "
                                            "MEDCLIP_DICOMWEB_WRITE=1.")
        uids = {"study_uid": check_uid(study_uid or str(dataset.StudyInstanceUID), "Study Instance UID"), "result_series_uid": str(dataset.SeriesInstanceUID),
                "instance_uid": str(dataset.SOPInstanceUID), "model": model}
        answer = self._call("store", lambda: self._web.store_instances([dataset], uids["study_uid"]), uids)
        if answer is not None and getattr(answer, "FailedSOPSequence", None):
            self.audit.record("store", "refused", session_id=self.session_id, **uids)
            raise ArchiveWriteError(f"The archive refused to store the object: "
                                    f"{_failure_text(json.dumps(answer.to_json_dict()))}. Nothing was stored.")
        found = self._call("verify-store", lambda: self._web.search_for_instances(
            uids["study_uid"], uids["result_series_uid"],
            search_filters={"SOPInstanceUID": uids["instance_uid"]}), uids)
        if not found:
            self.audit.record("store", "not-found-after-store", session_id=self.session_id, **uids)
            raise ArchiveWriteError("The archive answered the store request but the object cannot be found in "
                                    "the study afterwards; it is not reported as stored.")
        self.audit.record("store-confirmed", session_id=self.session_id, **uids)
        return StoredObject(uids["study_uid"], str(_value(found[0], "0020000E", uids["result_series_uid"])),
                            uids["instance_uid"], str(dataset.SOPClassUID))


__all__ = ["ArchiveClient", "InstanceSummary", "SeriesSummary", "StoredObject", "StudySummary", "check_uid",
           "dataset_bytes", "frame_index", "NON_IMAGE_MODALITIES"]
