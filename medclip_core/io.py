"""Read a medical image file into one display-ready type, :class:`MedicalImage`.

Everything downstream (models, tasks, the app) sees the same thing whatever was uploaded: float32
pixels in [0, 1], greyscale as (H, W) and colour as (H, W, 3), with air and background dark, plus a
small dictionary of metadata that is safe to show on screen.

Why this module exists rather than a bare ``PIL.Image.open``:

* DICOM needs the clinical display pipeline: Modality LUT (Rescale Slope/Intercept) -> VOI
  (window from the caller, the file's VOI LUT or Window Center/Width, else the frame's range) ->
  MONOCHROME1 inversion. The rescaled values are kept so the window can be changed later without
  re-reading the file. Compressed transfer syntaxes decode through pydicom's plugins.
* 16-bit PNG/TIFF are scaled by their bit depth, never min-max stretched, so an image looks the
  same however it was cropped.
* Identifying DICOM attributes (patient name, IDs, dates, institution ...) must never reach the
  UI, logs or exports: metadata is built from an allow-list, not filtered by a block-list.
* Every bad input ends as :class:`ImageLoadError` whose message tells a clinician what is wrong
  and what to do; no pydicom/PIL exception escapes :func:`load_image`.

Formats are recognised by content, not by file extension: "DICM" at byte 128 means DICOM; then
anything Pillow identifies (PNG, JPEG, TIFF, BMP, GIF, WebP ...); last, a DICOM dataset without the
128-byte preamble, accepted only if it parses and holds pixel data. TIFFs with more than 8 bits
per sample and several samples (which Pillow would cut to 8 bits), or that Pillow cannot open,
are read with tifffile. Alpha is composited on black (transparent = background = dark).
Pixel counts are checked against ``max_pixels`` from the header, before any decoding.

Memory is bounded whatever the pixel count: a frame whose decoded size would exceed
``MAX_DECODED_BYTES`` is refused from its header, and the decoded frame is reduced at once (area
average; JPEG already while decoding, via Pillow's ``draft``) to at most ``max_side`` pixels on its
longest side (default ``WORKING_MAX_SIDE``), before any float conversion. Peak memory of one load is
therefore about the file's bytes + 2 x the decoded frame in its stored type (<= ``MAX_DECODED_BYTES``)
+ 40 bytes per working pixel, and what is kept (:class:`MedicalImage`) is at most
``WORKING_MAX_SIDE``**2 x 12 bytes (RGB) or x 8 bytes (grey DICOM with modality values): 12 MiB.
Models see 224-448 px, so nothing they use is lost; ``metadata`` keeps the file's own size.
"""
from __future__ import annotations

import dataclasses
import io
import os
import warnings
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import pydicom
import tifffile
from PIL import Image, ImageOps
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, convert_color_space, get_decoder
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from medclip_core.errors import ImageLoadError

__all__ = ["MAX_DECODED_BYTES", "MAX_PIXELS", "WORKING_MAX_SIDE", "MedicalImage", "image_from_array", "load_image"]

# Decompression-bomb limit, per frame: about a 10,000 x 10,000 image (large digital mammograms
# are ~4,000 x 5,000). Checked on header dimensions before decoding; pass max_pixels to change it.
# For Pillow formats, Pillow's own limit (2 * PIL.Image.MAX_IMAGE_PIXELS, ~179 Mpx) still applies.
MAX_PIXELS: int = 100_000_000
# Second decompression-bomb limit: the decoded frame in its stored type (Pillow keeps RGB as 4 bytes
# a pixel), so 100 Mpx of 8-bit RGB or 16-bit grey pass and 100 Mpx of 16-bit RGB does not.
MAX_DECODED_BYTES: int = 400 * 2**20
# Longest side of the pixels load_image keeps (see the module docstring): display size, and more
# than any model input. Pass max_side=None for the file's full resolution.
WORKING_MAX_SIDE: int = 1024

_DICOM_MAGIC_OFFSET = 128
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF
_PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")

# Allow-list of DICOM attributes copied into metadata (metadata key -> DICOM keyword).
# Nothing else from the file is ever read into metadata.
_DICOM_DISPLAY_ATTRIBUTES = {
    "modality": "Modality",
    "body_part_examined": "BodyPartExamined",
    "view_position": "ViewPosition",
    "photometric_interpretation": "PhotometricInterpretation",
    "bits_stored": "BitsStored",
}
# Enhanced multi-frame files keep rescale, window and spacing in functional groups, not at top level.
_FRAME_MACROS = ("PixelValueTransformationSequence", "FrameVOILUTSequence", "PixelMeasuresSequence")


