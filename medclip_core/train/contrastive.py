"""Contrastive image–report training for open_clip-style models (the embedded default and any
open_clip architecture or checkpoint).

Loss: CLIP's symmetric InfoNCE with a learnable temperature, with MedCLIP-style semantic matching
(soft targets from finding-label similarity, so two normal reports worded differently are not
pushed apart) when labels are known, plus an optional GLoRIA-style local term: each report
sentence attends over the image's patch tokens, the attended similarity is aggregated over
sentences (log-sum-exp) and contrasted across the batch. AdamW, linear warm-up + cosine decay,
gradient clipping, bf16 autocast on CPU / AMP on GPU, LiT-style tower locking, seeded batches
(derived from (seed, step), so a resumed run sees the same batches), checkpoints as safetensors +
JSON config + card, metrics as JSON lines.

A frozen Hugging Face text tower (the MiniLM of the default model) is run once per distinct text
and its pooled output cached; only its projection trains.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from medclip_core.errors import MedclipError
from medclip_core.models import checkpoint
from medclip_core.models.open_clip_backend import (
    build_checkpoint_module,
    has_patch_tokens,
    pooled_and_patch_tokens,
    trim_padding,
)
from medclip_core.train.data import PairSet, csv_pairs, phantom_pairs

ARCHITECTURES_DIR = Path(__file__).resolve().parent / "architectures"
STATE_NAME = "train_state.pt"
METRICS_NAME = "metrics.jsonl"
MAX_LOGIT_SCALE = math.log(100.0)


@dataclass
class TrainConfig:
    """Everything a run depends on; saved next to its checkpoints."""

    out_dir: str
    architecture: str = "phantom-cnn-minilm"    # JSON in train/architectures/, or local-dir:PATH of a checkpoint
    data: str = "phantom"                        # "phantom" or a CSV path
    phantom_variants: int = 3                    # rendered images per training report
    limit_reports: int | None = None
    epochs: float = 10.0
    max_steps: int | None = None
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 100
    grad_clip: float = 1.0
    seed: int = 0
    precision: str = "bf16"                      # "bf16" autocast or "fp32"
    lock: str = "none"                           # "none", "image" (LiT), "text"
    semantic_matching: bool = True
    label_temperature: float = 0.1
    local_loss_weight: float = 0.5
    local_attention_temperature: float = 0.1
    log_every: int = 10
    checkpoint_every: int = 200
    val_reports: int = 256
    device: str | None = None


@dataclass
class TrainResult:
    out_dir: str
    steps: int
    final_loss: float
    val_loss: float | None
    seconds: float
    images_per_second: float
    metrics: list[dict[str, Any]] = field(default_factory=list)


def read_architecture(name: str) -> dict[str, Any]:
    """An architecture JSON by name, or the config of an existing checkpoint (``local-dir:PATH``)."""
    if name.startswith("local-dir:"):
        path = Path(name[len("local-dir:"):])
        if not checkpoint.is_checkpoint_dir(path):
            raise MedclipError(f"{path} is not a MedCLIP checkpoint folder (no {checkpoint.CONFIG_NAME}).")
        return {**checkpoint.read_config(path), "init_weights": str(path / checkpoint.WEIGHTS_NAME)}
    path = ARCHITECTURES_DIR / f"{name}.json"
    if not path.is_file():
        known = ", ".join(p.stem for p in ARCHITECTURES_DIR.glob("*.json"))
        raise MedclipError(f"Unknown architecture '{name}'. Known: {known}; or local-dir:PATH of a checkpoint.")
    return json.loads(path.read_text())


class FrozenTextCache:
    """Pooled outputs of a frozen Hugging Face text transformer, computed once per distinct text."""

    def __init__(self, text_tower: torch.nn.Module, tokenizer: Any, device: torch.device) -> None:
        self.tower, self.tokenizer, self.device = text_tower, tokenizer, device
        self._pooled: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def fill(self, texts: list[str], batch_size: int = 128) -> None:
        """Encode unseen texts, batched by length and padded per batch (the mean pooler ignores padding)."""
        todo = sorted({t for t in texts if t not in self._pooled}, key=len)
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            ids = trim_padding(self.tokenizer(chunk), self.tower.config.pad_token_id).to(self.device)
            mask = (ids != self.tower.config.pad_token_id).long()
            pooled = self.tower.pooler(self.tower.transformer(input_ids=ids, attention_mask=mask), mask)
            self._pooled.update(zip(chunk, pooled.float().cpu()))

    def project(self, texts: list[str]) -> torch.Tensor:
        self.fill(texts)
        pooled = torch.stack([self._pooled[t] for t in texts]).to(self.device)
        return self.tower.proj(pooled)


def _soft_targets(labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """MedCLIP-style targets: softmax of label-set cosine similarity; identity where labels unknown."""
    known = labels.sum(dim=1) > 0
    unit = F.normalize(labels, dim=1)
    logits = (unit @ unit.T) / temperature
    eye = torch.eye(len(labels), device=labels.device)
    logits = torch.where(known[:, None] & known[None, :], logits, eye / temperature)
    return torch.where(known[:, None], logits.softmax(dim=1), eye)


def contrastive_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Symmetric cross-entropy with (soft) targets over an image x text logit matrix."""
    image_to_text = -(targets * logits.log_softmax(dim=1)).sum(dim=1).mean()
    text_to_image = -(targets.T * logits.T.log_softmax(dim=1)).sum(dim=1).mean()
    return (image_to_text + text_to_image) / 2


