"""Shared fixtures: tiny models written to temporary folders in the real on-disk formats."""
from __future__ import annotations

import json
import os
import socket
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("MEDCLIP_RUNS_DIR", tempfile.mkdtemp(prefix="medclip-test-runs-"))  # never the user's runs

TINY_VISION = {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8}
TINY_TEXT = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
TINY_EMBED = 24
WORDS = ["[PAD]", "[UNK]", "[EOS]", "a", "chest", "x-ray", "with", "no", "pleural", "effusion", "normal",
         "cardiomegaly", "nodule", "left", "right", "lung", "photo", "of"]


def tiny_open_clip_module() -> torch.nn.Module:
    import open_clip

    torch.manual_seed(0)
    return open_clip.model.CLIP(embed_dim=TINY_EMBED, vision_cfg=TINY_VISION, text_cfg=TINY_TEXT)


def save_open_clip_layout(folder: Path) -> Path:
    """open_clip's hub layout: open_clip_config.json + open_clip_model.safetensors."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    module = tiny_open_clip_module()
    config = {
        "model_cfg": {"embed_dim": TINY_EMBED, "vision_cfg": TINY_VISION, "text_cfg": TINY_TEXT},
        "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
    }
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder


def _save_word_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]")
    fast.save_pretrained(folder)


def save_transformers_clip(folder: Path) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, eos_token_id=2),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=TINY_EMBED,
    )
    CLIPModel(config).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    _save_word_tokenizer(folder)
    return folder


def save_transformers_siglip(folder: Path) -> Path:
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    torch.manual_seed(0)
    config = SiglipConfig(
        text_config=dict(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
    )
    SiglipModel(config).save_pretrained(folder)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    _save_word_tokenizer(folder)
    return folder


@pytest.fixture(scope="session")
def chest_like_image() -> np.ndarray:
    """A 64x80 grey image with two dark 'lungs' on a bright body: a non-square real-looking input."""
    yy, xx = np.mgrid[0:64, 0:80]
    img = np.full((64, 80), 0.8, np.float32)
    for cx in (25, 55):
        img[((xx - cx) / 12.0) ** 2 + ((yy - 34) / 22.0) ** 2 < 1] = 0.15
    return img


@pytest.fixture(scope="session")
def open_clip_dir(tmp_path_factory) -> Path:
    return save_open_clip_layout(tmp_path_factory.mktemp("open_clip_tiny"))


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory) -> Path:
    return save_transformers_clip(tmp_path_factory.mktemp("hf_clip_tiny"))


@pytest.fixture(scope="session")
def siglip_dir(tmp_path_factory) -> Path:
    return save_transformers_siglip(tmp_path_factory.mktemp("hf_siglip_tiny"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def app_url():
    """The whole app, launched on a free local port for the tests of one module, then closed."""
    from app import build_app

    demo = build_app()
    demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    yield demo.local_url
    demo.close()
