"""The Training tab's endpoints through a real gradio_client session, with and without the admin token."""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
EXAMPLES = Path(__file__).resolve().parents[1] / "assets" / "examples"
TINY_RUN = ("tiny-test", "phantom:16", "contrastive", "full", 1, 16, 5e-3, 0, 2, 1)


@pytest.fixture(scope="module")
def client(app_url):
    from gradio_client import Client

    from medclip_core.train.runs import RunManager

    yield Client(app_url, verbose=False)
    manager = RunManager()  # the app's runs folder: never leave a training process behind
    for record in manager.list_runs():
        if record.state in ("queued", "running"):
            manager.cancel(record.name, wait_s=30)


def _status(client, name: str) -> dict:
    return client.predict(name, api_name="/train_status")[3]


def _wait_while(client, name: str, state: str, timeout_s: float = 150) -> dict:
    deadline = time.time() + timeout_s
    while (details := _status(client, name))["state"] == state:
        assert time.time() < deadline, f"{name} still {state}"
        time.sleep(1)
    return details


def test_runs_start_queue_cancel_and_finish_through_the_api(client, monkeypatch) -> None:
    from gradio_client import handle_file

    from medclip_core.train.runs import _process_start

    monkeypatch.delenv("MEDCLIP_ADMIN_TOKEN", raising=False)
    _, long_run, _ = client.predict("api-long", *TINY_RUN[:-2], 100000, 1, "", api_name="/train_start")
    assert long_run["state"] == "running"
    long_run_start = _process_start(long_run["pid"])  # with the pid: a pid reused later is another process
    assert long_run_start is not None
    _, short_run, _ = client.predict("api-short", *TINY_RUN, "", api_name="/train_start")
    assert short_run["state"] == "queued"  # one run per device

    monkeypatch.setenv("MEDCLIP_ADMIN_TOKEN", "s3cret")
    with pytest.raises(Exception, match="need the admin token"):
        client.predict("api-long", "", api_name="/train_cancel")
    with pytest.raises(Exception, match="wrong"):
        client.predict("api-other", *TINY_RUN, "guess", api_name="/train_start")
    with pytest.raises(Exception, match="exists already"):
        client.predict("api-short", *TINY_RUN, "s3cret", api_name="/train_start")

    deadline = time.time() + 150
    while not _status(client, "api-long")["final_metrics"].get("step"):
        assert time.time() < deadline, "the long run wrote no metrics in time"
        time.sleep(1)
    message, _ = client.predict("api-long", "s3cret", api_name="/train_cancel")
    assert "api-long" in message
    assert _wait_while(client, "api-long", "running", 60)["state"] == "cancelled"
    assert _process_start(long_run["pid"]) != long_run_start  # the process is gone, the app answers

    details = _wait_while(client, "api-short", "queued", 30)  # the device is free: the queued run starts
    details = _wait_while(client, "api-short", "running")
    assert details["state"] == "finished", details["error"]
    assert details["final_metrics"]["step"] == 2

    # the finished run is a model of every tab now
    _, _, result, _ = client.predict(handle_file(str(EXAMPLES / "phantom" / "000.png")), "Phantom findings",
                                  "effusion\nnodule", "softmax", "api-short", "(none)", 0, api_name="/zero_shot")
    assert abs(sum(result["scores"]["api-short"]) - 1) < 1e-4


def test_dataset_upload_is_validated_with_counts_and_problems(client, tmp_path: Path) -> None:
    from gradio_client import handle_file

    for name in ("a.png", "b.png"):
        Image.fromarray(np.full((20, 30), 100, np.uint8)).save(tmp_path / name)
    (tmp_path / "pairs.csv").write_text("image,report\na.png,Effusion.\nb.png,Normal.\nc.png,Missing.\nb.png,\n")
    summary, problems, dataset = client.predict(
        [handle_file(str(tmp_path / f)) for f in ("pairs.csv", "a.png", "b.png")], api_name="/train_validate")
    assert "4 rows, 2 usable" in summary and "image file not found" in summary
    assert [row[1] for row in problems["data"]] == ["missing_file", "empty_report"]
    assert dataset["value"].startswith("upload:")  # the dataset picker now holds the upload
