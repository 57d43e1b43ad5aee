"""A light text-conditioned mask decoder on a registry model's frozen image features.

In the spirit of CLIPSeg (Lüddecke & Ecker, 2022) and the CLIP-driven universal model (Liu et al.,
2023): the image encoder and the text tower stay frozen; the phrase's text embedding conditions a
small decoder that turns the patch tokens into a mask. Per phrase the decoder sees

- the projected patch tokens (gh x gw x D, L2-normalised, the same space as the text), reduced
  to C channels, with their cosine similarity to the phrase as an extra channel (the zero-shot
  map is the prior), then FiLM-modulated by the text (a per-channel scale and shift);
- where the tower is a timm ResNet, its stride-8 feature map (``layer2``) as a skip connection,
  again FiLM-modulated by the text;
- a tiny trainable stem on the input pixels at stride 4, next to which the coarse stride-8 logit
  is refined, for boundaries finer than the frozen features give.

The decoder outputs mask logits at a quarter of the model's input size; ``predict`` draws them
back through the preprocessing crop/resize onto the original image (bilinear, as the heatmaps
do) and returns probabilities. Image-side work is shared by all phrases of one image.

Saved as ``segmentation_config.json`` + ``decoder.safetensors``; for a checkpoint model the
decoder lives in its folder's ``segmentation/`` subfolder (``assets/medclip-phantom/segmentation``
for the default), which :func:`load_segmentation_decoder` finds by model name.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medclip_core.errors import MedclipError, ModelUnavailableError
from medclip_core.models.base import ClipModel, ImageLike, PatchTokensUnsupported, image_to_rgb_array
from medclip_core.models.geometry import bilinear_weights

CONFIG_NAME = "segmentation_config.json"
WEIGHTS_NAME = "decoder.safetensors"
DECODER_SUBDIR = "segmentation"


@dataclass(frozen=True)
class DecoderConfig:
    """Shapes of the frozen features the decoder was built for, and its own widths."""

    model_name: str
    embed_dim: int           # D of patch tokens and text embeddings
    grid: int                # gh = gw of the patch tokens
    skip_channels: int = 0   # channels of the stride-8 skip map (0: none)
    width: int = 32          # channels at the patch-grid stage
    skip_width: int = 24     # channels at the skip stage
    fine_width: int = 8      # channels of the stride-4 refinement
    stem_width: int = 16     # channels of the trainable pixel stem
    image_size: int = 224

    @property
    def out_size(self) -> int:
        return self.image_size // 4


class _FiLM(nn.Module):
    """Per-channel scale and shift from the text embedding: ``x * (1 + gamma) + beta``."""

    def __init__(self, text_dim: int, channels: int) -> None:
        super().__init__()
        self.proj = nn.Linear(text_dim, 2 * channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.proj(text).chunk(2, dim=-1)
        return x * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.GroupNorm(4, c_out), nn.GELU())


class TextConditionedDecoder(nn.Module):
    """(image features, phrase embeddings) -> mask logits at a quarter of the input size."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.tokens_in = nn.Conv2d(c.embed_dim, c.width, 1)
        self.text_in = nn.Sequential(nn.Linear(c.embed_dim, c.embed_dim), nn.GELU())
        self.film_grid = _FiLM(c.embed_dim, c.width)
        self.grid_block = nn.Sequential(_conv(c.width + 1, c.width), _conv(c.width, c.width))
        self.skip_in = nn.Conv2d(c.skip_channels, c.skip_width, 1) if c.skip_channels else None
        self.film_skip = _FiLM(c.embed_dim, c.skip_width)
        self.skip_block = nn.Sequential(_conv(c.width + (c.skip_width if c.skip_channels else 0), c.skip_width),
                                        _conv(c.skip_width, c.skip_width))
        self.coarse_head = nn.Conv2d(c.skip_width, 1, 1)
        self.stem = nn.Sequential(_conv(3, c.stem_width, 2), _conv(c.stem_width, c.stem_width, 2))
        # refinement at stride 4: the upsampled coarse logit next to pixel features -> a correction
        self.refine = nn.Sequential(nn.Conv2d(1 + c.stem_width, c.fine_width, 3, padding=1), nn.GELU(),
                                    nn.Conv2d(c.fine_width, 1, 1))
        self.sim_scale = nn.Parameter(torch.tensor(10.0))

    def image_side(self, tokens: torch.Tensor, skip: torch.Tensor | None,
                   pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Phrase-independent work, once per image: (normalised tokens, reduced tokens, reduced skip, stem)."""
        tokens = F.normalize(tokens.float(), dim=-1).permute(0, 3, 1, 2)  # (B, D, g, g)
        reduced = self.tokens_in(tokens)
        skip_features = self.skip_in(skip.float()) if self.skip_in is not None and skip is not None else None
        return tokens, reduced, skip_features, self.stem(pixels.float())

    def forward(self, tokens: torch.Tensor, skip: torch.Tensor | None, pixels: torch.Tensor,
                text: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
        """Queries are (image_index[q], text[q]) pairs; returns (Q, S/4, S/4) logits.

        ``tokens`` (B, g, g, D) patch tokens, ``skip`` (B, C, 2g, 2g) or None, ``pixels`` (B, 3, S, S)
        normalised model input, ``text`` (Q, D) L2-normalised phrase embeddings.
        """
        norm_tokens, reduced, skip_features, stem = self.image_side(tokens, skip, pixels)
        return self.decode(norm_tokens, reduced, skip_features, stem, text, image_index)

    def decode(self, norm_tokens: torch.Tensor, reduced: torch.Tensor, skip_features: torch.Tensor | None,
               stem: torch.Tensor, text: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
        text = F.normalize(text.float(), dim=-1)
        similarity = torch.einsum("qdhw,qd->qhw", norm_tokens[image_index], text)[:, None] * self.sim_scale
        conditioning = self.text_in(text)
        x = self.film_grid(reduced[image_index], conditioning)
        x = self.grid_block(torch.cat([x, similarity], dim=1))
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        if skip_features is not None:
            x = torch.cat([x, self.film_skip(skip_features[image_index], conditioning)], dim=1)
        coarse = self.coarse_head(self.skip_block(x))
        coarse = F.interpolate(coarse, size=stem.shape[-2:], mode="bilinear", align_corners=False)
        return (coarse + self.refine(torch.cat([coarse, stem[image_index]], dim=1)))[:, 0]


def _timm_skip_layer(model: ClipModel) -> nn.Module | None:
    """The stride-8 stage of a timm ResNet image tower, if the model has one."""
    trunk = getattr(getattr(model.module, "visual", None), "trunk", None)
    return getattr(trunk, "layer2", None) if trunk is not None and hasattr(trunk, "layer3") else None


@torch.inference_mode()
def frozen_features(model: ClipModel, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, 3, S, S) preprocessed pixels -> (patch tokens (B, g, g, D), stride-8 skip map or None).

    One forward pass of the frozen image tower; the skip map is caught with a forward hook on a
    timm ResNet's ``layer2`` (other towers give None). Raises :class:`PatchTokensUnsupported` for
    towers without patch tokens.
    """
    if not model.supports_patch_tokens:
        raise PatchTokensUnsupported(
            f"Model '{model.card.name}' has no patch tokens in the joint space, so it cannot drive a "
            "segmentation decoder.")
    layer = _timm_skip_layer(model)
    caught: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: caught.append(out)) if layer is not None else None
    try:
        tokens = model.patch_tokens(pixels)
    finally:
        if handle is not None:
            handle.remove()
    return tokens, (caught[0].float() if caught else None)