@dataclass(frozen=True, eq=False)
class MedicalImage:
    """A decoded image ready for display and for model preprocessing.

    ``pixels``: float32 in [0, 1], (H, W) grey or (H, W, 3) RGB, windowed, air/background dark.
    ``metadata``: safe display metadata only (format, size, modality, window ...), JSON values.
    ``modality_values``: grey DICOM only, float32 (H, W) after the Modality LUT / rescale, so that
    :meth:`with_window` can re-window; ``None`` for every other image.
    """

    pixels: np.ndarray
    metadata: dict[str, Any]
    modality_values: np.ndarray | None = None

    def __post_init__(self) -> None:
        shape = self.pixels.shape
        if self.pixels.dtype != np.float32 or not (len(shape) == 2 or (len(shape) == 3 and shape[2] == 3)):
            raise ImageLoadError(
                f"MedicalImage needs float32 (H, W) or (H, W, 3) pixels, got {self.pixels.dtype} {shape}."
            )
        if self.modality_values is not None and self.modality_values.shape != shape[:2]:
            raise ImageLoadError("MedicalImage modality_values must have the same height and width as pixels.")

    @property
    def is_color(self) -> bool:
        return self.pixels.ndim == 3

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), the order PIL uses."""
        return int(self.pixels.shape[1]), int(self.pixels.shape[0])

    def to_uint8(self) -> np.ndarray:
        """The pixels as an (H, W, 3) uint8 RGB array (grey repeated on the three channels)."""
        as_bytes = np.rint(self.pixels * 255.0).astype(np.uint8)
        return as_bytes if self.is_color else np.repeat(as_bytes[:, :, None], 3, axis=2)

    def to_pil(self) -> Image.Image:
        """An 8-bit RGB PIL image of the pixels."""
        return Image.fromarray(self.to_uint8(), mode="RGB")

    def with_window(self, center: float, width: float) -> MedicalImage:
        """The same greyscale DICOM image re-windowed from its modality values."""
        if self.modality_values is None:
            raise ImageLoadError(
                f"A window (centre/width) can only be set on greyscale DICOM images; this is a "
                f"{self.metadata.get('format', 'non-DICOM')} image{' in colour' if self.is_color else ''}. "
                "Its brightness and contrast are fixed by the file."
            )
        function = self.metadata.get("voi_lut_function", "LINEAR")
        _check_window(center, width, function)
        pixels = _window_to_unit(self.modality_values, float(center), float(width), function)
        if self.metadata.get("photometric_interpretation") == "MONOCHROME1":
            pixels = 1.0 - pixels
        metadata = {
            **self.metadata, "window_center": float(center), "window_width": float(width), "window_source": "user"
        }
        return dataclasses.replace(self, pixels=pixels, metadata=metadata)


def load_image(
    source: str | os.PathLike | bytes | BinaryIO,
    *,
    frame: int | None = None,
    window: tuple[float, float] | None = None,
    max_pixels: int = MAX_PIXELS,
    max_side: int | None = WORKING_MAX_SIDE,
) -> MedicalImage:
    """Load a PNG/JPEG/TIFF/other Pillow image or a DICOM file into a :class:`MedicalImage`.

    ``source``: a path, the file's bytes, or a binary file object. ``frame``: which frame of a
    multi-frame DICOM or multi-page image to show (0-based; default the middle one).
    ``window``: (center, width) in modality units for greyscale DICOM, overriding the file's.
    ``max_pixels``: refuse frames with more pixels than this (checked before decoding).
    ``max_side``: reduce the decoded frame (area average) to at most this many pixels on its longest
    side, ``metadata["working_size"]`` then gives the kept (width, height); ``None`` keeps the full
    resolution. Peak memory: see the module docstring.
    Raises :class:`ImageLoadError`, and only that, for any input that cannot be shown.
    """
    subject = "The image"
    try:
        data, subject = _read_source(source)
        if not data:
            raise ImageLoadError(f"{subject} is empty (0 bytes). Choose the complete image file and upload it again.")
        if data[_DICOM_MAGIC_OFFSET : _DICOM_MAGIC_OFFSET + 4] == b"DICM":
            return _load_dicom(_read_dicom(data, subject), subject, frame, window, max_pixels, max_side)
        return _load_non_dicom(data, subject, frame, window, max_pixels, max_side)
    except ImageLoadError:
        raise
    except MemoryError as exc:
        raise ImageLoadError(
            f"{subject} is too large to load in the memory available here. Try a smaller export."
        ) from exc
    except Exception as exc:  # last resort: a library failed in a way not handled below
        raise ImageLoadError(
            f"{subject} could not be read as an image; it may be corrupt or in an unusual variant of its format. "
            f"Try exporting it again as PNG or DICOM. (Details: {type(exc).__name__}: {exc})"
        ) from exc


def image_from_array(array: np.ndarray, metadata: dict | None = None) -> MedicalImage:
    """Wrap an in-memory image the way files are normalised.

    Accepts (H, W), (H, W, 1), (H, W, 2) grey+alpha, (H, W, 3) RGB or (H, W, 4) RGBA of bool,
    unsigned integers (scaled by the dtype's maximum), or floats and signed integers (kept if
    already in [0, 1], else stretched over their min-max). The caller is responsible for
    ``metadata`` being safe to display; it is merged over format/width/height.
    """
    array = np.asarray(array)
    if array.dtype.kind not in "biuf":
        raise ImageLoadError(f"An image array must hold numbers, not {array.dtype}.")
    if array.ndim not in (2, 3) or array.size == 0:
        raise ImageLoadError(f"An image array must have shape (H, W) or (H, W, channels), got {array.shape}.")
    pixels = _to_display_channels(_scale_to_unit(array))
    height, width = pixels.shape[:2]
    return MedicalImage(pixels, {"format": "array", "width": width, "height": height, **(metadata or {})})


# --- reading the source -------------------------------------------------------------------------


def _read_source(source: str | os.PathLike | bytes | BinaryIO) -> tuple[bytes, str]:
    """The raw bytes and a subject for messages ("The file 'x.dcm'")."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), "The uploaded image"
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        subject = f"The file '{os.path.basename(path) or path}'"
        try:
            with open(path, "rb") as handle:
                return handle.read(), subject
        except FileNotFoundError as exc:
            raise ImageLoadError(f"No file was found at '{path}'. Check the path, or upload the image again.") from exc
        except IsADirectoryError as exc:
            raise ImageLoadError(f"'{path}' is a folder, not an image file. Choose a single image file.") from exc
        except OSError as exc:
            raise ImageLoadError(
                f"{subject} could not be opened ({exc.strerror or exc}). Check that it is readable."
            ) from exc
    if hasattr(source, "read"):
        name = getattr(source, "name", None)
        subject = f"The file '{os.path.basename(name)}'" if isinstance(name, str) else "The uploaded image"
        data = source.read()
        if not isinstance(data, (bytes, bytearray)):
            raise ImageLoadError(f"{subject} must be opened in binary mode ('rb') to be read as an image.")
        return bytes(data), subject
    raise ImageLoadError(
        f"Cannot read an image from a {type(source).__name__}; give a file path, bytes or a binary file."
    )


