"""Validation of user training datasets: each bad row kind gets its message, escaping paths are refused,
zip bombs and unusable uploads leave nothing on disk, and uploads need the admin token when one is set."""
from __future__ import annotations

import csv
import os
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medclip_core.errors import TaskInputError
from medclip_core.train import datasets
from medclip_core.train.datasets import import_upload, register_upload, validate_pairs_csv

BOMB_BYTES = 300 * 1024 ** 2


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


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    """One member of 300 MB of zeros, deflated to about 300 KB (streamed: never 300 MB in memory or on disk)."""
    archive = tmp_path_factory.mktemp("bomb") / "bomb.zip"
    chunk = bytes(1024 ** 2)
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("set/pairs.csv", "image,report\nzeros.png,One.\n")
        with zf.open("set/zeros.png", "w") as out:
            for _ in range(BOMB_BYTES // len(chunk)):
                out.write(chunk)
    assert archive.stat().st_size < 1024 ** 2
    return archive


def _nothing_under(root: Path) -> bool:
    return not root.exists() or not any(root.iterdir())


def test_a_zip_bomb_is_refused_before_anything_is_written(bomb: Path, tmp_path: Path) -> None:
    root = tmp_path / "datasets"
    with pytest.raises(TaskInputError, match="zip bomb"):
        import_upload([bomb], root)
    assert _nothing_under(root)


def test_a_zip_over_the_unpacked_size_limit_is_refused(tmp_path: Path, monkeypatch) -> None:
    archive = tmp_path / "big.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:  # stored: ratio 1, only the total is too big
        zf.writestr("pairs.csv", "image,report\n")
        zf.writestr("a.png", os.urandom(600_000))
        zf.writestr("b.png", os.urandom(600_000))
    monkeypatch.setattr(datasets, "MAX_UNZIPPED_BYTES", 1024 ** 2)
    with pytest.raises(TaskInputError, match="unpacks to 1.1 MiB; an upload may unpack to at most 1.0 MiB"):
        import_upload([archive], tmp_path / "datasets")
    assert _nothing_under(tmp_path / "datasets")


def test_a_zip_with_too_many_members_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "many.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("pairs.csv", "image,report\n")
        for i in range(datasets.MAX_ZIP_MEMBERS):
            zf.writestr(f"f{i}.txt", b"")
    with pytest.raises(TaskInputError, match="50,001 entries; an upload may hold at most 50,000"):
        import_upload([archive], tmp_path / "datasets")
    assert _nothing_under(tmp_path / "datasets")


def test_a_zip_whose_directory_understates_a_member_is_cut_off_while_unpacking(bomb: Path, tmp_path: Path) -> None:
    """The central directory says the 300 MB member holds 1,000 bytes (ratio and total look fine):
    unpacking stops there, the upload is refused and its folder removed."""
    data = bytearray(bomb.read_bytes())
    entry = data.rfind(b"PK\x01\x02")  # the last central directory entry: set/zeros.png
    assert data[entry + 46:entry + 46 + 13] == b"set/zeros.png"
    struct.pack_into("<I", data, entry + 24, 1000)  # its uncompressed size
    liar = tmp_path / "liar.zip"
    liar.write_bytes(bytes(data))
    assert zipfile.ZipFile(liar).getinfo("set/zeros.png").file_size == 1000
    root = tmp_path / "datasets"
    with pytest.raises(TaskInputError, match="not a readable zip|more than the 1,000 bytes"):
        import_upload([liar], root)
    assert _nothing_under(root)


def test_an_unusable_or_refused_upload_leaves_no_folder(tmp_path: Path) -> None:
    _png(tmp_path / "a.png")
    (tmp_path / "pairs.csv").write_text("image,report\na.png,One.\nmissing.png,Two.\n")
    root = tmp_path / "datasets"
    name, report = register_upload([tmp_path / "pairs.csv", tmp_path / "a.png"], root)
    assert name.startswith("upload:") and not report.usable and report.counts == {"missing_file": 1}
    assert _nothing_under(root)
    with zipfile.ZipFile(tmp_path / "nocsv.zip", "w") as zf:
        zf.write(tmp_path / "a.png", "a.png")
    with pytest.raises(TaskInputError, match="no CSV"):
        register_upload([tmp_path / "nocsv.zip"], root)
    (tmp_path / "columns.csv").write_text("path,text\na.png,One.\n")
    with pytest.raises(TaskInputError):
        register_upload([tmp_path / "columns.csv"], root)
    assert _nothing_under(root)

    (tmp_path / "good.csv").write_text("image,report\na.png,One.\na.png,Two.\n")
    name, report = register_upload([tmp_path / "good.csv", tmp_path / "a.png"], root)
    assert report.usable and (root / name.removeprefix("upload:") / datasets.CLEAN_NAME).is_file()


def test_with_an_admin_token_set_uploads_need_it(tmp_path: Path, monkeypatch) -> None:
    import gradio as gr
    from gradio_client import Client, handle_file

    from medclip_core.train.runs import RunManager
    from pages import train
    from tests.conftest import free_port

    monkeypatch.setenv("MEDCLIP_ADMIN_TOKEN", "s3cret")
    for name in ("a.png", "b.png"):
        _png(tmp_path / name)
    (tmp_path / "pairs.csv").write_text("image,report\na.png,One.\nb.png,Two.\n")
    files = [handle_file(str(tmp_path / f)) for f in ("pairs.csv", "a.png", "b.png")]
    manager = RunManager(tmp_path / "runs")
    with gr.Blocks() as demo:
        train.build(gr.Dropdown(), manager)
    demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        client = Client(demo.local_url, verbose=False)
        with pytest.raises(Exception, match="need the admin token"):
            client.predict(files, api_name="/train_validate")  # the token may be left out, not bypassed
        with pytest.raises(Exception, match="need the admin token"):
            client.predict(files, "", api_name="/train_validate")
        with pytest.raises(Exception, match="wrong"):
            client.predict(files, "guess", api_name="/train_validate")
        assert _nothing_under(manager.root / "datasets")
        summary, _, dataset = client.predict(files, "s3cret", api_name="/train_validate")
        assert "2 usable" in summary and dataset["value"].startswith("upload:")
    finally:
        demo.close()
        manager.stop_monitor()
