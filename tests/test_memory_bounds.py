"""Memory of a request is bounded whatever the upload's pixel count (issue 18).

A huge-but-tiny PNG (8000 x 8000 of one grey, ~80 KB on disk, 64 MiB once decoded) goes through
every image endpoint's page function in a fresh child process; the peak resident memory the call
adds (Linux VmHWM, reset before the call through /proc/self/clear_refs) must stay under the stated
bound: the decoded frame + ``WORKING_BOUND_MIB``. Before the bound, the same call cost 0.7 GB
(/inspect) to 9 GB (/heatmap). What a session keeps is checked on the stored values themselves.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import generate_uid

from medclip_core.errors import ImageLoadError
from medclip_core.io import MAX_DECODED_BYTES, WORKING_MAX_SIDE, load_image
from tests.test_io import png_header_only, write_dicom

ROOT = Path(__file__).resolve().parents[1]
HUGE_SIDE = 8000
DECODED_MIB = HUGE_SIDE * HUGE_SIDE / 2**20          # 8-bit grey: one byte a pixel
WORKING_BOUND_MIB = 100                              # stated in docs/benchmarks.md

CHILD = r"""
import gc, json, sys
from pathlib import Path
from pages import diagnose, grounding, inspect, report, segment
from pages.common import example_files
from medclip_core.data.findings import DEFAULT_PRESET
from medclip_core.models import default_model_name

def kib(field):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field))

model = default_model_name()
calls = {
    "inspect": lambda p: inspect.inspect_image(p, -1),
    "zero_shot": lambda p: diagnose.run_diagnosis(p, DEFAULT_PRESET, "", "pairwise", model, "(none)", 0),
    "heatmap": lambda p: grounding.run_heatmaps(p, "pleural effusion", ["similarity"], 0.5, model),
    "segment": lambda p: segment.run_segmentation(p, "pleural effusion", "zero-shot:similarity", model),
    "report": lambda p: report.run_report(p, "retrieval", 3, model),
}
huge, small = sys.argv[1], example_files()[0]
added = {}
for name, call in calls.items():
    call(small)                       # models, vocabularies and first-call buffers in place
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")   # reset the peak to the current resident size
    before = kib("VmRSS:")
    call(huge)
    added[name] = (kib("VmHWM:") - before) / 1024
