"""Fetching and scoring a study over DICOMweb vs the same files read from disk (target: <= 1.3x).

A study of the 9 committed phantom chest images, written as CR DICOM files (the example DICOM's
header, each PNG's pixels), is put into a local Orthanc (DICOMweb plugin) and scored with the
default model's zero-shot task on the Phantom findings labels two ways:

* disk: ``load_image(path)`` + ``zero_shot`` for each file;
* DICOMweb: QIDO-RS list of the study's instances, then WADO-RS ``fetch_image`` + ``zero_shot`` each.

Median of repeated runs after a warm-up. Run from the repository root:
``python -m bench.bench_archive`` (needs the orthanc and orthanc-dicomweb packages).
"""
from __future__ import annotations

import copy
import json
import platform
import tempfile
from pathlib import Path

import numpy as np
import pydicom
import torch
from PIL import Image
from pydicom.uid import generate_uid

from bench.timing import median_seconds
from medclip_core.archive.client import ArchiveClient
from medclip_core.archive.config import ArchiveSettings
from medclip_core.data.findings import LABEL_PRESETS
from medclip_core.io import load_image
from medclip_core.models import default_model_name, load_model
from medclip_core.tasks.zero_shot import zero_shot
from tests.orthanc_server import run_orthanc

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "assets" / "examples"
OUT = ROOT / "bench" / "results" / "archive.json"
REPEATS = 5


def write_study(folder: Path) -> tuple[str, list[Path]]:
    """The phantom PNGs as one CR study of DICOM files in ``folder``."""
    template = pydicom.dcmread(EXAMPLES / "phantom_effusion.dcm")
    study, series = generate_uid(), generate_uid()
    paths = []
    for number, png in enumerate(sorted((EXAMPLES / "phantom").glob("[0-9]*.png")), start=1):
        pixels = np.asarray(Image.open(png).convert("L"), dtype=np.uint16) * 16  # 12-bit like the template
        dataset = copy.deepcopy(template)
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.InstanceNumber = study, series, number
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        dataset.Rows, dataset.Columns = pixels.shape
        dataset.PixelData = pixels.tobytes()
        path = folder / f"{number:03d}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        paths.append(path)
    return study, paths


def main() -> None:
    torch.set_num_threads(1)
    model = load_model(default_model_name())
    labels = list(LABEL_PRESETS["Phantom findings"])
    with tempfile.TemporaryDirectory() as folder:
        study, paths = write_study(Path(folder))
        with run_orthanc(Path(folder) / "orthanc") as server:
            for path in paths:
                server.upload(path)
            client = ArchiveClient(ArchiveSettings(url=server.url, timeout_s=30))

            def from_disk() -> list[list[float]]:
                return [zero_shot(model, load_image(path), labels).probabilities for path in paths]

            def over_dicomweb() -> list[list[float]]:
                return [zero_shot(model, client.fetch_image(i.study_uid, i.series_uid, i.sop_uid)[0],
                                  labels).probabilities for i in client.list_instances(study)]

            np.testing.assert_allclose(from_disk(), over_dicomweb(), atol=1e-6)  # the same work, same answers
            disk = median_seconds(from_disk, REPEATS)
            web = median_seconds(over_dicomweb, REPEATS)
            fetch_only = median_seconds(lambda: [client.fetch_image(i.study_uid, i.series_uid, i.sop_uid)
                                                 for i in client.list_instances(study)], REPEATS)
    result = {
        "what": "fetch + zero-shot score a study: local Orthanc over DICOMweb vs the same DICOM files from disk",
        "images": len(paths), "image_size": "224x224 CR, 16-bit", "model": default_model_name(),
        "labels": len(labels), "repeats": REPEATS, "torch_threads": 1,
        "disk_seconds": round(disk, 4), "dicomweb_seconds": round(web, 4),
        "dicomweb_fetch_only_seconds": round(fetch_only, 4), "ratio": round(web / disk, 3), "target_ratio": 1.3,
        "machine": f"{platform.machine()}, {platform.python_version()}, torch {torch.__version__}, CPU",
        "command": "python -m bench.bench_archive",
    }
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
