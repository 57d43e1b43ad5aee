"""Text-prompted segmentation: one mask per phrase, on the original image.

Zero-shot (``zero-shot:<heatmap method>``): the phrase's grounding heatmap (see ``grounding``),
already scaled to [0, 1] per phrase, becomes a mask by one documented rule, ``mask_from_heatmap``:

1. threshold at ``HEATMAP_THRESHOLD`` (0.5: half the way from the map's minimum to its peak);
2. connected components (8-connected); keep those whose own peak reaches ``KEEP_PEAK`` (0.9), i.e.
   the region around the maximum and any region nearly as strong; drop the rest;
3. refinement (optional, on by default): fill holes inside the kept regions.

Trained (``trained``): the text-conditioned decoder shipped with the model
(``models.segmentation_decoder``, trained by ``train.segmentation``), probabilities thresholded at 0.5.
"""
from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

from medclip_core.dicom_seg import DicomSource, write_dicom_seg
from medclip_core.errors import TaskInputError
from medclip_core.models import default_model_name, load_model
from medclip_core.models.base import ClipModel, ImageLike
from medclip_core.models.ood import OodVerdict, ood_verdict
from medclip_core.models.segmentation_decoder import load_segmentation_decoder
from medclip_core.tasks.grounding import METHODS as HEATMAP_METHODS, check_phrases, ground, original_image
from medclip_core.tasks.saving import SavedFiles, SavesJson

HEATMAP_THRESHOLD = 0.5
KEEP_PEAK = 0.9
TRAINED = "trained"
SEGMENT_METHODS = tuple(f"zero-shot:{m}" for m in HEATMAP_METHODS) + (TRAINED,)


@dataclass
class SegmentationResult(SavesJson):
    """Boolean masks (P, H, W) on the original image, with the scores they were cut from; ``ood`` says whether
    the image is like the model's training images (:mod:`medclip_core.models.ood`)."""

    SAVED_NAME = "segmentation"

    phrases: list[str]
    method: str
    model: str
    masks: np.ndarray
    scores: np.ndarray          # heatmaps (zero-shot) or probabilities (trained), (P, H, W) in [0, 1]
    image: Image.Image
    seconds: float
    ood: OodVerdict | None = None

    def annotations(self) -> tuple[Image.Image, list[tuple[np.ndarray, str]]]:
        """``(image, [(mask, phrase), ...])``, the value ``gr.AnnotatedImage`` shows."""
        return self.image, [(mask.astype(np.float32), phrase) for mask, phrase in zip(self.masks, self.phrases)]

    def mask_png(self, index: int) -> bytes:
        """Mask ``index`` as an 8-bit PNG (255 inside, 0 outside), at the original resolution."""
        buffer = io.BytesIO()
        Image.fromarray(self.masks[index].astype(np.uint8) * 255).save(buffer, format="PNG")
        return buffer.getvalue()

    def save(self, out_dir: str | Path, *, prefix: str = "", dicom_source: DicomSource | None = None,
             deidentify: bool = True) -> SavedFiles:
        """Write into ``out_dir``: ``segmentation.json``, ``mask-N.png`` per phrase (see :meth:`mask_png`)
        and, given the DICOM image the masks were drawn on (a path or a pydicom Dataset), a DICOM SEG
        ``segmentation.dcm`` referencing it (:func:`~medclip_core.dicom_seg.write_dicom_seg`; a de-identified
        copy unless ``deidentify`` is False), each name after ``prefix``. Returns ``{"json", "masks": [PNGs]}`` and ``"dicom_seg"`` when written."""
        saved = super().save(out_dir, prefix=prefix)
        folder = Path(out_dir)
        masks = [folder / f"{prefix}mask-{index}.png" for index in range(len(self.phrases))]
        for index, path in enumerate(masks):
            path.write_bytes(self.mask_png(index))
        saved["masks"] = [str(path) for path in masks]
        if dicom_source is not None:
            seg = folder / f"{prefix}segmentation.dcm"
            saved["dicom_seg"] = str(write_dicom_seg(dicom_source, dict(zip(self.phrases, self.masks)), seg,
                                                     deidentify=deidentify))
        return saved

    def to_dict(self) -> dict[str, Any]:
        areas = self.masks.reshape(len(self.masks), -1).mean(axis=1)
        return {"model": self.model, "method": self.method, "phrases": self.phrases,
                "size": [self.image.width, self.image.height],
                "area_fraction": [round(float(a), 5) for a in areas], "seconds": round(self.seconds, 4),
                "ood": self.ood.to_dict() if self.ood else None}



