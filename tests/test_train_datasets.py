"""Validation of user training datasets: each bad row kind gets its message, escaping paths are refused."""
from __future__ import annotations

import csv
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medclip_core.errors import TaskInputError
from medclip_core.train.datasets import import_upload, validate_pairs_csv


def _png(path: Path) -> None:
    Image.fromarray(np.full((20, 30), 128, np.uint8)).save(path)


def test_each_bad_row_kind_is_reported_and_the_good_rows_are_kept(tmp_path: Path) -> None:
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)
    (tmp_path / "data.csv").write_text(
        "image,report,labels\n"
        "a.png,Small left effusion.,pleural effusion\n"   # line 2: good
        "b.png,Normal chest.,normal\n"                    # line 3: good
        "a.png,Small left effusion.,pleural effusion\n"   # line 4: duplicate of 2
        "missing.png,Clear lungs.,\n"                     # line 5: missing file
        "broken.png,Clear lungs.,\n"                      # line 6: unreadable
        "b.png,,\n")                                      # line 7: empty report
    report = validate_pairs_csv(tmp_path / "data.csv")
    assert (report.rows, report.valid) == (6, 2)
    assert {(p.line, p.kind) for p in report.problems} == {
        (4, "duplicate_row"), (5, "missing_file"), (6, "unreadable_image"), (7, "empty_report")}
    assert "repeats line 2" in report.problems[0].message
    assert report.usable and not report.refused
    with open(report.clean_csv, newline="") as handle:
        assert [row["image"] for row in csv.DictReader(handle)] == ["a.png", "b.png"]
    assert "6 rows, 2 usable" in report.summary() and "1 × image file not found" in report.summary()


def test_a_path_leaving_the_dataset_folder_refuses_the_dataset(tmp_path: Path) -> None:
    inner = tmp_path / "set"
    inner.mkdir()
    for name in ("a.png", "b.png"):
        _png(inner / name)
    _png(tmp_path / "secret.png")
    (inner / "data.csv").write_text("image,report\na.png,One.\nb.png,Two.\n../secret.png,Three.\n")
    report = validate_pairs_csv(inner / "data.csv")
    assert report.refused and not report.usable and report.valid == 2
    assert report.problems[0].kind == "outside_folder" and "leaves the dataset folder" in report.problems[0].message
    assert "Refused" in report.summary()


def test_uploads_unpack_into_their_own_folder_and_bad_zips_are_refused(tmp_path: Path) -> None:
    _png(tmp_path / "a.png")
    archive = tmp_path / "set.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(tmp_path / "a.png", "set/images/a.png")
        zf.writestr("set/pairs.csv", "image,report\nimages/a.png,One.\nimages/a.png,Two.\n")
    csv_path = import_upload([archive], tmp_path / "datasets")
    assert csv_path.name == "pairs.csv" and validate_pairs_csv(csv_path).valid == 2

    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../../escape.txt", "x")
    with pytest.raises(TaskInputError, match="leaves the dataset folder"):
        import_upload([evil], tmp_path / "datasets")
    assert not (tmp_path / "escape.txt").exists()
    (tmp_path / "notzip.zip").write_bytes(b"not a zip")
    with pytest.raises(TaskInputError, match="not a readable zip"):
        import_upload([tmp_path / "notzip.zip"], tmp_path / "datasets")


def test_the_cli_validates_a_dataset_and_refuses_incomplete_commands(tmp_path: Path, capsys) -> None:
    import json

    from medclip_core.__main__ import main

    _png(tmp_path / "a.png")
    (tmp_path / "data.csv").write_text("image,report\na.png,One.\nnone.png,Two.\n")
    assert main(["runs", "validate", str(tmp_path / "data.csv")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["rows"], result["valid"], result["counts"], result["usable"]) == (2, 1, {"missing_file": 1}, False)
    assert main(["runs", "cancel"]) == 2
    assert "needs a run name" in capsys.readouterr().err