def _select_frame(frame: int | None, n_frames: int, subject: str) -> int:
    """The 0-based frame to show: the requested one, or the middle one by default."""
    if frame is None:
        return n_frames // 2
    if not 0 <= frame < n_frames:
        raise ImageLoadError(
            f"Frame {frame} does not exist: {_mid_sentence(subject)} has {n_frames} frame(s), "
            f"numbered 0 to {n_frames - 1}."
        )
    return int(frame)


def _mid_sentence(subject: str) -> str:
    """"The file 'x.png'" -> "the file 'x.png'"."""
    return subject[0].lower() + subject[1:]


def _check_pixel_count(width: int, height: int, max_pixels: int, subject: str, bytes_per_pixel: int = 1) -> None:
    """Refuse, from the header, frames with too many pixels or too many decoded bytes."""
    if width * height > max_pixels:
        raise ImageLoadError(
            f"{subject} is {width} x {height} pixels ({width * height:,}), more than the {max_pixels:,} "
            "allowed. It is refused as too large to decode safely; export a smaller version."
        )
    if width * height * bytes_per_pixel > MAX_DECODED_BYTES:
        raise ImageLoadError(
            f"{subject} is {width} x {height} pixels of {bytes_per_pixel} bytes each once decoded "
            f"({width * height * bytes_per_pixel / 2**20:,.0f} MiB), more than the {MAX_DECODED_BYTES / 2**20:,.0f} MiB "
            "allowed. It is refused as too large to decode safely; export a smaller or 8-bit version."
        )


