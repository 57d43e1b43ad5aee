"""transformers backend: ``CLIPModel`` (PubMedCLIP, PLIP) and ``SiglipModel`` (MedSigLIP), from a
hub id or a folder written by ``save_pretrained``.

Preprocessing follows the folder's ``preprocessor_config.json`` (mean, std, size, centre crop
or not) but runs through :meth:`ClipModel.preprocess`, so every backend maps heatmaps back the
same way. Patch tokens: CLIP's final patch tokens through ``post_layernorm`` and the visual
projection; SigLIP's through the value/output path of its attention-pooling head and its MLP
(one key attended by one query reduces attention to that path), which puts each patch in the
space of the pooled embedding.

Grad-CAM weighs the tokens entering the last encoder layer (its ``layer_norm1``). The encoder's
blocks are not opened up (:meth:`ClipModel.vit_parts` says so), so attention relevance and CLIP
Surgery's v-v path are not offered for these towers.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from medclip_core import hosting
from medclip_core.errors import ModelUnavailableError
from medclip_core.models import hub
from medclip_core.models.base import ClipModel, ModelCard, TowerPartUnsupported, ViTParts

PREPROCESSOR_CONFIG = "preprocessor_config.json"
SUPPORTED_TYPES = ("clip", "siglip")


def _pooled(output: Any) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class TransformersClipModel(ClipModel):
    def __init__(self, model: torch.nn.Module, tokenizer: Any, card: ModelCard, device: torch.device,
                 mean: Sequence[float], std: Sequence[float], resize_mode: str) -> None:
        super().__init__(card, device, mean, std, resize_mode=resize_mode)
        self._model = model.to(device).eval()
        self._tokenizer = tokenizer
        self.model_type = model.config.model_type
        self.context_length = int(model.config.text_config.max_position_embeddings)

    @property
    def module(self) -> torch.nn.Module:
        return self._model

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        # SigLIP was trained on max-length padded text; CLIP pools at the EOS token, so either works.
        padding = "max_length" if self.model_type == "siglip" else True
        tokens = self._tokenizer(list(texts), padding=padding, truncation=True,
                                 max_length=self.context_length, return_tensors="pt")
        if self.model_type == "siglip":
            tokens.pop("attention_mask", None)
        tokens.pop("token_type_ids", None)
        return {k: v.to(self.device) for k, v in tokens.items()}

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return _pooled(self._model.get_image_features(pixel_values=pixels))

    def text_features(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        return _pooled(self._model.get_text_features(**tokens))

    @property
    def logit_scale(self) -> float:
        return float(self._model.logit_scale.exp().item())

    def patch_features(self, pixels: torch.Tensor) -> torch.Tensor:
        vision = self._model.vision_model
        hidden = vision(pixel_values=pixels).last_hidden_state
        if self.model_type == "clip":
            tokens = self._model.visual_projection(vision.post_layernorm(hidden[:, 1:]))
        else:
            head = vision.head
            attn = head.attention
            width = hidden.shape[-1]
            value = F.linear(hidden, attn.in_proj_weight[2 * width :], attn.in_proj_bias[2 * width :])
            tokens = attn.out_proj(value)
            tokens = tokens + head.mlp(head.layernorm(tokens))
        grid = int(math.isqrt(tokens.shape[1]))
        return tokens.reshape(tokens.shape[0], grid, grid, tokens.shape[-1])

    def vit_parts(self) -> ViTParts:
        raise TowerPartUnsupported(
            f"the transformers backend does not open up the encoder blocks of '{self.card.name}' ({self.model_type}).")

    def image_blocks(self) -> list[torch.nn.Module]:
        return list(self._model.vision_model.encoder.layers)

    def gradcam_layer(self) -> torch.nn.Module:
        return self._model.vision_model.encoder.layers[-1].layer_norm1


def _preprocessing(folder: Path | None, model: torch.nn.Module) -> tuple[Sequence[float], Sequence[float], str]:
    config: dict[str, Any] = {}
    if folder is not None and (folder / PREPROCESSOR_CONFIG).is_file():
        config = json.loads((folder / PREPROCESSOR_CONFIG).read_text())
    siglip = model.config.model_type == "siglip"
    default_mean = [0.5, 0.5, 0.5] if siglip else [0.48145466, 0.4578275, 0.40821073]
    default_std = [0.5, 0.5, 0.5] if siglip else [0.26862954, 0.26130258, 0.27577711]
    mode = "crop" if config.get("do_center_crop", not siglip) else "squash"
    return config.get("image_mean", default_mean), config.get("image_std", default_std), mode


def load_transformers(source: str | Path, card: ModelCard, device: torch.device,
                      max_params: int | None = None) -> TransformersClipModel:
    """``source`` is a local ``save_pretrained`` folder or a hub id already located by :mod:`hub`.
    ``max_params``: for models outside the registry, the size checked (on the meta device, from the
    config alone) before the weights are read."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    folder = Path(source) if isinstance(source, Path) else None
    try:
        config = AutoConfig.from_pretrained(str(source))
        if config.model_type not in SUPPORTED_TYPES:
            raise ModelUnavailableError(
                f"'{card.name}' is a transformers '{config.model_type}' model; supported are {SUPPORTED_TYPES}."
            )
        if max_params is not None:
            hosting.check_model_size(card.name, config.to_dict(), lambda: _meta_parameter_count(config), max_params)
        model = AutoModel.from_pretrained(str(source))
        tokenizer = AutoTokenizer.from_pretrained(str(source))
    except ModelUnavailableError:
        raise
    except Exception as exc:  # hub, gating and file errors of the transformers stack
        raise ModelUnavailableError(f"Could not load transformers model '{card.name}' from {source}: {exc}") from exc
    mean, std, mode = _preprocessing(folder, model)
    fields = card.to_dict()
    fields.update(
        image_size=int(model.config.vision_config.image_size),
        embed_dim=int(getattr(model.config, "projection_dim", 0) or model.config.vision_config.hidden_size),
        context_length=int(model.config.text_config.max_position_embeddings),
    )
    return TransformersClipModel(model, tokenizer, ModelCard(**fields), device, mean, std, mode)


def _meta_parameter_count(config: Any) -> int:
    """Parameters of the model ``config`` describes, built on the meta device (no memory, no weights read)."""
    from transformers import AutoModel

    with torch.device("meta"):
        return sum(p.numel() for p in AutoModel.from_config(config).parameters())


def load_transformers_hub(repo_id: str, card: ModelCard, device: torch.device,
                          max_params: int | None = None) -> TransformersClipModel:
    return load_transformers(hub.locate(card.name, repo_id, "config.json"), card, device, max_params)


def is_transformers_dir(path: Path) -> bool:
    if not (path / "config.json").is_file():
        return False
    try:
        return json.loads((path / "config.json").read_text()).get("model_type") in SUPPORTED_TYPES
    except (OSError, json.JSONDecodeError):
        return False
