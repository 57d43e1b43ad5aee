"""The config dataclasses of the training tasks: everything a run depends on, saved next to its
checkpoints. Each field's :func:`option` help (and choices) becomes the CLI's ``train`` flag, so this
module stays light (no torch): the CLI builds its parser from it on every start.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def option(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    """A config field with its command-line help (and choices): the CLI's ``train`` flags are made from these."""
    return field(default=default, metadata={"help": help, **({"choices": choices} if choices else {})})


@dataclass
class TrainConfig:
    """Everything a contrastive run depends on; saved next to its checkpoints."""

    out_dir: str
    architecture: str = option("phantom-cnn-minilm", "architecture JSON name in train/architectures, or "
                                                    "local-dir:CHECKPOINT to fine-tune")
    data: str = option("phantom", "'phantom' or a CSV with columns image,report[,labels]")
    phantom_variants: int = option(3, "rendered images per training report")
    render_workers: int = option(1, "processes rendering the phantom images")
    limit_reports: int | None = option(None, "use only the first N training reports")
    epochs: float = option(10.0, "passes over the training pairs (when --max-steps is not given)")
    max_steps: int | None = option(None, "optimiser steps (default: from --epochs)")
    batch_size: int = option(128, "global batch (split over the processes under torchrun)")
    lr: float = option(1e-3, "peak learning rate")
    weight_decay: float = option(0.1, "AdamW decay of weight matrices")
    warmup_steps: int = option(100, "linear warm-up steps before the cosine decay")
    grad_clip: float = option(1.0, "gradient norm clip")
    seed: int = option(0, "seed of weights, batches and renderings")
    precision: str = option("bf16", "bf16 autocast or fp32", choices=("bf16", "fp32"))
    lock: str = option("none", "freeze a tower: image = LiT (a CNN keeps its projection head), image-all = every "
                               "image-tower weight (the text tower trains alone), text = the text tower",
                       choices=("none", "image", "image-all", "text"))
    lora_rank: int = option(0, "> 0: LoRA adapters (peft) of this rank on the unlocked towers' layers")
    semantic_matching: bool = option(True, "MedCLIP soft targets from finding labels")
    label_temperature: float = option(0.1, "temperature of the label-similarity targets")
    local_loss_weight: float = option(0.5, "weight of the GLoRIA-style sentence-region loss (0: off)")
    local_attention_temperature: float = option(0.1, "temperature of the sentence-over-patch attention")
    log_every: int = option(10, "steps between metric rows")
    checkpoint_every: int = option(200, "steps between checkpoints (with validation)")
    val_reports: int = option(256, "validation reports (phantom data)")
    device: str | None = option(None, "cpu, cuda or cuda:N (default: cuda when there is one)")


@dataclass
class SegTrainConfig:
    """Everything a segmentation run depends on; saved next to its checkpoints."""

    out_dir: str
    model: str = option("medclip-phantom", "the frozen CLIP model whose patch tokens the decoder reads")
    variants: int = option(1, "rendered images per training report")
    focal_extra_variants: int = option(1, "extra renders of reports with a focal finding")
    nonfocal_fraction: float = option(0.3, "share of the other training reports kept (seeded choice)")
    limit_reports: int | None = option(None, "use only the first N training reports")
    val_reports: int | None = option(100, "validation reports")
    max_steps: int = option(800, "optimiser steps")
    batch_size: int = option(12, "images per step")
    phrases_per_image: int = option(4, "phrases per image: half positives (when the image has any), half negatives")
    lr: float = option(2e-3, "peak learning rate")
    weight_decay: float = option(1e-4, "AdamW decay of weight matrices")
    warmup_steps: int = option(50, "linear warm-up steps before the cosine decay")
    grad_clip: float = option(1.0, "gradient norm clip")
    dice_weight: float = option(1.0, "weight of the soft Dice term")
    seed: int = option(0, "seed of weights, batches and renderings")
    checkpoint_every: int = option(100, "steps between checkpoints (with validation)")
    log_every: int = option(10, "steps between metric rows")
    width: int = option(32, "decoder width")
    skip_width: int = option(24, "width of the stride-8 skip branch")
    fine_width: int = option(8, "width of the full-resolution branch")
    stem_width: int = option(16, "width of the pixel stem")
    device: str | None = option(None, "cpu, cuda or cuda:N (default: cuda when there is one)")


@dataclass
class ReportTrainConfig:
    """Everything a decoder run depends on; saved next to its checkpoints."""

    out_dir: str
    model: str = option("medclip-phantom", "the frozen CLIP model whose features condition the decoder")
    phantom_variants: int = option(2, "rendered images per training report")
    limit_reports: int | None = option(None, "use only the first N training reports")
    max_steps: int = option(240, "optimiser steps")
    batch_size: int = option(32, "reports per step")
    lr: float = option(1.5e-3, "peak learning rate")
    weight_decay: float = option(0.01, "AdamW decay of weight matrices")
    warmup_steps: int = option(30, "linear warm-up steps before the cosine decay")
    grad_clip: float = option(1.0, "gradient norm clip")
    label_smoothing: float = option(0.1, "label smoothing of the word loss")
    image_token_dropout: float = option(0.1, "probability of dropping each image token in training")
    min_word_count: int = option(3, "words seen fewer times in the training reports become <unk>")
    width: int = option(128, "decoder width")
    layers: int = option(2, "decoder layers")
    heads: int = option(4, "attention heads")
    max_len: int = option(72, "longest report in tokens")
    seed: int = option(0, "seed of weights, batches and renderings")
    log_every: int = option(10, "steps between metric rows")
    checkpoint_every: int = option(40, "steps between checkpoints (with validation and threshold tuning)")
    val_reports: int = option(393, "validation reports")
    diagnosis_prompts: bool = option(True, "classifier head + one memory token per finding (PromptMRG style)")
    classifier_weight: float = option(1.0, "weight of the classifier head's loss")
    prompt_noise: float = option(0.05, "probability of flipping each true label fed as a prompt in training")
    prompt_only_fraction: float = option(0.5, "share of training rows whose image tokens are all dropped")
    feature_dir: str | None = option(None, "where the frozen image features are cached (default OUT/features)")
    device: str | None = option(None, "cpu, cuda or cuda:N (default: cuda when there is one)")
