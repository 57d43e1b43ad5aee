"""open_clip backend: built-in architectures with pretrained tags, ``hf-hub:`` ids, ``local-dir:``
folders in open_clip's layout, and our own checkpoints (which are open_clip architectures).

Patch tokens (:func:`pooled_and_patch_tokens`): for open_clip's ``VisionTransformer`` the final
tokens go through ``ln_post`` and the visual projection, the path the pooled token takes; for
timm ViT trunks (BiomedCLIP) the trunk's normalised tokens go through the projection head; for
timm CNN trunks each location of the last feature map goes through the head. Other towers
(ResNets with attention pooling, attention-pooled ViTs) have no per-patch embeddings in the
joint space.

ViT parts (:meth:`OpenClipModel.vit_parts`) open up open_clip ``ResidualAttentionBlock`` s
(``nn.MultiheadAttention``) and timm ViT ``Block`` s into the backend-neutral
:class:`~medclip_core.models.base.AttentionBlock`; the Grad-CAM layer is the input norm of a ViT's
last block or a timm CNN's last stage. The image blocks (:meth:`OpenClipModel.image_blocks`) are a
ViT's transformer blocks or the residual blocks of a timm CNN's last stage.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import open_clip
import torch
import torch.nn.functional as F
from open_clip.timm_model import TimmModel
from open_clip.transformer import VisionTransformer
from safetensors.torch import load_file

from medclip_core import hosting
from medclip_core.errors import ModelUnavailableError
from medclip_core.models import checkpoint, hub
from medclip_core.models.base import (
    AttentionBlock, ClipModel, ModelCard, PatchTokensUnsupported, TowerPartUnsupported, ViTParts,
)
from medclip_core.models.ood import load_reference

OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
# What a config from outside the registry may build (besides open_clip's own ViT, ResNet and text
# transformer): timm trunks of the families whose patch tokens and Grad-CAM layer this backend knows
# (``test_`` are timm's tiny test models), and the Hugging Face text towers of the hub models we list
# (BiomedCLIP's PubMedBERT, under its old and new names). Package-provided towers: checkpoint.py.
ALLOWED_TIMM_FAMILIES = ("vit_", "deit", "resnet", "convnext", "efficientnet", "test_")
ALLOWED_HF_TEXT_MODELS = ("microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
                          "microsoft/BiomedNLP-PubMedBERT-base-uncased-abstract")


def trim_padding(tokens: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Drop the trailing all-padding columns: Hugging Face towers mask padding out, so the result is
    the same with less work (short prompts padded to a long context cost ten times more)."""
    return tokens[:, : max(1, int((tokens != pad_id).sum(dim=1).max()))]


class OpenClipModel(ClipModel):
    """A ``ClipModel`` around an open_clip ``CLIP``/``CustomTextCLIP`` and its tokenizer."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, card: ModelCard, device: torch.device,
                 mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__(card, device, mean, std, resize_mode="crop")
        self._model = model.to(device).eval()
        self._tokenizer = tokenizer

    @property
    def module(self) -> torch.nn.Module:
        return self._model

    @property
    def context_length(self) -> int:
        return int(getattr(self._tokenizer, "context_length", None) or 77)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self._tokenizer(list(texts))
        if isinstance(self._tokenizer, open_clip.tokenizer.HFTokenizer):
            tokens = trim_padding(tokens, self._model.text.config.pad_token_id or 0)
        return tokens.to(self.device)

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._model.encode_image(pixels)

    def text_features(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._model.encode_text(tokens)

    @property
    def logit_scale(self) -> float:
        return float(self._model.logit_scale.exp().item())

    @property
    def supports_patch_tokens(self) -> bool:
        return has_patch_tokens(self._model.visual)

    def patch_features(self, pixels: torch.Tensor) -> torch.Tensor:
        if not self.supports_patch_tokens:
            raise PatchTokensUnsupported(
                f"Model '{self.card.name}' has a {type(self._model.visual).__name__} image tower without "
                "per-patch embeddings in the joint space, so heatmaps and segmentation are not available for it."
            )
        return self.image_and_patch_features(pixels)[1]

    def image_and_patch_features(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.supports_patch_tokens:
            return super().image_and_patch_features(pixels)  # raises PatchTokensUnsupported
        pooled, tokens = pooled_and_patch_tokens(self._model.visual, pixels)
        grid = int(math.isqrt(tokens.shape[1]))
        return pooled, tokens.reshape(tokens.shape[0], grid, grid, tokens.shape[-1])

    def vit_parts(self) -> ViTParts:
        visual = self._model.visual
        if _is_open_clip_vit(visual):
            return _open_clip_vit_parts(visual)
        if _is_timm_vit(visual):
            return _timm_vit_parts(visual)
        raise TowerPartUnsupported(
            f"'{self.card.name}' has a {_tower_kind(visual)} image tower, not a ViT whose blocks can be opened up.")

    def image_blocks(self) -> list[torch.nn.Module]:
        visual = self._model.visual
        if _is_open_clip_vit(visual):
            return list(visual.transformer.resblocks)
        if _is_timm_vit(visual):
            return list(visual.trunk.blocks)
        trunk = getattr(visual, "trunk", None)
        if trunk is not None and getattr(trunk, "feature_info", None):
            stage = trunk.get_submodule(trunk.feature_info[-1]["module"])
            return list(stage.children()) if isinstance(stage, torch.nn.Sequential) else [stage]
        return super().image_blocks()

    def gradcam_layer(self) -> torch.nn.Module:
        visual = self._model.visual
        if _is_open_clip_vit(visual):
            return visual.transformer.resblocks[-1].ln_1
        if _is_timm_vit(visual):
            return visual.trunk.blocks[-1].norm1
        trunk = getattr(visual, "trunk", None)
        if trunk is not None and getattr(trunk, "feature_info", None):
            return trunk.get_submodule(trunk.feature_info[-1]["module"])
        return super().gradcam_layer()


def _is_open_clip_vit(visual: torch.nn.Module) -> bool:
    """An open_clip ``VisionTransformer`` without attention pooling."""
    return isinstance(visual, VisionTransformer) and visual.attn_pool is None


def _is_timm_vit(visual: torch.nn.Module) -> bool:
    """A timm ViT trunk (blocks plus class/register prefix tokens) under open_clip's ``TimmModel``."""
    trunk = getattr(visual, "trunk", None)
    return isinstance(visual, TimmModel) and hasattr(trunk, "blocks") and hasattr(trunk, "num_prefix_tokens")


