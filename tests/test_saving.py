"""Results save themselves: the files each ``save()`` writes open again with what the result holds."""
from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image

from medclip_core.errors import ImageLoadError, TaskInputError
from medclip_core.io import load_image
from medclip_core.models import load_model
from medclip_core.tasks.diagnose import diagnose
from medclip_core.tasks.grounding import ground
from medclip_core.tasks.report import draft_report
from medclip_core.tasks.saving import saved_paths
from medclip_core.tasks.segmentation import segment

EXAMPLES = Path(__file__).resolve().parents[1] / "assets" / "examples"
DICOM = EXAMPLES / "phantom_effusion.dcm"


@pytest.fixture(scope="module")
def model():
    return load_model("medclip-phantom")


@pytest.fixture(scope="module")
def wide_image(tmp_path_factory):
    """A committed phantom radiograph cropped to 200 x 150, so a width/height swap would show."""
    path = tmp_path_factory.mktemp("wide") / "wide.png"
    Image.open(EXAMPLES / "phantom" / "002.png").crop((10, 30, 210, 180)).save(path)
    return load_image(path)


def test_heatmaps_save_json_npy_maps_and_overlays_at_the_image_size(model, wide_image, tmp_path) -> None:
    result = ground(wide_image, ["pleural effusion", "nodule"], model=model)
    saved = result.save(tmp_path / "out", prefix="similarity-", opacity=0.8)
    assert sorted(saved) == ["json", "npy", "overlays", "png"]
    assert all(Path(p).is_file() and Path(p).name.startswith("similarity-") for p in saved_paths(saved))
    assert json.loads(Path(saved["json"]).read_text()) == json.loads(json.dumps(result.to_dict()))
    assert np.array_equal(np.load(saved["npy"]), result.maps)
    for index, (heatmap, overlay) in enumerate(zip(saved["png"], saved["overlays"])):
        grey, blended = Image.open(heatmap), Image.open(overlay)
        assert grey.size == blended.size == (200, 150) and grey.mode == "L" and blended.mode == "RGB"
        assert np.abs(np.asarray(grey) / 255.0 - result.maps[index]).max() <= 0.5 / 255 + 1e-6
        assert np.array_equal(np.asarray(blended), np.asarray(result.overlay(index, 0.8)))


def test_masks_save_pngs_and_a_dicom_seg_that_reads_back_with_the_same_masks(model, tmp_path) -> None:
    phrases = ["pleural effusion", "cardiomegaly"]
    result = segment(load_image(DICOM), phrases, model=model, method="trained")
    assert result.masks.any()  # the committed example has an effusion the decoder finds
    saved = result.save(tmp_path, dicom_source=DICOM)
    assert sorted(saved) == ["dicom_seg", "json", "masks"]
    for index, path in enumerate(saved["masks"]):
        png = Image.open(path)
        assert png.size == result.image.size and np.array_equal(np.asarray(png) > 0, result.masks[index])
    seg = pydicom.dcmread(saved["dicom_seg"])
    source = pydicom.dcmread(DICOM)
    assert seg.Modality == "SEG" and [s.SegmentLabel for s in seg.SegmentSequence] == phrases
    assert seg.PatientIdentityRemoved == "YES" and seg.StudyInstanceUID != source.StudyInstanceUID  # shareable copy
    kept_path = result.save(tmp_path / "kept", dicom_source=DICOM, deidentify=False)["dicom_seg"]
    kept = pydicom.dcmread(kept_path)
    assert kept.StudyInstanceUID == source.StudyInstanceUID and kept.PatientID == source.PatientID
    pixels = hd.seg.segread(kept_path).get_pixels_by_source_instance(
        source_sop_instance_uids=[source.SOPInstanceUID], segment_numbers=[1, 2])
    assert pixels.shape == (1, *result.masks.shape[1:], 2)
    assert np.array_equal(np.moveaxis(pixels[0], -1, 0).astype(bool), result.masks)


def test_json_results_write_their_to_dict(model, tmp_path) -> None:
    image = load_image(DICOM)
    diagnosis = diagnose(image, ["pleural effusion", "nodule"], model=model.card.name)
    draft = draft_report(image, "retrieval", model)
    for result, name in ((diagnosis, "diagnosis.json"), (draft, "retrieval-report.json")):
        saved = result.save(tmp_path, prefix="retrieval-" if result is draft else "")
        assert saved == {"json": str(tmp_path / name)}
        assert json.loads((tmp_path / name).read_text()) == json.loads(json.dumps(result.to_dict()))


def test_saving_refuses_a_file_as_folder_and_a_seg_without_a_dicom_source(model, tmp_path) -> None:
    result = segment(load_image(EXAMPLES / "phantom" / "002.png"), ["nodule"], model=model)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(TaskInputError, match="is a file"):
        result.save(blocker)
    with pytest.raises(ImageLoadError, match="needs a DICOM source"):
        result.save(tmp_path / "out", dicom_source=EXAMPLES / "phantom" / "002.png")
