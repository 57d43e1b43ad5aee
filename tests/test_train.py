"""Contrastive trainer: loss goes down, checkpoints reload identically, runs resume, data is validated."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from medclip_core.errors import MedclipError
from medclip_core.models import load_model
from medclip_core.train.contrastive import (
    ContrastiveTrainer,
    TrainConfig,
    _soft_targets,
    contrastive_loss,
    local_alignment_logits,
)
from medclip_core.train.data import csv_pairs, phantom_pairs, text_variants


def tiny_config(out: Path, **overrides) -> TrainConfig:
    base = dict(out_dir=str(out), architecture="tiny-test", limit_reports=16, phantom_variants=1, max_steps=2,
                batch_size=16, lr=5e-3, warmup_steps=1, log_every=1, checkpoint_every=1, val_reports=4,
                precision="fp32")
    return TrainConfig(**{**base, **overrides})


def test_two_steps_lower_the_loss_and_the_checkpoint_reloads_identically(tmp_path: Path) -> None:
    trainer = ContrastiveTrainer(tiny_config(tmp_path / "run"), log=lambda _: None)
    data = trainer.load_data("train", 16)
    rows = np.arange(len(data))
    trainer.module.eval()
    with torch.no_grad():
        before = float(trainer.batch_loss(data, rows, np.random.default_rng(0))[0])
    result = trainer.run()
    trainer.module.eval()
    with torch.no_grad():
        after = float(trainer.batch_loss(data, rows, np.random.default_rng(0))[0])
    assert result.steps == 2 and after < before

    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2] and all(np.isfinite(m["loss"]) for m in metrics)

    model = load_model(f"local-dir:{tmp_path / 'run'}", device="cpu")
    pixels = model.preprocess_batch([img / 255.0 for img in data.images[:3]])
    with torch.no_grad():
        expected = torch.nn.functional.normalize(trainer.module.encode_image(pixels), dim=-1)
    assert torch.allclose(model.encode_image(pixels), expected, atol=1e-6)


def test_a_stopped_run_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    whole = ContrastiveTrainer(tiny_config(tmp_path / "whole", max_steps=3, checkpoint_every=2),
                               log=lambda _: None).run()
    calls = iter(range(100))
    config = tiny_config(tmp_path / "split", max_steps=3, checkpoint_every=2)
    first = ContrastiveTrainer(config, log=lambda _: None, should_stop=lambda: next(calls) >= 1).run()
    assert first.stopped and first.steps == 1  # stopped between checkpoints: saved at the stop
    lines: list[str] = []
    second = ContrastiveTrainer(config, log=lines.append).run()
    assert any("resuming at step 1/3" in line for line in lines) and not second.stopped
    rows = [json.loads(line) for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for ours, reference in zip(rows, whole.metrics):
        for key in ("loss", "global_loss", "local_loss", "grad_norm", "lr", "logit_scale"):
            assert ours[key] == pytest.approx(reference[key], abs=1e-6), key
    resumed, uninterrupted = (load_file(str(tmp_path / name / "model.safetensors")) for name in ("split", "whole"))
    assert all(torch.allclose(resumed[k], uninterrupted[k], atol=1e-6) for k in uninterrupted)


def test_train_flags_come_from_the_task_configs(tmp_path: Path, capsys) -> None:
    from medclip_core.__main__ import build_parser, main
    from medclip_core.train.tasks import TRAINING_TASKS

    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--help"])
    listed = capsys.readouterr().out
    for name, task in TRAINING_TASKS.items():
        assert f"--task {name} only" in listed
        for f in task.fields():
            flag = f.name.replace("_", "-")
            assert f"--{'no-' if f.default is True else ''}{flag} " in listed.replace("\n", " ")
    args = parser.parse_args(["train", "--task", "segmentation", "--out", str(tmp_path), "--batch-size", "7",
                              "--dice-weight", "0.5", "--no-semantic-matching"])
    assert (args.batch_size, args.dice_weight, args.semantic_matching, args.lr) == (7, 0.5, False, None)
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--out", str(tmp_path), "--precision", "fp16"])
    assert main(["train", "--task", "segmentation", "--out", str(tmp_path), "--lora-rank", "4"]) == 2
    assert main(["train", "--task", "report", "--preset", "phantom", "--out", str(tmp_path)]) == 2
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_parallel_rendering_gives_the_same_pairs_as_one_process() -> None:
    one = phantom_pairs("train", 64, variants_per_report=2, limit=5)
    three = phantom_pairs("train", 64, variants_per_report=2, limit=5, workers=3)
    assert one.images.shape == (10, 64, 64) and np.array_equal(one.images, three.images)
    assert not np.array_equal(one.images[0], one.images[1])  # two renderings of one report differ
    assert list(three.report_index) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4] and one.texts == three.texts


def test_a_saved_text_cache_reproduces_the_frozen_tower_outputs(tmp_path: Path) -> None:
    texts = ["No pleural effusion.", "Mild cardiomegaly. Clear lungs.", "Left basilar opacity."]
    trainer = ContrastiveTrainer(TrainConfig(out_dir=str(tmp_path / "run"), device="cpu"), log=lambda _: None)
    with torch.no_grad():
        expected = trainer.text_cache.project(texts)
    trainer.text_cache.save(tmp_path / "cache.pt")
    fresh = ContrastiveTrainer(TrainConfig(out_dir=str(tmp_path / "run"), device="cpu"), log=lambda _: None)
    fresh.module.load_state_dict(trainer.module.state_dict())
    assert fresh.text_cache.load(tmp_path / "cache.pt") == 3
    fresh.text_cache.tower.transformer = None  # a loaded text must not need the transformer again
    with torch.no_grad():
        assert torch.equal(fresh.text_cache.project(texts), expected)
    fresh.text_cache.load(tmp_path / "cache.pt", closed=True)
    with pytest.raises(MedclipError, match="not in the loaded text cache"):
        fresh.text_cache.fill(["A text nobody saved."])


def test_semantic_matching_targets_share_weight_between_identical_label_sets() -> None:
    labels = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    targets = _soft_targets(labels, temperature=0.1)
    assert torch.allclose(targets.sum(dim=1), torch.ones(4))
    assert targets[0, 0] == pytest.approx(targets[0, 1].item()) and targets[0, 2] < 1e-3
    assert targets[3, 3] == pytest.approx(1.0)  # unknown labels: plain InfoNCE target
    perfect = torch.eye(3) * 20
    assert contrastive_loss(perfect, torch.eye(3)) < contrastive_loss(torch.zeros(3, 3), torch.eye(3))


def test_local_alignment_prefers_the_image_holding_the_sentence() -> None:
    patches = torch.nn.functional.normalize(torch.randn(2, 9, 8), dim=-1)
    sentences = patches[:, 4:5, :].clone()  # each report's sentence is a patch of its own image
    scores = local_alignment_logits(patches, sentences, torch.ones(2, 1, dtype=torch.bool), 0.05)
    assert scores.shape == (2, 2)
    assert scores[0, 0] > scores[1, 0] and scores[1, 1] > scores[0, 1]


def test_text_variants_start_with_the_full_report() -> None:
    variants = text_variants("Heart is normal. Lungs are clear. No effusion.", "No acute disease.",
                             np.random.default_rng(0))
    assert variants[0] == "Heart is normal. Lungs are clear. No effusion. No acute disease."
    assert variants[1] == "No acute disease." and len(variants) == 4


def test_csv_pairs_validates_rows(tmp_path: Path) -> None:
    Image.fromarray(np.full((20, 30), 128, np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "ok.csv").write_text("image,report,labels\na.png,Small left effusion.,pleural effusion\n")
    pairs = csv_pairs(tmp_path / "ok.csv", size=16)
    assert pairs.images.shape == (1, 16, 16) and pairs.label_names == ("pleural effusion",)
    (tmp_path / "escape.csv").write_text("image,report\n../outside.png,Text.\n")
    with pytest.raises(MedclipError, match="leaves the dataset folder"):
        csv_pairs(tmp_path / "escape.csv", size=16)
    (tmp_path / "empty.csv").write_text("image,report\na.png,\n")
    with pytest.raises(MedclipError, match="report is empty"):
        csv_pairs(tmp_path / "empty.csv", size=16)
