"""The one interface every model backend implements, and the model card that describes it.

Tasks only ever see a :class:`ClipModel`: ``preprocess`` an image, ``tokenize`` texts,
``encode_image`` / ``encode_text`` (L2-normalised, same space), ``patch_tokens`` (per-patch
embeddings projected into that space, for heatmaps and segmentation) and ``logit_scale``.
Backends (open_clip, transformers) subclass it and fill in four small hooks.

Grounding methods that look inside the image tower get it through the same interface, in
backend-neutral form: ``vit_parts`` (token embedding, blocks opened up into q/k/v and their
branches, head; for attention relevance, Chefer et al. 2021, and CLIP Surgery's v-v path, Li et
al. 2023), ``gradcam_layer`` (the layer Grad-CAM and gScoreCAM weigh) and ``patch_grid``. A tower
that cannot serve one raises :class:`TowerPartUnsupported`, which says why. ``image_blocks`` lists
the tower's residual blocks, which ``with_randomised_blocks`` re-draws at random in a copy (the
model-parameter randomisation test of Adebayo et al. 2018).
"""
from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from typing import Any, Callable, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from medclip_core.errors import MedclipError, TaskInputError
from medclip_core.io import MedicalImage, image_from_array
from medclip_core.models.ood import OodReference

ImageLike = Union[MedicalImage, Image.Image, np.ndarray]


class PatchTokensUnsupported(MedclipError, NotImplementedError):
    """The model's image tower has no per-patch embeddings in the joint space (e.g. ResNet + attention pool)."""


class TowerPartUnsupported(MedclipError, NotImplementedError):
    """The model's image tower does not expose a part a method needs (e.g. a CNN has no attention blocks)."""


@dataclass(frozen=True)
class AttentionBlock:
    """One pre-norm transformer block of a ViT image tower, opened up into backend-neutral parts.

    The block computes ``x + layer_scale_1(attention_out(softmax(q k^T / sqrt(d)) v))`` with
    ``(q, k, v) = attention_qkv(x)``, then adds ``mlp_branch`` of that; ``forward`` is the block as its
    library runs it. q, k, v are (B, heads, N, head_dim), the block's input norm (and any q/k norms)
    applied; ``attention_out`` takes attended values of that shape and merges and projects the heads.
    """

    forward: Callable[[torch.Tensor], torch.Tensor]
    attention_qkv: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    attention_out: Callable[[torch.Tensor], torch.Tensor]
    layer_scale_1: Callable[[torch.Tensor], torch.Tensor]
    mlp_branch: Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ViTParts:
    """A ViT image tower as ``head(blocks(embed(pixels)))``.

    ``embed``: (B, 3, S, S) normalised pixels -> (B, N, W) tokens entering the first block, the
    ``prefix_tokens`` (class / register tokens) first, then the patches row by row. ``head``: tokens
    after the last block -> (B, N, D) in the joint space. ``class_token_pooled``: the image embedding
    is ``head`` of token 0.
    """

    embed: Callable[[torch.Tensor], torch.Tensor]
    blocks: list[AttentionBlock]
    head: Callable[[torch.Tensor], torch.Tensor]
    prefix_tokens: int
    class_token_pooled: bool


@dataclass(frozen=True)
class ModelDescription:
    """The fields a registry spec and a loaded model's card share: what the model is and where it comes from."""

    name: str
    backend: str
    source: str
    modality: str
    image_size: int
    embed_dim: int
    licence: str
    description: str = ""
    url: str = ""
    context_length: int | None = None
    gated: bool = False
    zero_shot_negatives: str = "negated"  # pairwise zero-shot negatives, see tasks.zero_shot.NEGATIVE_STYLES


@dataclass(frozen=True)
class ModelCard(ModelDescription):
    """What a user needs to know to choose and cite a model."""

    clinical_use: str = "research only, not for diagnosis"
    metrics: dict[str, Any] = field(default_factory=dict)
    zero_shot_calibration: dict[str, Any] | None = None  # Platt scaling of pairwise scores, see tasks.zero_shot.LogitMap

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CropGeometry:
    """How an original image of ``width`` x ``height`` maps onto the square model input.

    The image is scaled by ``scale`` (resize) and then the window starting at ``(left, top)``
    of side ``input_size`` is kept (centre crop). ``original_box`` is that window in original
    pixel coordinates, which is where a patch map must be drawn back.
    """

    width: int
    height: int
    input_size: int
    scale_x: float
    scale_y: float
    left: float
    top: float

    @property
    def original_box(self) -> tuple[float, float, float, float]:
        x0 = self.left / self.scale_x
        y0 = self.top / self.scale_y
        return (x0, y0, x0 + self.input_size / self.scale_x, y0 + self.input_size / self.scale_y)