def _reduction_factor(width: int, height: int, max_side: int | None) -> int:
    """The integer factor that brings the longest side to at most ``max_side`` (1: keep as is)."""
    if max_side is None or max(width, height) <= max_side:
        return 1
    return -(-max(width, height) // max_side)


def _area_reduce(values: np.ndarray, factor: int) -> np.ndarray:
    """(H, W[, C]) -> (ceil(H/f), ceil(W/f)[, C]) block means (partial edge blocks averaged over what
    they hold), in the input's dtype. Works one band of ``factor`` rows at a time, so no full-size
    temporary is made."""
    if factor == 1:
        return values
    height, width = values.shape[:2]
    starts = np.arange(0, width, factor)
    column_counts = np.diff(np.append(starts, width)).reshape(-1, *([1] * (values.ndim - 2)))
    out = np.empty((len(range(0, height, factor)), len(starts), *values.shape[2:]), dtype=np.float64)
    for row, top in enumerate(range(0, height, factor)):
        band = values[top:top + factor]
        out[row] = np.add.reduceat(band.sum(axis=0, dtype=np.float64), starts, axis=0) / (len(band) * column_counts)
    if values.dtype.kind in "biu":
        return np.rint(out).astype(values.dtype)
    return out.astype(values.dtype)


def _note_working_size(metadata: dict[str, Any], pixels: np.ndarray) -> None:
    """Record the kept size when it differs from the file's."""
    size = [int(pixels.shape[1]), int(pixels.shape[0])]
    if size != [metadata["width"], metadata["height"]]:
        metadata["working_size"] = size


# --- DICOM --------------------------------------------------------------------------------------


def _read_dicom(data: bytes, subject: str) -> Dataset:
    try:
        return pydicom.dcmread(io.BytesIO(data))
    except Exception as exc:
        raise ImageLoadError(
            f"{subject} looks like DICOM but could not be read; it is probably truncated or corrupt. "
            f"Export or copy it again. (Details: {exc})"
        ) from exc


def _has_pixel_data(ds: Dataset) -> bool:
    return any(keyword in ds for keyword in _PIXEL_DATA_KEYWORDS)


def _load_dicom(
    ds: Dataset, subject: str, frame: int | None, window: tuple[float, float] | None, max_pixels: int,
    max_side: int | None,
) -> MedicalImage:
    if not _has_pixel_data(ds):
        kind = f" It is a '{ds.SOPClassUID.name}' object." if "SOPClassUID" in ds else ""
        raise ImageLoadError(
            f"{subject} is DICOM but contains no image (no pixel data).{kind} It may be a report or other "
            "non-image object, or the file was truncated. Choose the image series itself."
        )
    rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    if not rows or not columns:
        raise ImageLoadError(f"{subject} has pixel data but no image size (Rows/Columns); the file is incomplete.")
    samples = int(ds.get("SamplesPerPixel") or 1)
    _check_pixel_count(columns, rows, max_pixels, subject, samples * max(1, -(-int(ds.get("BitsAllocated") or 8) // 8)))
    n_frames = int(ds.get("NumberOfFrames") or 1)
    index = _select_frame(frame, n_frames, subject)
    _promote_frame_attributes(ds, index)
    transfer_syntax = _transfer_syntax(ds, subject)

    is_palette = str(ds.get("PhotometricInterpretation", "")).strip() == "PALETTE COLOR"
    is_grey = int(ds.get("SamplesPerPixel") or 1) == 1 and not is_palette
    metadata = _dicom_metadata(ds, n_frames, index, transfer_syntax, is_grey)
    if window is not None:
        if not is_grey:
            raise _window_not_applicable(subject, "a colour DICOM image")
        _check_window(*window, metadata["voi_lut_function"])

    stored, output_photometric = _decode_dicom_frame(ds, index, transfer_syntax, subject)
    factor = _reduction_factor(columns, rows, max_side)
    # palette indices cannot be averaged: every factor-th pixel instead
    stored = stored[::factor, ::factor] if is_palette else _area_reduce(stored, factor)
    _note_working_size(metadata, stored)
    if is_grey:
        return _window_grey_dicom(ds, stored, window, metadata)
    if is_palette:
        return MedicalImage(_scale_to_unit(apply_color_lut(stored, ds)), metadata)
    if output_photometric.startswith("YBR_FULL"):  # pydicom normally converts while decoding; never twice
        stored = convert_color_space(stored, output_photometric, "RGB")
    bits = int(ds.get("BitsStored") or stored.dtype.itemsize * 8)
    return MedicalImage(_to_display_channels(_scale_to_unit(stored, bits)), metadata)


def _promote_frame_attributes(ds: Dataset, index: int) -> None:
    """Copy the shown frame's rescale, window and spacing from functional groups to the top level,
    so enhanced multi-frame files go through the same pipeline (per-frame values win over shared)."""
    for group_name in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        groups = ds.get(group_name)
        if not groups:
            continue
        group = groups[0] if group_name.startswith("Shared") else groups[min(index, len(groups) - 1)]
        for macro in _FRAME_MACROS:
            if group.get(macro):
                for element in group[macro].value[0]:
                    ds[element.tag] = element


def _transfer_syntax(ds: Dataset, subject: str) -> UID:
    """The file's transfer syntax; for a dataset without file meta, the one it was read with."""
    file_meta = getattr(ds, "file_meta", None)
    transfer_syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if transfer_syntax:
        return transfer_syntax
    pixel_element = next(ds[keyword] for keyword in _PIXEL_DATA_KEYWORDS if keyword in ds)
    if pixel_element.is_undefined_length:  # encapsulated: compressed, and we cannot know how
        raise ImageLoadError(
            f"{subject} holds compressed pixel data but does not say how it is compressed (no Transfer "
            "Syntax UID). Export it again from the source system."
        )
    implicit_vr, little_endian = ds.original_encoding
    if implicit_vr:
        transfer_syntax = ImplicitVRLittleEndian
    else:
        transfer_syntax = ExplicitVRLittleEndian if little_endian else ExplicitVRBigEndian
    ds.ensure_file_meta()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    return transfer_syntax


def _decode_dicom_frame(ds: Dataset, index: int, transfer_syntax: UID, subject: str) -> tuple[np.ndarray, str]:
    """Decode one frame; returns it with its photometric interpretation after decoding (pydicom
    converts YBR to RGB as it decodes)."""
    unsupported = ImageLoadError(
        f"{subject} is compressed with '{transfer_syntax.name}' ({transfer_syntax}), which this app cannot "
        "decode. Export it again uncompressed, or as JPEG, JPEG-LS, JPEG 2000 or RLE."
    )
    try:
        decoder = get_decoder(transfer_syntax)
    except NotImplementedError as exc:
        raise unsupported from exc
    if not decoder.is_available:
        raise unsupported
    try:
        stored, decoded_meta = decoder.as_array(ds, index=index, as_rgb=True)
    except Exception as exc:
        raise ImageLoadError(
            f"{subject} could not be decoded ({transfer_syntax.name}): its image data is incomplete or corrupt, "
            f"for example truncated by an interrupted download or copy. Export or copy it again. (Details: {exc})"
        ) from exc
    return stored, str(decoded_meta.get("photometric_interpretation", ""))


def _window_grey_dicom(
    ds: Dataset, stored: np.ndarray, window: tuple[float, float] | None, metadata: dict[str, Any]
) -> MedicalImage:
    """Modality LUT, then the VOI window (caller > file VOI LUT > file window > frame range)."""
    modality_values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float32)
    function = metadata["voi_lut_function"]
    voi_lut_items = ds.get("VOILUTSequence")
    file_window = _file_window(ds)
    if window is not None:
        center, width, source = float(window[0]), float(window[1]), "user"
    elif voi_lut_items and "LUTData" in voi_lut_items[0] and "LUTDescriptor" in voi_lut_items[0]:
        center, width, source = None, None, "file"
    elif file_window is not None:
        (center, width), source = file_window, "file"
    else:  # the frame's own range, mapped exactly onto [0, 1]
        low, high = float(modality_values.min()), float(modality_values.max())
        center, width, source, function = (low + high) / 2, max(high - low, 1e-6), "auto", "LINEAR_EXACT"
    metadata["window_source"] = source
    if center is None:  # a VOI LUT has no centre/width to report
        pixels = _apply_voi_lut_sequence(modality_values, ds)
    else:
        metadata.update(window_center=center, window_width=width)
        pixels = _window_to_unit(modality_values, center, width, function)
    if metadata.get("photometric_interpretation") == "MONOCHROME1":  # low values are white: invert
        pixels = 1.0 - pixels
    return MedicalImage(pixels, metadata, modality_values)


def _file_window(ds: Dataset) -> tuple[float, float] | None:
    """The first Window Center/Width pair in the file, if present and usable."""
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center in (None, "") or width in (None, ""):
        return None
    center = float(center[0] if isinstance(center, MultiValue) else center)
    width = float(width[0] if isinstance(width, MultiValue) else width)
    return (center, width) if np.isfinite(center) and np.isfinite(width) and width >= 1 else None


def _check_window(center: float, width: float, function: str) -> None:
    if not (np.isfinite(center) and np.isfinite(width)):
        raise ImageLoadError(f"The window centre and width must be numbers; got {center!r} and {width!r}.")
    if function == "LINEAR" and width < 1:
        raise ImageLoadError(f"The window width must be at least 1; got {width}. Choose a wider window.")
    if width <= 0:
        raise ImageLoadError(f"The window width must be above 0; got {width}. Choose a wider window.")


def _window_to_unit(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """Map modality values through a DICOM window (PS3.3 C.11.2.1.2/3) straight onto [0, 1].

    pydicom's apply_windowing gives float64 in the stored-value range; computing the same
    formulas here in float32 is ~10x faster, which matters when a slider re-windows a 2k x 2k image.
    """
    if function == "SIGMOID":
        with np.errstate(over="ignore"):
            return (1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))).astype(np.float32)
    if function == "LINEAR_EXACT":
        lower, span = center - width / 2, width
    else:  # LINEAR: the standard's half-pixel offsets
        lower, span = center - 0.5 - (width - 1) / 2, width - 1
    if span == 0:
        return (values > lower).astype(np.float32)
    return np.clip((values - np.float32(lower)) * np.float32(1.0 / span), 0.0, 1.0, dtype=np.float32)


def _apply_voi_lut_sequence(modality_values: np.ndarray, ds: Dataset) -> np.ndarray:
    """Apply the file's first VOI LUT, scaled to [0, 1] by the LUT's own output range
    (some files declare more output bits than their LUT uses)."""
    entries, first_mapped, _ = ds.VOILUTSequence[0].LUTDescriptor
    entries = entries or 65536
    table = apply_voi(np.arange(first_mapped, first_mapped + entries), ds).astype(np.float32)
    low, high = float(table.min()), float(table.max())
    table = (table - low) / (high - low) if high > low else np.zeros_like(table)
    positions = np.clip(np.rint(modality_values) - first_mapped, 0, entries - 1).astype(np.intp)
    return table[positions]


def _dicom_metadata(ds: Dataset, n_frames: int, index: int, transfer_syntax: UID, is_grey: bool) -> dict[str, Any]:
    """Display metadata from the allow-list only."""
    metadata: dict[str, Any] = {"format": "DICOM", "width": int(ds.Columns), "height": int(ds.Rows)}
    for key, keyword in _DICOM_DISPLAY_ATTRIBUTES.items():
        value = ds.get(keyword)
        if value not in (None, ""):
            metadata[key] = int(value) if isinstance(value, int) else str(value).strip()
    metadata.update(number_of_frames=n_frames, frame=index, transfer_syntax=transfer_syntax.name)
    spacing = ds.get("PixelSpacing")
    if spacing and len(spacing) == 2:
        metadata["pixel_spacing_mm"] = [float(spacing[0]), float(spacing[1])]  # (row, column) spacing
    if is_grey:  # how with_window will map values; windows do not apply to colour
        metadata["voi_lut_function"] = str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()
    return metadata


# --- Pillow and tifffile --------------------------------------------------------------------------


def _load_non_dicom(
    data: bytes, subject: str, frame: int | None, window: tuple[float, float] | None, max_pixels: int,
    max_side: int | None,
) -> MedicalImage:
    """Pillow formats, then TIFFs only tifffile reads, then DICOM without preamble."""
    try:
        with warnings.catch_warnings():  # our max_pixels check below is the limit that applies
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(f"{subject} is too large to decode safely ({exc}). Export a smaller version.") from exc
    except Exception as exc:  # not a format Pillow knows (or one it cannot open)
        if data[:4] not in _TIFF_MAGICS:
            return _load_dicom_without_preamble(data, subject, frame, window, max_pixels, max_side, exc)
        if window is not None:
            raise _window_not_applicable(subject, "a TIFF image") from None
        return _load_tiff_with_tifffile(data, subject, frame, max_pixels, max_side)

    if window is not None:
        raise _window_not_applicable(subject, f"a {img.format} image")
    n_frames = getattr(img, "n_frames", 1)
    index = _select_frame(frame, n_frames, subject)
    if index:
        img.seek(index)
    _check_pixel_count(img.width, img.height, max_pixels, subject, _pillow_bytes_per_pixel(img.mode))
    if img.format == "TIFF" and _tiff_loses_bits_in_pillow(img):
        return _load_tiff_with_tifffile(data, subject, index, max_pixels, max_side)
    file_width, file_height = img.size
    factor = _reduction_factor(file_width, file_height, max_side)
    try:
        if factor > 1 and img.format == "JPEG":  # decode at 1/2, 1/4 or 1/8 scale directly
            img.draft(img.mode, (-(-file_width // factor), -(-file_height // factor)))
        img.load()
    except Exception as exc:
        raise ImageLoadError(
            f"{subject} ({img.format}) could not be decoded: its data is incomplete or corrupt, for example "
            f"truncated by an interrupted download or copy. Export or copy it again. (Details: {exc})"
        ) from exc
    image_format = img.format
    reduced = _pillow_reduce(img, _reduction_factor(img.width, img.height, max_side))
    img = ImageOps.exif_transpose(reduced)  # phone and camera photos: show them upright
    transposed = img.size != reduced.size
    values, bits = _pillow_values(img)
    if img.mode.startswith("I;16"):  # Pillow cannot reduce 16-bit images: average the array instead
        values = _area_reduce(values, _reduction_factor(img.width, img.height, max_side))
    metadata = {
        "format": image_format,
        "width": file_height if transposed else file_width,
        "height": file_width if transposed else file_height,
        "bits_stored": bits,
        "number_of_frames": n_frames,
        "frame": index,
    }
    pixels = _to_display_channels(_scale_to_unit(values, bits))
    _note_working_size(metadata, pixels)
    return MedicalImage(pixels, metadata)


def _pillow_bytes_per_pixel(mode: str) -> int:
    """Bytes Pillow holds per decoded pixel: 1 for 1/L/P, 2 for 16-bit, 4 for everything else."""
    return 1 if mode in ("1", "L", "P") else 2 if mode.startswith("I;16") else 4


def _pillow_reduce(img: Image.Image, factor: int) -> Image.Image:
    """Reduce by ``factor``: box average where Pillow can; palette and bilevel images by nearest pixel
    (indices cannot be averaged); 16-bit images are left to :func:`_area_reduce`."""
    if factor == 1 or img.mode.startswith("I;16"):
        return img
    if img.mode in ("1", "P", "PA"):
        return img.resize((-(-img.width // factor), -(-img.height // factor)), Image.Resampling.NEAREST)
    return img.reduce(factor)



def _window_not_applicable(subject: str, description: str) -> ImageLoadError:
    return ImageLoadError(
        f"A window (centre/width) can only be applied to greyscale DICOM images; {_mid_sentence(subject)} "
        f"is {description}. Load it without a window."
    )


def _pillow_values(img: Image.Image) -> tuple[np.ndarray, int]:
    """The image as an array Pillow's mode implies, and its bit depth per sample."""
    mode = img.mode
    if mode == "1":
        return np.asarray(img.convert("L")), 8
    if mode in ("P", "PA"):  # look colours up in the palette; a grey palette stays grey
        has_alpha = mode == "PA" or "transparency" in img.info
        rgb = np.asarray(img.convert("RGBA" if has_alpha else "RGB"))
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]):
            return rgb[..., [0, 3]] if has_alpha else rgb[..., 0], 8
        return rgb, 8
    if mode.startswith("I;16"):
        return np.asarray(img), 16
    if mode == "I" and img.format == "PNG":  # older Pillow opens 16-bit PNG as 32-bit "I"
        return np.asarray(img).astype(np.uint16), 16
    if mode in ("L", "LA", "RGB", "RGBA", "I", "F"):
        return np.asarray(img), 32 if mode in ("I", "F") else 8
    # CMYK, YCbCr, LAB, premultiplied alpha ...: let Pillow convert them
    return np.asarray(img.convert("RGBA" if "A" in mode or "a" in mode else "RGB")), 8


def _tiff_loses_bits_in_pillow(img: Image.Image) -> bool:
    """Pillow reads multi-sample TIFFs of more than 8 bits per sample as 8-bit."""
    bits = img.tag_v2.get(258, 1)  # BitsPerSample
    bits = max(bits) if isinstance(bits, tuple) else bits
    return int(img.tag_v2.get(277, 1)) > 1 and bits > 8  # 277: SamplesPerPixel


def _load_tiff_with_tifffile(
    data: bytes, subject: str, frame: int | None, max_pixels: int, max_side: int | None
) -> MedicalImage:
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tiff:
            n_frames = len(tiff.pages)
            index = _select_frame(frame, n_frames, subject)
            page = tiff.pages[index]
            _check_pixel_count(page.imagewidth, page.imagelength, max_pixels, subject,
                               max(1, page.nbytes // max(1, page.imagewidth * page.imagelength)))
            values = page.asarray()
            axes, photometric, bits = page.axes, page.photometric, page.bitspersample
    except ImageLoadError:
        raise
    except Exception as exc:
        raise ImageLoadError(
            f"{subject} is a TIFF that could not be decoded; it may be truncated, corrupt or use a compression "
            f"that is not supported here. Save it again as an uncompressed TIFF or PNG. (Details: {exc})"
        ) from exc
    if axes.startswith("S"):  # planar configuration: samples first
        values = np.moveaxis(values, 0, -1)
    file_height, file_width = values.shape[:2]
    unit = _scale_to_unit(_area_reduce(values, _reduction_factor(file_width, file_height, max_side)), bits)
    if photometric == tifffile.PHOTOMETRIC.MINISWHITE:
        unit = 1.0 - unit
    pixels = _to_display_channels(unit)
    metadata = {
        "format": "TIFF",
        "width": file_width,
        "height": file_height,
        "bits_stored": bits,
        "number_of_frames": n_frames,
        "frame": index,
    }
    _note_working_size(metadata, pixels)
    return MedicalImage(pixels, metadata)


def _load_dicom_without_preamble(
    data: bytes,
    subject: str,
    frame: int | None,
    window: tuple[float, float] | None,
    max_pixels: int,
    max_side: int | None,
    pillow_error: Exception,
) -> MedicalImage:
    """Some systems write bare DICOM datasets without the 128-byte preamble and "DICM". Accept
    one only if it parses and has pixel data, so random files are not mistaken for DICOM."""
    try:
        with warnings.catch_warnings():  # parsing arbitrary bytes as DICOM warns a lot
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
        is_dicom_image = _has_pixel_data(ds)
    except Exception:
        is_dicom_image = False
    if not is_dicom_image:
        raise ImageLoadError(
            f"{subject} is not an image this app can read (PNG, JPEG, TIFF, BMP, GIF, WebP or DICOM with pixel "
            "data); it may be a different kind of file, or a damaged one. Choose an image file."
        ) from pillow_error
    return _load_dicom(ds, subject, frame, window, max_pixels, max_side)


# --- normalisation --------------------------------------------------------------------------------


def _scale_to_unit(values: np.ndarray, bits: int | None = None) -> np.ndarray:
    """Samples to float32 [0, 1]: unsigned integers by their full scale (2**bits - 1, default the
    dtype's maximum), bool as 0/1; floats and signed integers are kept if already in [0, 1], else
    stretched over their finite min-max (non-finite values become 0)."""
    if values.dtype == bool:
        return values.astype(np.float32)
    if values.dtype.kind == "u":
        dtype_bits = values.dtype.itemsize * 8
        full_scale = 2 ** min(bits or dtype_bits, dtype_bits) - 1
        return np.minimum(values.astype(np.float32) / np.float32(full_scale), np.float32(1.0))
    values = values.astype(np.float32)
    finite = np.isfinite(values)
    if not finite.any():
        raise ImageLoadError("The image holds no valid pixel values (all are missing or infinite).")
    low, high = float(values[finite].min()), float(values[finite].max())
    if low < 0 or high > 1:
        values = (values - low) / (high - low) if high > low else np.zeros_like(values)
    return np.where(finite, values, np.float32(0.0)).astype(np.float32)


def _to_display_channels(unit: np.ndarray) -> np.ndarray:
    """(H, W) grey or (H, W, 3) RGB from grey/RGB with or without alpha (composited on black)."""
    if unit.ndim == 3 and unit.shape[2] in (2, 4):
        unit = unit[..., :-1] * unit[..., -1:]
    if unit.ndim == 3 and unit.shape[2] == 1:
        unit = unit[..., 0]
    if unit.ndim == 2 or (unit.ndim == 3 and unit.shape[2] == 3):
        return np.ascontiguousarray(unit, dtype=np.float32)
    raise ImageLoadError(
        f"Images must be greyscale or RGB (optionally with alpha); this one has shape {unit.shape}."
    )
