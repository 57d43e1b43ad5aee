"""Metric functions on hand-made inputs with known answers; zero-shot and the phantom benchmark on a tiny model."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from medclip_core.data.findings import FINDINGS, GROUNDING_FINDINGS, LABEL_SYNONYMS
from medclip_core.errors import TaskInputError
from medclip_core.eval.metrics import (
    box_area_fraction, dice, expected_calibration_error, iou, platt_scaling, pointing_game, precision_at_k,
    recall_at_k, roc_auc,
)
from medclip_core.models import load_model
from medclip_core.models.base import CropGeometry
from medclip_core.models.geometry import heatmap_from_patches
from medclip_core.tasks.zero_shot import (
    NORMAL_PROMPTS, TEXT_EMBEDDING_CACHE, TextEmbeddingCache, label_prompts, label_text_embeddings, score_images,
    zero_shot,
)


# -- metrics ---------------------------------------------------------------------------------

def test_roc_auc_known_values() -> None:
    y = [0, 0, 1, 1]
    assert roc_auc(y, [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert roc_auc(y, [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert roc_auc(y, [0.5, 0.5, 0.5, 0.5]) == 0.5  # all tied
    # one positive/negative tie out of four pairs counts half: (3 + 0.5) / 4
    assert roc_auc(y, [0.1, 0.5, 0.5, 0.9]) == pytest.approx(0.875)
    assert math.isnan(roc_auc([1, 1, 1], [0.1, 0.2, 0.3]))
    rng = np.random.default_rng(0)
    assert abs(roc_auc(rng.random(4000) > 0.5, rng.random(4000)) - 0.5) < 0.05


def test_recall_and_precision_at_k_on_a_tiny_matrix() -> None:
    similarity = np.array([[0.9, 0.1, 0.5],
                           [0.2, 0.3, 0.8],
                           [0.7, 0.6, 0.1]])
    relevant = np.array([[True, False, False],   # best item relevant
                         [True, False, False],   # relevant item ranked last
                         [False, True, True]])   # relevant item ranked second
    recall = recall_at_k(similarity, relevant, (1, 2, 3))
    assert recall == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3), 3: 1.0}
    precision = precision_at_k(similarity, relevant, (1, 3))
    assert precision[1] == pytest.approx(1 / 3)
    assert precision[3] == pytest.approx(4 / 9)  # (1 + 1 + 2) relevant among 9 retrieved
    # queries without any relevant item are left out of recall
    assert recall_at_k(similarity, relevant & [[True], [False], [False]], (1,))[1] == 1.0


def test_pointing_game_hit_and_miss() -> None:
    heatmap = np.zeros((20, 30))
    heatmap[5, 12] = 1.0  # column 12, row 5
    assert pointing_game(heatmap, [(10, 3, 15, 8)])
    assert pointing_game(heatmap, [(0, 0, 2, 2), (12, 5, 13, 6)])  # the one-pixel box at (12, 5)
    assert not pointing_game(heatmap, [(13, 0, 30, 20)])
    assert not pointing_game(heatmap, [])
    assert not pointing_game(heatmap, [(10, 15, 15, 20)])             # 9.5 px above the box
    assert pointing_game(heatmap, [(10, 15, 15, 20)], tolerance=15)   # within Zhang et al.'s 15 px
    assert not pointing_game(heatmap, [(25, 17, 30, 20)], tolerance=15)  # 12.5 px right, 11.5 px up: 17 px away


def test_heatmap_from_patches_follows_the_centre_crop() -> None:
    """A 200x100 image, model input 50: resized to 100x50, crop keeps x in [50, 150) of the original."""
    geometry = CropGeometry(width=200, height=100, input_size=50, scale_x=0.5, scale_y=0.5, left=25, top=0)
    assert geometry.original_box == (50.0, 0.0, 150.0, 100.0)
    grid = np.zeros((5, 5))
    grid[1, 3] = 2.0  # patch row 1, column 3: original x in [110, 130), y in [20, 40)
    heat = heatmap_from_patches(grid, geometry, width=200, height=100)
    assert heat.shape == (100, 200) and heat.min() >= 0.0 and 0.9 < heat.max() <= 1.0
    row, col = np.unravel_index(np.argmax(heat), heat.shape)
    assert 20 <= row < 40 and 110 <= col < 130
    assert not heat[:, :50].any() and not heat[:, 150:].any()  # cut by the crop
    assert pointing_game(heat, [(110, 20, 130, 40)])
    assert not heatmap_from_patches(np.ones((5, 5)), geometry, 200, 100).any()


def test_iou_dice_and_box_area() -> None:
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2, :2] = True           # 4 pixels
    b[:2, 1:3] = True          # 4 pixels, 2 shared
    assert iou(a, b) == pytest.approx(2 / 6)
    assert dice(a, b) == pytest.approx(4 / 8)
    assert iou(a, a) == dice(a, a) == 1.0
    assert iou(a, ~a) == dice(a, ~a) == 0.0
    assert iou(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0
    assert box_area_fraction([(0, 0, 5, 10), (0, 0, 5, 5)], 10, 10) == pytest.approx(0.5)
    assert box_area_fraction([(4, 4, 6, 6)], 10, 10, tolerance=1) == pytest.approx(0.16)  # 4x4 centres, corners in


# -- zero-shot ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model(open_clip_dir):
    return load_model(f"local-dir:{open_clip_dir}", device="cpu")


def test_every_finding_has_prompts() -> None:
    assert set(FINDINGS) - {"normal"} <= set(LABEL_SYNONYMS)
    normal = label_prompts("normal")
    assert normal["positive"] and normal["negative"]
    assert not any("no normal" in p.lower() for p in normal["negative"])
    effusion = label_prompts("pleural effusion")
    assert "There is no pleural effusion." in effusion["negative"]


def test_zero_shot_ranges_shapes_and_cache(tiny_model, chest_like_image) -> None:
    labels = ["normal", "pleural effusion", "cardiomegaly"]
    result = zero_shot(tiny_model, chest_like_image, labels, mode="pairwise")
    assert result.labels == labels and result.mode == "pairwise"
    assert all(0.0 <= p <= 1.0 for p in result.probabilities)
    assert set(result.prompts) == set(labels) and result.prompts["normal"]["negative"]

    embeddings = tiny_model.encode_image([chest_like_image, 1.0 - chest_like_image])
    pairwise = score_images(tiny_model, embeddings, labels, "pairwise")
    assert pairwise.shape == (2, 3) and ((pairwise >= 0) & (pairwise <= 1)).all()
    softmax = score_images(tiny_model, embeddings, labels, "softmax")
    assert softmax.shape == (2, 3) and np.allclose(softmax.sum(axis=1), 1.0, atol=1e-5)
    assert zero_shot(tiny_model, chest_like_image, labels, "softmax").prompts["normal"]["negative"] == []

    hits = TEXT_EMBEDDING_CACHE.hits
    first = label_text_embeddings(tiny_model, labels, "pairwise")
    assert TEXT_EMBEDDING_CACHE.hits == hits + 1, "second request for the same labels must not re-encode"
    assert first.positive.shape == (3, tiny_model.card.embed_dim)
    with pytest.raises(ValueError):
        score_images(tiny_model, embeddings, labels, "sigmoid")


def test_text_embedding_cache_counts_misses_then_hits(tiny_model) -> None:
    cache = TextEmbeddingCache()
    first = label_text_embeddings(tiny_model, ["nodule"], "pairwise", cache)
    second = label_text_embeddings(tiny_model, ["nodule"], "pairwise", cache)
    assert (cache.misses, cache.hits) == (1, 1) and second is first
    fresh = label_text_embeddings(tiny_model, ["nodule"], "pairwise", cache=None)
    assert torch.allclose(fresh.positive, first.positive)
    assert torch.allclose(first.positive.norm(dim=-1), torch.ones(1), atol=1e-5)


def test_negative_styles_choose_what_a_finding_is_scored_against(tiny_model) -> None:
    normal_style = label_prompts("pleural effusion", "normal")
    assert normal_style["positive"] == label_prompts("pleural effusion")["positive"]
    assert normal_style["negative"] == list(NORMAL_PROMPTS["positive"])
    assert label_prompts("normal", "normal") == label_prompts("normal")  # "normal" keeps its own opposite

    assert tiny_model.card.zero_shot_negatives == "negated"  # a model that names no style: CheXzero's
    negated = label_text_embeddings(tiny_model, ["nodule", "edema", "normal"], cache=None)
    assert negated.negatives == "negated" and not torch.allclose(negated.negative[0], negated.negative[1])
    normal = label_text_embeddings(tiny_model, ["nodule", "edema", "normal"], cache=None, negatives="normal")
    expected = torch.nn.functional.normalize(tiny_model.encode_text(list(NORMAL_PROMPTS["positive"])).mean(0), dim=-1)
    assert torch.allclose(normal.negative[0], expected, atol=1e-5) and torch.allclose(normal.negative[1], expected,
                                                                                        atol=1e-5)
    assert torch.allclose(normal.negative[2], negated.negative[2], atol=1e-5)
    assert label_text_embeddings(tiny_model, ["nodule"], "softmax", cache=None, negatives="normal").negatives is None
    with pytest.raises(TaskInputError, match="Negative prompts must be one of"):
        label_text_embeddings(tiny_model, ["nodule"], cache=None, negatives="absent")

    cache = TextEmbeddingCache()
    for style in ("negated", "normal", "normal"):
        label_text_embeddings(tiny_model, ["nodule"], "pairwise", cache, negatives=style)
    assert (cache.misses, cache.hits) == (2, 1)
    result = zero_shot(tiny_model, np.full((64, 64), 0.5, np.float32), ["nodule"], negatives="normal")
    assert result.negatives == "normal" and result.to_dict()["prompts"]["nodule"]["negative"] == list(
        NORMAL_PROMPTS["positive"])


def test_expected_calibration_error_known_values() -> None:
    assert expected_calibration_error([0.9] * 10, [1] * 9 + [0]) == pytest.approx(0.0)
    assert expected_calibration_error([1.0, 1.0, 0.0, 0.0], [1, 0, 0, 1]) == pytest.approx(0.5)
    # two bins of two: |0.25 - 0| and |0.75 - 1|, each half of the items
    assert expected_calibration_error([0.25, 0.25, 0.75, 0.75], [0, 0, 1, 1]) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        expected_calibration_error([0.5], [1, 0])


def test_platt_scaling_recovers_the_slope_and_bias_that_made_the_labels() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=20_000)
    truth = rng.random(20_000) < 1.0 / (1.0 + np.exp(-(3.0 * scores - 1.0)))
    a, b = platt_scaling(scores, truth)
    assert a == pytest.approx(3.0, abs=0.15) and b == pytest.approx(-1.0, abs=0.08)
    with pytest.raises(ValueError, match="both classes"):
        platt_scaling([0.1, 0.2], [1, 1])


def test_a_card_calibration_maps_pairwise_scores_without_changing_their_order(tiny_model, chest_like_image,
                                                                               monkeypatch) -> None:
    from dataclasses import replace

    from medclip_core.tasks.zero_shot import logit_map

    labels = ["nodule", "edema", "cardiomegaly", "normal"]
    raw = zero_shot(tiny_model, chest_like_image, labels)
    assert not raw.calibrated
    calibration = {"negatives": "negated", "findings": {"scale": 5.0, "bias": -2.0},
                   "normal": {"scale": 3.0, "bias": 1.0}, "fitted_on": "test"}
    monkeypatch.setattr(tiny_model, "card", replace(tiny_model.card, zero_shot_calibration=calibration))
    calibrated = zero_shot(tiny_model, chest_like_image, labels)
    assert calibrated.calibrated and calibrated.to_dict()["calibrated"] is True
    findings_order = [label for label, _ in calibrated.ranked() if label != "normal"]
    assert findings_order == [label for label, _ in raw.ranked() if label != "normal"]
    text = label_text_embeddings(tiny_model, labels)
    cosine = (tiny_model.encode_image([chest_like_image]).float() @ (text.positive - text.negative).T)[0]
    expected = torch.sigmoid(torch.tensor([5.0, 5.0, 5.0, 3.0]) * cosine + torch.tensor([-2.0, -2.0, -2.0, 1.0]))
    assert np.allclose(calibrated.probabilities, expected.numpy(), atol=1e-5)
    # only for the style it was fitted on, only in pairwise mode, and not when asked for raw scores
    assert not zero_shot(tiny_model, chest_like_image, labels, negatives="normal").calibrated
    assert not zero_shot(tiny_model, chest_like_image, labels, calibrated=False).calibrated
    assert not logit_map(tiny_model, label_text_embeddings(tiny_model, labels, "softmax")).calibrated


def test_zero_shot_summary_counts_images_whose_top_finding_is_their_own() -> None:
    from medclip_core.eval.phantom_eval import zero_shot_summary

    nodule, edema, normal = (FINDINGS.index(f) for f in ("nodule", "edema", "normal"))
    probabilities = np.full((3, len(FINDINGS)), 0.1)
    probabilities[0, nodule] = 0.9   # right
    probabilities[1, nodule] = 0.9   # wrong: an edema image
    probabilities[2, normal] = 0.8   # right
    labels = [frozenset({"nodule"}), frozenset({"edema"}), frozenset({"normal"})]
    summary = zero_shot_summary(probabilities, labels, "pairwise", "normal")
    assert summary["top_finding_accuracy"] == pytest.approx(2 / 3) and summary["negatives"] == "normal"
    assert 0.0 <= summary["calibration_error"] <= 1.0 and probabilities[1, edema] == 0.1


# -- phantom benchmark --------------------------------------------------------------------------

def test_evaluate_phantom_on_a_tiny_model(tiny_model, tmp_path) -> None:
    from medclip_core.eval.phantom_eval import evaluate_phantom, write_eval

    calls = []
    tiny_model.module.train()  # as during a training run: the evaluation must hand it back in that mode
    result = evaluate_phantom(tiny_model, n=12, batch_size=5, progress=lambda f, m: calls.append(f))
    assert tiny_model.module.training
    tiny_model.eval()
    data = result.to_dict()
    assert data["n_images"] == 12 and data["n_reports"] == 12 and data["split"] == "test"
    assert calls and calls[-1] == 1.0

    zs = data["zero_shot"]
    assert zs["mode"] == "pairwise" and zs["negatives"] == "negated" and set(zs["positives"]) == set(FINDINGS)
    assert 0.0 <= zs["top_finding_accuracy"] <= 1.0 and 0.0 <= zs["calibration_error"] <= 1.0
    assert sum(zs["positives"].values()) >= 12
    assert all(0.0 <= v <= 1.0 for v in zs["auc"].values())
    assert set(zs["auc"]) | set(zs["skipped"]) == set(FINDINGS)

    for direction in ("image_to_text", "text_to_image"):
        scores = data["retrieval"][direction]
        assert set(scores) == {"recall@1", "recall@5", "recall@10", "precision@5"}
        assert all(0.0 <= v <= 1.0 for v in scores.values())
        assert scores["recall@1"] <= scores["recall@5"] <= scores["recall@10"]

    grounding = data["grounding"]
    assert grounding["note"] is None
    assert set(grounding) >= {"raw", "redundancy_removed", "chance", "n_targets"}
    assert set(grounding["n_targets"]) == set(GROUNDING_FINDINGS)
    for variant in ("raw", "redundancy_removed", "chance"):
        rates = grounding[variant]["per_finding"]
        assert set(rates) == {f for f, n in grounding["n_targets"].items() if n}
        assert all(0.0 <= v <= 1.0 for v in rates.values())
    assert data["timing"]["images_per_second"] > 0

    path = write_eval(result, tmp_path / "eval" / "phantom.json")
    assert json.loads(path.read_text()) == data


def test_evaluate_phantom_skips_grounding_without_patch_tokens(tiny_model, monkeypatch) -> None:
    from medclip_core.eval.phantom_eval import evaluate_phantom

    monkeypatch.setattr(type(tiny_model), "supports_patch_tokens", property(lambda self: False))
    grounding = evaluate_phantom(tiny_model, n=4).to_dict()["grounding"]
    assert grounding["note"] and grounding["raw"]["mean"] is None and not any(grounding["n_targets"].values())
