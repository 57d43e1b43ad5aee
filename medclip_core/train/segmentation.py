"""Training the text-conditioned segmentation decoder on the phantom masks (``train --task segmentation``).

The image and text towers stay frozen, so their outputs are computed once: every training image
is rendered, run through the image tower (patch tokens + stride-8 skip map, float16) and kept in
memory next to its finding masks, and every phrase of the vocabulary is encoded once. A step
then only runs the small decoder. Phrases come from the finding names and their report synonyms
(``data.findings.LABEL_SYNONYMS`` plus short forms), with a side word ("left", "right",
"bilateral") for findings that have a side; the target of "left X" is X's mask on the patient's
left (the image's right) and is empty when X is only on the right. Findings absent from the image
are negatives with an empty mask.

Loss: binary cross-entropy over all pixels plus soft Dice on the phrases whose target is not
empty, at half the input resolution. AdamW with warm-up + cosine decay, seeded batches derived
from (seed, step) so a resumed run sees the same batches, checkpoints (safetensors + JSON config
+ optimizer state) every ``checkpoint_every`` steps and ``metrics.jsonl``.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from medclip_core.data.findings import SEGMENTATION_FOCUS_FINDINGS, SEGMENTED_FINDINGS, finding_phrases
from medclip_core.data.phantom import PhantomDataset, PhantomSample
from medclip_core.data.reports import load_reports, report_splits
from medclip_core.errors import MedclipError
from medclip_core.models import load_model
from medclip_core.models.base import ClipModel
from medclip_core.models.segmentation_decoder import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    DecoderConfig,
    SegmentationDecoder,
    TextConditionedDecoder,
    frozen_features,
)
from medclip_core.train.common import RunContext, TrainingRun, TrainResult
from medclip_core.train.configs import SegTrainConfig

TARGET_SCALE = 2  # targets are kept at half the input size


@dataclass
class FeatureSet:
    """Frozen features and masks of rendered phantom images, for decoder training and validation."""

    tokens: torch.Tensor       # (N, g, g, D) float16
    skip: torch.Tensor | None  # (N, C, 2g, 2g) float16
    images: np.ndarray         # (N, S, S) uint8 grey model input
    labels: np.ndarray         # (N, F) bool over SEGMENTED_FINDINGS
    midline: np.ndarray        # (N,) column (at target scale) between the two lungs
    mask_owner: np.ndarray     # (M,) image of each mask
    mask_finding: np.ndarray   # (M,) index into SEGMENTED_FINDINGS
    masks: np.ndarray          # (M, S/2, S/2) uint8: fraction of each target pixel covered * 255

    def __len__(self) -> int:
        return len(self.images)

    def save(self, path: Path) -> None:
        arrays = {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in asdict(self).items() if v is not None}
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "FeatureSet":
        with np.load(path) as data:
            fields = {k: data[k] for k in data.files}
        fields["tokens"] = torch.from_numpy(fields["tokens"])
        fields["skip"] = torch.from_numpy(fields["skip"]) if "skip" in fields else None
        return cls(**fields)


def _midline(sample: PhantomSample) -> float:
    """Column halfway between the patient's right lung (image left) and left lung, at target scale."""
    right, left = sample.anatomy["lung_right"], sample.anatomy["lung_left"]
    if not right.any() or not left.any():
        return sample.image.shape[1] / 2 / TARGET_SCALE
    return (np.nonzero(right.any(0))[0].max() + np.nonzero(left.any(0))[0].min()) / 2 / TARGET_SCALE


