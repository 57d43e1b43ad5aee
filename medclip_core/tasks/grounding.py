"""Where a model looks for a phrase: text-grounding heatmaps on the original image.

Methods (``METHODS``), each a map per phrase, drawn back through the preprocessing crop/resize
onto the original image (for DICOM: the windowed original; at most ``WORKING_MAX_SIDE`` px on its
longest side, see ``original_image``), values in [0, 1]:

* ``similarity`` — cosine similarity of each projected patch token with the phrase embedding,
  lightly smoothed (3x3 binomial). Patch grids are coarse (16 px cells at 224 px), so for small
  models (``SMALL_MODEL_PARAMETERS``, or ``fine_grid=True``) four passes with the input shifted by
  a quarter stride up/down and left/right are interleaved into a grid twice as fine (one batch of
  four); hub-size models take one pass by default (4x cheaper; pointing game in docs/grounding.md).
  ``surgery`` uses the same grid.
* ``surgery`` — CLIP Surgery (Li et al. 2023): feature surgery subtracts what all phrases of the
  set share (the mean phrase embedding; with one phrase, a neutral prompt's embedding), and for
  ViT towers whose blocks the model opens up (``ClipModel.vit_parts``) the patch tokens come from a
  parallel value-value attention path over the last half of the blocks (no FFN), which keeps tokens
  local instead of global.
* ``gradcam`` — Grad-CAM (Selvaraju et al.) of the image-phrase cosine on the last feature map
  (CNNs) or the tokens entering the last block (ViTs).
* ``gscorecam`` — gScoreCAM (Chen et al. 2022): the channels with the largest Grad-CAM weights
  (32 for small models, 8 for hub-size ones) mask the input, all in one batch; each is weighted by
  the softmax of the masked image's score.
* ``relevance`` — Chefer et al. 2021 gradient-weighted attention relevance for ViTs with a class
  token: R = I, then R += mean_heads((grad * attention)+) @ R per block; the map is the class
  row over the patches.

``method_support(model)`` says which methods a model allows and why not. Everything inside the
image tower comes through the model interface (``vit_parts``, ``gradcam_layer``, ``patch_grid``), so
this module knows no backend.
"""
from __future__ import annotations

import io
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from medclip_core.errors import TaskInputError
from medclip_core.io import WORKING_MAX_SIDE, MedicalImage
from medclip_core.models import default_model_name, load_model
from medclip_core.models.base import (
    ClipModel, ImageLike, PatchTokensUnsupported, TowerPartUnsupported, ViTParts, image_to_rgb_array,
)
from medclip_core.models.geometry import heatmap_from_patches
from medclip_core.models.ood import OodVerdict, ood_verdict
from medclip_core.tasks import check_text_items
from medclip_core.tasks.saving import SavedFiles, SavesJson

METHODS = ("similarity", "surgery", "gradcam", "gscorecam", "relevance")
METHOD_TITLES = {
    "similarity": "Patch-token similarity",
    "surgery": "CLIP Surgery (feature surgery + v-v attention)",
    "gradcam": "Grad-CAM",
    "gscorecam": "gScoreCAM",
    "relevance": "Attention relevance (Chefer et al.)",
}
MAX_PHRASES = 16
MAX_PHRASE_CHARS = 300
GSCORECAM_CHANNELS = 32
# Defaults that scale with the model's cost (docs/grounding.md has the pointing game of each): a
# model under SMALL_MODEL_PARAMETERS (the embedded ones: 28 M) gets the fine grid of four shifted
# passes and 32 gScoreCAM channels; a hub-size one (BiomedCLIP: 196 M) one pass and 8 channels, so
# its maps cost <= 2x (similarity, Surgery) and <= 12x (gScoreCAM) one image forward.
SMALL_MODEL_PARAMETERS = 60_000_000
GSCORECAM_CHANNELS_LARGE_MODEL = 8
NEUTRAL_PROMPT = "an image"
_BINOMIAL = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16.0


