"""Training of the report decoder (:mod:`medclip_core.models.report_decoder`) on phantom image–report pairs.

The CLIP model stays frozen: its image features are computed once per rendered image
(:func:`~medclip_core.tasks.report_features.phantom_features`, cached as ``.npz`` in the run's
``features/`` folder), so a step costs only the small decoder. Teacher forcing with label
smoothing, AdamW, warm-up + cosine decay, gradient clipping, dropout on the image tokens, seeded
batches derived from (seed, step) so that a resumed run sees the same batches, ``metrics.jsonl``
(train loss, validation loss), a checkpoint (``report_decoder.json`` + safetensors) and an
optimizer state every ``checkpoint_every`` steps. Start the same command again to resume.

With diagnosis prompts (the default) the decoder's classifier head learns the report's finding
labels (binary cross-entropy, weight ``classifier_weight``) while the words are learned from the
true labels as prompts, each flipped with probability ``prompt_noise`` so that the decoder also
sees the classifier's kind of mistakes; for a share ``prompt_only_fraction`` of the rows all image
tokens are dropped, so that the words must follow the prompts (otherwise the decoder learns to
read the image features and all but ignores the prompts). Every checkpoint stores per-finding thresholds that
maximise the classifier's micro F1 on the validation split; generation prompts with those.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from medclip_core.data.findings import FINDINGS
from medclip_core.data.reports import Report, load_reports, report_splits
from medclip_core.errors import MedclipError
from medclip_core.models import load_model
from medclip_core.models.report_decoder import (
    DECODER_CONFIG,
    DECODER_WEIGHTS,
    PAD,
    DecoderConfig,
    ReportDecoder,
    Vocabulary,
    save_decoder,
)
from medclip_core.tasks.report_features import ImageFeatures, phantom_features
from medclip_core.train.common import RunContext, TrainingRun, TrainResult
from medclip_core.train.configs import ReportTrainConfig

ANONYMISED = "xxxx"  # the Open-i de-identification token


def target_sections(report: Report) -> tuple[str, str]:
    """(findings, impression) text to learn: sentences with the anonymisation token dropped where
    the section keeps another sentence."""
    def clean(text: str) -> str:
        sentences = [s for s in Report("", text, "", (), ()).sentences()]
        kept = [s for s in sentences if ANONYMISED not in s.lower()]
        return " ".join(kept or sentences)

    return clean(report.findings_text), clean(report.impression_text)


def finding_matrix(reports: list[Report]) -> np.ndarray:
    """(R, F) float32: 1 where the report's MeSH labels name the finding of :data:`FINDINGS`."""
    return np.array([[float(name in r.labels) for name in FINDINGS] for r in reports], dtype=np.float32).reshape(
        len(reports), len(FINDINGS))


def f1_thresholds(probabilities: np.ndarray, labels: np.ndarray, passes: int = 2,
                  grid: np.ndarray = np.append(np.linspace(0.05, 0.95, 19), 1.01)) -> tuple[np.ndarray, float]:
    """Per-finding thresholds that maximise the *micro* F1 over all findings (coordinate ascent, starting
    at 0.5), and that micro F1. A threshold above 1 switches off a finding whose every positive
    call costs more false positives than it finds: per-finding F1 optima would call rare, poorly
    separated findings on almost every image."""
    truth = labels > 0.5
    thresholds = np.full(labels.shape[1], 0.5)

    def micro_f1(predicted: np.ndarray) -> float:
        return float(2 * (predicted & truth).sum() / max(1, predicted.sum() + truth.sum()))

    for _ in range(passes):
        for f in range(labels.shape[1]):
            scores = []
            for t in grid:
                thresholds[f] = t
                scores.append(micro_f1(probabilities >= thresholds))
            thresholds[f] = grid[int(np.argmax(scores))]
    return thresholds, micro_f1(probabilities >= thresholds)


