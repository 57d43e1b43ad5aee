"""A real archive for the tests: Orthanc with its DICOMweb plugin, on a free local port.

Started from a temporary configuration and storage folder (no system service, DICOM port off,
remote access refused), stopped when the fixture ends. Test files reach it only over DICOMweb.
"""
from __future__ import annotations

import copy
import json
import shutil
import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pydicom
import requests
from pydicom.uid import generate_uid

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc")
START_SECONDS = 30.0
EXAMPLE = Path(__file__).resolve().parents[1] / "assets" / "examples" / "phantom_effusion.dcm"
ACCESSION = "MEDCLIP-ACC-1"
PATIENT = "ARCHIVE^TESTPATIENT"
REJECTED_DESCRIPTION = "REJECTED BY ARCHIVE POLICY"
# An archive-side policy (Orthanc's Lua filter): instances whose series description is
# REJECTED_DESCRIPTION are refused, as a PACS refuses objects it does not accept.
REJECT_FILTER = f"""
function ReceivedInstanceFilter(dicom, origin, info)
  return dicom.SeriesDescription ~= '{REJECTED_DESCRIPTION}'
end
"""


def dicomweb_plugin() -> Path | None:
    """The DICOMweb plugin of the Debian package ``orthanc-dicomweb``, or None when it is not installed."""
    for folder in DICOMWEB_PLUGIN_DIRS:
        found = sorted(Path(folder).glob("libOrthancDicomWeb.so*")) if Path(folder).is_dir() else []
        if found:
            return found[0]
    return None


def orthanc_missing_reason() -> str | None:
    """Why Orthanc cannot run here (for pytest.skip), or None when it can."""
    if not Path(ORTHANC).exists():
        return "the Orthanc binary is not installed (bash .ci/run installs the orthanc packages)"
    if dicomweb_plugin() is None:
        return "the orthanc-dicomweb plugin is not installed (bash .ci/run installs it)"
    return None


def rehome(dataset: pydicom.Dataset, study: str, series: str, number: int,
           accession: str = ACCESSION) -> pydicom.Dataset:
    """A copy of ``dataset`` as instance ``number`` of ``series`` in ``study``, with a new SOP Instance
    UID, an accession number, a study date and a test patient (what the archive tests search by)."""
    copied = copy.deepcopy(dataset)
    copied.StudyInstanceUID, copied.SeriesInstanceUID = study, series
    copied.SOPInstanceUID = copied.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    copied.InstanceNumber = number
    copied.AccessionNumber, copied.StudyDate, copied.PatientName, copied.PatientID = (
        accession, "20240102", PATIENT, "PID-998877")
    return copied


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class OrthancServer:
    """A running Orthanc: ``url`` is its DICOMweb root; ``rest`` its native REST root (uploads)."""

    url: str
    rest: str
    auth: tuple[str, str] | None

    def upload(self, path_or_bytes: Path | bytes) -> str:
        """Store one DICOM file through Orthanc's REST API; returns Orthanc's instance id."""
        data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
        response = requests.post(f"{self.rest}/instances", data=data, auth=self.auth, timeout=30)
        response.raise_for_status()
        return response.json()["ID"]


@contextmanager
def run_orthanc(folder: Path, users: dict[str, str] | None = None) -> Iterator[OrthancServer]:
    """Run Orthanc with its storage in ``folder``; ``users`` turns HTTP basic authentication on."""
    port = free_port()
    config = {
        "Name": "medclip-test-archive",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "HttpPort": port,
        "RemoteAccessAllowed": False,   # only this machine may talk to it
        "DicomServerEnabled": False,    # no DICOM network port: DICOMweb only
        "DicomPort": free_port(),       # versions without DicomServerEnabled listen here, unused
        "AuthenticationEnabled": bool(users),
        "RegisteredUsers": users or {},
        "HttpTimeout": 10,
        "StableAge": 1,
        "Plugins": [str(dicomweb_plugin())],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False, "Host": f"127.0.0.1:{port}",
                     "Ssl": False},
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "policy.lua").write_text(REJECT_FILTER)
    config["LuaScripts"] = [str(folder / "policy.lua")]
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = open(folder / "orthanc.log", "wb")
    process = subprocess.Popen([ORTHANC, str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    auth = next(iter(users.items())) if users else None
    server = OrthancServer(f"http://127.0.0.1:{port}/dicom-web", f"http://127.0.0.1:{port}", auth)
    try:
        deadline = time.monotonic() + START_SECONDS
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"Orthanc exited at start: {(folder / 'orthanc.log').read_text()[-2000:]}")
            try:
                if requests.get(f"{server.rest}/system", auth=auth, timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("Orthanc did not answer within 30 s")
            time.sleep(0.1)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
