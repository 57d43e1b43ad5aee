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

Scale out: started under ``torchrun --nproc_per_node N`` the same trainer runs with
DistributedDataParallel (NCCL on GPUs, gloo on CPU). ``batch_size`` stays the *global* batch: each
rank encodes its slice, the features of all ranks are gathered for the contrastive loss (as
open_clip's ``gather_features``: other ranks' features without gradient, the own slice with it) and
the loss is scaled by the world size so that DDP's gradient average equals the one-process gradient.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from dataclasses import asdict
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
from medclip_core.train.common import RunContext, TrainingRun, TrainResult, seed_everything
from medclip_core.train.configs import TrainConfig
from medclip_core.train.data import PairSet, csv_pairs, phantom_pairs

ARCHITECTURES_DIR = Path(__file__).resolve().parent / "architectures"
MAX_LOGIT_SCALE = math.log(100.0)


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
        self.closed = False  # True: every text must be cached already (the tower's weights may be absent)

    @torch.no_grad()
    def fill(self, texts: list[str], batch_size: int = 128) -> None:
        """Encode unseen texts, batched by length and padded per batch (the mean pooler ignores padding)."""
        todo = sorted({t for t in texts if t not in self._pooled}, key=len)
        if todo and self.closed:
            raise MedclipError(f"{len(todo)} texts are not in the loaded text cache, e.g. {todo[0]!r}.")
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            ids = trim_padding(self.tokenizer(chunk), self.tower.config.pad_token_id).to(self.device)
            mask = (ids != self.tower.config.pad_token_id).long()
            pooled = self.tower.pooler(self.tower.transformer(input_ids=ids, attention_mask=mask), mask)
            self._pooled.update(zip(chunk, pooled.float().cpu()))

    def save(self, path: Path) -> None:
        """Write the cached outputs, so that a run on another machine can skip the text tower."""
        texts = sorted(self._pooled)
        torch.save({"texts": texts, "pooled": torch.stack([self._pooled[t] for t in texts])}, path)

    def load(self, path: Path, closed: bool = False) -> int:
        """Add the outputs a :meth:`save` wrote; returns how many texts the cache now holds. ``closed``:
        never run the tower from now on (a text missing from the cache is an error)."""
        saved = torch.load(path, map_location="cpu", weights_only=True)
        self._pooled.update(zip(saved["texts"], saved["pooled"]))
        self.closed = closed
        return len(self._pooled)

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


class _Towers(torch.nn.Module):
    """The trainable forward pass as one module, so DistributedDataParallel can wrap it."""

    def __init__(self, trainer: "ContrastiveTrainer") -> None:
        super().__init__()
        self.clip = trainer.module
        self.encode_texts = trainer._encode_texts

    def forward(self, pixels: torch.Tensor, texts: list[str], sentences: list[str] | None):
        visual = self.clip.visual
        if sentences is not None:
            pooled, tokens = pooled_and_patch_tokens(visual, pixels)
        else:
            pooled, tokens = visual(pixels), None
        text = self.encode_texts(texts)
        sentence_embeddings = self.encode_texts(sentences) if sentences is not None else None
        return pooled, tokens, text, sentence_embeddings, self.clip.logit_scale.exp()


def _lora_targets(module: torch.nn.Module, frozen_prefix: str | None) -> list[str]:
    """Names of the layers LoRA adapts: Linear layers whose forward runs as a module (not the
    out_proj that nn.MultiheadAttention reads directly) and plain Conv2d layers (peft's conv adapter
    ignores dilation and groups), outside a package-frozen text tower."""
    skip = {f"{name}.out_proj" for name, m in module.named_modules() if isinstance(m, torch.nn.MultiheadAttention)}

    def adaptable(m: torch.nn.Module) -> bool:
        if isinstance(m, torch.nn.Conv2d):
            return m.dilation == (1, 1) and m.groups == 1
        return isinstance(m, torch.nn.Linear)

    return [name for name, m in module.named_modules()
            if adaptable(m) and name not in skip and not (frozen_prefix and name.startswith(frozen_prefix))]


