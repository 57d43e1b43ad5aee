"""Zero-shot diagnosis with comparison and few-shot adaptation (tiny models; known-answer checks)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from medclip_core.data.findings import LABEL_PRESETS
from medclip_core.errors import TaskInputError
from medclip_core.tasks.diagnose import diagnose, probability_figure
from medclip_core.tasks.few_shot import LinearProbe, SupportSet, tip_adapter_logits
from medclip_core.tasks.zero_shot import parse_labels, resolve_labels


def test_diagnose_with_comparison_and_few_shot(open_clip_dir, clip_dir, chest_like_image) -> None:
    labels = ["pleural effusion", "cardiomegaly", "normal"]
    result = diagnose(chest_like_image, labels, model=f"local-dir:{open_clip_dir}",
                      compare_with=f"local-dir:{clip_dir}", shots=2)
    assert list(result.scores) == [f"local-dir:{open_clip_dir}", f"local-dir:{clip_dir}",
                                   f"local-dir:{open_clip_dir} + Tip-Adapter", f"local-dir:{open_clip_dir} + linear probe"]
    for probabilities in result.scores.values():
        assert len(probabilities) == 3 and all(0.0 <= p <= 1.0 for p in probabilities)
    header, rows = result.table()
    assert header[0] == "label" and [row[0] for row in rows] == labels
    assert result.prompts["pleural effusion"]["negative"]  # pairwise shows its negative prompts
    assert len(probability_figure(result).data) == 4


def test_softmax_mode_sums_to_one(open_clip_dir, chest_like_image) -> None:
    result = diagnose(chest_like_image, ["nodule", "edema", "normal"], mode="softmax", model=f"local-dir:{open_clip_dir}")
    assert sum(next(iter(result.scores.values()))) == pytest.approx(1.0, abs=1e-5)


def test_few_shot_refuses_labels_without_phantom_examples(open_clip_dir, chest_like_image) -> None:
    with pytest.raises(TaskInputError, match="no examples of: left ear"):
        diagnose(chest_like_image, ["left ear"], model=f"local-dir:{open_clip_dir}", shots=2)


def test_tip_adapter_votes_for_the_label_of_the_nearest_support_images() -> None:
    keys = torch.eye(4)[:, :4]
    support = SupportSet(keys, np.array([[1, 0], [1, 0], [0, 1], [0, 1]], float), ("a", "b"), "test")
    logits = tip_adapter_logits(torch.eye(4)[:1], support)
    assert logits[0, 0] > 0 > logits[0, 1]
    probe = LinearProbe.fit(support)
    probabilities = probe.predict(torch.eye(4)[2:3])
    assert probabilities[0, 1] > 0.5 > probabilities[0, 0]


def test_label_parsing_rejects_empty_and_too_many() -> None:
    assert parse_labels("Edema\nedema, Nodule") == ["edema", "nodule"]
    with pytest.raises(TaskInputError):
        parse_labels(" \n ,")
    with pytest.raises(TaskInputError, match="at most 64"):
        parse_labels("\n".join(f"finding {i}" for i in range(100)))
    with pytest.raises(TaskInputError, match="at most 200 characters"):
        parse_labels("x" * 500)


def test_resolve_labels_prefers_typed_labels_then_the_preset() -> None:
    assert resolve_labels("Edema, nodule", "CheXpert findings") == ["edema", "nodule"]
    assert resolve_labels(["Edema", "edema"], None) == ["edema"]  # the CLI's list of arguments
    assert resolve_labels("  \n", "CheXpert findings") == list(LABEL_PRESETS["CheXpert findings"])
    assert resolve_labels() == list(LABEL_PRESETS["Phantom findings"])
    with pytest.raises(TaskInputError, match="Unknown label preset 'Brain findings'"):
        resolve_labels(None, "Brain findings")


def test_diagnose_says_which_negative_sentences_it_scored_against(open_clip_dir, chest_like_image) -> None:
    model = f"local-dir:{open_clip_dir}"
    default = diagnose(chest_like_image, ["nodule", "edema"], model=model)
    assert default.negatives == "negated" and '"No {finding}."' in default.notes[0]
    normal = diagnose(chest_like_image, ["nodule", "edema"], model=model, negatives="normal", shots=2)
    assert normal.to_dict()["negatives"] == "normal" and "normal study" in normal.notes[0]
    assert normal.scores[model] != default.scores[model]
    assert diagnose(chest_like_image, ["nodule"], mode="softmax", model=model).negatives is None
    with pytest.raises(TaskInputError, match="Negative prompts must be one of"):
        diagnose(chest_like_image, ["nodule"], model=model, negatives="absent")