@dataclass
class GroundingResult(SavesJson):
    """One map per phrase over the original image, plus the raw patch-grid scores; ``ood`` says whether the
    image is like the model's training images (:mod:`medclip_core.models.ood`)."""

    SAVED_NAME = "heatmap"

    phrases: list[str]
    method: str
    model: str
    maps: np.ndarray            # (P, H, W) float32 in [0, 1] on the original image
    grids: np.ndarray           # (P, gh, gw) raw scores on the model's grid
    image: Image.Image          # the original (windowed) image the maps lie on
    seconds: float
    notes: list[str]
    ood: OodVerdict | None = None

    def overlay(self, index: int = 0, opacity: float = 0.5) -> Image.Image:
        """The image with map ``index`` blended on top in a blue-to-red colour scale."""
        return overlay_heatmap(self.image, self.maps[index], opacity)

    def npy_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.save(buffer, self.maps)
        return buffer.getvalue()

    def heatmap_image(self, index: int) -> Image.Image:
        """Map ``index`` as an 8-bit greyscale image (0 -> 0, 1 -> 255) at the original resolution."""
        return Image.fromarray((self.maps[index] * 255).round().astype(np.uint8))

    def save(self, out_dir: str | Path, *, prefix: str = "", opacity: float = 0.5) -> SavedFiles:
        """Write into ``out_dir``: ``heatmap.json``, the maps as ``heatmaps.npy`` (P, H, W float32), and per
        phrase ``heatmap-N.png`` (8-bit map) and ``overlay-N.png`` (blended at ``opacity``), each name
        after ``prefix``. Returns ``{"json", "npy", "png": [maps], "overlays": [overlays]}``."""
        saved = super().save(out_dir, prefix=prefix)
        folder = Path(out_dir)
        npy = folder / f"{prefix}heatmaps.npy"
        npy.write_bytes(self.npy_bytes())
        maps, overlays = [], []
        for index in range(len(self.phrases)):
            maps.append(folder / f"{prefix}heatmap-{index}.png")
            overlays.append(folder / f"{prefix}overlay-{index}.png")
            self.heatmap_image(index).save(maps[-1])
            self.overlay(index, opacity).save(overlays[-1])
        return {**saved, "npy": str(npy), "png": list(map(str, maps)), "overlays": list(map(str, overlays))}

    def to_dict(self) -> dict[str, Any]:
        peaks = [np.unravel_index(int(m.argmax()), m.shape) for m in self.maps]
        return {"model": self.model, "method": self.method, "phrases": self.phrases,
                "size": [self.image.width, self.image.height], "grid": list(self.grids.shape[1:]),
                "peaks_xy": [[int(x), int(y)] for y, x in peaks], "seconds": round(self.seconds, 4),
                "notes": self.notes, "ood": self.ood.to_dict() if self.ood else None}


def overlay_heatmap(image: Image.Image, heatmap: np.ndarray, opacity: float = 0.5) -> Image.Image:
    """Blend a [0, 1] map onto a greyscale/RGB image (a perceptual blue-yellow-red ramp)."""
    ramp = np.array([[0.0, 0.0, 0.5], [0.0, 0.4, 1.0], [0.2, 0.9, 0.6], [1.0, 0.9, 0.0], [0.9, 0.1, 0.0]],
                    dtype=np.float32)
    position = np.clip(heatmap, 0, 1, dtype=np.float32) * np.float32(len(ramp) - 1)
    lower = np.floor(position).astype(np.intp).clip(0, len(ramp) - 2)
    frac = (position - lower)[..., None]
    colour = ramp[lower] * (1 - frac) + ramp[lower + 1] * frac
    base = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    alpha = np.float32(np.clip(opacity, 0.0, 1.0)) * (0.35 + 0.65 * np.clip(heatmap, 0, 1, dtype=np.float32))[..., None]
    blended = base * (1 - alpha) + colour * alpha
    return Image.fromarray((blended * 255).round().astype(np.uint8))


