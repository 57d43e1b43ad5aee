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
