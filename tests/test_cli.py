"""The CLI on good and bad input: exit codes, JSON on stdout, one-line errors on stderr."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.data import get_testdata_file

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "medclip_core", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180)


def test_models_lists_every_registry_model_as_json() -> None:
    result = run_cli("models")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    names = {row["name"] for row in rows}
    assert {"medclip-phantom", "biomedclip", "plip", "medsiglip-448"} <= names
    biomed = next(row for row in rows if row["name"] == "biomedclip")
    assert biomed["availability"] in {"cached", "unavailable"}  # offline: never 'downloadable'
    assert biomed["card"]["licence"] == "MIT"


def test_inspect_png_writes_preview(tmp_path: Path) -> None:
    png = tmp_path / "grey16.png"
    Image.fromarray(np.full((40, 60), 32768, np.uint16)).save(png)
    out = tmp_path / "preview" / "p.png"
    result = run_cli("inspect", str(png), "--out", str(out))
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert (payload["width"], payload["height"]) == (60, 40)
    assert payload["metadata"]["format"] == "PNG"
    preview = np.asarray(Image.open(out))
    assert preview.shape[:2] == (40, 60) and abs(int(preview.mean()) - 128) <= 1


def test_inspect_dicom_with_window_override_and_no_identifying_tags(tmp_path: Path) -> None:
    source = get_testdata_file("CT_small.dcm")
    patient = str(pydicom.dcmread(source).PatientName)
    result = run_cli("inspect", source, "--window", "40", "400", "--out", str(tmp_path / "ct.png"))
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["metadata"]["modality"] == "CT"
    assert payload["metadata"]["window_center"] == 40 and payload["metadata"]["window_width"] == 400
    assert patient and patient not in result.stdout


def test_bad_inputs_exit_2_with_one_line_on_stderr(tmp_path: Path) -> None:
    text_file = tmp_path / "notes.png"
    text_file.write_text("this is not an image")
    for args in (("inspect", str(text_file)), ("inspect", str(tmp_path / "missing.dcm")),
                 ("eval", "--model", "no-such-model")):
        result = run_cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stdout == ""
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr


def test_phantom_writes_images_reports_and_contact_sheet(tmp_path: Path) -> None:
    result = run_cli("phantom", "--n", "2", "--out", str(tmp_path / "ph"), "--size", "96")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "ph").iterdir()) == [
        "000.json", "000.png", "001.json", "001.png", "contact_sheet.png"]
    record = json.loads((tmp_path / "ph" / "000.json").read_text())
    assert record["text"] and isinstance(record["labels"], list)
    assert Image.open(tmp_path / "ph" / "000.png").size == (96, 96)


def test_zero_shot_and_retrieve_commands(open_clip_dir: Path, tmp_path: Path) -> None:
    image = str(ROOT / "assets" / "examples" / "phantom_effusion.dcm")
    model = f"local-dir:{open_clip_dir}"
    result = run_cli("zero-shot", image, "--model", model, "--labels", "pleural effusion", "nodule",
                     "--negatives", "normal", "--out", str(tmp_path / "zs"))
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["labels"] == ["pleural effusion", "nodule"] and len(payload["scores"][model]) == 2
    assert Path(payload.pop("json")) == tmp_path / "zs" / "diagnosis.json"
    assert json.loads((tmp_path / "zs" / "diagnosis.json").read_text()) == payload
    result = run_cli("zero-shot", image, "--model", model, "--preset", "CheXpert findings")
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["labels"]) > 2
    assert payload["negatives"] == "normal" and payload["prompts"]["nodule"]["negative"][0].startswith("No acute")
    result = run_cli("zero-shot", image, "--model", model, "--negatives", "absent")
    assert result.returncode == 2 and "invalid choice: 'absent'" in result.stderr
    result = run_cli("retrieve", "--model", model, "--gallery", "phantom:6", "--text", "pleural effusion", "--k", "3")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert len(payload["hits"]) == 3 and 0.0 <= payload["precision_at_k"] <= 1.0
    result = run_cli("retrieve", "--model", model, "--gallery", "phantom:6")
    assert result.returncode == 2 and result.stderr.startswith("error: Give exactly one query")


def test_heatmap_and_segment_write_maps_masks_and_a_dicom_seg(tmp_path: Path) -> None:
    dicom = ROOT / "assets" / "examples" / "phantom_effusion.dcm"
    result = run_cli("heatmap", str(dicom), "pleural effusion", "nodule", "--method", "gradcam",
                     "--out", str(tmp_path / "maps"))
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["method"] == "gradcam" and len(payload["png"]) == 2 and len(payload["overlays"]) == 2
    assert np.load(payload["npy"]).shape == (2, 224, 224)
    assert Image.open(payload["overlays"][1]).size == (224, 224)
    assert json.loads(Path(payload["json"]).read_text())["peaks_xy"] == payload["peaks_xy"]
    result = run_cli("segment", str(dicom), "pleural effusion", "--method", "trained", "--dicom-seg",
                     "--out", str(tmp_path / "masks"))
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    seg = pydicom.dcmread(payload["dicom_seg"])
    mask = np.asarray(Image.open(payload["masks"][0])) > 0
    assert seg.Modality == "SEG" and np.array_equal(seg.pixel_array.astype(bool), mask)
    source = pydicom.dcmread(dicom)  # a de-identified copy by default; --keep-patient keeps the patient module
    assert seg.PatientIdentityRemoved == "YES" and seg.PatientID != source.PatientID
    assert seg.StudyInstanceUID != source.StudyInstanceUID
    result = run_cli("segment", str(dicom), "pleural effusion", "--dicom-seg", "--keep-patient",
                     "--out", str(tmp_path / "kept"))
    kept = pydicom.dcmread(json.loads(result.stdout)["dicom_seg"])
    assert kept.PatientID == source.PatientID and kept.StudyInstanceUID == source.StudyInstanceUID
    result = run_cli("segment", str(dicom), "pleural effusion", "--dicom-seg")
    assert result.returncode == 2 and "--out" in result.stderr
    result = run_cli("heatmap", str(dicom), "nodule", "--method", "relevance")
    assert result.returncode == 2 and result.stderr.startswith("error:") and "class token" in result.stderr