print(json.dumps(added))
"""


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("huge") / "huge.png"
    Image.new("L", (HUGE_SIDE, HUGE_SIDE), 90).save(path)
    assert path.stat().st_size < 200_000
    return path


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS reset")
def test_each_image_endpoint_peak_memory_is_bounded(huge_png: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    done = subprocess.run([sys.executable, "-c", CHILD, str(huge_png)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    added = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(added) == {"inspect", "zero_shot", "heatmap", "segment", "report"}
    for endpoint, mib in added.items():
        assert mib < DECODED_MIB + WORKING_BOUND_MIB, f"/{endpoint} added {mib:.0f} MiB at peak"


def test_load_image_keeps_the_working_size_and_the_file_size(huge_png: Path) -> None:
    image = load_image(huge_png)
    assert image.size == (1000, 1000)                 # 8000 / ceil(8000 / 1024)
    assert (image.metadata["width"], image.metadata["height"]) == (HUGE_SIDE, HUGE_SIDE)
    assert image.metadata["working_size"] == list(image.size)
    assert np.allclose(image.pixels, 90 / 255)
    full = load_image(huge_png, max_side=None)
    assert full.size == (HUGE_SIDE, HUGE_SIDE) and "working_size" not in full.metadata


def test_area_reduction_averages_blocks_of_a_real_dicom(tmp_path: Path) -> None:
    """A 2100 x 1500 16-bit DICOM: the kept modality values are 3 x 3 block means of the stored ones."""
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 4096, size=(1500, 2100), dtype=np.uint16)
    path = write_dicom(tmp_path / "big.dcm", stored, bits_stored=12)
    image = load_image(path)
    factor = 3                                        # ceil(2100 / 1024)
    assert image.size == (700, 500) and image.metadata["working_size"] == [700, 500]
    expected = stored.reshape(500, factor, 700, factor).mean(axis=(1, 3))
    assert np.abs(image.modality_values - np.rint(expected)).max() <= 0.5
    rewindowed = image.with_window(2048, 4096)       # the window still applies at the working size
    assert rewindowed.pixels.shape == (500, 700)


def test_decoded_size_over_the_limit_is_refused_before_decoding(tmp_path: Path) -> None:
    """81 Mpx (under MAX_PIXELS) of 16-bit RGB is 463 MiB decoded: refused from the header alone."""
    side = 9000
    assert side * side * 3 * 2 > MAX_DECODED_BYTES
    path = write_dicom(tmp_path / "claims.dcm", None, Rows=side, Columns=side, SamplesPerPixel=3, BitsAllocated=16,
                       BitsStored=16, HighBit=15, PixelRepresentation=0, PhotometricInterpretation="RGB",
                       PlanarConfiguration=0, PixelData=b"\0\0")
    with pytest.raises(ImageLoadError, match="MiB"):
        load_image(path)


def test_inspect_session_keeps_only_the_display_size_image(tmp_path: Path) -> None:
    from pages.inspect import inspect_image

    stored = np.tile(np.arange(3000, dtype=np.uint16)[None, :] % 4096, (2000, 1))
    path = write_dicom(tmp_path / "wide.dcm", stored, bits_stored=12, WindowCenter=2048, WindowWidth=4096)
    preview, metadata, _, _, state = inspect_image(str(path), -1)
    assert (metadata["width"], metadata["height"]) == (3000, 2000)
    assert max(state.pixels.shape) <= WORKING_MAX_SIDE and state.modality_values.shape == state.pixels.shape
    assert state.pixels.nbytes + state.modality_values.nbytes <= WORKING_MAX_SIDE ** 2 * 8
    assert max(preview.size) <= WORKING_MAX_SIDE


def test_grounding_session_keeps_gallery_size_results(huge_png: Path) -> None:
    from pages.grounding import GALLERY_MAX_SIDE, run_heatmaps

    gallery, summary, files, (results, controls), _ = run_heatmaps(str(huge_png), "pleural effusion\nnodule",
                                                                ["similarity"], 0.5, "medclip-phantom", True)
    assert len(gallery) == 3 and summary["methods"][0]["size"] == [1000, 1000]
    for result in results + controls:
        assert max(result.image.size) <= GALLERY_MAX_SIDE
        assert result.maps.shape[1:] == (result.image.height, result.image.width)


def test_dicom_seg_masks_are_drawn_up_to_the_source_size(tmp_path: Path) -> None:
    from medclip_core.tasks.segmentation import segment

    stored = np.full((1200, 1100), 100, dtype=np.uint16)
    stored[300:900, 200:900] = 3000
    path = write_dicom(tmp_path / "large.dcm", stored, bits_stored=12, StudyInstanceUID=generate_uid(),
                       SeriesInstanceUID=generate_uid(), SeriesNumber=1, InstanceNumber=1, StudyID="1")
    result = segment(load_image(path), ["pleural effusion"], model="medclip-phantom", method="zero-shot:similarity")
    assert result.masks.shape[1:] == (600, 550)     # working size: factor 2
    saved = result.save(tmp_path / "out", dicom_source=path)
    seg = pydicom.dcmread(saved["dicom_seg"])
    assert (seg.Rows, seg.Columns) == (1200, 1100)


def test_a_closed_tab_releases_its_session_state_at_once(tmp_path: Path) -> None:
    """Inspect keeps the decoded image in the session; once the browser tab closes, the app drops it (Gradio
    alone would keep it an hour)."""
    import time

    from tests.conftest import free_port
    from tests.test_browser import CHROMIUM, browser_page

    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed")
    from app import build_app

    stored = np.tile(np.arange(900, dtype=np.uint16)[None, :] * 4, (700, 1))
    path = write_dicom(tmp_path / "kept.dcm", stored, bits_stored=12, WindowCenter=1800, WindowWidth=3600)
    demo = build_app()
    demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)

    def kept_bytes() -> int:
        return sum(value.pixels.nbytes for session in list(demo.state_holder.session_data.values())
                   for value in session.state_data.values() if hasattr(value, "pixels"))
    try:
        with browser_page(demo.local_url) as page:
            page.get_by_role("tab", name="Inspect image", exact=True).click()
            page.locator("#inspect-upload input[type=file]").set_input_files(str(path))
            deadline = time.monotonic() + 60
            while kept_bytes() < 900 * 700 * 4 and time.monotonic() < deadline:  # the decoded image, float32
                time.sleep(0.5)
            assert kept_bytes() >= 900 * 700 * 4
            page.close()
            deadline = time.monotonic() + 30
            while kept_bytes() and time.monotonic() < deadline:
                time.sleep(0.5)
            assert kept_bytes() == 0
    finally:
        demo.close()
