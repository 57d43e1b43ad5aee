"""Tests for medclip_core.io: every format and DICOM path, safe metadata, and every error case."""
from __future__ import annotations

import json
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest
import tifffile
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import ExplicitVRLittleEndian, UID, generate_uid

from medclip_core.errors import ImageLoadError
from medclip_core.io import MAX_PIXELS, MedicalImage, image_from_array, load_image

# Only the files shipped inside the pydicom package: get_testdata_files() would download more.
PYDICOM_FILES = Path(pydicom.data.__file__).parent / "test_files"
BUNDLED_FILES = sorted(path for path in PYDICOM_FILES.rglob("*") if path.is_file())

IDENTIFYING = {
    "PatientName": "Doe^Jane",
    "PatientID": "MRN-4711-0815",
    "PatientBirthDate": "19500102",
    "AccessionNumber": "ACC-99887766",
    "InstitutionName": "St Example Hospital",
    "StudyDate": "20240305",
    "ReferringPhysicianName": "House^Gregory",
    "OtherPatientIDs": "OTHER-ID-123",
}
ALLOWED_METADATA_KEYS = {
    "format", "width", "height", "modality", "body_part_examined", "view_position",
    "photometric_interpretation", "bits_stored", "number_of_frames", "frame", "pixel_spacing_mm",
    "window_center", "window_width", "window_source", "voi_lut_function", "transfer_syntax",
}


def bundled(name: str) -> Path:
    path = PYDICOM_FILES / name
    assert path.is_file(), f"{name} is not bundled with this pydicom"
    return path


def quiet_load(source, **kwargs) -> MedicalImage:
    """load_image with pydicom's warnings about odd test files silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_image(source, **kwargs)


def chest_like(height: int = 64, width: int = 48) -> np.ndarray:
    """A radiograph-like uint16 array: high-attenuation body (3000) in a low-value air border (100)."""
    values = np.full((height, width), 100, dtype=np.uint16)
    values[8:-8, 6:-6] = 3000
    values[20:40, 12:20] = 1500  # a "lung"
    return values


def write_dicom(path: Path, pixels: np.ndarray | None, photometric: str = "MONOCHROME2", bits_stored: int = 16,
                write_like_original: bool = True, **attributes) -> Path:
    """A small DICOM file with identifying tags set, as a real export would have them."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.1.1")  # Digital X-Ray
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "DX", "CHEST", "PA"
    for keyword, value in IDENTIFYING.items():
        setattr(ds, keyword, value)
    if pixels is not None:
        ds.set_pixel_data(pixels, photometric, bits_stored)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=write_like_original)
    return path


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height; no image data follows (a decompression-bomb probe)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + chunk(b"IEND", b"")