def _tower_kind(visual: torch.nn.Module) -> str:
    """A short name of the tower's architecture for messages (the timm model's class for timm towers)."""
    trunk = getattr(visual, "trunk", None)
    return f"timm {type(trunk).__name__}" if trunk is not None else type(visual).__name__


def _merge_heads(values: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, head_dim) -> (B, N, heads * head_dim)."""
    batch, heads, tokens, dim = values.shape
    return values.transpose(1, 2).reshape(batch, tokens, heads * dim)


def _split_qkv(qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, N, 3 * heads * head_dim) packed projections -> q, k, v each (B, heads, N, head_dim)."""
    batch, tokens, width = qkv.shape
    q, k, v = qkv.reshape(batch, tokens, 3, heads, width // (3 * heads)).permute(2, 0, 3, 1, 4)
    return q, k, v


def _open_clip_block(block: torch.nn.Module) -> AttentionBlock:
    attn = block.attn
    if not isinstance(attn, torch.nn.MultiheadAttention) or not attn.batch_first or hasattr(block, "ln_1_kv"):
        raise TowerPartUnsupported(f"open_clip block {type(block).__name__} is not a batch-first self-attention block.")

    def attention_qkv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return _split_qkv(F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias), attn.num_heads)

    return AttentionBlock(forward=block, attention_qkv=attention_qkv,
                          attention_out=lambda values: attn.out_proj(_merge_heads(values)),
                          layer_scale_1=block.ls_1, mlp_branch=lambda x: block.ls_2(block.mlp(block.ln_2(x))))


def _open_clip_vit_parts(visual: torch.nn.Module) -> ViTParts:
    """open_clip ``VisionTransformer``: its own token embedding, ``ln_post`` and projection as the head."""
    def head(x: torch.Tensor) -> torch.Tensor:
        x = visual.ln_post(x)
        return x @ visual.proj if visual.proj is not None else x

    blocks = [_open_clip_block(block) for block in visual.transformer.resblocks]
    return ViTParts(embed=visual._embeds, blocks=blocks, head=head, prefix_tokens=1,
                    class_token_pooled=getattr(visual, "pool_type", "tok") == "tok")


def _timm_block(block: torch.nn.Module) -> AttentionBlock:
    attn = block.attn
    if not all(hasattr(block, name) for name in ("norm1", "norm2", "ls1", "ls2", "mlp")) \
            or not hasattr(attn, "qkv") or getattr(attn, "gate", None) is not None:
        raise TowerPartUnsupported(f"timm block {type(block).__name__} is not a pre-norm block with a packed qkv.")
    out_norm = getattr(attn, "norm", torch.nn.Identity())

    def attention_qkv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = _split_qkv(attn.qkv(block.norm1(x)), attn.num_heads)
        return attn.q_norm(q), attn.k_norm(k), v

    return AttentionBlock(forward=block, attention_qkv=attention_qkv,
                          attention_out=lambda values: attn.proj(out_norm(_merge_heads(values))),
                          layer_scale_1=block.ls1, mlp_branch=lambda x: block.ls2(block.mlp(block.norm2(x))))