def check_phrases(phrases: Sequence[str]) -> list[str]:
    """Clean a phrase list; refuse an empty or oversized one with a readable message."""
    return check_text_items(phrases, noun="phrase", max_items=MAX_PHRASES, max_chars=MAX_PHRASE_CHARS,
                            example="left pleural effusion")


def parse_phrases(text: str) -> list[str]:
    """Phrases from free text: one per line (or separated by ';')."""
    return check_phrases([p for line in (text or "").splitlines() for p in line.split(";")])


# -- which model allows what -----------------------------------------------------------------------
def _vit_parts_or_reason(model: ClipModel) -> ViTParts | str:
    """The model's ViT parts, or why it has none (the model says, see ``ClipModel.vit_parts``)."""
    try:
        return model.vit_parts()
    except TowerPartUnsupported as reason:
        return str(reason)


def method_support(model: ClipModel) -> dict[str, str | None]:
    """Method -> None when ``model`` allows it, else the reason it does not (asked of the model's interface)."""
    if not model.supports_patch_tokens:
        reason = (f"'{model.card.name}' has no per-patch embeddings in the joint space "
                  "(e.g. an attention-pooled ResNet), so no heatmap method applies.")
        return {method: reason for method in METHODS}
    support: dict[str, str | None] = {m: None for m in METHODS}
    try:
        model.gradcam_layer()
    except TowerPartUnsupported as reason:
        support["gradcam"] = support["gscorecam"] = str(reason)
    parts = _vit_parts_or_reason(model)
    if isinstance(parts, str) or not parts.class_token_pooled:
        why = parts if isinstance(parts, str) else f"'{model.card.name}' pools its ViT tokens another way."
        support["relevance"] = f"needs a ViT image tower pooled by its class token: {why}"
    return support


# -- the methods -----------------------------------------------------------------------------------
MethodOutput = tuple[torch.Tensor, Optional[torch.Tensor]]
"""A method's (P, gh, gw) maps, and the image's unit embedding (D,) when its passes computed it (the
out-of-distribution verdict then needs no pass of its own)."""

def _smooth(grid: torch.Tensor) -> torch.Tensor:
    """(P, gh, gw) -> same, convolved with a 3x3 binomial kernel (edges replicated)."""
    padded = F.pad(grid[:, None], (1, 1, 1, 1), mode="replicate")
    return F.conv2d(padded, _BINOMIAL.to(grid)[None, None])[:, 0]


def shifted_views(pixels: torch.Tensor, grid: int) -> torch.Tensor:
    """Four copies of one (1, 3, S, S) input shifted by -/+ a quarter patch stride in y and x
    (edges replicated), ordered (y-, x-), (y-, x+), (y+, x-), (y+, x+)."""
    size = pixels.shape[-1]
    quarter = max(1, round(size / grid / 4))
    padded = F.pad(pixels.float(), (quarter,) * 4, mode="replicate")
    views = [padded[..., quarter + dy:quarter + dy + size, quarter + dx:quarter + dx + size]
             for dy in (-quarter, quarter) for dx in (-quarter, quarter)]
    return torch.cat(views).to(pixels.dtype)


def interleave_views(tokens: torch.Tensor) -> torch.Tensor:
    """(4, g, g, D) tokens of ``shifted_views`` -> (2g, 2g, D): cell centres every half stride,
    at the positions a uniform grid of twice the resolution has."""
    _, grid, _, dim = tokens.shape
    fine = tokens.new_empty(2 * grid, 2 * grid, dim)
    for index, (row, col) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        fine[row::2, col::2] = tokens[index]
    return fine


TokensOf = Callable[[torch.Tensor, bool], tuple[Optional[torch.Tensor], torch.Tensor]]
"""((B, 3, S, S) pixels, whether the image embeddings are wanted) -> (unit image embeddings (B, D) or
None, unit patch tokens (B, gh, gw, D))."""


