"""Fine-tuning methods of the Training tab: which weights move, and that LoRA checkpoints load as plain models."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from medclip_core.models import load_model
from medclip_core.train.contrastive import ContrastiveTrainer, TrainConfig


def _config(out: Path, **overrides) -> TrainConfig:
    base = dict(out_dir=str(out), architecture="tiny-test", limit_reports=16, phantom_variants=1, max_steps=2,
                batch_size=16, lr=5e-3, warmup_steps=1, log_every=1, checkpoint_every=2, val_reports=0,
                precision="fp32")
    return TrainConfig(**{**base, **overrides})


def _moved(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], prefix: str) -> bool:
    return any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix))


def test_text_tower_only_keeps_every_image_weight(tmp_path: Path) -> None:
    trainer = ContrastiveTrainer(_config(tmp_path / "run", lock="image-all"), log=lambda _: None)
    before = {k: v.clone() for k, v in trainer.module.state_dict().items()}
    trainer.run()
    after = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert not _moved(before, after, "visual.") and _moved(before, after, "text")


def test_lora_trains_adapters_only_and_saves_a_merged_plain_checkpoint(tmp_path: Path) -> None:
    trainer = ContrastiveTrainer(_config(tmp_path / "run", lora_rank=4), log=lambda _: None)
    trainable = [n for n, p in trainer.module.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or n == "logit_scale" for n in trainable)
    data = trainer.load_data("train", 16)
    trainer.run()

    saved = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert not any("lora_" in k or "base_layer" in k for k in saved)  # merged: loads without peft
    model = load_model(f"local-dir:{tmp_path / 'run'}", device="cpu")
    pixels = model.preprocess_batch([img / 255.0 for img in data.images[:3]])
    trainer.module.eval()
    with torch.no_grad():
        expected = torch.nn.functional.normalize(trainer.module.encode_image(pixels), dim=-1)
    assert torch.allclose(model.encode_image(pixels), expected, atol=1e-5)
    untrained = ContrastiveTrainer(_config(tmp_path / "fresh"), log=lambda _: None).module.eval()  # same seed
    with torch.no_grad():
        assert not torch.allclose(torch.nn.functional.normalize(untrained.encode_image(pixels), dim=-1), expected,
                                  atol=1e-4)  # the adapters changed the model