def local_alignment_logits(patches: torch.Tensor, sentences: torch.Tensor, sentence_mask: torch.Tensor,
                           attention_temperature: float) -> torch.Tensor:
    """GLoRIA-style image x report scores from sentence-attended regions.

    patches (B, N, D) and sentences (B, K, D) are L2-normalised; sentence_mask (B, K) marks real
    sentences. Sentence k of report j attends over the patches of image i; the attended similarity
    is aggregated over k with log-sum-exp. Returns (B_images, B_reports).
    """
    sims = torch.einsum("ind,jkd->ijkn", patches, sentences)
    attended = (sims.div(attention_temperature).softmax(dim=-1) * sims).sum(dim=-1)  # (B, B, K)
    attended = attended.masked_fill(~sentence_mask[None], float("-inf"))
    return torch.logsumexp(attended * 10.0, dim=-1) / 10.0


def _lr_at(step: int, total: int, warmup: int, base_lr: float) -> float:
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class ContrastiveTrainer:
    """One training run: build model and data, then ``run()``; resumes from ``out_dir`` if a state is there."""

    def __init__(self, config: TrainConfig, log: Callable[[str], None] = print) -> None:
        self.config, self.log = config, log
        self.out_dir = Path(config.out_dir)
        self.device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        torch.manual_seed(config.seed)
        self.arch = read_architecture(config.architecture)
        self.module, self.tokenizer = build_checkpoint_module(self.arch)
        if self.arch.get("init_weights"):
            from safetensors.torch import load_file

            self.module.load_state_dict(load_file(self.arch["init_weights"]), strict=False)
        self.module.to(self.device)
        self.image_size = int(self.arch["model_cfg"]["vision_cfg"].get("image_size", 224))
        pre = self.arch.get("preprocess_cfg", {})
        self.mean = torch.tensor(pre.get("mean", [0.5] * 3), device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(pre.get("std", [0.25] * 3), device=self.device).view(1, 3, 1, 1)
        self.text_cache = self._frozen_text_cache()
        self._apply_lock()

    # -- setup ----------------------------------------------------------------------------
    def _frozen_text_cache(self) -> FrozenTextCache | None:
        text = getattr(self.module, "text", None)
        if not self.arch.get("text_tower_package") or not hasattr(text, "pooler"):
            return None
        text.lock(unlocked_layers=0, freeze_layer_norm=True)
        text.transformer.eval()
        return FrozenTextCache(text, self.tokenizer, self.device)

    def _apply_lock(self) -> None:
        lock = self.config.lock
        if lock == "image":
            self.module.lock_image_tower(unlocked_groups=0, freeze_bn_stats=True)
        elif lock == "text":
            image_params = {id(p) for p in self.module.visual.parameters()}
            for p in self.module.parameters():
                p.requires_grad = id(p) in image_params or p is self.module.logit_scale
        elif lock != "none":
            raise MedclipError(f"Unknown lock '{lock}': use none, image or text.")
        if self.config.local_loss_weight > 0 and not has_patch_tokens(self.module.visual):
            raise MedclipError("The local alignment loss needs an image tower with patch tokens (ViT or CNN).")

    def load_data(self, split: str, limit: int | None) -> PairSet:
        cfg = self.config
        if cfg.data == "phantom":
            variants = cfg.phantom_variants if split == "train" else 1
            return phantom_pairs(split, self.image_size, seed=cfg.seed, variants_per_report=variants, limit=limit,
                                 progress=lambda done, total: self.log(f"rendered {done}/{total} {split} images"))
        if split != "train":
            return None
        return csv_pairs(Path(cfg.data), self.image_size, seed=cfg.seed)

    # -- forward ----------------------------------------------------------------------------
    def _pixels(self, images: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(images).to(self.device, torch.float32).div_(255.0)[:, None].expand(-1, 3, -1, -1)
        return (x - self.mean) / self.std

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        if self.text_cache is not None:
            return self.text_cache.project(texts)
        return self.module.encode_text(self.tokenizer(texts).to(self.device))

    def batch_loss(self, data: PairSet, rows: np.ndarray, rng: np.random.Generator) -> tuple[torch.Tensor, dict]:
        cfg = self.config
        reports = data.report_index[rows]
        texts = [data.texts[r][rng.integers(len(data.texts[r]))] for r in reports]
        visual = self.module.visual
        amp = torch.autocast(self.device.type, dtype=torch.bfloat16,
                             enabled=cfg.precision == "bf16")
        with amp:
            pixels = self._pixels(data.images[rows])
            if cfg.local_loss_weight > 0:
                pooled, tokens = pooled_and_patch_tokens(visual, pixels)
            else:
                pooled, tokens = visual(pixels), None
            image = F.normalize(pooled.float(), dim=-1)
            text = F.normalize(self._encode_texts(texts).float(), dim=-1)
            scale = self.module.logit_scale.exp()
            labels = torch.from_numpy(data.labels[reports]).to(self.device)
            targets = (_soft_targets(labels, cfg.label_temperature) if cfg.semantic_matching
                       else torch.eye(len(rows), device=self.device))
            global_loss = contrastive_loss(scale * image @ text.T, targets)
            parts = {"global_loss": float(global_loss.detach())}
            loss = global_loss
            if tokens is not None:
                patches = F.normalize(tokens.float(), dim=-1)
                sentences, mask = self._sentence_batch(data, reports)
                local = local_alignment_logits(patches, sentences, mask, cfg.local_attention_temperature)
                local_loss = contrastive_loss(scale * local, targets)
                parts["local_loss"] = float(local_loss.detach())
                loss = loss + cfg.local_loss_weight * local_loss
        return loss, parts

    def _sentence_batch(self, data: PairSet, reports: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(1, max(len(data.sentences[r]) for r in reports))
        flat, mask = [], torch.zeros(len(reports), width, dtype=torch.bool)
        for i, r in enumerate(reports):
            sentences = data.sentences[r] or [data.texts[r][0]]
            padded = (sentences + [sentences[0]] * width)[:width]
            flat.extend(padded)
            mask[i, : len(sentences)] = True
        embedded = F.normalize(self._encode_texts(flat).float(), dim=-1)
        return embedded.view(len(reports), width, -1), mask.to(self.device)

    # -- loop -------------------------------------------------------------------------------
    def _save(self, step: int, optimizer: torch.optim.Optimizer, final: bool = False) -> None:
        card = {
            "name": self.out_dir.name, "backend": "checkpoint", "source": "trained by medclip_core.train",
            "modality": "chest X-ray (synthetic phantom images)" if self.config.data == "phantom" else "custom",
            "image_size": self.image_size, "embed_dim": int(self.arch["model_cfg"]["embed_dim"]),
            "licence": "see the training data licence", "description": self.arch.get("description", ""),
        }
        checkpoint.save_checkpoint(self.module, self.out_dir, self.arch["model_cfg"], card,
                                   self.arch.get("preprocess_cfg", {}), self.arch.get("text_tower_package"),
                                   extra={"train_config": asdict(self.config), "step": step, "final": final})
        tmp = self.out_dir / (STATE_NAME + ".tmp")
        torch.save({"step": step, "optimizer": optimizer.state_dict()}, tmp)
        tmp.replace(self.out_dir / STATE_NAME)

    @torch.no_grad()
    def validation_loss(self, data: PairSet | None) -> float | None:
        if data is None or len(data) < 2:
            return None
        self.module.eval()
        rng = np.random.default_rng(self.config.seed)
        rows = np.arange(len(data))
        losses = [float(self.batch_loss(data, chunk, rng)[0])
                  for chunk in np.array_split(rows, max(1, len(rows) // self.config.batch_size))]
        self.module.train()
        return float(np.mean(losses))

    def run(self) -> TrainResult:
        cfg = self.config
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2))
        train = self.load_data("train", cfg.limit_reports)
        val = self.load_data("val", cfg.val_reports) if cfg.data == "phantom" and cfg.val_reports else None
        if len(train) < 2:
            raise MedclipError("Training needs at least two image-report pairs.")
        if self.text_cache is not None:
            self.log("encoding report texts with the frozen text tower ...")
            for pairs in (train, val):
                if pairs is not None:
                    self.text_cache.fill([t for ts in pairs.texts for t in ts] + [s for ss in pairs.sentences for s in ss])
        batch = min(cfg.batch_size, len(train))
        steps_per_epoch = max(1, len(train) // batch)
        total = cfg.max_steps or max(1, int(cfg.epochs * steps_per_epoch))
        params = [p for p in self.module.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                       {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))
        start = 0
        state_path = self.out_dir / STATE_NAME
        if state_path.is_file() and checkpoint.is_checkpoint_dir(self.out_dir):
            from safetensors.torch import load_file

            self.module.load_state_dict(load_file(str(self.out_dir / checkpoint.WEIGHTS_NAME)), strict=False)
            state = torch.load(state_path, map_location=self.device, weights_only=True)
            optimizer.load_state_dict(state["optimizer"])
            start = int(state["step"])
            self.log(f"resuming at step {start}/{total}")
        self.module.train()
        if self.text_cache is not None:
            self.module.text.transformer.eval()
        metrics_file = (self.out_dir / METRICS_NAME).open("a")
        history: list[dict[str, Any]] = []
        t0, seen, loss = time.time(), 0, torch.tensor(float("nan"))
        for step in range(start, total):
            epoch, offset = divmod(step, steps_per_epoch)
            order = np.random.default_rng((cfg.seed, epoch)).permutation(len(train))
            rows = order[offset * batch:(offset + 1) * batch]
            lr = _lr_at(step, total, cfg.warmup_steps, cfg.lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss, parts = self.batch_loss(train, rows, np.random.default_rng((cfg.seed, step, 1)))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            with torch.no_grad():
                self.module.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
            seen += len(rows)
            if (step + 1) % cfg.log_every == 0 or step + 1 == total:
                row = {"step": step + 1, "epoch": round((step + 1) / steps_per_epoch, 3), "loss": float(loss.detach()),
                       **parts, "lr": lr, "logit_scale": float(self.module.logit_scale.detach().exp()),
                       "grad_norm": float(grad_norm), "images_per_s": seen / (time.time() - t0),
                       "elapsed_s": time.time() - t0}
                if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == total:
                    row["val_loss"] = self.validation_loss(val)
                metrics_file.write(json.dumps(row) + "\n")
                metrics_file.flush()
                history.append(row)
                self.log(json.dumps(row))
            if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == total:
                self._save(step + 1, optimizer, final=step + 1 == total)
        metrics_file.close()
        if start >= total:
            self._save(total, optimizer, final=True)
        elapsed = time.time() - t0
        val_loss = history[-1].get("val_loss") if history else None
        return TrainResult(str(self.out_dir), total, float(loss.detach()), val_loss, elapsed,
                           seen / elapsed if elapsed > 0 else 0.0, history)


def train(config: TrainConfig, log: Callable[[str], None] = print) -> TrainResult:
    """Run (or resume) a contrastive training run described by ``config``."""
    return ContrastiveTrainer(config, log=log).run()