def image_to_rgb_array(image: ImageLike) -> np.ndarray:
    """Any accepted image type -> float32 (H, W, 3) in [0, 1]."""
    if isinstance(image, Image.Image):
        image = image_from_array(np.asarray(image.convert("RGB")))
    elif isinstance(image, np.ndarray):
        image = image_from_array(image)
    if not isinstance(image, MedicalImage):
        raise MedclipError(f"Expected an image, got {type(image).__name__}.")
    pixels = image.pixels.astype(np.float32, copy=False)
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    return pixels


@dataclass(frozen=True)
class Preprocessing:
    """A model's image preprocessing on its own: resize to ``image_size`` (``"crop"``: shorter side, then
    centre crop, as CLIP and open_clip do; ``"squash"``: both sides, as SigLIP does) and normalise.
    Small and picklable, so decode processes (a DataLoader's, Ray Data's) preprocess without the model."""

    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize_mode: str = "crop"

    def geometry(self, width: int, height: int) -> CropGeometry:
        size = self.image_size
        if self.resize_mode == "squash":
            return CropGeometry(width, height, size, size / width, size / height, 0.0, 0.0)
        scale = size / min(width, height)
        new_w, new_h = round(width * scale), round(height * scale)
        return CropGeometry(
            width, height, size, new_w / width, new_h / height, (new_w - size) // 2, (new_h - size) // 2
        )

    def normalise(self, rgb: torch.Tensor) -> torch.Tensor:
        """(..., 3, H, W) RGB in [0, 1] -> normalised with the model's mean and std."""
        mean = torch.tensor(self.mean, dtype=rgb.dtype, device=rgb.device).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=rgb.dtype, device=rgb.device).view(3, 1, 1)
        return (rgb - mean) / std

    def __call__(self, image: ImageLike) -> torch.Tensor:
        """One image -> (3, S, S) float tensor, resized, cropped and normalised."""
        rgb = torch.from_numpy(np.ascontiguousarray(image_to_rgb_array(image))).permute(2, 0, 1)
        height, width = rgb.shape[1:]
        geo = self.geometry(width, height)
        new_size = (round(height * geo.scale_y), round(width * geo.scale_x))
        resized = F.interpolate(rgb[None], size=new_size, mode="bicubic", antialias=True, align_corners=False)[0]
        left, top = int(geo.left), int(geo.top)
        cropped = resized[:, top : top + self.image_size, left : left + self.image_size].clamp(0.0, 1.0)
        return self.normalise(cropped)


