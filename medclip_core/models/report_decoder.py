"""A small report decoder conditioned on a frozen CLIP image encoder (prefix / cross-attention captioning).

The image enters as 1 + 49 memory tokens: the pooled embedding and the 7x7 patch-token grid of the
frozen model (:mod:`medclip_core.tasks.report_features`), each projected to the decoder width with
a learned position embedding. A pre-norm Transformer decoder (causal self-attention over the words
so far, cross-attention over the image tokens) predicts the next word; the output layer shares the
word embedding.

Diagnosis prompts (in the spirit of PromptMRG, Jin et al. 2024, and of the tag co-attention of
Jing et al. 2018), when ``n_findings`` > 0: a small classifier head reads the same frozen features
and predicts each finding of the label set; each finding then adds one memory token, a learned
embedding of (finding, present or absent). Training feeds the true labels (with a little noise, and
with the image tokens dropped for half of the rows so that the words must follow the prompts);
generation feeds the classifier's decisions at thresholds tuned on the validation split. A plain
captioner trained on reports collapses to the most common (normal) report; the prompts tell the
decoder what to say, so the draft's clinical content is the classifier's. Beam search still
prefers the stock normal wording, so :func:`sample_reports` draws candidates for the task layer
to choose from (:func:`medclip_core.tasks.report.write_report_ids`). Words come from a closed vocabulary built from the training reports (lower-case
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
    n_findings: int = 0      # > 0: diagnosis prompts (classifier head + one memory token per finding)


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
        if cfg.n_findings:
            self.classifier = nn.Sequential(nn.LayerNorm(2 * cfg.feature_dim), nn.Linear(2 * cfg.feature_dim, cfg.width),
                                            nn.GELU(), nn.Linear(cfg.width, cfg.n_findings))
            self.finding_tokens = nn.Parameter(torch.randn(cfg.n_findings, 2, cfg.width) * 0.02)
            self.prompt_norm = nn.LayerNorm(cfg.width)  # memory is not normalised by the decoder: match the image tokens' scale
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.pos, std=0.01)
        nn.init.normal_(self.image_pos, std=0.01)

    def classify(self, pooled: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """(B, D) + (B, N, D) frozen features -> (B, n_findings) finding logits (diagnosis prompts only)."""
        return self.classifier(torch.cat([pooled, patches.mean(dim=1)], dim=-1))

    def memory(self, pooled: torch.Tensor, patches: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        """(B, D) + (B, N, D) frozen features -> (B, 1 + N [+ F], width) memory tokens.

        A decoder with diagnosis prompts needs ``present``, (B, F) booleans: which findings to state.
        """
        tokens = torch.cat([pooled[:, None], patches], dim=1)
        memory = self.image_proj(tokens) + self.image_pos[: tokens.shape[1]]
        if not self.cfg.n_findings:
            return memory
        if present is None or present.shape != (len(pooled), self.cfg.n_findings):
            raise ValueError(f"this decoder needs (B, {self.cfg.n_findings}) finding decisions")
        rows = torch.arange(self.cfg.n_findings, device=pooled.device)
        return torch.cat([memory, self.prompt_norm(self.finding_tokens[rows, present.long()])], dim=1)

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
    findings: tuple[str, ...] = ()     # the label set of the diagnosis prompts (empty: none)
    thresholds: tuple[float, ...] = ()  # probability above which a finding is prompted as present

    @torch.inference_mode()
    def diagnose(self, pooled: torch.Tensor, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, F) finding probabilities and present decisions; both empty (B, 0) without diagnosis prompts."""
        if not self.findings:
            empty = pooled.new_zeros(len(pooled), 0)
            return empty, empty.bool()
        probabilities = torch.sigmoid(self.module.classify(pooled, patches).float())
        return probabilities, probabilities >= torch.tensor(self.thresholds, device=pooled.device)


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
    findings = tuple(config.get("findings", ()))
    thresholds = tuple(float(t) for t in config.get("thresholds", [0.5] * len(findings)))
    if len(findings) != module.cfg.n_findings or len(thresholds) != len(findings):
        raise ModelUnavailableError(f"Report decoder {folder}: {module.cfg.n_findings} diagnosis prompts but "
                                    f"{len(findings)} finding names and {len(thresholds)} thresholds.")
    info = {k: v for k, v in config.items() if k not in ("vocab", "decoder")}
    return LoadedDecoder(module, Vocabulary(config["vocab"]), config["base_model"], config["base_fingerprint"],
                         folder, info, findings, thresholds)


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


@torch.inference_mode()
def sample_reports(decoder: ReportDecoder, memory: torch.Tensor, n: int, top_p: float = 0.9, max_len: int | None = None,
                   no_repeat: int = 3, seed: int = 0) -> list[tuple[list[int], float]]:
    """``n`` nucleus samples (top-p) for one image (``memory`` (1, M, width)), drawn together, seeded.

    Returns (ids ``<bos>`` .. ``<eos>``, mean log-probability per word) for each sample; n-grams do not
    repeat and ``<imp>`` occurs at most once, as in :func:`beam_search`.
    """
    max_len = min(max_len or decoder.cfg.max_len, decoder.cfg.max_len)
    generator = torch.Generator(device=memory.device).manual_seed(seed)
    sequences = [[BOS] for _ in range(n)]
    log_probs = [0.0] * n
    done = [False] * n
    batch_memory = memory.expand(n, -1, -1)
    for _ in range(max_len - 1):
        ids = torch.tensor(sequences, device=memory.device)
        logits = decoder(ids, batch_memory)[:, -1].float()
        logits[:, [PAD, BOS, UNK]] = -float("inf")
        for row, sequence in enumerate(sequences):
            for word in _blocked(sequence, no_repeat) if no_repeat else ():
                logits[row, word] = -float("inf")
            if IMP in sequence:
                logits[row, IMP] = -float("inf")
        logp = F.log_softmax(logits, dim=-1)
        probs, order = logp.exp().sort(dim=-1, descending=True)
        outside = probs.cumsum(dim=-1) - probs > top_p      # keep the smallest set reaching top_p
        probs[outside] = 0.0
        choice = order.gather(1, torch.multinomial(probs, 1, generator=generator)).squeeze(1)
        for row in range(n):
            word = EOS if done[row] else int(choice[row])
            if not done[row]:
                log_probs[row] += float(logp[row, word])
            sequences[row].append(word)
            done[row] = done[row] or word == EOS
        if all(done):
            break
    out = []
    for sequence, total in zip(sequences, log_probs):
        kept = sequence[: sequence.index(EOS) + 1] if EOS in sequence else sequence
        out.append((kept, total / max(1, len(kept) - 1)))
    return out
