"""A small report decoder conditioned on a frozen CLIP image encoder (prefix / cross-attention captioning).

The image enters as 1 + 49 memory tokens: the pooled embedding and the 7x7 patch-token grid of the
frozen model (:mod:`medclip_core.tasks.report_features`), each projected to the decoder width with
a learned position embedding. A pre-norm Transformer decoder (causal self-attention over the words
so far, cross-attention over the image tokens) predicts the next word; the output layer shares the
word embedding. Words come from a closed vocabulary built from the training reports (lower-case
words, numbers and ``. , ; :``), with ``<imp>`` separating FINDINGS from IMPRESSION.

Stored as a folder: ``report_decoder.json`` (architecture, vocabulary, the base model it was
trained on, training config) and ``report_decoder.safetensors``. The decoder of the embedded
default lives in ``assets/medclip-phantom/report/``.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medclip_core.errors import ModelUnavailableError

DECODER_CONFIG = "report_decoder.json"
DECODER_WEIGHTS = "report_decoder.safetensors"
DECODER_FORMAT = 1
SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>", "<imp>")
PAD, BOS, EOS, UNK, IMP = range(len(SPECIALS))
_TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)?|\d+(?:\.\d+)?|[.,;:]")


def tokenize_words(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


class Vocabulary:
    """Word <-> id for the decoder; unknown words map to ``<unk>``."""

    def __init__(self, words: Sequence[str]) -> None:
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def build(cls, texts: Iterable[str], min_count: int = 2) -> "Vocabulary":
        counts = Counter(w for t in texts for w in tokenize_words(t))
        kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls([*SPECIALS, *kept])

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, findings: str, impression: str, max_len: int) -> list[int]:
        """``<bos> findings <imp> impression <eos>``, cut to ``max_len`` ids (the cut keeps ``<eos>``)."""
        ids = [BOS, *(self.index.get(w, UNK) for w in tokenize_words(findings)), IMP,
               *(self.index.get(w, UNK) for w in tokenize_words(impression))]
        return ids[:max_len - 1] + [EOS]

    def decode(self, ids: Sequence[int]) -> tuple[str, str]:
        """Ids -> (findings, impression) as readable sentences."""
        sections: list[list[str]] = [[], []]
        part = 0
        for i in ids:
            if i == EOS:
                break
            if i == IMP:
                part = 1
            elif i not in (PAD, BOS, UNK):
                sections[part].append(self.words[i])
        return tuple(_detokenize(s) for s in sections)  # type: ignore[return-value]


def _detokenize(tokens: list[str]) -> str:
    text = re.sub(r"\s+([.,;:])", r"\1", " ".join(tokens)).strip()
    text = re.sub(r"([.,;:])(?:\s*[.,;:])+", r"\1", text)
    sentences = [s.strip() for s in re.split(r"(?<=\.)\s+", text) if s.strip(" .,;:")]
    return " ".join(s[0].upper() + s[1:] + ("" if s.endswith(".") else ".") for s in sentences)


@dataclass
class DecoderConfig:
    vocab_size: int
    feature_dim: int
    n_image_tokens: int = 50
    width: int = 256
    layers: int = 3
    heads: int = 4
    mlp: int = 1024
    max_len: int = 112
    dropout: float = 0.1


class ReportDecoder(nn.Module):
    """Transformer decoder over word ids with cross-attention to projected image tokens."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.image_proj = nn.Sequential(nn.LayerNorm(cfg.feature_dim), nn.Linear(cfg.feature_dim, cfg.width))
        self.image_pos = nn.Parameter(torch.zeros(cfg.n_image_tokens, cfg.width))
        self.embed = nn.Embedding(cfg.vocab_size, cfg.width, padding_idx=PAD)
        self.pos = nn.Parameter(torch.zeros(cfg.max_len, cfg.width))
        layer = nn.TransformerDecoderLayer(cfg.width, cfg.heads, cfg.mlp, cfg.dropout, batch_first=True,
                                           norm_first=True, activation="gelu")
        self.blocks = nn.TransformerDecoder(layer, cfg.layers)
        self.norm = nn.LayerNorm(cfg.width)
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.pos, std=0.01)
        nn.init.normal_(self.image_pos, std=0.01)

    def memory(self, pooled: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """(B, D) + (B, N, D) frozen features -> (B, 1 + N, width) image tokens."""
        tokens = torch.cat([pooled[:, None], patches], dim=1)
        return self.image_proj(tokens) + self.image_pos[: tokens.shape[1]]

    def forward(self, ids: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """(B, T) ids and (B, M, width) memory -> (B, T, vocab) next-word logits."""
        length = ids.shape[1]
        x = self.embed(ids) + self.pos[:length]
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool, device=ids.device), diagonal=1)
        x = self.blocks(x, memory, tgt_mask=causal, tgt_key_padding_mask=ids == PAD, tgt_is_causal=True)
        return self.norm(x) @ self.embed.weight.T


