"""The app through a real client: launch on a free local port, call the endpoints, close."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def app_url():
    from app import build_app

    demo = build_app()
    demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    yield demo.local_url
    demo.close()


@pytest.fixture(scope="module")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False)


def test_inspect_endpoint_png(client, tmp_path_factory) -> None:
    from gradio_client import handle_file

    png = tmp_path_factory.mktemp("app") / "x.png"
    Image.fromarray(np.tile(np.arange(0, 250, 5, dtype=np.uint8), (30, 1))).save(png)
    preview, metadata, *_ = client.predict(handle_file(str(png)), -1, api_name="/inspect")
    assert metadata["format"] == "PNG" and metadata["width"] == 50 and metadata["height"] == 30
    assert np.asarray(Image.open(preview)).shape[:2] == (30, 50)


def test_inspect_endpoint_dicom(client) -> None:
    from gradio_client import handle_file

    preview, metadata, *_ = client.predict(handle_file(get_testdata_file("MR_small.dcm")), -1, api_name="/inspect")
    assert metadata["format"] == "DICOM" and metadata["modality"] == "MR"
    assert "PatientName" not in str(metadata)
    assert Image.open(preview).size == (64, 64)


def test_inspect_endpoint_bad_file_gives_readable_error(client, tmp_path_factory) -> None:
    from gradio_client import handle_file

    bad = tmp_path_factory.mktemp("bad") / "scan.dcm"
    bad.write_bytes(b"\x00" * 10)
    with pytest.raises(Exception) as info:
        client.predict(handle_file(str(bad)), -1, api_name="/inspect")
    assert "image" in str(info.value).lower()
    # the app is still alive afterwards
    _, metadata, *_ = client.predict(handle_file(get_testdata_file("MR_small.dcm")), -1, api_name="/inspect")
    assert metadata["modality"] == "MR"
