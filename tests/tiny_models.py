"""Tiny models of every backend, saved in their real on-disk formats, for the model contract test.

Each saver writes a folder that ``load_model("local-dir:...")`` reads the way it reads a real
model: open_clip's hub layout (open_clip_config.json + open_clip_model.safetensors) with an
open_clip ViT, a timm ViT, a timm CNN or an attention-pooled ResNet image tower; transformers'
``save_pretrained`` folders (CLIP, SigLIP, tokenizer built offline); and our own checkpoint
format, written as training writes it from the ``tiny-test`` architecture. Weights are random
(seeded), nothing is downloaded. ``TINY_BACKENDS`` says which grounding methods each cannot serve.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from medclip_core.tasks.grounding import METHODS
from tests.conftest import TINY_EMBED, TINY_TEXT, save_open_clip_layout, save_transformers_clip, save_transformers_siglip

ROOT = Path(__file__).resolve().parents[1]
TINY_TEST_ARCHITECTURE = ROOT / "medclip_core" / "train" / "architectures" / "tiny-test.json"
TIMM_IMAGE_SIZE = 160  # the input size of timm's test_vit / test_resnet


def save_open_clip_config_layout(folder: Path, vision_cfg: dict[str, Any]) -> Path:
    """open_clip's hub layout for an open_clip ``CLIP`` with ``vision_cfg`` and the tiny text tower."""
    import open_clip
    from safetensors.torch import save_file

    model_cfg = {"embed_dim": TINY_EMBED, "vision_cfg": vision_cfg, "text_cfg": TINY_TEXT}
    torch.manual_seed(0)
    module = open_clip.model.CLIP(**model_cfg)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": model_cfg, "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.25] * 3}}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder


def save_open_clip_timm_vit(folder: Path) -> Path:
    """A BiomedCLIP-shaped tower: timm ViT trunk pooled by its class token, linear projection."""
    return save_open_clip_config_layout(folder, {"timm_model_name": "test_vit", "timm_model_pretrained": False,
                                                 "timm_pool": "", "timm_proj": "linear",
                                                 "image_size": TIMM_IMAGE_SIZE})


def save_open_clip_timm_cnn(folder: Path) -> Path:
    """A timm ResNet trunk, average-pooled, linear projection (the embedded models' kind of tower)."""
    return save_open_clip_config_layout(folder, {"timm_model_name": "test_resnet", "timm_model_pretrained": False,
                                                 "timm_pool": "avg", "timm_proj": "linear",
                                                 "image_size": TIMM_IMAGE_SIZE})


def save_open_clip_attention_pooled_resnet(folder: Path) -> Path:
    """open_clip's ModifiedResNet (CLIP RN50-style attention pooling): no per-patch embeddings."""
    return save_open_clip_config_layout(folder, {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8})


def save_tiny_checkpoint(folder: Path) -> Path:
    """Our checkpoint format (medclip_config.json + model.safetensors) of the ``tiny-test`` architecture,
    written with the same call and card fields as ``train.contrastive`` writes."""
    from medclip_core.models.checkpoint import save_checkpoint
    from medclip_core.models.open_clip_backend import build_checkpoint_module

    arch = json.loads(TINY_TEST_ARCHITECTURE.read_text())
    torch.manual_seed(0)
    module, _ = build_checkpoint_module(arch)
    card = {"name": folder.name, "backend": "checkpoint", "source": "trained by medclip_core.train",
            "modality": "custom", "image_size": arch["model_cfg"]["vision_cfg"]["image_size"],
            "embed_dim": arch["model_cfg"]["embed_dim"], "licence": "see the training data licence",
            "description": arch.get("description", ""), "zero_shot_negatives": "negated"}
    return save_checkpoint(module, folder, arch["model_cfg"], card, arch.get("preprocess_cfg", {}),
                           arch.get("text_tower_package"))


@dataclass(frozen=True)
class TinyBackend:
    """A saver and what the saved model is known to allow."""

    save: Callable[[Path], Path]
    backend: str                        # the card's backend field once loaded
    patch_tokens: bool = True
    unsupported: frozenset[str] = frozenset()   # grounding methods it cannot serve


TINY_BACKENDS: dict[str, TinyBackend] = {
    "open_clip-vit": TinyBackend(save_open_clip_layout, "open_clip"),
    "open_clip-timm-vit": TinyBackend(save_open_clip_timm_vit, "open_clip"),
    "open_clip-timm-cnn": TinyBackend(save_open_clip_timm_cnn, "open_clip", unsupported=frozenset({"relevance"})),
    "open_clip-attention-pooled-resnet": TinyBackend(save_open_clip_attention_pooled_resnet, "open_clip",
                                                     patch_tokens=False, unsupported=frozenset(METHODS)),
    "transformers-clip": TinyBackend(save_transformers_clip, "transformers", unsupported=frozenset({"relevance"})),
    "transformers-siglip": TinyBackend(save_transformers_siglip, "transformers",
                                       unsupported=frozenset({"relevance"})),
    # tiny-test pools the average of its ViT tokens, so relevance (class-token row) does not apply
    "checkpoint-tiny-test": TinyBackend(save_tiny_checkpoint, "checkpoint", unsupported=frozenset({"relevance"})),
}