@dataclass
class LoadedDecoder:
    """A decoder ready to generate, with its vocabulary and where it came from."""

    module: ReportDecoder
    vocab: Vocabulary
    base_model: str
    base_fingerprint: str       # model_fingerprint(model, buffers=False) of the CLIP model it reads
    path: Path
    info: dict[str, Any]


def save_decoder(module: ReportDecoder, vocab: Vocabulary, out_dir: Path, base_model: str, base_fingerprint: str,
                 extra: dict[str, Any] | None = None) -> Path:
    """Write ``report_decoder.json`` + ``report_decoder.safetensors`` (staged, then renamed)."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / (DECODER_WEIGHTS + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, str(tmp))
    tmp.replace(out_dir / DECODER_WEIGHTS)
    config = {"format": DECODER_FORMAT, "decoder": asdict(module.cfg), "vocab": vocab.words,
              "base_model": base_model, "base_fingerprint": base_fingerprint, **(extra or {})}
    (out_dir / DECODER_CONFIG).write_text(json.dumps(config, indent=1))
    return out_dir


def load_decoder(folder: Path, device: str | torch.device = "cpu") -> LoadedDecoder:
    """Load a decoder folder written by :func:`save_decoder`."""
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        config = json.loads((folder / DECODER_CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelUnavailableError(f"No readable report decoder in {folder}: {exc}") from exc
    if config.get("format") != DECODER_FORMAT:
        raise ModelUnavailableError(f"Report decoder {folder} has format {config.get('format')!r}; "
                                    f"expected {DECODER_FORMAT}.")
    module = ReportDecoder(DecoderConfig(**config["decoder"]))
    module.load_state_dict(load_file(str(folder / DECODER_WEIGHTS)))
    module.to(device).eval()
    info = {k: v for k, v in config.items() if k not in ("vocab", "decoder")}
    return LoadedDecoder(module, Vocabulary(config["vocab"]), config["base_model"], config["base_fingerprint"],
                         folder, info)


def _blocked(sequence: list[int], n: int = 3) -> set[int]:
    """Words that would repeat an n-gram already in ``sequence`` (no-repeat-n-gram decoding)."""
    if len(sequence) < n - 1:
        return set()
    prefix = tuple(sequence[-(n - 1):])
    return {sequence[i + n - 1] for i in range(len(sequence) - n + 1) if tuple(sequence[i:i + n - 1]) == prefix}


@torch.inference_mode()
def beam_search(decoder: ReportDecoder, memory: torch.Tensor, beam: int = 3, max_len: int | None = None,
                length_penalty: float = 0.7, no_repeat: int = 3) -> list[int]:
    """Beam search for one image (``memory`` (1, M, width)): the best id sequence, ``<bos>`` .. ``<eos>``.

    Hypotheses are ranked by log-probability / length**``length_penalty``; an n-gram may not repeat
    (``no_repeat``); ``max_len`` caps the length (default: the decoder's).
    """
    max_len = min(max_len or decoder.cfg.max_len, decoder.cfg.max_len)
    beams: list[tuple[list[int], float]] = [([BOS], 0.0)]
    finished: list[tuple[list[int], float]] = []
    for _ in range(max_len - 1):
        ids = torch.tensor([b[0] for b in beams], device=memory.device)
        logp = F.log_softmax(decoder(ids, memory.expand(len(beams), -1, -1))[:, -1].float(), dim=-1)
        logp[:, PAD] = logp[:, BOS] = logp[:, UNK] = -float("inf")
        candidates = []
        for row, (sequence, score) in enumerate(beams):
            for word in _blocked(sequence, no_repeat) if no_repeat else ():
                logp[row, word] = -float("inf")
            if IMP in sequence:
                logp[row, IMP] = -float("inf")
            top = torch.topk(logp[row], beam)
            candidates += [(sequence + [int(w)], score + float(v)) for v, w in zip(top.values, top.indices)]
        candidates.sort(key=lambda c: -c[1])
        beams = []
        for sequence, score in candidates:
            (finished if sequence[-1] == EOS else beams).append((sequence, score))
            if len(beams) == beam:
                break
        if not beams or len(finished) >= beam:
            break
    pool = finished or beams
    return max(pool, key=lambda c: c[1] / len(c[0]) ** length_penalty)[0]