class ContrastiveTrainer(TrainingRun):
    """One training run: builds the model at once, the data in ``prepare``; ``run()`` resumes from
    ``out_dir`` if a state is there.

    ``should_stop`` is asked before every step; when it says yes the run saves a checkpoint and
    returns early (``TrainResult.stopped``), which is how a cancelled background run ends.
    """

    checkpoint_files = (checkpoint.CONFIG_NAME, checkpoint.WEIGHTS_NAME)
    betas = (0.9, 0.98)
    strict_resume = False

    def __init__(self, config: TrainConfig, log: Callable[[str], None] = print,
                 should_stop: Callable[[], bool] = lambda: False) -> None:
        self.config, self.should_stop = config, should_stop
        self.context = RunContext.create(config.out_dir, config.device, log, distributed=True)
        self.dist, self.device, self.log, self.out_dir = (self.context.dist, self.context.device, self.context.log,
                                                          self.context.out_dir)
        seed_everything(config.seed)  # the model is built here, so that callers can use it before run()
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
        if config.lora_rank > 0:
            self._add_lora()
        self.towers = _Towers(self)
        self.step_towers: torch.nn.Module = self.towers
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.step_towers = DistributedDataParallel(self.towers, device_ids=ids)

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
        if lock == "image":  # LiT: open_clip's lock (a timm tower keeps its projection head trainable)
            self.module.lock_image_tower(unlocked_groups=0, freeze_bn_stats=True)
        elif lock == "image-all":  # text tower only: every image-tower weight frozen
            self.module.lock_image_tower(unlocked_groups=0, freeze_bn_stats=True)
            for p in self.module.visual.parameters():
                p.requires_grad = False
        elif lock == "text":
            image_params = {id(p) for p in self.module.visual.parameters()}
            for p in self.module.parameters():
                p.requires_grad = id(p) in image_params or p is self.module.logit_scale
        elif lock != "none":
            raise MedclipError(f"Unknown lock '{lock}': use none, image, image-all or text.")
        if self.config.local_loss_weight > 0 and not has_patch_tokens(self.module.visual):
            raise MedclipError("The local alignment loss needs an image tower with patch tokens (ViT or CNN).")

    def _add_lora(self) -> None:
        """Freeze the base weights and put LoRA adapters (peft) on the layers of the unlocked towers."""
        from peft import LoraConfig, inject_adapter_in_model

        trainable = {id(p) for p in self.module.parameters() if p.requires_grad}
        targets = [name for name in _lora_targets(self.module, checkpoint.frozen_prefix(self.arch))
                   if any(id(p) in trainable for p in self.module.get_submodule(name).parameters())]
        if not targets:
            raise MedclipError("LoRA found no trainable Linear or Conv2d layer to adapt.")
        for p in self.module.parameters():
            p.requires_grad = False
        rank = self.config.lora_rank
        inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets), self.module)
        for name, p in self.module.named_parameters():
            p.requires_grad = "lora_" in name
        self.module.logit_scale.requires_grad = True
        self.module.to(self.device)

    def _plain_module(self) -> torch.nn.Module:
        """The module to save: with LoRA, a copy whose adapters are merged into plain layers."""
        if self.config.lora_rank <= 0:
            return self.module
        from peft.tuners.lora import LoraLayer

        merged = copy.deepcopy(self.module)
        for name, layer in [(n, m) for n, m in merged.named_modules() if isinstance(m, LoraLayer)]:
            layer.merge()
            parent, _, attr = name.rpartition(".")
            setattr(merged.get_submodule(parent) if parent else merged, attr, layer.get_base_layer())
        return merged

    def load_data(self, split: str, limit: int | None) -> PairSet:
        cfg = self.config
        if cfg.data == "phantom":
            variants = cfg.phantom_variants if split == "train" else 1
            return phantom_pairs(split, self.image_size, seed=cfg.seed, variants_per_report=variants, limit=limit,
                                 progress=lambda done, total: self.log(f"rendered {done}/{total} {split} images"),
                                 workers=cfg.render_workers)
        if split != "train":
            return None
        return csv_pairs(Path(cfg.data), self.image_size, seed=cfg.seed)

    def _on_device(self, data: PairSet) -> PairSet:
        """On a GPU the 8-bit images move to its memory once, so a step copies no pixels from the host."""
        if self.device.type != "cuda":
            return data
        return dataclasses.replace(data, images=torch.from_numpy(data.images).to(self.device))

    # -- forward ----------------------------------------------------------------------------
    def _pixels(self, images: np.ndarray | torch.Tensor, rows: np.ndarray) -> torch.Tensor:
        if torch.is_tensor(images):  # already on the device (see _on_device)
            batch = images[torch.from_numpy(rows).to(images.device)]
        else:
            batch = torch.from_numpy(images[rows])
        x = batch.to(self.device, torch.float32).div_(255.0)[:, None].expand(-1, 3, -1, -1)
        return (x - self.mean) / self.std

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        if self.text_cache is not None:
            return self.text_cache.project(texts)
        return self.module.encode_text(self.tokenizer(texts).to(self.device))

    def batch_loss(self, data: PairSet, rows: np.ndarray, rng: np.random.Generator,
                   distributed: bool = False) -> tuple[torch.Tensor, dict]:
        """Loss of the (global) batch ``rows``. ``distributed``: this rank encodes its slice of the
        batch, the features of all ranks are gathered, and every rank computes the same global loss."""
        cfg = self.config
        reports = data.report_index[rows]
        texts = [data.texts[r][rng.integers(len(data.texts[r]))] for r in reports]
        part = slice(None)
        if distributed:
            per_rank = len(rows) // self.dist.world_size
            part = slice(self.dist.rank * per_rank, (self.dist.rank + 1) * per_rank)
        gather = self.dist.gather if distributed else (lambda x: x)
        local = cfg.local_loss_weight > 0
        sentences, sentence_mask = self._sentence_batch(data, reports) if local else ([], None)
        width = sentence_mask.shape[1] if local else 0
        towers = self.step_towers if distributed else self.towers
        amp = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
        with amp:
            pixels = self._pixels(data.images, rows[part])
            own_sentences = sentences[part.start * width:part.stop * width] if distributed and local else sentences
            pooled, tokens, text, sentence_embeddings, scale = towers(pixels, texts[part],
                                                                      own_sentences if local else None)
            image = gather(F.normalize(pooled.float(), dim=-1))
            text = gather(F.normalize(text.float(), dim=-1))
            labels = torch.from_numpy(data.labels[reports]).to(self.device)
            targets = (_soft_targets(labels, cfg.label_temperature) if cfg.semantic_matching
                       else torch.eye(len(rows), device=self.device))
            global_loss = contrastive_loss(scale * image @ text.T, targets)
            parts = {"global_loss": float(global_loss.detach())}
            loss = global_loss
            if tokens is not None:
                patches = gather(F.normalize(tokens.float(), dim=-1))
                embedded = F.normalize(sentence_embeddings.float(), dim=-1).view(-1, width, patches.shape[-1])
                scores = local_alignment_logits(patches, gather(embedded), sentence_mask,
                                                cfg.local_attention_temperature)
                local_loss = contrastive_loss(scale * scores, targets)
                parts["local_loss"] = float(local_loss.detach())
                loss = loss + cfg.local_loss_weight * local_loss
        return loss, parts

    def _sentence_batch(self, data: PairSet, reports: np.ndarray) -> tuple[list[str], torch.Tensor]:
        """Each report's sentences padded to the batch's widest report (flat list), and the mask of real ones."""
        width = max(1, max(len(data.sentences[r]) for r in reports))
        flat, mask = [], torch.zeros(len(reports), width, dtype=torch.bool)
        for i, r in enumerate(reports):
            sentences = data.sentences[r] or [data.texts[r][0]]
            padded = (sentences + [sentences[0]] * width)[:width]
            flat.extend(padded)
            mask[i, : len(sentences)] = True
        return flat, mask.to(self.device)

    # -- the steps fit() runs ------------------------------------------------------------------
    def save(self, step: int, final: bool, val: dict[str, Any]) -> None:
        card = {
            "name": self.out_dir.name, "backend": "checkpoint", "source": "trained by medclip_core.train",
            "modality": "chest X-ray (synthetic phantom images)" if self.config.data == "phantom" else "custom",
            "image_size": self.image_size, "embed_dim": int(self.arch["model_cfg"]["embed_dim"]),
            "licence": "see the training data licence", "description": self.arch.get("description", ""),
            # a property of the text tower: an architecture declares it, a fine-tuned checkpoint passes it on
            "zero_shot_negatives": self.arch.get("zero_shot_negatives",
                                                 self.arch.get("card", {}).get("zero_shot_negatives", "negated")),
        }
        checkpoint.save_checkpoint(self._plain_module(), self.out_dir, self.arch["model_cfg"], card,
                                   self.arch.get("preprocess_cfg", {}), self.arch.get("text_tower_package"),
                                   extra={"train_config": asdict(self.config), "step": step, "final": final})

    def extra_state(self) -> dict[str, Any]:
        if self.config.lora_rank <= 0:
            return {}
        # adapters are merged in the checkpoint; keep them apart to resume
        return {"trainable": {n: p.detach().cpu() for n, p in self.module.named_parameters() if p.requires_grad}}

    def resume(self, state: dict[str, Any]) -> None:
        if "trainable" in state:
            self.module.load_state_dict(state["trainable"], strict=False)

    @torch.no_grad()
    def validation_loss(self, data: PairSet | None) -> float | None:
        if data is None or len(data) < 2:
            return None
        self.module.eval()
        rng = np.random.default_rng(self.config.seed)
        rows = np.arange(len(data))
        losses = [float(self.batch_loss(data, chunk, rng)[0])
                  for chunk in np.array_split(rows, max(1, len(rows) // self.config.batch_size))]
        self.train_mode()
        return float(np.mean(losses))

    def validate(self) -> dict[str, Any]:
        return {"val_loss": self.validation_loss(self.val)}

    def train_mode(self) -> None:
        self.module.train()
        if self.text_cache is not None:
            self.module.text.transformer.eval()

    def prepare(self) -> int:
        cfg = self.config
        train = self.load_data("train", cfg.limit_reports)
        self.val = (self.load_data("val", cfg.val_reports)
                    if self.dist.is_main and cfg.data == "phantom" and cfg.val_reports else None)
        if len(train) < 2:
            raise MedclipError("Training needs at least two image-report pairs.")
        self.train = self._on_device(train)
        if self.text_cache is not None:
            self.log("encoding report texts with the frozen text tower ...")
            for pairs in (self.train, self.val):
                if pairs is not None:
                    self.text_cache.fill([t for ts in pairs.texts for t in ts] + [s for ss in pairs.sentences for s in ss])
        self.batch = min(cfg.batch_size, len(train))
        if self.batch % self.dist.world_size:
            raise MedclipError(f"The global batch ({self.batch}) must be a multiple of the number of processes "
                               f"({self.dist.world_size}).")
        self.steps_per_epoch = max(1, len(train) // self.batch)
        return cfg.max_steps or max(1, int(cfg.epochs * self.steps_per_epoch))

    def step_loss(self, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        epoch, offset = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng((cfg.seed, epoch)).permutation(len(self.train))
        rows = order[offset * self.batch:(offset + 1) * self.batch]
        return self.batch_loss(self.train, rows, np.random.default_rng((cfg.seed, step, 1)),
                               distributed=self.dist.enabled)

    def scale_gradients(self) -> None:
        if self.dist.enabled and self.module.logit_scale.grad is not None:
            # the temperature sees the whole gathered batch on every rank: undo the world-size scaling for it
            self.module.logit_scale.grad.div_(self.dist.world_size)

    def after_step(self) -> None:
        with torch.no_grad():
            self.module.logit_scale.clamp_(0, MAX_LOGIT_SCALE)

    def log_fields(self, done: int) -> dict[str, Any]:
        return {"epoch": round(done / self.steps_per_epoch, 3),
                "logit_scale": float(self.module.logit_scale.detach().exp())}

    def images_per_step(self) -> int:
        return self.batch


def train(config: TrainConfig, log: Callable[[str], None] = print,
          should_stop: Callable[[], bool] = lambda: False) -> TrainResult:
    """Run (or resume) a contrastive training run described by ``config``; see :class:`ContrastiveTrainer`."""
    return ContrastiveTrainer(config, log=log, should_stop=should_stop).run()