class ClipModel(ABC):
    """A CLIP-style dual encoder with the preprocessing it was trained with (``preprocessing``, a
    :class:`Preprocessing`).
    ``ood_reference`` is the embedding distribution of the model's training images, set by the loader
    when the model ships one (see :mod:`medclip_core.models.ood`); None otherwise.
    """

    ood_reference: OodReference | None = None

    def __init__(
        self,
        card: ModelCard,
        device: torch.device,
        image_mean: Sequence[float],
        image_std: Sequence[float],
        resize_mode: str = "crop",
    ) -> None:
        self.card = card
        self.device = device
        self.preprocessing = Preprocessing(card.image_size, tuple(image_mean), tuple(image_std), resize_mode)

    # -- hooks the backends implement -------------------------------------------------
    @abstractmethod
    def tokenize(self, texts: Sequence[str]) -> Any:
        """Texts -> whatever the text tower takes (a tensor or a dict of tensors), on ``device``."""

    @abstractmethod
    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised pixels -> (B, D) unnormalised embeddings; differentiable."""

    @abstractmethod
    def text_features(self, tokens: Any) -> torch.Tensor:
        """Tokens -> (B, D) unnormalised embeddings; differentiable."""

    @abstractmethod
    def patch_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, gh, gw, D) per-patch embeddings in the joint space, unnormalised."""

    @property
    @abstractmethod
    def logit_scale(self) -> float:
        """The learned temperature, as the multiplier of cosine similarities."""

    @property
    @abstractmethod
    def module(self) -> torch.nn.Module:
        """The underlying torch module (for training, devices and parameter counts)."""

    # -- shared behaviour ---------------------------------------------------------------
    @property
    def image_size(self) -> int:
        return self.preprocessing.image_size

    @property
    def resize_mode(self) -> str:
        return self.preprocessing.resize_mode

    def geometry(self, width: int, height: int) -> CropGeometry:
        return self.preprocessing.geometry(width, height)

    def preprocess(self, image: ImageLike) -> torch.Tensor:
        """One image -> (3, S, S) float tensor, resized, cropped and normalised as the model expects."""
        return self.preprocessing(image)

    def preprocess_batch(self, images: Sequence[ImageLike]) -> torch.Tensor:
        return torch.stack([self.preprocess(image) for image in images])

    def as_pixels(self, images: torch.Tensor | Sequence[ImageLike]) -> torch.Tensor:
        if not isinstance(images, torch.Tensor):
            images = self.preprocess_batch(list(images))
        if images.ndim == 3:
            images = images[None]
        return images.to(self.device, dtype=self._dtype)

    @property
    def _dtype(self) -> torch.dtype:
        return next(self.module.parameters()).dtype

    @torch.inference_mode()
    def encode_image(self, images: torch.Tensor | Sequence[ImageLike]) -> torch.Tensor:
        """Images (preprocessed batch or raw images) -> (B, D) L2-normalised float32 embeddings."""
        return F.normalize(self.image_features(self.as_pixels(images)).float(), dim=-1)

    @torch.inference_mode()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Texts -> (B, D) L2-normalised float32 embeddings."""
        if isinstance(texts, str):
            texts = [texts]
        return F.normalize(self.text_features(self.tokenize(list(texts))).float(), dim=-1)

    @torch.inference_mode()
    def patch_tokens(self, images: torch.Tensor | Sequence[ImageLike]) -> torch.Tensor:
        """Images -> (B, gh, gw, D) L2-normalised per-patch embeddings in the joint space."""
        return F.normalize(self.patch_features(self.as_pixels(images)).float(), dim=-1)

    def image_and_patch_features(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both ``image_features`` and ``patch_features`` of ``pixels``; backends that get both from one
        forward pass override this (two passes by default)."""
        return self.image_features(pixels), self.patch_features(pixels)

    @torch.inference_mode()
    def encode_image_and_patches(self, images: torch.Tensor | Sequence[ImageLike]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(encode_image(images), patch_tokens(images))``, from one forward pass where the backend allows."""
        pooled, patches = self.image_and_patch_features(self.as_pixels(images))
        return F.normalize(pooled.float(), dim=-1), F.normalize(patches.float(), dim=-1)

    @property
    def supports_patch_tokens(self) -> bool:
        return True

    @cached_property
    def patch_grid(self) -> tuple[int, int]:
        """(rows, columns) of the ``patch_tokens`` grid (one probe pass on a blank input, remembered)."""
        with torch.inference_mode():
            blank = torch.zeros(1, 3, self.image_size, self.image_size)
            rows, cols = self.patch_features(self.as_pixels(blank)).shape[1:3]
        return int(rows), int(cols)

    def vit_parts(self) -> ViTParts:
        """The image tower's ViT parts; raises :class:`TowerPartUnsupported` where the backend has none."""
        raise TowerPartUnsupported(f"'{self.card.name}' does not expose the blocks of a ViT image tower.")

    def gradcam_layer(self) -> torch.nn.Module:
        """The layer whose output Grad-CAM (Selvaraju et al. 2017) weighs: a CNN's last feature map
        (B, C, h, w) or the normalised tokens (B, N, C) entering a ViT's last block, the patches last
        and row by row (see ``gradcam_feature_map``). Raises :class:`TowerPartUnsupported` if none."""
        raise TowerPartUnsupported(f"no known last feature layer in '{self.card.name}' for Grad-CAM.")

    def gradcam_feature_map(self, activation: torch.Tensor) -> torch.Tensor:
        """An output of ``gradcam_layer`` -> (B, C, gh, gw) on the patch grid (prefix tokens dropped)."""
        if activation.ndim == 4:
            return activation
        rows, cols = self.patch_grid
        patches = activation[:, activation.shape[1] - rows * cols:]
        return patches.transpose(1, 2).reshape(activation.shape[0], -1, rows, cols)

    def image_blocks(self) -> list[torch.nn.Module]:
        """The image tower's residual blocks in the order they run: a ViT's transformer blocks, a CNN's
        blocks of its last stage. Raises :class:`TowerPartUnsupported` where the backend does not know them."""
        raise TowerPartUnsupported(f"'{self.card.name}' does not expose the blocks of its image tower.")

    def with_randomised_blocks(self, count: int = 1, seed: int = 0) -> "ClipModel":
        """A deep copy whose last ``count`` image blocks (``image_blocks``) have random weights; ``self`` is
        untouched. The model-parameter randomisation test of Adebayo et al. 2018 ("Sanity Checks for
        Saliency Maps"); ``count`` > 1 is their cascading variant. Every parameter tensor of those blocks
        is redrawn from a seeded Gaussian with the trained tensor's own mean and standard deviation, so
        activations keep their scale while what was learned is gone (buffers such as BatchNorm running
        statistics stay). The copy's card name says so, so caches keyed by name never mix the two."""
        blocks = self.image_blocks()
        if not 1 <= count <= len(blocks):
            raise TaskInputError(f"'{self.card.name}' has {len(blocks)} image blocks; cannot randomise {count}.")
        clone = copy.deepcopy(self)
        clone.card = replace(self.card, name=f"{self.card.name} (last {count} image block(s) randomised, seed {seed})")
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for block in clone.image_blocks()[-count:]:
                for parameter in block.parameters():
                    values = parameter.detach().float()
                    spread = float(values.std()) if values.numel() > 1 else 0.0
                    noise = torch.randn(parameter.shape, generator=generator) * spread + float(values.mean())
                    parameter.copy_(noise.to(parameter))
        return clone

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def eval(self) -> "ClipModel":
        self.module.eval()
        return self