def _downsample(mask: np.ndarray) -> np.ndarray:
    h, w = mask.shape
    frac = mask.reshape(h // TARGET_SCALE, TARGET_SCALE, w // TARGET_SCALE, TARGET_SCALE).mean(axis=(1, 3))
    return np.round(frac * 255).astype(np.uint8)


def build_feature_set(model: ClipModel, samples: PhantomDataset | list, indices: list[int],
                      log: Callable[[str], None] = print, batch: int = 64) -> FeatureSet:
    """Render ``samples[i]`` for ``indices`` and run the frozen image tower over them once."""
    tokens, skips, images, labels, midline = [], [], [], [], []
    owner, finding, masks = [], [], []
    t0 = time.time()
    for start in range(0, len(indices), batch):
        chunk = [samples[i] for i in indices[start:start + batch]]
        for sample in chunk:
            n = len(images)
            images.append(np.round(np.clip(sample.image, 0, 1) * 255).astype(np.uint8))
            labels.append([f in sample.labels for f in SEGMENTED_FINDINGS])
            midline.append(_midline(sample))
            for label, mask in sample.masks.items():
                if label in SEGMENTED_FINDINGS:
                    owner.append(n)
                    finding.append(SEGMENTED_FINDINGS.index(label))
                    masks.append(_downsample(mask))
        pixels = model.preprocess_batch([s.image for s in chunk])
        t, s = frozen_features(model, pixels)
        tokens.append(t.half().cpu())
        if s is not None:
            skips.append(s.half().cpu())
        log(f"features {min(start + batch, len(indices))}/{len(indices)} images ({time.time() - t0:.0f} s)")
    size = images[0].shape[0] // TARGET_SCALE
    return FeatureSet(torch.cat(tokens), torch.cat(skips) if skips else None, np.stack(images),
                      np.array(labels, bool), np.array(midline, np.float32), np.array(owner, np.int64),
                      np.array(finding, np.int64),
                      np.stack(masks) if masks else np.zeros((0, size, size), np.uint8))


class PhraseBank:
    """Every training phrase with its finding and side, and its frozen text embedding."""

    def __init__(self, model: ClipModel) -> None:
        self.by_finding: list[list[int]] = []
        self.phrases: list[str] = []
        self.sides: list[str] = []
        for finding in SEGMENTED_FINDINGS:
            rows = []
            for phrase, side in finding_phrases(finding):
                rows.append(len(self.phrases))
                self.phrases.append(phrase)
                self.sides.append(side)
            self.by_finding.append(rows)
        self.embeddings = torch.cat([model.encode_text(self.phrases[i:i + 128])
                                     for i in range(0, len(self.phrases), 128)]).cpu()


def _side_target(mask: np.ndarray, side: str, midline: float) -> np.ndarray:
    """Restrict a finding mask to the patient's ``side`` (left = image right)."""
    if side in ("", "bilateral"):
        return mask
    columns = np.arange(mask.shape[1]) + 0.5
    keep = columns >= midline if side == "left" else columns < midline
    return mask * keep[None, :]


def sample_queries(data: FeatureSet, bank: PhraseBank, rows: np.ndarray, per_image: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each image: up to ``per_image // 2`` positive phrases, the rest negatives.

    Returns (image position in ``rows``, phrase index, target (Q, S/2, S/2) float32 in [0, 1]).
    """
    size = data.masks.shape[-1] if len(data.masks) else data.images.shape[-1] // TARGET_SCALE
    positions, phrases, targets = [], [], []
    for pos, image in enumerate(rows):
        owned = np.flatnonzero(data.mask_owner == image)
        n_pos = min(per_image // 2, len(owned))
        for m in rng.choice(owned, n_pos, replace=False) if n_pos else []:
            finding = int(data.mask_finding[m])
            phrase = int(rng.choice(bank.by_finding[finding]))
            mask = data.masks[m].astype(np.float32) / 255.0
            side = bank.sides[phrase]
            if side == "bilateral":  # only where both sides have it; otherwise the plain phrase
                halves = [_side_target(mask, s, data.midline[image]).any() for s in ("left", "right")]
                if not all(halves):
                    phrase = bank.by_finding[finding][0]
            positions.append(pos)
            phrases.append(phrase)
            targets.append(_side_target(mask, bank.sides[phrase], data.midline[image]))
        absent = np.flatnonzero(~data.labels[image])
        for finding in rng.choice(absent, per_image - n_pos, replace=False):
            positions.append(pos)
            phrases.append(int(rng.choice(bank.by_finding[int(finding)])))
            targets.append(np.zeros((size, size), np.float32))
    return np.array(positions), np.array(phrases), np.stack(targets)


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, dice_weight: float) -> tuple[torch.Tensor, dict]:
    """BCE over all pixels + soft Dice over the queries whose target is not empty."""
    logits = F.interpolate(logits[:, None], size=target.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    bce = F.binary_cross_entropy_with_logits(logits, target)
    positive = target.flatten(1).sum(1) > 0
    parts = {"bce": float(bce.detach())}
    loss = bce
    if positive.any():
        p, t = torch.sigmoid(logits[positive]).flatten(1), target[positive].flatten(1)
        soft_dice = (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)
        dice_loss = 1 - soft_dice.mean()
        parts["dice_loss"] = float(dice_loss.detach())
        loss = loss + dice_weight * dice_loss
    return loss, parts


class SegmentationTrainer(TrainingRun):
    """One decoder training run; resumes from ``out_dir`` when it holds a state."""

    checkpoint_files = (CONFIG_NAME, WEIGHTS_NAME)

    def __init__(self, config: SegTrainConfig, log: Callable[[str], None] = print,
                 model: ClipModel | None = None, should_stop: Callable[[], bool] = lambda: False) -> None:
        self.config, self.should_stop = config, should_stop
        self.context = RunContext.create(config.out_dir, config.device, log)
        self.log, self.out_dir, self.device = self.context.log, self.context.out_dir, self.context.device
        self.model = model or load_model(config.model, device=self.device)
        if not self.model.supports_patch_tokens:
            raise MedclipError(f"Model '{config.model}' has no patch tokens; a segmentation decoder needs them.")

    def _splits(self) -> dict[str, list]:
        return report_splits(load_reports(), self.config.seed)

    def _indices(self, reports: list, variants: int, extra: int, keep_other: float) -> list[int]:
        """Dataset indices: ``variants + extra`` renders of focal reports, ``variants`` of a seeded
        ``keep_other`` share of the others (the frozen features are what costs time on a CPU)."""
        per = variants + extra
        keep = np.random.default_rng((self.config.seed, 7)).random(len(reports)) < keep_other
        out = []
        for r, report in enumerate(reports):
            focal = bool(report.labels & SEGMENTATION_FOCUS_FINDINGS)
            if focal or keep[r]:
                out.extend(r * per + k for k in range(per if focal else variants))
        return out

    def features(self, split: str) -> FeatureSet:
        """The split's features, from ``out_dir`` when an earlier (interrupted) run made them."""
        cfg = self.config
        path = self.out_dir / f"features_{split}.npz"
        if path.is_file():
            return FeatureSet.load(path)
        reports = self._splits()[split][: cfg.limit_reports if split == "train" else cfg.val_reports]
        variants, extra, keep = ((cfg.variants, cfg.focal_extra_variants, cfg.nonfocal_fraction)
                                 if split == "train" else (1, 0, 1.0))
        dataset = PhantomDataset(reports, seed=cfg.seed + (0 if split == "train" else 1),
                                 size=self.model.image_size, variants_per_report=variants + extra)
        data = build_feature_set(self.model, dataset, self._indices(reports, variants, extra, keep),
                                 log=lambda line: self.log(f"{split}: {line}"))
        data.save(path)
        return data

    def _pixels(self, images: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(images).to(self.device, torch.float32).div_(255.0)[:, None].expand(-1, 3, -1, -1)
        return self.model.preprocessing.normalise(x)

    def batch_loss(self, module: TextConditionedDecoder, data: FeatureSet, bank: PhraseBank, rows: np.ndarray,
                   rng: np.random.Generator) -> tuple[torch.Tensor, dict]:
        positions, phrases, targets = sample_queries(data, bank, rows, self.config.phrases_per_image, rng)
        skip = data.skip[rows].to(self.device) if data.skip is not None else None
        logits = module(data.tokens[rows].to(self.device), skip, self._pixels(data.images[rows]),
                        bank.embeddings[phrases].to(self.device), torch.from_numpy(positions).to(self.device))
        return segmentation_loss(logits, torch.from_numpy(targets).to(self.device), self.config.dice_weight)

    @torch.no_grad()
    def validate_decoder(self, module: TextConditionedDecoder, data: FeatureSet | None,
                         bank: PhraseBank) -> dict | None:
        """Validation loss, and Dice at 0.5 per focal finding (plain phrase) on the validation images."""
        if data is None or len(data) == 0:
            return None
        module.eval()
        rng = np.random.default_rng(self.config.seed)
        losses = []
        for chunk in np.array_split(np.arange(len(data)), max(1, len(data) // self.config.batch_size)):
            losses.append(float(self.batch_loss(module, data, bank, chunk, rng)[0]))
        out: dict = {"val_loss": float(np.mean(losses))}
        for finding in sorted(SEGMENTATION_FOCUS_FINDINGS):
            f = SEGMENTED_FINDINGS.index(finding)
            ms = np.flatnonzero(data.mask_finding == f)
            if not len(ms):
                continue
            owners = data.mask_owner[ms]
            skip = data.skip[owners].to(self.device) if data.skip is not None else None
            text = bank.embeddings[[bank.by_finding[f][0]] * len(ms)].to(self.device)
            logits = module(data.tokens[owners].to(self.device), skip, self._pixels(data.images[owners]), text,
                            torch.arange(len(ms), device=self.device))
            pred = F.interpolate(logits[:, None], size=data.masks.shape[-2:], mode="bilinear",
                                 align_corners=False)[:, 0] > 0
            target = torch.from_numpy(data.masks[ms] >= 128).to(self.device)
            inter = (pred & target).flatten(1).sum(1).float()
            total = (pred.flatten(1).sum(1) + target.flatten(1).sum(1)).float()
            out[f"val_dice_{finding.replace(' ', '_')}"] = float((2 * inter / total.clamp(min=1)).mean())
        module.train()
        return out

    def _decoder_config(self, data: FeatureSet) -> DecoderConfig:
        cfg = self.config
        return DecoderConfig(model_name=cfg.model, embed_dim=int(data.tokens.shape[-1]), grid=int(data.tokens.shape[1]),
                             skip_channels=int(data.skip.shape[1]) if data.skip is not None else 0,
                             width=cfg.width, skip_width=cfg.skip_width, fine_width=cfg.fine_width,
                             stem_width=cfg.stem_width, image_size=self.model.image_size)

    def save(self, step: int, final: bool, val: dict[str, Any]) -> None:
        SegmentationDecoder(self.module).save(self.out_dir, extra={
            "train_config": asdict(self.config), "step": step, "final": final, "val": val or None,
            "phrases": "finding names, LABEL_SYNONYMS and short forms, with left/right/bilateral for sided findings"})

    def prepare(self) -> int:
        self.train_data = self.features("train")
        self.val_data = self.features("val") if self.config.val_reports else None
        if len(self.train_data) < 2 or not len(self.train_data.masks):
            raise MedclipError("Segmentation training needs at least two images with finding masks.")
        self.log("encoding the phrase vocabulary with the frozen text tower ...")
        self.bank = PhraseBank(self.model)
        self.module = TextConditionedDecoder(self._decoder_config(self.train_data)).to(self.device)
        # images with a mask are drawn three times as often as those without
        weights = 1.0 + 2.0 * np.isin(np.arange(len(self.train_data)), self.train_data.mask_owner)
        self.draw_weights = weights / weights.sum()
        return self.config.max_steps

    def step_loss(self, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        rng = np.random.default_rng((self.config.seed, step))
        rows = np.sort(rng.choice(len(self.train_data), self.images_per_step(), replace=False, p=self.draw_weights))
        return self.batch_loss(self.module, self.train_data, self.bank, rows, rng)

    def images_per_step(self) -> int:
        return min(self.config.batch_size, len(self.train_data))

    def validate(self) -> dict[str, Any]:
        return self.validate_decoder(self.module, self.val_data, self.bank) or {}


def train_segmentation(config: SegTrainConfig, log: Callable[[str], None] = print,
                       model: ClipModel | None = None, should_stop: Callable[[], bool] = lambda: False) -> TrainResult:
    """Run (or resume) a decoder training run described by ``config``."""
    return SegmentationTrainer(config, log=log, model=model, should_stop=should_stop).run()
