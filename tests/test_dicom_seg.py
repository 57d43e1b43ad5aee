"""DICOM SEG export: a SEG written for the example DICOM reads back with pydicom and highdicom."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medclip_core.dicom_seg import SOFTWARE_NAME, write_dicom_seg
from medclip_core.errors import ImageLoadError, TaskInputError

SOURCE = Path(__file__).resolve().parents[1] / "assets" / "examples" / "phantom_effusion.dcm"


def _masks() -> dict[str, np.ndarray]:
    effusion = np.zeros((224, 224), bool)
    effusion[120:180, 30:90] = True
    nodule = np.zeros((224, 224), bool)
    nodule[60:70, 150:158] = True
    return {"right pleural effusion": effusion, "nodule": nodule}


def test_seg_round_trip_references_the_source(tmp_path: Path) -> None:
    import highdicom as hd

    masks = _masks()
    out = write_dicom_seg(SOURCE, masks, tmp_path / "seg.dcm")
    source = pydicom.dcmread(SOURCE)
    seg = pydicom.dcmread(out)
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == source.StudyInstanceUID and seg.SeriesInstanceUID != source.SeriesInstanceUID
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == source.SeriesInstanceUID
    assert referenced.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert [s.SegmentLabel for s in seg.SegmentSequence] == list(masks)
    assert all(s.SegmentAlgorithmType == "AUTOMATIC" and s.SegmentAlgorithmName == SOFTWARE_NAME
               for s in seg.SegmentSequence)
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Pleural effusion"
    frames = seg.pixel_array  # one frame per segment
    assert np.array_equal(frames[0] > 0, masks["right pleural effusion"])
    assert np.array_equal(frames[1] > 0, masks["nodule"])

    read = hd.seg.segread(out)
    pixels = read.get_pixels_by_source_instance([source.SOPInstanceUID], combine_segments=False)
    assert pixels.shape == (1, 224, 224, 2)
    assert np.array_equal(pixels[0, ..., 0] > 0, masks["right pleural effusion"])
    assert np.array_equal(pixels[0, ..., 1] > 0, masks["nodule"])


def test_seg_accepts_a_dataset_and_leaves_it_untouched(tmp_path: Path) -> None:
    source = pydicom.dcmread(SOURCE)
    before = copy.deepcopy(source)
    write_dicom_seg(source, {"effusion": _masks()["right pleural effusion"]}, tmp_path / "seg.dcm")
    assert source == before


def test_seg_clear_errors(tmp_path: Path) -> None:
    masks = _masks()
    with pytest.raises(ImageLoadError, match="DICOM source"):
        write_dicom_seg(Path(__file__), masks, tmp_path / "x.dcm")
    with pytest.raises(TaskInputError, match=r"needs \(224, 224\)"):
        write_dicom_seg(SOURCE, {"effusion": np.zeros((100, 224), bool)}, tmp_path / "x.dcm")
    with pytest.raises(TaskInputError, match="at least one mask"):
        write_dicom_seg(SOURCE, {}, tmp_path / "x.dcm")
    multi = pydicom.dcmread(SOURCE)
    multi.NumberOfFrames = 3
    multi.PixelData = multi.PixelData * 3
    with pytest.raises(TaskInputError, match="single-frame source images; this one has 3 frames"):
        write_dicom_seg(multi, masks, tmp_path / "x.dcm")