def _timm_vit_parts(visual: torch.nn.Module) -> ViTParts:
    """timm ViT trunk + open_clip head: the trunk's patch and position embedding, its final norm and the head."""
    trunk = visual.trunk

    def embed(pixels: torch.Tensor) -> torch.Tensor:
        return trunk.norm_pre(trunk._pos_embed(trunk.patch_embed(pixels)))

    return ViTParts(embed=embed, blocks=[_timm_block(block) for block in trunk.blocks],
                    head=lambda x: visual.head(trunk.norm(x)), prefix_tokens=int(trunk.num_prefix_tokens),
                    class_token_pooled=getattr(trunk, "global_pool", "") == "token")


def has_patch_tokens(visual: torch.nn.Module) -> bool:
    """ViTs without attention pooling, timm ViTs, and timm CNNs with average pooling + linear head."""
    if isinstance(visual, VisionTransformer):
        return visual.attn_pool is None
    if not isinstance(visual, TimmModel) or not hasattr(visual.trunk, "forward_features"):
        return False
    return hasattr(visual.trunk, "num_prefix_tokens") or "pool" not in dict(visual.head.named_children())


def pooled_and_patch_tokens(visual: torch.nn.Module, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass -> (pooled image embedding (B, D), projected patch tokens (B, N, D)), unnormalised.

    For average-pooled towers with a linear projection the mean of the patch tokens is the pooled
    embedding, so patch-text similarity is a class-activation map of the global score.
    """
    if isinstance(visual, VisionTransformer):
        x = visual.ln_post(visual.transformer(visual._embeds(pixels)))
        tokens = x[:, 1:]
        pooled = visual._global_pool(x)[0]
        if visual.proj is not None:
            tokens, pooled = tokens @ visual.proj, pooled @ visual.proj
        return pooled, tokens
    features = visual.trunk.forward_features(pixels)
    if features.ndim == 4:  # CNN feature map (B, C, h, w) -> one token per location
        features = features.flatten(2).transpose(1, 2)
        return visual.head(features.mean(dim=1)), visual.head(features)
    pooled = visual.head(visual.trunk.forward_head(features, pre_logits=True))
    return pooled, visual.head(features[:, visual.trunk.num_prefix_tokens:])


def _preprocess_stats(model: torch.nn.Module) -> tuple[int, Sequence[float], Sequence[float]]:
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = cfg.get("size", getattr(model.visual, "image_size", 224))
    size = size[0] if isinstance(size, (tuple, list)) else size
    return int(size), cfg.get("mean", open_clip.OPENAI_DATASET_MEAN), cfg.get("std", open_clip.OPENAI_DATASET_STD)


def _embed_dim(model: torch.nn.Module) -> int:
    with torch.no_grad():
        size = _preprocess_stats(model)[0]
        return int(model.encode_image(torch.zeros(1, 3, size, size, device=next(model.parameters()).device)).shape[-1])


def _finish(model: torch.nn.Module, tokenizer: Any, card: ModelCard, device: torch.device) -> OpenClipModel:
    model.eval()  # before the probe forward of _embed_dim: in train mode it would move BatchNorm statistics
    size, mean, std = _preprocess_stats(model)
    card_fields = card.to_dict()
    card_fields.update(image_size=size, embed_dim=_embed_dim(model),
                       context_length=int(getattr(tokenizer, "context_length", 0) or 0) or None)
    return OpenClipModel(model, tokenizer, ModelCard(**card_fields), device, mean, std)


def read_open_clip_config(path: Path) -> dict[str, Any]:
    """The ``model_cfg`` of an open_clip hub-layout folder (its open_clip_config.json)."""
    try:
        config = json.loads((Path(path) / OPEN_CLIP_CONFIG).read_text())
        return dict(config["model_cfg"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelUnavailableError(f"{path} has no readable {OPEN_CLIP_CONFIG} with a model_cfg: {exc}") from exc


def load_open_clip_dir(path: Path, card: ModelCard, device: torch.device, max_params: int | None = None) -> OpenClipModel:
    """A folder in open_clip's hub layout: open_clip_config.json + open_clip_model.safetensors (or .bin).
    ``max_params``: check the architecture (allow-list, size) first, for folders outside the registry."""
    name = f"local-dir:{path}"
    if max_params is not None:
        check_architecture(read_open_clip_config(path), card.name, max_params)
    try:
        model = open_clip.create_model(name, device=device)
        tokenizer = open_clip.get_tokenizer(name)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise ModelUnavailableError(f"Could not load the open_clip model in {path}: {exc}") from exc
    return _finish(model, tokenizer, card, device)


def load_open_clip_hub(repo_id: str, card: ModelCard, device: torch.device,
                       max_params: int | None = None) -> OpenClipModel:
    where = hub.locate(card.name, repo_id, OPEN_CLIP_CONFIG)
    if isinstance(where, Path):
        return load_open_clip_dir(where, card, device, max_params)
    if max_params is not None:  # only the small config is fetched before the check
        from huggingface_hub import hf_hub_download

        try:
            config_dir = Path(hf_hub_download(repo_id, OPEN_CLIP_CONFIG)).parent
        except Exception as exc:  # network or hub errors of any library layer
            raise ModelUnavailableError(f"Downloading the config of '{card.name}' ({repo_id}) failed: {exc}") from exc
        check_architecture(read_open_clip_config(config_dir), card.name, max_params)
    try:
        model = open_clip.create_model(f"hf-hub:{repo_id}", device=device)
        tokenizer = open_clip.get_tokenizer(f"hf-hub:{repo_id}")
    except Exception as exc:  # network or hub errors of any library layer
        raise ModelUnavailableError(f"Downloading '{card.name}' ({repo_id}) failed: {exc}") from exc
    return _finish(model, tokenizer, card, device)


def builtin_weights_repo(architecture: str, tag: str) -> str:
    cfg = open_clip.get_pretrained_cfg(architecture, tag)
    if not cfg or not cfg.get("hf_hub"):
        raise ModelUnavailableError(f"open_clip has no pretrained weights '{tag}' for '{architecture}'.")
    return cfg["hf_hub"].rstrip("/")


def load_open_clip_builtin(architecture: str, tag: str, card: ModelCard, device: torch.device) -> OpenClipModel:
    repo_id = builtin_weights_repo(architecture, tag)
    weights = next((p for f in OPEN_CLIP_WEIGHTS if (p := hub.cached_snapshot(repo_id, f)) is not None), None)
    if weights is None and not hub.hub_reachable():
        raise ModelUnavailableError(hub.unavailable_message(card.name, repo_id))
    try:
        if weights is not None:
            weight_file = next(weights / f for f in OPEN_CLIP_WEIGHTS if (weights / f).is_file())
            model = open_clip.create_model(architecture, pretrained=str(weight_file), device=device)
        else:
            model = open_clip.create_model(architecture, pretrained=tag, device=device)
        tokenizer = open_clip.get_tokenizer(architecture)
    except Exception as exc:  # network or hub errors of any library layer
        raise ModelUnavailableError(f"Loading '{card.name}' ({architecture}, {tag}) failed: {exc}") from exc
    return _finish(model, tokenizer, card, device)


def _quietly(build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """Build while transformers' load report (expected unused pooler weights) and progress bar stay silent."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        return build()
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _module_from_cfg(model_cfg: dict[str, Any], text_tower: str | None, text_pretrained: bool = True) -> torch.nn.Module:
    """The open_clip ``CLIP`` / ``CustomTextCLIP`` an architecture config describes (weights not loaded).
    ``text_tower``: the folder of a package-provided Hugging Face text encoder; ``text_pretrained``
    False builds that encoder from its config alone (for counting parameters on the meta device)."""
    model_cfg = json.loads(json.dumps(model_cfg))
    text_cfg = model_cfg.setdefault("text_cfg", {})
    if text_tower:
        text_cfg.update(hf_model_name=text_tower, hf_tokenizer_name=text_tower, hf_model_pretrained=text_pretrained)
    elif not text_pretrained:
        text_cfg["hf_model_pretrained"] = False
    timm_kwargs = model_cfg["vision_cfg"].pop("timm_model_kwargs", None)
    if text_cfg.get("hf_model_name"):
        module = _quietly(lambda: open_clip.model.CustomTextCLIP(**model_cfg))
    else:
        module = open_clip.model.CLIP(**model_cfg)
    if timm_kwargs:  # e.g. output_stride=16 for a 14x14 CNN feature map; same parameters, other strides
        import timm

        pool = model_cfg["vision_cfg"].get("timm_pool", "avg")  # "" keeps the trunk's own pooling, as open_clip does
        module.visual.trunk = timm.create_model(model_cfg["vision_cfg"]["timm_model_name"], pretrained=False,
                                                num_classes=0, **({"global_pool": pool} if pool else {}), **timm_kwargs)
    return module


def check_architecture(model_cfg: dict[str, Any], name: str, max_params: int, text_tower: str | None = None) -> int:
    """Refuse an architecture config outside the allow-list (timm trunk families, Hugging Face text
    towers) or over ``max_params`` parameters, counted on the meta device before anything is built
    for real; returns the count. ``text_tower``: an allow-listed package's encoder folder."""
    vision, text = model_cfg.get("vision_cfg") or {}, model_cfg.get("text_cfg") or {}
    trunk = vision.get("timm_model_name")
    if trunk and not str(trunk).startswith(ALLOWED_TIMM_FAMILIES):
        raise ModelUnavailableError(f"'{name}' uses the timm image tower '{trunk}', which is not on this app's "
                                    f"allow-list (families: {', '.join(ALLOWED_TIMM_FAMILIES)}).")
    hf_text = text.get("hf_model_name")
    if hf_text and hf_text not in ALLOWED_HF_TEXT_MODELS:
        raise ModelUnavailableError(f"'{name}' uses the text tower '{hf_text}', which is not on this app's "
                                    f"allow-list ({', '.join(ALLOWED_HF_TEXT_MODELS)}).")

    def count() -> int:
        try:
            with torch.device("meta"):
                module = _module_from_cfg(model_cfg, text_tower, text_pretrained=False)
        except (TypeError, ValueError, KeyError, RuntimeError, OSError) as exc:
            raise ModelUnavailableError(f"'{name}' has an architecture config open_clip cannot build: {exc}") from exc
        return sum(p.numel() for p in module.parameters())

    return hosting.check_model_size(name, model_cfg, count, max_params)


def build_checkpoint_module(config: dict[str, Any]) -> tuple[torch.nn.Module, Any]:
    """The open_clip module and tokenizer a checkpoint config describes (weights not loaded)."""
    package = config.get("text_tower_package")
    tower = str(checkpoint.text_tower_path(package)) if package else None
    text_cfg = config["model_cfg"].get("text_cfg") or {}
    module = _module_from_cfg(config["model_cfg"], tower)
    hf_name = tower or text_cfg.get("hf_model_name")
    if hf_name:
        tokenizer = open_clip.tokenizer.HFTokenizer(tower or text_cfg.get("hf_tokenizer_name") or hf_name,
                                                    context_length=text_cfg.get("context_length", 77))
    else:
        tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=text_cfg.get("context_length", 77))
    pre = config.get("preprocess_cfg", {})
    module.visual.preprocess_cfg = {
        "size": config["model_cfg"]["vision_cfg"].get("image_size", 224),
        "mean": pre.get("mean", open_clip.OPENAI_DATASET_MEAN),
        "std": pre.get("std", open_clip.OPENAI_DATASET_STD),
    }
    return module, tokenizer


