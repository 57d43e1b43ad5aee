"""Grounding heatmaps and zero-shot masks: right size and range, the methods each tower allows,
the manual ViT pass equal to the model's own, peaks on known findings, clear messages for bad input."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medclip_core.data.phantom import render
from medclip_core.data.reports import load_reports
from medclip_core.errors import MedclipError, TaskInputError
from medclip_core.eval.metrics import dice, pointing_game
from medclip_core.io import load_image
from medclip_core.models import load_model
from medclip_core.models.base import PatchTokensUnsupported
from medclip_core.models.checkpoint import save_checkpoint
from medclip_core.models.open_clip_backend import build_checkpoint_module
from medclip_core.tasks.grounding import (
    MAX_PHRASES, METHODS, ground, interleave_views, method_support, parse_phrases, shifted_views,
    vit_forward_with_attention,
)
from medclip_core.tasks.segmentation import mask_from_heatmap, segment

EXAMPLES = Path(__file__).resolve().parents[1] / "assets" / "examples"
TIMM_VIT_CFG = {
    "embed_dim": 24,
    "vision_cfg": {"timm_model_name": "vit_tiny_patch16_224", "timm_model_pretrained": False, "timm_pool": "",
                   "timm_proj": "linear", "image_size": 32,
                   "timm_model_kwargs": {"img_size": 32, "patch_size": 8, "depth": 2}},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def default_model():
    return load_model("medclip-phantom")


@pytest.fixture(scope="module")
def grounding_model():
    """The shipped model whose heatmaps point (the default's do not: README, grounding section)."""
    return load_model("medclip-phantom-grounding")


@pytest.fixture(scope="module")
def vit_model(open_clip_dir):
    return load_model(f"local-dir:{open_clip_dir}")


@pytest.fixture(scope="module")
def timm_vit_model(tmp_path_factory):
    """A BiomedCLIP-shaped tower (timm ViT trunk + linear head) saved in our checkpoint format."""
    config = {"model_cfg": TIMM_VIT_CFG, "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.25] * 3}}
    torch.manual_seed(0)
    module, _ = build_checkpoint_module(config)
    card = {"name": "tiny-timm-vit", "backend": "checkpoint", "source": "test", "modality": "test",
            "image_size": 32, "embed_dim": 24, "licence": "MIT"}
    folder = save_checkpoint(module, tmp_path_factory.mktemp("timm_vit"), TIMM_VIT_CFG, card, config["preprocess_cfg"])
    return load_model(f"local-dir:{folder}")


def _example(name: str) -> tuple[Image.Image, dict]:
    return Image.open(EXAMPLES / "phantom" / f"{name}.png"), json.loads((EXAMPLES / "phantom" / f"{name}.json").read_text())


@pytest.mark.parametrize("tower", ["vit_model", "timm_vit_model"])
def test_every_method_gives_one_unit_range_map_per_phrase_at_the_input_size(request, tower, chest_like_image):
    model = request.getfixturevalue(tower)
    assert all(reason is None for reason in method_support(model).values())
    for method in METHODS:
        result = ground(chest_like_image, ["pleural effusion", "nodule"], model=model, method=method)
        assert result.maps.shape == (2, 64, 80), method
        assert result.maps.dtype == np.float32
        assert 0.0 <= result.maps.min() and result.maps.max() <= 1.0
        assert (result.maps.reshape(2, -1).max(axis=1) > 0.8).all(), method  # min-max scaled grid


@pytest.mark.parametrize("tower", ["vit_model", "timm_vit_model"])
def test_the_explicit_attention_pass_reproduces_the_model_embedding(request, tower, chest_like_image):
    model = request.getfixturevalue(tower)
    pixels = model.as_pixels([chest_like_image])
    with torch.no_grad():
        embedding, attentions = vit_forward_with_attention(model, pixels)
    assert torch.allclose(embedding, model.encode_image(pixels), atol=1e-5)
    assert len(attentions) == 2
    assert torch.allclose(attentions[0].sum(dim=-1), torch.ones(()), atol=1e-5)


def test_shifted_views_interleave_into_a_grid_twice_as_fine():
    pixels = torch.arange(16 * 16, dtype=torch.float32).reshape(1, 1, 16, 16).expand(1, 3, 16, 16)
    views = shifted_views(pixels, grid=2)                       # stride 8 -> shift 2 px
    assert views.shape == (4, 3, 16, 16)
    assert torch.equal(views[3, 0, 5, 5], pixels[0, 0, 7, 7])  # (y+, x+) view sees content 2 px further
    assert torch.equal(views[0, 0, 5, 5], pixels[0, 0, 3, 3])
    tokens = torch.arange(4.0).reshape(4, 1, 1, 1).expand(4, 2, 2, 1)
    fine = interleave_views(tokens)
    assert fine.shape == (4, 4, 1)
    assert fine[:2, :2, 0].tolist() == [[0.0, 1.0], [2.0, 3.0]]


def test_transformers_clip_allows_the_map_methods_but_says_why_not_relevance(clip_dir, chest_like_image):
    model = load_model(f"local-dir:{clip_dir}")
    support = method_support(model)
    assert support["relevance"] and "class token" in support["relevance"]
    assert ground(chest_like_image, ["nodule"], model=model, method="gradcam").maps.shape == (1, 64, 80)
    with pytest.raises(TaskInputError, match="not available"):
        ground(chest_like_image, ["nodule"], model=model, method="relevance")


def test_grounding_model_points_at_known_findings_of_committed_examples(grounding_model):
    for name, finding in (("002", "pleural effusion"), ("003", "opacity"), ("005", "pneumothorax")):
        image, meta = _example(name)
        result = ground(image, [finding], model=grounding_model, method="similarity")
        assert pointing_game(result.maps[0], meta["boxes"][finding]), (name, finding)


def test_best_method_peaks_inside_a_known_nodule(grounding_model):
    image, meta = _example("008")          # a 17 px nodule; the model's nodule pointing rate is low (README)
    assert "nodule" in meta["labels"]
    result = ground(image, ["nodule"], model=grounding_model, method="similarity")
    assert pointing_game(result.maps[0], meta["boxes"]["nodule"])


def test_dicom_maps_lie_on_the_windowed_original_at_its_resolution(default_model):
    image = load_image(EXAMPLES / "phantom_effusion.dcm")
    result = ground(image, ["pleural effusion"], model=default_model)
    assert result.maps.shape[1:] == (image.size[1], image.size[0])
    assert np.array_equal(np.asarray(result.image), np.asarray(image.to_pil()))


def test_zero_shot_mask_covers_the_effusion(grounding_model):
    report = next(r for r in load_reports() if r.labels == {"pleural effusion"}
                  and any(f.severity in ("large", "moderate") for f in r.findings))
    sample = render(report, seed=0)
    result = segment(sample.image, ["pleural effusion"], model=grounding_model)
    assert result.masks.shape == (1, 224, 224)
    assert dice(result.masks[0], sample.masks["pleural effusion"]) > 0.3


def test_mask_rule_keeps_the_peak_region_and_fills_holes():
    heatmap = np.zeros((20, 20), np.float32)
    heatmap[2:8, 2:8] = 1.0
    heatmap[4:6, 4:6] = 0.2                    # a hole in the strongest region
    heatmap[12:18, 12:18] = 0.6                # above threshold but far below the peak
    mask = mask_from_heatmap(heatmap)
    assert mask[2:8, 2:8].all() and not mask[12:18, 12:18].any()
    assert not mask_from_heatmap(heatmap, refine=False)[4:6, 4:6].any()
    assert not mask_from_heatmap(np.zeros((5, 5))).any()


def test_bad_phrases_and_models_without_patch_tokens_give_clear_messages(default_model, chest_like_image):
    with pytest.raises(TaskInputError, match="at least one phrase"):
        parse_phrases(" \n ; ")
    with pytest.raises(TaskInputError, match="at most 300 characters"):
        parse_phrases("x" * 10_000)
    with pytest.raises(TaskInputError, match=f"at most {MAX_PHRASES}"):
        ground(chest_like_image, [f"finding {i}" for i in range(100)], model=default_model)
    with pytest.raises(TaskInputError, match="Unknown heatmap method"):
        ground(chest_like_image, ["nodule"], model=default_model, method="magic")
    import open_clip

    from medclip_core.models.base import ModelCard
    from medclip_core.models.open_clip_backend import OpenClipModel

    resnet = open_clip.model.CLIP(embed_dim=16, vision_cfg={"image_size": 32, "layers": [1, 1, 1, 1], "width": 8},
                                  text_cfg={"context_length": 16, "width": 16, "heads": 2, "layers": 1})
    card = ModelCard("tiny-modified-resnet", "open_clip", "test", "test", 32, 16, "MIT")
    model = OpenClipModel(resnet, open_clip.tokenizer.SimpleTokenizer(context_length=16), card, torch.device("cpu"), [0.5] * 3, [0.25] * 3)
    with pytest.raises(PatchTokensUnsupported, match="no per-patch embeddings"):
        ground(chest_like_image, ["nodule"], model=model)
    assert isinstance(PatchTokensUnsupported("x"), MedclipError)


def test_trained_masks_cover_the_effusion_better_than_zero_shot(default_model):
    report = next(r for r in load_reports() if r.labels == {"pleural effusion"}
                  and any(f.severity in ("large", "moderate") for f in r.findings))
    sample = render(report, seed=0)
    trained = segment(sample.image, ["pleural effusion"], model=default_model, method="trained")
    zero_shot = segment(sample.image, ["pleural effusion"], model=default_model)
    truth = sample.masks["pleural effusion"]
    assert dice(trained.masks[0], truth) > max(0.5, dice(zero_shot.masks[0], truth))


def test_grounding_eval_counts_the_tolerant_pointing_game_and_its_chance(grounding_model):
    from medclip_core.eval.grounding_eval import evaluate_grounding

    result = evaluate_grounding(grounding_model, n=6, methods=["similarity"])
    scores = result.methods["similarity"]
    assert set(scores) >= {"pointing", "pointing_15px", "iou", "dice", "seconds_per_map"}
    for finding, strict in scores["pointing"].items():
        assert 0 <= strict <= scores["pointing_15px"][finding] <= 1
    assert result.chance and all(result.chance[f] < result.chance_15px[f] < 1 for f in result.chance)