def mask_from_heatmap(heatmap: np.ndarray, threshold: float = HEATMAP_THRESHOLD, keep_peak: float = KEEP_PEAK,
                      refine: bool = True) -> np.ndarray:
    """A [0, 1] heatmap -> boolean mask by the rule in the module docstring (all-zero map -> empty)."""
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.max() <= 0:
        return np.zeros(heatmap.shape, dtype=bool)
    labels, count = ndimage.label(heatmap >= threshold * heatmap.max(), structure=np.ones((3, 3)))
    if count == 0:
        return np.zeros(heatmap.shape, dtype=bool)
    peaks = ndimage.maximum(heatmap, labels, index=np.arange(1, count + 1))
    kept = np.flatnonzero(np.asarray(peaks) >= keep_peak * heatmap.max()) + 1
    mask = np.isin(labels, kept)
    return ndimage.binary_fill_holes(mask) if refine else mask


def segment(image: ImageLike, phrases: Sequence[str], model: str | ClipModel | None = None,
            method: str = "zero-shot:similarity", refine: bool = True) -> SegmentationResult:
    """One mask per phrase by ``method`` (one of ``SEGMENT_METHODS``)."""
    if method not in SEGMENT_METHODS:
        raise TaskInputError(f"Unknown segmentation method '{method}'; choose one of {', '.join(SEGMENT_METHODS)}.")
    phrases = check_phrases(phrases)
    clip = model if isinstance(model, ClipModel) else load_model(model or default_model_name())
    started = time.perf_counter()
    if method == TRAINED:
        scores = load_segmentation_decoder(clip).predict(clip, image, phrases)
        masks = scores >= 0.5
        base = original_image(image)
        verdict = ood_verdict(clip, clip.encode_image([image]))  # the decoder reads patch features only
    else:
        grounding = ground(image, phrases, model=clip, method=method.split(":", 1)[1])
        scores, base, verdict = grounding.maps, grounding.image, grounding.ood
        masks = np.stack([mask_from_heatmap(m, refine=refine) for m in scores])
    return SegmentationResult(phrases, method, clip.card.name, masks, scores, base, time.perf_counter() - started,
                              verdict)


# Plausibility of a mask as a finding's outline: the Segment tab marks the others and keeps them out of
# the DICOM SEG (a zero-shot map thresholded on a non-chest image can cover most of it).
MAX_PLAUSIBLE_AREA = 0.5      # a finding's outline covering more than half the image is not an outline
MIN_INSIDE_BODY = 0.5         # nor one lying mostly on the air around the body
BACKGROUND_LEVEL = 0.1        # air: the darkest tenth of the image's range, connected to its border


def body_mask(image: Image.Image) -> np.ndarray:
    """The body on a radiograph: everything but the dark air connected to the image border (the whole
    image when there is no such border, e.g. a tightly cropped film)."""
    grey = np.asarray(image.convert("L"), dtype=np.float32)
    low, high = np.percentile(grey, [1, 99])
    dark, _ = ndimage.label(grey <= low + BACKGROUND_LEVEL * max(high - low, 1.0))
    border = np.unique(np.concatenate([dark[0], dark[-1], dark[:, 0], dark[:, -1]]))
    body = ~np.isin(dark, border[border > 0])
    return body if body.mean() > 0.1 else np.ones_like(body)


def implausible_masks(result: SegmentationResult) -> dict[str, str]:
    """Phrase -> why its mask cannot be the finding's outline (empty masks are just empty, not listed)."""
    body = body_mask(result.image)
    reasons = {}
    for phrase, mask in zip(result.phrases, result.masks):
        area = float(mask.mean())
        if area > MAX_PLAUSIBLE_AREA:
            reasons[phrase] = f"covers {area:.0%} of the image"
        elif mask.any() and (mask & body).sum() < MIN_INSIDE_BODY * mask.sum():
            reasons[phrase] = f"lies mostly outside the body ({1 - (mask & body).sum() / mask.sum():.0%} of it)"
    return reasons