def pydicom_reference(path: Path) -> np.ndarray | None:
    """What pydicom itself decodes, or None when the file has no decodable pixel data."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(path, force=True).pixel_array
    except Exception:
        return None


# --- pydicom's bundled files ---------------------------------------------------------------------


@pytest.mark.parametrize("path", BUNDLED_FILES, ids=[str(p.relative_to(PYDICOM_FILES)) for p in BUNDLED_FILES])
def test_every_bundled_pydicom_file_loads_or_raises_image_load_error(path: Path) -> None:
    reference = pydicom_reference(path)
    if reference is None:  # no pixel data, not DICOM, or undecodable: must be a clear error
        with pytest.raises(ImageLoadError):
            quiet_load(path)
        return
    image = quiet_load(path)  # whatever pydicom decodes, we load
    assert image.pixels.dtype == np.float32 and np.isfinite(image.pixels).all()
    assert 0.0 <= image.pixels.min() and image.pixels.max() <= 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
    assert image.size == (ds.Columns, ds.Rows)
    assert image.metadata["format"] == "DICOM"
    json.dumps(image.metadata)


def test_bundled_files_without_pixel_data_raise() -> None:
    for name in ("rtplan.dcm", "test-SR.dcm", "waveform_ecg.dcm", "reportsi.dcm"):
        with pytest.raises(ImageLoadError, match="no pixel data"):
            quiet_load(bundled(name))


MR_SMALL_VARIANTS = [
    "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_bigendian.dcm", "MR_small_expb.dcm", "MR_small_implicit.dcm", "MR_small_padded.dcm",
]


@pytest.mark.parametrize("name", MR_SMALL_VARIANTS)
def test_lossless_syntaxes_decode_to_the_same_pixels(name: str) -> None:
    reference = quiet_load(bundled("MR_small.dcm"))
    image = quiet_load(bundled(name))
    np.testing.assert_array_equal(image.modality_values, reference.modality_values)
    np.testing.assert_array_equal(image.pixels, reference.pixels)
    assert image.metadata["transfer_syntax"] == pydicom.dcmread(bundled(name)).file_meta.TransferSyntaxUID.name


@pytest.mark.parametrize("name", ["rtdose_rle.dcm", "rtdose_expb.dcm"])
@pytest.mark.parametrize("frame", [0, 7, 14])
def test_lossless_multiframe_syntaxes_agree_frame_by_frame(name: str, frame: int) -> None:
    reference = quiet_load(bundled("rtdose.dcm"), frame=frame)
    image = quiet_load(bundled(name), frame=frame)
    np.testing.assert_array_equal(image.modality_values, reference.modality_values)
    expected = pydicom.dcmread(bundled("rtdose.dcm")).pixel_array[frame].astype(np.float32)
    np.testing.assert_array_equal(reference.modality_values, expected)


@pytest.mark.parametrize("name", ["SC_rgb_jpeg_gdcm.dcm", "SC_rgb_gdcm_KY.dcm", "SC_rgb_rle_16bit.dcm", "SC_rgb_rle_32bit.dcm"])
def test_lossless_colour_syntaxes_and_bit_depths_agree(name: str) -> None:
    reference = quiet_load(bundled("SC_rgb_rle.dcm"))
    image = quiet_load(bundled(name))
    assert image.is_color and image.modality_values is None
    np.testing.assert_allclose(image.pixels, reference.pixels, atol=1e-6)


@pytest.mark.parametrize("name", [
    "SC_ybr_full_422_uncompressed.dcm", "SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_dcmtk_+eb+cy+s4.dcm",
    "SC_rgb_dcmtk_+eb+cy+np.dcm", "SC_rgb_jls_lossy_line.dcm",
])
def test_ybr_and_lossy_colour_match_rgb_without_double_conversion(name: str) -> None:
    reference = quiet_load(bundled("SC_rgb_rle.dcm")).pixels
    pixels = quiet_load(bundled(name)).pixels
    # a second YBR->RGB conversion would change colours completely (mean error ~0.5)
    assert np.abs(pixels - reference).mean() < 0.02


def test_palette_colour_dicom_goes_through_the_palette() -> None:
    image = quiet_load(bundled("examples_palette.dcm"))
    ds = pydicom.dcmread(bundled("examples_palette.dcm"))
    expected = pydicom.pixels.apply_color_lut(ds.pixel_array, ds)
    assert image.is_color and image.pixels.shape == expected.shape
    np.testing.assert_allclose(image.pixels, expected / np.iinfo(expected.dtype).max, atol=1e-6)


def test_file_window_matches_pydicom_windowing() -> None:
    ds = pydicom.dcmread(bundled("MR_small.dcm"))
    image = quiet_load(bundled("MR_small.dcm"))
    windowed = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
    low, high = -(2 ** 15), 2 ** 15 - 1  # pydicom's output range for signed 16-bit data
    np.testing.assert_allclose(image.pixels, (windowed - low) / (high - low), atol=1e-5)
    assert (image.metadata["window_center"], image.metadata["window_width"]) == (600.0, 1600.0)
    assert image.metadata["window_source"] == "file"


def test_first_of_several_file_windows_is_used() -> None:
    image = quiet_load(bundled("examples_overlay.dcm"))  # Window Center [450, 200]
    ds = pydicom.dcmread(bundled("examples_overlay.dcm"))
    assert image.metadata["window_center"] == float(ds.WindowCenter[0])
    assert image.metadata["window_width"] == float(ds.WindowWidth[0])


def test_bundled_monochrome1_radiograph_is_inverted() -> None:
    path = bundled("dicomdirtests/77654033/CR1/6154")
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    image = quiet_load(path)
    windowed = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
    low, high = 200.0, (2 ** 12 - 1) * 0.684 + 200  # pydicom's output range: 12 bits rescaled
    np.testing.assert_allclose(image.pixels, 1 - (windowed - low) / (high - low), atol=1e-4)
    brightest_stored = np.unravel_index(np.argmax(ds.pixel_array), ds.pixel_array.shape)
    assert image.pixels[brightest_stored] == image.pixels.min()  # high MONOCHROME1 values are dark


# --- synthetic DICOM ------------------------------------------------------------------------------


def test_rescale_slope_and_intercept_give_modality_values(tmp_path: Path) -> None:
    stored = chest_like()
    path = write_dicom(tmp_path / "ct.dcm", stored, RescaleSlope=2, RescaleIntercept=-1024)
    image = quiet_load(path)
    np.testing.assert_array_equal(image.modality_values, stored.astype(np.float32) * 2 - 1024)
    assert image.modality_values.dtype == np.float32 and image.modality_values.shape == stored.shape


def test_without_a_file_window_the_frame_range_is_used(tmp_path: Path) -> None:
    image = quiet_load(write_dicom(tmp_path / "x.dcm", chest_like()))
    assert image.metadata["window_source"] == "auto"
    assert image.pixels[0, 0] == 0.0 and image.pixels[30, 24] == 1.0  # air dark, body bright
    assert image.pixels[30, 15] == pytest.approx((1500 - 100) / (3000 - 100))


def test_window_argument_overrides_the_file_window(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "x.dcm", chest_like(), WindowCenter=3000, WindowWidth=10)
    assert quiet_load(path).metadata["window_source"] == "file"
    image = quiet_load(path, window=(1500, 1001))
    assert image.metadata["window_source"] == "user"
    assert (image.metadata["window_center"], image.metadata["window_width"]) == (1500.0, 1001.0)
    assert image.pixels[0, 0] == 0.0 and image.pixels[30, 24] == 1.0
    assert image.pixels[30, 15] == pytest.approx(0.5, abs=1e-3)  # the centre maps to mid-grey


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_voi_lut_functions_match_pydicom(tmp_path: Path, function: str) -> None:
    stored = np.arange(0, 4096, 4, dtype=np.uint16).reshape(32, 32)
    path = write_dicom(tmp_path / "x.dcm", stored, bits_stored=12, WindowCenter=2048, WindowWidth=1000,
                       VOILUTFunction=function)
    ds = pydicom.dcmread(path)
    expected = pydicom.pixels.apply_windowing(ds.pixel_array, ds) / (2 ** 12 - 1)
    np.testing.assert_allclose(quiet_load(path).pixels, expected, atol=1e-5)


def test_voi_lut_sequence_is_applied(tmp_path: Path) -> None:
    stored = np.arange(0, 4096, 4, dtype=np.uint16).reshape(32, 32)
    lut_item = Dataset()
    lut_item.LUTDescriptor = [4096, 0, 12]
    lut_item.add_new(0x00283006, "US", [min(4095, 4 * value) for value in range(4096)])  # LUTData: 4x gain, saturating
    path = write_dicom(tmp_path / "x.dcm", stored, bits_stored=12, VOILUTSequence=[lut_item],
                       WindowCenter=100, WindowWidth=10)
    image = quiet_load(path)
    assert image.metadata["window_source"] == "file" and "window_center" not in image.metadata
    np.testing.assert_allclose(image.pixels, np.minimum(4095, 4 * stored) / 4095, atol=1e-6)


def test_monochrome1_comes_out_with_air_dark(tmp_path: Path) -> None:
    chest = chest_like()
    monochrome1 = (4095 - chest).astype(np.uint16)  # air is stored high in MONOCHROME1
    image = quiet_load(write_dicom(tmp_path / "m1.dcm", monochrome1, "MONOCHROME1", 12))
    as_monochrome2 = quiet_load(write_dicom(tmp_path / "m2.dcm", chest, "MONOCHROME2", 12))
    assert image.pixels[:4].mean() < 0.05 and image.pixels[30, 24] > 0.95
    np.testing.assert_allclose(image.pixels, as_monochrome2.pixels, atol=1e-6)
    rewindowed = image.with_window(2000, 3000)  # re-windowing keeps the inversion
    assert rewindowed.pixels[0, 0] < rewindowed.pixels[30, 24]


def test_multiframe_frame_selection(tmp_path: Path) -> None:
    frames = np.stack([np.full((8, 10), 100 * (i + 1), dtype=np.uint16) for i in range(5)])
    frames[:, 0, 0] = 0
    path = write_dicom(tmp_path / "mf.dcm", frames)
    default = quiet_load(path)
    assert default.metadata["frame"] == 2 and default.metadata["number_of_frames"] == 5
    for index in range(5):
        assert quiet_load(path, frame=index).modality_values[4, 4] == 100 * (index + 1)
    for bad in (5, -1):
        with pytest.raises(ImageLoadError, match="Frame .* does not exist"):
            quiet_load(path, frame=bad)


def test_enhanced_multiframe_uses_per_frame_rescale_and_window(tmp_path: Path) -> None:
    frames = np.full((2, 6, 6), 10, dtype=np.uint16)

    def group(intercept: float, center: float) -> Dataset:
        transformation, voi, item = Dataset(), Dataset(), Dataset()
        transformation.RescaleSlope, transformation.RescaleIntercept, transformation.RescaleType = 1, intercept, "US"
        voi.WindowCenter, voi.WindowWidth = center, 100
        item.PixelValueTransformationSequence, item.FrameVOILUTSequence = [transformation], [voi]
        return item

    path = write_dicom(tmp_path / "enh.dcm", frames, PerFrameFunctionalGroupsSequence=[group(0, 10), group(-1000, -990)])
    for index, intercept, center in ((0, 0, 10), (1, -1000, -990)):
        image = quiet_load(path, frame=index)
        assert image.modality_values[0, 0] == 10 + intercept
        assert image.metadata["window_center"] == center


def test_with_window_rewindows_without_rereading(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "x.dcm", chest_like(), RescaleIntercept=-1024, RescaleSlope=1)
    image = quiet_load(path)
    rewindowed = image.with_window(476, 1001)
    np.testing.assert_array_equal(rewindowed.pixels, quiet_load(path, window=(476, 1001)).pixels)
    assert rewindowed.metadata["window_source"] == "user" and image.metadata["window_source"] == "auto"
    assert rewindowed.modality_values is image.modality_values
    with pytest.raises(ImageLoadError, match="at least 1"):
        image.with_window(0, 0.5)
    with pytest.raises(ImageLoadError, match="greyscale DICOM"):
        image_from_array(np.zeros((4, 4), np.uint8)).with_window(10, 10)


def test_window_is_refused_for_images_that_cannot_be_windowed(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "x.png")
    with pytest.raises(ImageLoadError, match="greyscale DICOM"):
        load_image(tmp_path / "x.png", window=(40, 400))
    with pytest.raises(ImageLoadError, match="greyscale DICOM"):
        quiet_load(bundled("SC_rgb_rle.dcm"), window=(40, 400))


def test_metadata_is_allow_listed_and_never_identifying(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "x.dcm", chest_like(), PixelSpacing=[0.139, 0.14], WindowCenter=1500, WindowWidth=3000)
    metadata = quiet_load(path).metadata
    assert set(metadata) <= ALLOWED_METADATA_KEYS
    serialised = json.dumps(metadata)
    for keyword, value in IDENTIFYING.items():
        assert value not in serialised and keyword not in serialised
    assert metadata["modality"] == "DX" and metadata["body_part_examined"] == "CHEST" and metadata["view_position"] == "PA"
    assert metadata["pixel_spacing_mm"] == [0.139, 0.14]
    assert (metadata["width"], metadata["height"], metadata["bits_stored"]) == (48, 64, 16)
    assert metadata["transfer_syntax"] == "Explicit VR Little Endian"


def test_dicom_without_preamble_is_detected_by_content(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "bare.img", chest_like(), write_like_original=False)
    raw = path.read_bytes()
    assert raw[128:132] != b"DICM"
    bare = quiet_load(raw)
    np.testing.assert_array_equal(bare.modality_values, chest_like().astype(np.float32))


def test_unsupported_transfer_syntax_is_named(tmp_path: Path) -> None:
    ds = pydicom.dcmread(write_dicom(tmp_path / "x.dcm", chest_like()))
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.100")  # MPEG2, no decoder
    ds.PixelData = encapsulate([b"\x00" * 64])
    ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
    ds.save_as(tmp_path / "mpeg.dcm")
    with pytest.raises(ImageLoadError, match="MPEG2"):
        quiet_load(tmp_path / "mpeg.dcm")


def test_dicom_without_pixel_data_raises(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="no pixel data"):
        quiet_load(write_dicom(tmp_path / "x.dcm", None))


def test_dicom_pixel_limit_is_checked_before_decoding(tmp_path: Path) -> None:
    ds = pydicom.dcmread(write_dicom(tmp_path / "x.dcm", chest_like()))
    ds.Rows, ds.Columns = 20_000, 20_000  # header claims 400 Mpx; the data is tiny, so decoding would fail
    ds.save_as(tmp_path / "bomb.dcm")
    with pytest.raises(ImageLoadError, match="more than the 100,000,000"):
        quiet_load(tmp_path / "bomb.dcm")
    with pytest.raises(ImageLoadError, match="more than the 1,000"):
        quiet_load(tmp_path / "x.dcm", max_pixels=1_000)


# --- PNG, JPEG, TIFF ------------------------------------------------------------------------------


def save(tmp_path: Path, image: Image.Image, name: str, **options) -> Path:
    path = tmp_path / name
    image.save(path, **options)
    return path


def test_png_8bit_grey_is_exact_and_2d(tmp_path: Path) -> None:
    values = np.array([[0, 1, 128, 255]], dtype=np.uint8)
    image = load_image(save(tmp_path, Image.fromarray(values), "g.png"))
    assert image.pixels.shape == (1, 4) and not image.is_color
    np.testing.assert_array_equal(image.pixels, values / np.float32(255))
    assert image.metadata == {"format": "PNG", "width": 4, "height": 1, "bits_stored": 8, "number_of_frames": 1, "frame": 0}
    assert image.modality_values is None


@pytest.mark.parametrize("suffix", ["png", "tiff"])
def test_16bit_grey_is_scaled_by_bit_depth_not_stretched(tmp_path: Path, suffix: str) -> None:
    values = np.array([[0, 32768, 65535, 1000]], dtype=np.uint16)
    image = load_image(save(tmp_path, Image.fromarray(values), f"g16.{suffix}"))
    assert image.pixels.shape == (1, 4)
    assert image.pixels[0, 0] == 0.0 and image.pixels[0, 2] == 1.0
    assert image.pixels[0, 1] == pytest.approx(0.5, abs=1e-4)
    narrow = np.array([[1000, 2000]], dtype=np.uint16)  # a narrow range must not be stretched to [0, 1]
    narrow_image = load_image(save(tmp_path, Image.fromarray(narrow), f"n16.{suffix}"))
    np.testing.assert_allclose(narrow_image.pixels, narrow / 65535, rtol=1e-6)
    assert narrow_image.metadata["bits_stored"] == 16


def test_png_rgb_is_exact(tmp_path: Path) -> None:
    values = np.array([[[255, 0, 0], [0, 128, 255]]], dtype=np.uint8)
    image = load_image(save(tmp_path, Image.fromarray(values), "c.png"))
    assert image.is_color and image.pixels.shape == (1, 2, 3)
    np.testing.assert_array_equal(image.pixels, values / np.float32(255))


def test_rgba_and_grey_alpha_are_composited_on_black(tmp_path: Path) -> None:
    rgba = np.array([[[200, 100, 50, 255], [200, 100, 50, 0], [255, 255, 255, 51]]], dtype=np.uint8)
    image = load_image(save(tmp_path, Image.fromarray(rgba, "RGBA"), "a.png"))
    assert image.pixels.shape == (1, 3, 3)
    np.testing.assert_allclose(image.pixels[0, 0], [200 / 255, 100 / 255, 50 / 255], atol=1e-6)
    np.testing.assert_array_equal(image.pixels[0, 1], [0, 0, 0])
    np.testing.assert_allclose(image.pixels[0, 2], [0.2, 0.2, 0.2], atol=1e-6)
    grey_alpha = Image.fromarray(np.array([[[255, 255], [255, 0]]], dtype=np.uint8), "LA")
    grey = load_image(save(tmp_path, grey_alpha, "la.png"))
    np.testing.assert_array_equal(grey.pixels, [[1.0, 0.0]])


def test_palette_images_go_through_the_palette(tmp_path: Path) -> None:
    colour = Image.fromarray(np.array([[0, 1, 2]], dtype=np.uint8), "P")
    colour.putpalette([10, 20, 30, 255, 0, 0, 0, 0, 255] + [0] * 759)
    image = load_image(save(tmp_path, colour, "p.png"))
    np.testing.assert_array_equal(image.to_uint8()[0], [[10, 20, 30], [255, 0, 0], [0, 0, 255]])
    grey = Image.fromarray(np.array([[0, 1]], dtype=np.uint8), "P")
    grey.putpalette([0, 0, 0, 200, 200, 200] + [0] * 762)
    grey_image = load_image(save(tmp_path, grey, "pg.png"))
    assert not grey_image.is_color
    np.testing.assert_allclose(grey_image.pixels, [[0.0, 200 / 255]])


def test_1bit_image(tmp_path: Path) -> None:
    image = load_image(save(tmp_path, Image.fromarray(np.array([[True, False]])), "b.png"))
    np.testing.assert_array_equal(image.pixels, [[1.0, 0.0]])


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_jpeg(tmp_path: Path, mode: str) -> None:
    block = np.full((16, 16, 3), (180, 90, 30), dtype=np.uint8)
    source = Image.fromarray(block).convert(mode)
    image = load_image(save(tmp_path, source, "x.jpg", quality=95))
    assert image.metadata["format"] == "JPEG" and image.is_color == (mode == "RGB")
    np.testing.assert_allclose(image.pixels, np.asarray(source) / 255, atol=3 / 255)


def test_jpeg_exif_orientation_is_applied(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    path = save(tmp_path, Image.new("L", (40, 20)), "phone.jpg", exif=exif)
    assert load_image(path).size == (20, 40)


def test_tiff_16bit_rgb_keeps_all_bits(tmp_path: Path) -> None:
    values = np.array([[[65535, 0, 32768], [1, 2, 3]]], dtype=np.uint16)
    for planar, stored in (("contig", values), ("separate", np.moveaxis(values, -1, 0))):
        tifffile.imwrite(tmp_path / f"{planar}.tif", stored, photometric="rgb", planarconfig=planar)
        image = load_image(tmp_path / f"{planar}.tif")
        assert image.metadata["bits_stored"] == 16
        np.testing.assert_allclose(image.pixels, values / 65535, rtol=1e-6)


def test_multipage_tiff_frame_selection(tmp_path: Path) -> None:
    pages = np.stack([np.full((4, 5), 50 * (i + 1), dtype=np.uint8) for i in range(3)])
    tifffile.imwrite(tmp_path / "pages.tif", pages, photometric="minisblack")
    assert load_image(tmp_path / "pages.tif").metadata["frame"] == 1
    for index in range(3):
        image = load_image(tmp_path / "pages.tif", frame=index)
        assert image.pixels[0, 0] == pytest.approx(50 * (index + 1) / 255)
        assert image.metadata["number_of_frames"] == 3
    with pytest.raises(ImageLoadError, match="Frame 3 does not exist"):
        load_image(tmp_path / "pages.tif", frame=3)


def test_tiff_miniswhite_is_inverted_and_lzw_decodes(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "w.tif", np.array([[0, 255]], dtype=np.uint8), photometric="miniswhite")
    np.testing.assert_array_equal(load_image(tmp_path / "w.tif").pixels, [[1.0, 0.0]])
    values = np.arange(64, dtype=np.uint8).reshape(8, 8)
    path = save(tmp_path, Image.fromarray(values), "lzw.tif", compression="tiff_lzw")
    np.testing.assert_array_equal(load_image(path).pixels, values / np.float32(255))


def test_format_is_detected_by_content_not_extension(tmp_path: Path) -> None:
    png = save(tmp_path, Image.fromarray(np.zeros((3, 3), np.uint8)), "really_a_png.dcm", format="PNG")
    assert load_image(png).metadata["format"] == "PNG"
    dicom = write_dicom(tmp_path / "really_a_dicom.png", chest_like())
    assert quiet_load(dicom).metadata["format"] == "DICOM"


def test_sources_path_str_bytes_and_file_object(tmp_path: Path) -> None:
    path = save(tmp_path, Image.fromarray(np.array([[7, 9]], np.uint8)), "s.png")
    expected = load_image(path).pixels
    with open(path, "rb") as handle:
        for source in (str(path), path.read_bytes(), bytearray(path.read_bytes()), handle):
            np.testing.assert_array_equal(load_image(source).pixels, expected)


def test_conversions_and_properties() -> None:
    grey = image_from_array(np.array([[0, 255], [128, 64]], dtype=np.uint8))
    assert grey.size == (2, 2) and not grey.is_color
    assert grey.to_uint8().shape == (2, 2, 3) and grey.to_uint8().dtype == np.uint8
    np.testing.assert_array_equal(grey.to_uint8()[..., 1], [[0, 255], [128, 64]])
    pil = grey.to_pil()
    assert pil.mode == "RGB" and pil.size == (2, 2) and pil.getpixel((1, 0)) == (255, 255, 255)
    wide = image_from_array(np.zeros((3, 7, 3), dtype=np.uint8))
    assert wide.size == (7, 3) and wide.is_color


# --- image_from_array -----------------------------------------------------------------------------


def test_image_from_array_normalises_like_files() -> None:
    np.testing.assert_array_equal(image_from_array(np.array([[0, 65535]], np.uint16)).pixels, [[0.0, 1.0]])
    np.testing.assert_array_equal(image_from_array(np.array([[0.25, 0.5]], np.float64)).pixels, [[0.25, 0.5]])
    np.testing.assert_allclose(image_from_array(np.array([[-1000.0, 0.0, 1000.0]])).pixels, [[0.0, 0.5, 1.0]])
    rgba = image_from_array(np.array([[[255, 255, 255, 0], [255, 0, 0, 255]]], np.uint8))
    np.testing.assert_array_equal(rgba.pixels, [[[0, 0, 0], [1, 0, 0]]])
    image = image_from_array(np.zeros((2, 3, 1), np.uint8), {"label": "phantom"})
    assert image.pixels.shape == (2, 3) and image.metadata == {"format": "array", "width": 3, "height": 2, "label": "phantom"}


@pytest.mark.parametrize("bad", [np.zeros((2, 2, 5)), np.zeros(4), np.zeros((0, 3)), np.array([["a"]]), np.full((2, 2), np.nan)])
def test_image_from_array_rejects_non_images(bad: np.ndarray) -> None:
    with pytest.raises(ImageLoadError):
        image_from_array(bad)


# --- errors ---------------------------------------------------------------------------------------


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageLoadError, match="empty"):
        load_image(tmp_path / "empty.png")


def test_truncated_png(tmp_path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    data = save(tmp_path, Image.fromarray(noise), "full.png").read_bytes()
    with pytest.raises(ImageLoadError, match="truncated"):
        load_image(data[: len(data) // 2])


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm"])
def test_truncated_dicom(name: str) -> None:
    data = bundled(name).read_bytes()
    with pytest.raises(ImageLoadError, match="truncated"):
        quiet_load(data[: len(data) // 2])


def test_not_an_image(tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("Findings: no acute cardiopulmonary process.\n" * 20)
    with pytest.raises(ImageLoadError, match="not an image"):
        load_image(tmp_path / "notes.png")
    with pytest.raises(ImageLoadError, match="not an image"):
        quiet_load(np.random.default_rng(1).bytes(5000))


def test_missing_path_and_folder(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="No file was found"):
        load_image(tmp_path / "nowhere.dcm")
    with pytest.raises(ImageLoadError, match="folder"):
        load_image(tmp_path)
    with pytest.raises(ImageLoadError):
        load_image(12345)  # type: ignore[arg-type]


def test_pixel_limit_is_checked_from_the_header(tmp_path: Path) -> None:
    over_limit = png_header_only(10_001, 10_000)  # just over MAX_PIXELS, under Pillow's hard limit
    with pytest.raises(ImageLoadError, match="more than the 100,000,000"):
        load_image(over_limit)
    with pytest.raises(ImageLoadError, match="too large"):  # beyond Pillow's own bomb limit
        load_image(png_header_only(20_000, 20_000))
    small = save(tmp_path, Image.fromarray(np.zeros((40, 30), np.uint8)), "s.png")
    with pytest.raises(ImageLoadError, match="30 x 40"):
        load_image(small, max_pixels=1000)
    assert load_image(small, max_pixels=1200).size == (30, 40)
    assert MAX_PIXELS == 100_000_000


def test_damaged_files_only_ever_raise_image_load_error(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    noise = rng.integers(0, 65535, (32, 32), dtype=np.uint16)
    samples = [
        save(tmp_path, Image.fromarray(noise), "n.png").read_bytes(),
        save(tmp_path, Image.fromarray((noise >> 8).astype(np.uint8)), "n.jpg").read_bytes(),
        save(tmp_path, Image.fromarray(noise), "n.tif").read_bytes(),
        bundled("MR_small_jp2klossless.dcm").read_bytes(),
        bundled("SC_rgb_rle.dcm").read_bytes(),
    ]
    for data in samples:
        for cut in rng.integers(1, len(data), 8):
            damaged = bytearray(data)
            damaged[int(cut):int(cut) + 16] = rng.bytes(16)
            for candidate in (bytes(damaged), data[:cut]):
                try:
                    image = quiet_load(candidate)
                except ImageLoadError:
                    continue
                assert 0.0 <= image.pixels.min() and image.pixels.max() <= 1.0