def load_checkpoint_dir(path: Path, card: ModelCard | None, device: torch.device,
                        max_params: int | None = None) -> OpenClipModel:
    """Our own checkpoint folder (see :mod:`medclip_core.models.checkpoint`). ``max_params``: check the
    architecture (allow-list, size) first, for folders outside the registry."""
    config = checkpoint.read_config(path)
    weights = path / checkpoint.WEIGHTS_NAME
    if not weights.is_file():
        raise ModelUnavailableError(f"Checkpoint folder {path} has no {checkpoint.WEIGHTS_NAME}.")
    if max_params is not None:
        package = config.get("text_tower_package")
        check_architecture(config.get("model_cfg") or {}, card.name if card else f"local-dir:{path}", max_params,
                           str(checkpoint.text_tower_path(package)) if package else None)
    module, tokenizer = build_checkpoint_module(config)
    state = load_file(str(weights))
    missing, unexpected = module.load_state_dict(state, strict=False)
    frozen = checkpoint.frozen_prefix(config)
    missing = [k for k in missing if not (frozen and k.startswith(frozen))]
    if missing or unexpected:
        raise ModelUnavailableError(
            f"Checkpoint {path} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}."
        )
    saved = {k: v for k, v in config.get("card", {}).items() if k in ModelCard.__dataclass_fields__}
    if card is None:
        card = ModelCard(**{**saved, "source": f"local-dir:{path}"})
    else:  # the registry spec names the model; the checkpoint's own card describes and measures it
        card = ModelCard(**{**card.to_dict(), **{k: v for k, v in saved.items()
                                                  if k not in ("name", "source", "backend")}})
    model = _finish(module.to(device), tokenizer, card, device)
    model.ood_reference = load_reference(path)
    return model
