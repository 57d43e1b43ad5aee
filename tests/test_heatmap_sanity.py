"""Heatmap sanity checks (Adebayo et al. 2018) on the embedded default and committed phantom examples:
a text-driven method changes with the phrase, text-independent maps are flagged, and the randomised
copy of a model differs from it only in its last image block."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from medclip_core.__main__ import main
from medclip_core.errors import TaskInputError
from medclip_core.eval.heatmap_sanity import (
    PROMPT_FLAG, WEIGHTS_FLAG, SanityItem, check_heatmaps, method_heatmap, spearman,
)
from medclip_core.io import load_image
from medclip_core.models import load_model
from medclip_core.models.base import image_to_rgb_array

EXAMPLES = Path(__file__).resolve().parents[1] / "assets" / "examples" / "phantom"


@pytest.fixture(scope="module")
def model():
    return load_model("medclip-phantom")


@pytest.fixture(scope="module")
def items() -> list[SanityItem]:
    """Three committed phantom images with a focal finding; the phrase is that finding."""
    found = []
    for record in sorted(EXAMPLES.glob("*.json")):
        boxes = json.loads(record.read_text())["boxes"]
        focal = [f for f in ("pleural effusion", "opacity", "nodule", "pneumothorax") if f in boxes]
        if focal:
            found.append(SanityItem(load_image(record.with_suffix(".png")), focal[0]))
    assert len(found) >= 3
    return found[:3]


def test_spearman_known_answers():
    x = np.arange(12, dtype=float).reshape(3, 4)
    assert spearman(x, x ** 3) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert spearman(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0
    assert math.isnan(spearman(np.zeros(4), np.array([0.0, 1.0, 2.0, 3.0])))
    with pytest.raises(TaskInputError):
        spearman(np.zeros(4), np.zeros(5))


def test_text_driven_map_passes_and_text_independent_maps_are_flagged(model, items, tmp_path):
    def token_map(clip, image, phrase):  # the model's patch tokens, but no text: changes with weights only
        return clip.patch_tokens([image])[0, :, :, 0].numpy()

    def brightness(clip, image, phrase):  # neither text nor model
        return image_to_rgb_array(image).mean(axis=-1)

    result = check_heatmaps(model, items, methods={"similarity": method_heatmap("similarity"),
                                                   "tokens": token_map, "brightness": brightness})
    similarity = result.methods["similarity"]
    assert similarity.prompt.median < 0.8
    assert similarity.weights.median < 0.8
    assert similarity.flags == []
    assert result.methods["tokens"].prompt.values == [1.0] * len(items)
    assert result.methods["tokens"].flags == [PROMPT_FLAG]
    assert result.flags["brightness"] == [PROMPT_FLAG, WEIGHTS_FLAG]
    saved = json.loads(Path(result.save(tmp_path)["json"]).read_text())
    assert saved["methods"]["similarity"]["prompt"]["n"] == len(items)
    assert saved["flags"] == result.flags


def _snapshot(clip) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in clip.module.state_dict().items()}


def test_randomised_copy_changes_only_the_last_block(model):
    before = _snapshot(model)
    copy = model.with_randomised_blocks(1, seed=3)
    after = _snapshot(model)
    assert all(torch.equal(before[name], after[name]) for name in before), "the original model changed"
    block_ids = {id(p) for p in copy.image_blocks()[-1].parameters()}
    in_block = {name for name, p in copy.module.named_parameters() if id(p) in block_ids}
    assert in_block
    copied = copy.module.state_dict()
    changed = {name for name in before if not torch.equal(before[name], copied[name])}
    assert changed == in_block
    assert torch.equal(_snapshot(model.with_randomised_blocks(1, seed=3))[next(iter(in_block))],
                       copied[next(iter(in_block))])
    assert copy.card.name != model.card.name
    with pytest.raises(TaskInputError):
        model.with_randomised_blocks(len(model.image_blocks()) + 1)


def test_cascading_randomisation_of_a_vit(open_clip_dir):
    vit = load_model(f"local-dir:{open_clip_dir}")
    blocks = vit.image_blocks()
    assert len(blocks) >= 2 and len(blocks) == len(vit.vit_parts().blocks)
    copy = vit.with_randomised_blocks(2, seed=0)
    for original, randomised in zip(blocks, copy.image_blocks()):
        same = all(torch.equal(a, b) for a, b in zip(original.parameters(), randomised.parameters()))
        assert same == (original not in blocks[-2:])


def test_cli_on_own_images(tmp_path, capsys):
    images = sorted(EXAMPLES.glob("*.png"))[:2]
    code = main(["eval-sanity", "--model", "medclip-phantom", "--methods", "gradcam", "--n", "2",
                 "--images", *map(str, images), "--phrase", "cardiomegaly", "--out", str(tmp_path)])
    assert code == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["n_images"] == 2 and set(answer["methods"]) == {"gradcam"}
    saved = json.loads((tmp_path / "heatmap_sanity.json").read_text())
    assert saved["methods"]["gradcam"]["prompt"]["values"] == answer["methods"]["gradcam"]["prompt"]["values"]
    assert main(["eval-sanity", "--methods", "saliency", "--images", str(images[0])]) == 2
    assert "Unknown heatmap method" in capsys.readouterr().err


def test_grounding_tab_adds_the_control_map_beside_the_real_one():
    from pages.grounding import reblend, run_heatmaps

    image = str(EXAMPLES / "002.png")
    gallery, summary, _, state, _ = run_heatmaps(image, "nodule", ["gradcam"], 0.5, "medclip-phantom", True)
    assert [caption for _, caption in gallery] == ["nodule · Grad-CAM", "control: a photo of a bicycle wheel · Grad-CAM"]
    assert summary["controls"][0]["phrases"] == ["a photo of a bicycle wheel"]
    real, control = (np.asarray(overlay) for overlay, _ in gallery)
    assert not np.array_equal(real, control)
    assert len(reblend(state, 0.2)) == 2
    gallery, summary, _, _, _ = run_heatmaps(image, "nodule", ["gradcam"], 0.5, "medclip-phantom", False)
    assert len(gallery) == 1 and "controls" not in summary
