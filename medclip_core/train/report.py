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
import time
from dataclasses import asdict, dataclass, field
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
from medclip_core.train.contrastive import METRICS_NAME, _lr_at, adamw, restore_train_state, save_train_state

ANONYMISED = "xxxx"  # the Open-i de-identification token


@dataclass
class ReportTrainConfig:
    """Everything a decoder run depends on; saved next to its checkpoints."""

    out_dir: str
    model: str = "medclip-phantom"     # the frozen CLIP model whose features condition the decoder
    phantom_variants: int = 2          # rendered images per training report
    limit_reports: int | None = None
    max_steps: int = 240
    batch_size: int = 32
    lr: float = 1.5e-3
    weight_decay: float = 0.01
    warmup_steps: int = 30
    grad_clip: float = 1.0
    label_smoothing: float = 0.1
    image_token_dropout: float = 0.1
    min_word_count: int = 3
    width: int = 128
    layers: int = 2
    heads: int = 4
    max_len: int = 72
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 40
    val_reports: int = 393
    diagnosis_prompts: bool = True     # classifier head + one memory token per finding (PromptMRG style)
    classifier_weight: float = 1.0
    prompt_noise: float = 0.05         # probability of flipping each true label fed as a prompt in training
    prompt_only_fraction: float = 0.5  # share of training rows whose image tokens are all dropped
    feature_dir: str | None = None     # default: <out_dir>/features
    device: str | None = None


@dataclass
class ReportTrainResult:
    out_dir: str
    steps: int
    final_loss: float
    val_loss: float | None
    seconds: float
    metrics: list[dict[str, Any]] = field(default_factory=list)


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


class ReportTrainer:
    """One decoder run: frozen features, vocabulary, decoder, then ``run()``; resumes from ``out_dir``."""

    def __init__(self, config: ReportTrainConfig, log: Callable[[str], None] = print) -> None:
        from medclip_core.models.embedding_cache import model_fingerprint

        self.config, self.log = config, log
        self.out_dir = Path(config.out_dir)
        self.device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        torch.manual_seed(config.seed)
        self.clip = load_model(config.model)
        self.fingerprint = model_fingerprint(self.clip, buffers=False)
        splits = report_splits(load_reports(), seed=config.seed)
        self.train_reports = splits["train"][: config.limit_reports]
        self.val_reports = splits["val"][: config.val_reports] if config.val_reports else []
        existing = self.out_dir / DECODER_CONFIG
        if existing.is_file():  # resume with the run's own vocabulary
            self.vocab = Vocabulary(json.loads(existing.read_text())["vocab"])
        else:
            self.vocab = Vocabulary.build((" ".join(target_sections(r)) for r in self.train_reports),
                                          config.min_word_count)
        self.module = ReportDecoder(DecoderConfig(
            vocab_size=len(self.vocab), feature_dim=self.clip.card.embed_dim, width=config.width,
            layers=config.layers, heads=config.heads, mlp=4 * config.width, max_len=config.max_len,
            n_findings=len(FINDINGS) if config.diagnosis_prompts else 0)).to(self.device)
        self.train_labels = finding_matrix(self.train_reports)
        self.val_labels = finding_matrix(self.val_reports)
        self.val: ImageFeatures | None = None

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

    def _save(self, step: int, optimizer: torch.optim.Optimizer, final: bool) -> None:
        save_decoder(self.module, self.vocab, self.out_dir, self.config.model, self.fingerprint,
                     extra={"train_config": asdict(self.config), "step": step, "final": final,
                            **self.tune_thresholds(self.val)})
        save_train_state(self.out_dir, step, optimizer)

    def run(self) -> ReportTrainResult:
        cfg = self.config
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2))
        train = self.features("train", cfg.phantom_variants, cfg.limit_reports)
        if len(train) < 2:
            raise MedclipError("Report training needs at least two image-report pairs.")
        train_targets = encode_targets(self.train_reports, self.vocab, cfg.max_len)
        val = self.val = self.features("val", 1, len(self.val_reports)) if self.val_reports else None
        val_targets = encode_targets(self.val_reports, self.vocab, cfg.max_len) if self.val_reports else None
        optimizer = adamw(self.module.parameters(), cfg.lr, cfg.weight_decay, betas=(0.9, 0.98))
        state = restore_train_state(self.out_dir, DECODER_CONFIG, DECODER_WEIGHTS, self.module, optimizer, self.device)
        start = int(state["step"]) if state else 0
        if state:
            self.log(f"resuming at step {start}/{cfg.max_steps}")
        batch = min(cfg.batch_size, len(train))
        steps_per_epoch = max(1, len(train) // batch)
        self.module.train()
        history: list[dict[str, Any]] = []
        t0, loss = time.time(), torch.tensor(float("nan"))
        with (self.out_dir / METRICS_NAME).open("a") as metrics_file:
            for step in range(start, cfg.max_steps):
                epoch, offset = divmod(step, steps_per_epoch)
                rows = np.random.default_rng((cfg.seed, epoch)).permutation(len(train))[offset * batch:(offset + 1) * batch]
                lr = _lr_at(step, cfg.max_steps, cfg.warmup_steps, cfg.lr)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                torch.manual_seed(cfg.seed * 1_000_003 + step)  # dropout masks reproducible on resume
                loss = self.batch_loss(train, train_targets, self.train_labels, rows, train=True)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), cfg.grad_clip)
                optimizer.step()
                last = step + 1 == cfg.max_steps
                checkpoint_now = (step + 1) % cfg.checkpoint_every == 0 or last
                if (step + 1) % cfg.log_every == 0 or last:
                    row = {"step": step + 1, "epoch": round((step + 1) / steps_per_epoch, 3),
                           "loss": float(loss.detach()), "lr": lr, "grad_norm": float(grad_norm),
                           "elapsed_s": round(time.time() - t0, 2)}
                    if checkpoint_now:
                        row["val_loss"] = self.validation_loss(val, val_targets)
                    metrics_file.write(json.dumps(row) + "\n")
                    metrics_file.flush()
                    history.append(row)
                    self.log(json.dumps(row))
                if checkpoint_now:
                    self._save(step + 1, optimizer, final=last)
        if start >= cfg.max_steps:
            self._save(cfg.max_steps, optimizer, final=True)
        val_loss = next((row["val_loss"] for row in reversed(history) if "val_loss" in row), None)
        return ReportTrainResult(str(self.out_dir), cfg.max_steps, float(loss.detach()), val_loss,
                                 time.time() - t0, history)


def train_report_decoder(config: ReportTrainConfig, log: Callable[[str], None] = print) -> ReportTrainResult:
    """Run (or resume) a report-decoder training run described by ``config``."""
    return ReportTrainer(config, log=log).run()