def encode_targets(reports: list[Report], vocab: Vocabulary, max_len: int) -> np.ndarray:
    """(R, max_len) int64 ids, ``<pad>``-filled."""
    out = np.full((len(reports), max_len), PAD, dtype=np.int64)
    for i, report in enumerate(reports):
        ids = vocab.encode(*target_sections(report), max_len=max_len)
        out[i, : len(ids)] = ids
    return out


class ReportTrainer(TrainingRun):
    """One decoder run: frozen features, vocabulary and decoder in ``prepare``, then ``run()``; resumes
    from ``out_dir``."""

    checkpoint_files = (DECODER_CONFIG, DECODER_WEIGHTS)
    betas = (0.9, 0.98)

    def __init__(self, config: ReportTrainConfig, log: Callable[[str], None] = print,
                 should_stop: Callable[[], bool] = lambda: False) -> None:
        self.config, self.should_stop = config, should_stop
        self.context = RunContext.create(config.out_dir, config.device, log)
        self.log, self.out_dir, self.device = self.context.log, self.context.out_dir, self.context.device
        self.val: ImageFeatures | None = None

    def prepare(self) -> int:
        from medclip_core.models.embedding_cache import model_fingerprint

        cfg = self.config
        self.clip = load_model(cfg.model)
        self.fingerprint = model_fingerprint(self.clip, buffers=False)
        splits = report_splits(load_reports(), seed=cfg.seed)
        self.train_reports = splits["train"][: cfg.limit_reports]
        self.val_reports = splits["val"][: cfg.val_reports] if cfg.val_reports else []
        existing = self.out_dir / DECODER_CONFIG
        if existing.is_file():  # resume with the run's own vocabulary
            self.vocab = Vocabulary(json.loads(existing.read_text())["vocab"])
        else:
            self.vocab = Vocabulary.build((" ".join(target_sections(r)) for r in self.train_reports),
                                          cfg.min_word_count)
        self.module = ReportDecoder(DecoderConfig(
            vocab_size=len(self.vocab), feature_dim=self.clip.card.embed_dim, width=cfg.width,
            layers=cfg.layers, heads=cfg.heads, mlp=4 * cfg.width, max_len=cfg.max_len,
            n_findings=len(FINDINGS) if cfg.diagnosis_prompts else 0)).to(self.device)
        self.train_labels = finding_matrix(self.train_reports)
        self.val_labels = finding_matrix(self.val_reports)
        self.train = self.features("train", cfg.phantom_variants, cfg.limit_reports)
        if len(self.train) < 2:
            raise MedclipError("Report training needs at least two image-report pairs.")
        self.train_targets = encode_targets(self.train_reports, self.vocab, cfg.max_len)
        self.val = self.features("val", 1, len(self.val_reports)) if self.val_reports else None
        self.val_targets = encode_targets(self.val_reports, self.vocab, cfg.max_len) if self.val_reports else None
        self.batch = min(cfg.batch_size, len(self.train))
        self.steps_per_epoch = max(1, len(self.train) // self.batch)
        return cfg.max_steps

    def features(self, split: str, variants: int, limit: int | None) -> ImageFeatures:
        folder = Path(self.config.feature_dir) if self.config.feature_dir else self.out_dir / "features"
        return phantom_features(self.clip, split, variants=variants, limit=limit, seed=self.config.seed,
                                cache_dir=folder,
                                progress=lambda done, total: self.log(f"{split} features {done}/{total}")
                                if done % 640 == 0 or done == total else None)

    def batch_loss(self, features: ImageFeatures, targets: np.ndarray, labels: np.ndarray, rows: np.ndarray,
                   train: bool) -> torch.Tensor:
        cfg = self.config
        pooled = torch.from_numpy(features.pooled[rows]).to(self.device)
        patches = torch.from_numpy(features.patches[rows]).to(self.device)
        ids = torch.from_numpy(targets[features.report_index[rows]]).to(self.device)
        length = int((ids != PAD).sum(dim=1).max())
        ids = ids[:, :length]
        classifier_loss = torch.zeros((), device=self.device)
        present = None
        if self.module.cfg.n_findings:
            truth = torch.from_numpy(labels[features.report_index[rows]]).to(self.device)
            classifier_loss = F.binary_cross_entropy_with_logits(self.module.classify(pooled, patches), truth)
            present = truth > 0.5
            if train and cfg.prompt_noise > 0:
                present ^= torch.rand(present.shape, device=self.device) < cfg.prompt_noise
        memory = self.module.memory(pooled, patches, present)
        if train:
            n_image = self.module.cfg.n_image_tokens
            keep = torch.ones(memory.shape[:2], dtype=torch.bool, device=self.device)
            keep[:, 1:n_image] = torch.rand(len(keep), n_image - 1, device=self.device) >= cfg.image_token_dropout
            if present is not None and cfg.prompt_only_fraction > 0:  # these rows must write from the prompts
                keep[torch.rand(len(keep), device=self.device) < cfg.prompt_only_fraction, :n_image] = False
            memory = memory * keep[..., None]
        logits = self.module(ids[:, :-1], memory)
        words = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1),
                                ignore_index=PAD, label_smoothing=cfg.label_smoothing if train else 0.0)
        return words + cfg.classifier_weight * classifier_loss

    @torch.no_grad()
    def validation_loss(self, features: ImageFeatures | None, targets: np.ndarray | None) -> float | None:
        if features is None or not len(features):
            return None
        self.module.eval()
        losses = [float(self.batch_loss(features, targets, self.val_labels, rows, train=False))
                  for rows in np.array_split(np.arange(len(features)), max(1, len(features) // 128))]
        self.module.train()
        return float(np.mean(losses))

    @torch.no_grad()
    def tune_thresholds(self, features: ImageFeatures | None) -> dict[str, Any]:
        """Per-finding thresholds of the classifier head that maximise micro F1 on the validation features
        (0.5 without)."""
        if not self.module.cfg.n_findings:
            return {}
        thresholds, f1 = np.full(len(FINDINGS), 0.5), None
        if features is not None and len(features):
            self.module.eval()
            logits = self.module.classify(torch.from_numpy(features.pooled).to(self.device),
                                          torch.from_numpy(features.patches).to(self.device))
            self.module.train()
            thresholds, f1 = f1_thresholds(torch.sigmoid(logits).cpu().numpy(),
                                           self.val_labels[features.report_index])
        return {"findings": list(FINDINGS), "thresholds": [round(float(t), 2) for t in thresholds],
                "val_classifier_micro_f1": f1}

    def save(self, step: int, final: bool, val: dict[str, Any]) -> None:
        save_decoder(self.module, self.vocab, self.out_dir, self.config.model, self.fingerprint,
                     extra={"train_config": asdict(self.config), "step": step, "final": final,
                            **self.tune_thresholds(self.val)})

    def step_loss(self, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        epoch, offset = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng((cfg.seed, epoch)).permutation(len(self.train))
        rows = order[offset * self.batch:(offset + 1) * self.batch]
        torch.manual_seed(cfg.seed * 1_000_003 + step)  # dropout masks reproducible on resume
        return self.batch_loss(self.train, self.train_targets, self.train_labels, rows, train=True), {}

    def validate(self) -> dict[str, Any]:
        return {"val_loss": self.validation_loss(self.val, self.val_targets)}

    def log_fields(self, done: int) -> dict[str, Any]:
        return {"epoch": round(done / self.steps_per_epoch, 3)}

    def images_per_step(self) -> int:
        return self.batch


def train_report_decoder(config: ReportTrainConfig, log: Callable[[str], None] = print,
                         should_stop: Callable[[], bool] = lambda: False) -> TrainResult:
    """Run (or resume) a report-decoder training run described by ``config``."""
    return ReportTrainer(config, log=log, should_stop=should_stop).run()