def _grid_tokens(model: ClipModel, pixels: torch.Tensor, tokens_of: TokensOf,
                 fine_grid: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Unit-norm patch tokens (gh, gw, D) from one pass, or with ``fine_grid`` (2gh, 2gw, D) from four
    shifted passes (one batch, four times the cost); and the image's unit embedding when one pass of
    the unshifted image gave it (None otherwise)."""
    if not fine_grid:
        pooled, tokens = tokens_of(pixels, True)
        return tokens[0], None if pooled is None else pooled[0]
    return interleave_views(tokens_of(shifted_views(pixels, model.patch_grid[0]), False)[1]), None


def _patch_tokens(model: ClipModel, pixels: torch.Tensor, pooled: bool) -> tuple[torch.Tensor | None, torch.Tensor]:
    """:data:`TokensOf` of the model's own patch tokens (one pass for both where the backend allows)."""
    return model.encode_image_and_patches(pixels) if pooled else (None, model.patch_tokens(pixels))


def _similarity(model: ClipModel, pixels: torch.Tensor, text: torch.Tensor, phrases: list[str],
                fine_grid: bool = False) -> MethodOutput:
    patches, embedding = _grid_tokens(model, pixels, partial(_patch_tokens, model), fine_grid)
    return _smooth(torch.einsum("hwd,pd->phw", patches, text)), embedding


def _surgery(model: ClipModel, pixels: torch.Tensor, text: torch.Tensor, phrases: list[str],
             fine_grid: bool = False, neutral: torch.Tensor | None = None) -> MethodOutput:
    """``neutral``: the embedding of ``NEUTRAL_PROMPT``, removed as what a single phrase shares with
    nothing (CLIP Surgery uses the empty prompt, which some tokenizers turn into no tokens at all);
    a set of phrases shares their mean."""
    parts = _vit_parts_or_reason(model)
    tokens_of = partial(_patch_tokens, model) if isinstance(parts, str) else \
        (lambda batch, _: _value_value_tokens(model, parts, batch))
    patches, embedding = _grid_tokens(model, pixels, tokens_of, fine_grid)
    redundant = text.mean(dim=0) if len(text) > 1 or neutral is None else neutral
    directions = text - redundant[None]
    return torch.einsum("hwd,pd->phw", patches, directions), embedding


def _value_value_tokens(model: ClipModel, parts: ViTParts,
                        pixels: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
    """CLIP Surgery's dual path: the last half of the blocks also feed a v-v attention path
    (softmax(v v^T) v, no FFN) whose tokens replace the ordinary ones. Returns (the unit image embedding
    (B, D) of the ordinary path when the tower pools its class token, else None; v-v tokens (B, gh, gw, D),
    unit norm)."""
    start = len(parts.blocks) // 2
    with torch.inference_mode():
        x = parts.embed(pixels)
        surgery = None
        for index, block in enumerate(parts.blocks):
            if index >= start:
                _, _, v = block.attention_qkv(x)
                scale = v.shape[-1] ** -0.5
                vv = block.attention_out((v @ v.transpose(-2, -1) * scale).softmax(dim=-1) @ v)
                surgery = (x if surgery is None else surgery) + vv
            x = block.forward(x)
        tokens = F.normalize(parts.head(surgery)[:, parts.prefix_tokens:].float(), dim=-1)
        pooled = F.normalize(parts.head(x[:, :1])[:, 0].float(), dim=-1) if parts.class_token_pooled else None
    return pooled, tokens.reshape(len(tokens), *model.patch_grid, -1)


def _activations_and_grads(model: ClipModel, pixels: torch.Tensor,
                           text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The Grad-CAM layer's map (C, h, w), the gradient of each phrase's cosine score (P, C, h, w) and
    the image's unit embedding (D,)."""
    target = model.gradcam_layer()
    captured: list[torch.Tensor] = []
    handle = target.register_forward_hook(lambda _m, _i, out: captured.append(out[0] if isinstance(out, tuple) else out))
    try:
        with torch.enable_grad():
            embedding = F.normalize(model.image_features(pixels.requires_grad_(True)).float(), dim=-1)[0]
            scores = text @ embedding
            activation = captured[0]
            grads = [torch.autograd.grad(score, activation, retain_graph=True)[0] for score in scores]
    finally:
        handle.remove()
    feature_map = model.gradcam_feature_map(activation.detach().float())[0]
    return feature_map, torch.stack([model.gradcam_feature_map(g.float())[0] for g in grads]), embedding.detach()


def _gradcam(model: ClipModel, pixels: torch.Tensor, text: torch.Tensor, phrases: list[str]) -> MethodOutput:
    feature_map, grads, embedding = _activations_and_grads(model, pixels, text)
    weights = grads.mean(dim=(2, 3))                                   # (P, C)
    return torch.relu(torch.einsum("pc,chw->phw", weights, feature_map)), embedding


def _gscorecam(model: ClipModel, pixels: torch.Tensor, text: torch.Tensor, phrases: list[str],
               channels_kept: int = GSCORECAM_CHANNELS) -> MethodOutput:
    feature_map, grads, embedding = _activations_and_grads(model, pixels, text)
    weights = grads.mean(dim=(2, 3))
    size = pixels.shape[-2:]
    cams = []
    with torch.inference_mode():
        for p in range(len(text)):
            channels = weights[p].topk(min(channels_kept, len(weights[p]))).indices
            maps = feature_map[channels]
            low = maps.amin(dim=(1, 2), keepdim=True)
            span = (maps.amax(dim=(1, 2), keepdim=True) - low).clamp_min(1e-8)
            masks = F.interpolate(((maps - low) / span)[:, None], size=size, mode="bilinear", align_corners=False)
            masked = pixels.float() * masks                     # (K, 3, S, S): 0 is the mean pixel
            scores = model.encode_image(masked.to(pixels.dtype)) @ text[p]
            channel_weights = (scores * model.logit_scale).softmax(dim=0)
            cams.append(torch.relu(torch.einsum("k,khw->hw", channel_weights, maps)))
    return torch.stack(cams), embedding


def vit_forward_with_attention(model: ClipModel, pixels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The ViT image tower run block by block with explicit attention: (unit image embedding (B, D),
    attention probabilities per block (B, heads, N, N), kept in the graph for their gradients)."""
    parts = model.vit_parts()
    attentions: list[torch.Tensor] = []
    x = parts.embed(pixels)
    for block in parts.blocks:
        q, k, v = block.attention_qkv(x)
        probs = (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(dim=-1)
        attentions.append(probs)
        x = x + block.layer_scale_1(block.attention_out(probs @ v))
        x = x + block.mlp_branch(x)
    return F.normalize(parts.head(x[:, 0]).float(), dim=-1), attentions


def _relevance(model: ClipModel, pixels: torch.Tensor, text: torch.Tensor, phrases: list[str]) -> MethodOutput:
    """Chefer et al.: propagate gradient-weighted attention from the class token to the patches."""
    prefix = model.vit_parts().prefix_tokens
    with torch.enable_grad():
        embedding, attentions = vit_forward_with_attention(model, pixels)
        scores = text @ embedding[0]
        maps = []
        for score in scores:
            grads = torch.autograd.grad(score, attentions, retain_graph=True)
            relevance = torch.eye(attentions[0].shape[-1])
            for probs, grad in zip(attentions, grads):
                weighted = (grad[0] * probs[0].detach()).clamp_min(0).mean(dim=0).float()
                relevance = relevance + weighted @ relevance
            maps.append(relevance[0, prefix:].reshape(model.patch_grid))
    return torch.stack(maps), embedding[0].detach()


_METHOD_FUNCTIONS = {"similarity": _similarity, "surgery": _surgery, "gradcam": _gradcam,
                     "gscorecam": _gscorecam, "relevance": _relevance}


def original_image(image: ImageLike) -> Image.Image:
    """The image the maps are drawn on: for DICOM the windowed original, at most ``WORKING_MAX_SIDE``
    pixels on its longest side (what :func:`~medclip_core.io.load_image` keeps), so maps, masks and
    overlays cost at most ~4 MiB each whatever the input's size."""
    if isinstance(image, MedicalImage):
        base = image.to_pil()
    elif isinstance(image, Image.Image):
        base = image
    else:
        base = Image.fromarray((image_to_rgb_array(image) * 255).round().astype(np.uint8))
    if max(base.size) > WORKING_MAX_SIDE:
        base = base.copy()
        base.thumbnail((WORKING_MAX_SIDE, WORKING_MAX_SIDE), Image.Resampling.BOX)
    return base


def ground(image: ImageLike, phrases: Sequence[str], model: str | ClipModel | None = None,
           method: str = "similarity", *, fine_grid: bool | None = None,
           gscorecam_channels: int | None = None) -> GroundingResult:
    """One heatmap per phrase for ``image`` by ``method`` (see ``METHODS``).

    ``fine_grid`` (similarity, surgery): four shifted passes for a grid twice as fine, at four times
    the cost. ``gscorecam_channels``: how many channels gScoreCAM masks the input with (one pass each).
    ``None``: by the model's size (see ``SMALL_MODEL_PARAMETERS``)."""
    if method not in METHODS:
        raise TaskInputError(f"Unknown heatmap method '{method}'; choose one of {', '.join(METHODS)}.")
    phrases = check_phrases(phrases)
    clip = model if isinstance(model, ClipModel) else load_model(model or default_model_name())
    reason = method_support(clip)[method]
    if reason:
        if not clip.supports_patch_tokens:
            raise PatchTokensUnsupported(reason)
        raise TaskInputError(f"{METHOD_TITLES[method]} is not available: {reason}")
    base = original_image(image)
    started = time.perf_counter()
    pixels = clip.as_pixels([image])
    small = clip.num_parameters() < SMALL_MODEL_PARAMETERS
    fine_grid = small if fine_grid is None else fine_grid
    channels = (GSCORECAM_CHANNELS if small else GSCORECAM_CHANNELS_LARGE_MODEL) if gscorecam_channels is None \
        else gscorecam_channels
    with_neutral = method == "surgery" and len(phrases) == 1   # one text pass for both
    text = clip.encode_text(phrases + [NEUTRAL_PROMPT] if with_neutral else phrases).clone()  # a normal
    # tensor: gradient methods use it in autograd
    options = {"similarity": {"fine_grid": fine_grid},
               "surgery": {"fine_grid": fine_grid, "neutral": text[-1] if with_neutral else None},
               "gscorecam": {"channels_kept": channels}}.get(method, {})
    text = text[:len(phrases)]
    grids, embedding = _METHOD_FUNCTIONS[method](clip, pixels, text, phrases, **options)
    grids = grids.float().cpu().numpy()
    geometry = clip.geometry(base.width, base.height)
    maps = np.stack([heatmap_from_patches(grid, geometry, base.width, base.height) for grid in grids])
    notes = []
    if method == "surgery" and isinstance(_vit_parts_or_reason(clip), str):
        notes.append("feature surgery only: the v-v attention path needs a ViT image tower whose blocks the "
                     "backend opens up.")
    if len(phrases) == 1 and method == "surgery":
        notes.append(f"one phrase: the embedding of '{NEUTRAL_PROMPT}' is removed as the shared part.")
    # from the method's own pass where it had one (not the four shifted passes of fine_grid)
    verdict = ood_verdict(clip, clip.encode_image(pixels) if embedding is None else embedding)
    return GroundingResult(phrases, method, clip.card.name, maps, grids, base,
                           time.perf_counter() - started, notes, verdict)