def logits_to_original(logits: np.ndarray, model: ClipModel, width: int, height: int) -> np.ndarray:
    """(P, s, s) logits over the model input -> (P, height, width) probabilities on the original image.

    Logits are interpolated bilinearly onto ``geometry.original_box`` (the part of the image the
    model saw, with the heatmaps' weights) and then squashed; pixels the centre crop cut off get 0.
    """
    x0, y0, x1, y1 = model.geometry(width, height).original_box
    rows = bilinear_weights(height, y0, y1, logits.shape[1])
    cols = bilinear_weights(width, x0, x1, logits.shape[2])
    across = np.tensordot(logits.astype(np.float64), cols, axes=([2], [1]))  # (P, s, width), one BLAS call
    drawn = np.tensordot(rows, across, axes=([1], [1])).transpose(1, 0, 2)  # (P, height, width)
    probabilities = 1.0 / (1.0 + np.exp(-drawn))
    inside = (rows.sum(1) > 0)[:, None] & (cols.sum(1) > 0)[None, :]
    return np.where(inside[None], probabilities, 0.0).astype(np.float32)


class SegmentationDecoder:
    """A trained decoder with its config; ``predict`` masks phrases on images of its model."""

    def __init__(self, module: TextConditionedDecoder, directory: Path | None = None) -> None:
        self.module = module.eval()
        self.config = module.config
        self.directory = directory

    def _check_model(self, model: ClipModel) -> None:
        if model.card.embed_dim != self.config.embed_dim or model.image_size != self.config.image_size:
            raise MedclipError(
                f"This segmentation decoder was trained for '{self.config.model_name}' "
                f"({self.config.embed_dim}-d, {self.config.image_size} px); model '{model.card.name}' does not match.")

    @torch.inference_mode()
    def predict(self, model: ClipModel, image: ImageLike, phrases: Sequence[str]) -> np.ndarray:
        """Probabilities (P, H, W) in [0, 1], one map per phrase, at the original image's size.

        ``phrases`` are used as given: user input is cleaned and bounded by the task
        (:func:`medclip_core.tasks.segmentation.segment`) before it reaches the model.
        """
        phrases = list(phrases)
        if not phrases:
            raise MedclipError("Give at least one phrase to segment.")
        self._check_model(model)
        height, width = image_to_rgb_array(image).shape[:2]
        pixels = model.preprocess(image)[None].to(model.device)
        logits = self.logits(model, pixels, model.encode_text(phrases))[0]
        return logits_to_original(logits, model, width, height)

    @torch.inference_mode()
    def logits(self, model: ClipModel, pixels: torch.Tensor, text: torch.Tensor) -> np.ndarray:
        """(B, 3, S, S) preprocessed pixels x (P, D) phrase embeddings -> (B, P, S/4, S/4) logits."""
        tokens, skip = frozen_features(model, pixels)
        device = next(self.module.parameters()).device
        side = self.module.image_side(tokens.to(device), None if skip is None else skip.to(device), pixels.to(device))
        n_images, n_phrases = pixels.shape[0], text.shape[0]
        image_index = torch.arange(n_images, device=device).repeat_interleave(n_phrases)
        out = self.module.decode(*side, text.to(device).repeat(n_images, 1), image_index)
        return out.view(n_images, n_phrases, *out.shape[-2:]).float().cpu().numpy()

    def save(self, directory: Path, extra: dict | None = None) -> Path:
        """Write ``segmentation_config.json`` + ``decoder.safetensors`` into ``directory``."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.module.state_dict().items()}
        tmp = directory / (WEIGHTS_NAME + ".tmp")
        save_file(state, str(tmp))
        tmp.replace(directory / WEIGHTS_NAME)
        (directory / CONFIG_NAME).write_text(json.dumps({"decoder": asdict(self.config), **(extra or {})}, indent=2))
        return directory


def read_decoder(directory: Path) -> SegmentationDecoder:
    """Load a decoder saved by :meth:`SegmentationDecoder.save`."""
    from safetensors.torch import load_file

    directory = Path(directory)
    config = DecoderConfig(**json.loads((directory / CONFIG_NAME).read_text())["decoder"])
    module = TextConditionedDecoder(config)
    module.load_state_dict(load_file(str(directory / WEIGHTS_NAME)))
    return SegmentationDecoder(module, directory)


def decoder_dir_for(model_name: str) -> Path | None:
    """Where a model's decoder would live: ``segmentation/`` inside a checkpoint model's folder."""
    from medclip_core.models.registry import get_spec

    if model_name.startswith("local-dir:"):
        return Path(model_name[len("local-dir:"):]) / DECODER_SUBDIR
    try:
        spec = get_spec(model_name)
    except MedclipError:
        return None
    return spec.local_path / DECODER_SUBDIR if spec.backend == "checkpoint" else None


def load_segmentation_decoder(model: str | ClipModel | None = None,
                              directory: str | Path | None = None) -> SegmentationDecoder:
    """The trained decoder of a model (registry name, ``local-dir:PATH`` or a loaded model).

    ``directory`` overrides where it is read from (a ``train --task segmentation`` run folder).
    Raises :class:`ModelUnavailableError` when the model has no trained decoder and
    :class:`PatchTokensUnsupported` when its image tower has no patch tokens.
    """
    from medclip_core.models.registry import default_model_name

    if isinstance(model, ClipModel):
        if not model.supports_patch_tokens:
            raise PatchTokensUnsupported(
                f"Model '{model.card.name}' has no patch tokens, so it has no trained segmentation decoder.")
        name = model.card.name
    else:
        name = model or default_model_name()
    directory = Path(directory) if directory is not None else decoder_dir_for(name)
    if directory is None or not (directory / CONFIG_NAME).is_file():
        raise ModelUnavailableError(
            f"Model '{name}' has no trained segmentation decoder (only medclip-phantom ships one; train one with "
            f"`python -m medclip_core train --task segmentation --model {name} --out DIR`). "
            "Zero-shot segmentation works without one.")
    return read_decoder(directory)
