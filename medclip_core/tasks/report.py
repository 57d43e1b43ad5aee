"""Draft a radiology report from an image: sentence retrieval (CXR-RePaiR style) or a trained decoder.

**Retrieval.** The sentences of the training split of the Open-i reports (sentences with the
de-identification token ``XXXX`` and one-word fragments left out) are embedded once per model by the
text tower and cached on disk (:func:`~medclip_core.tasks.retrieval.build_report_index`). For an
image, every sentence gets its cosine similarity to the image embedding, *calibrated*: the mean
similarity of that sentence to a reference set of phantom images is subtracted (``calibration``
weight), so that sentences which are close to every image (the stock normal phrases) do not crowd
out those specific to this one. Sentences are then taken greedily by that score, skipping
near-duplicates (text-embedding cosine above ``duplicate_threshold``) and contradictions (a finding
the labeller reads as present in one and negated in the other, :mod:`medclip_core.data.labeller`),
and sentences that state (or suspect) an abnormal finding the image does not support: one whose
zero-shot probability (pairwise, with the model's own negatives and calibration,
:mod:`~medclip_core.tasks.zero_shot`) is below ``support`` (``SUPPORT``, 0.1; 0 turns the check off), until ``k``
findings sentences and ``impression_k`` impression sentences are chosen; they are ordered as a
report: findings, then impression.

**Generation.** A small decoder (:mod:`medclip_core.models.report_decoder`), trained with
``python -m medclip_core train --task report`` on phantom image–report pairs over the frozen
model's pooled embedding and patch tokens, writes the report by beam search with a length limit.
Its classifier head first decides which findings are present; those decisions are the decoder's
diagnosis prompts and are returned with the draft (``prompted``). Beam search alone writes the stock
normal report whatever the prompts say, so the draft is the one, among the beam result and 16
seeded nucleus samples, that does not contradict itself and whose findings (read by the labeller)
agree best with the prompts (:func:`write_report_ids`). It exists for the model it was trained on (the embedded default ships one in
``assets/medclip-phantom/report/``).

Neither method writes the corpus's de-identification token (``XXXX``): retrieval leaves the sentences
holding it out of the corpus; generation prefers a candidate without it and drops any sentence that
still holds it (with a note).

Every draft lists its sentences with their similarity to the image and the findings the labeller
reads in them, and carries the out-of-distribution verdict of the image embedding
(:mod:`medclip_core.models.ood`): whether the image looks like the images the model was trained on.
"""
from __future__ import annotations

import functools
import re
import time
import weakref
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from medclip_core.data.findings import FINDINGS
from medclip_core.data.labeller import TextLabels, label_text
from medclip_core.data.reports import load_reports, report_splits
from medclip_core.errors import ModelUnavailableError, TaskInputError
from medclip_core.models.base import ClipModel, ImageLike
from medclip_core.models.ood import OodVerdict, ood_verdict
from medclip_core.models.report_decoder import LoadedDecoder, beam_search, load_decoder, sample_reports
from medclip_core.tasks.report_features import FEATURE_FORMAT, GRID, encode_for_report, phantom_features
from medclip_core.tasks.retrieval import Progress, build_report_index
from medclip_core.tasks.saving import SavesJson
from medclip_core.tasks.zero_shot import score_images

METHODS: tuple[str, ...] = ("retrieval", "generative")
DECODER_FOLDER = "report"
ANONYMISED = "xxxx"
REFERENCE_IMAGES = 64           # phantom validation images for the sentence calibration
SUPPORT = 0.1                   # best on the validation split for both embedded models (bench/tune_report_retrieval.py)
MAX_K = 12


# ---------------------------------------------------------------------------------------------
# The sentence corpus


@dataclass(frozen=True)
class CorpusSentence:
    """A distinct sentence of the training reports, the section it mostly comes from, and its labels."""

    text: str
    section: str  # "findings" or "impression"
    count: int
    labels: TextLabels


@functools.lru_cache(maxsize=2)
def sentence_corpus(seed: int = 0) -> tuple[CorpusSentence, ...]:
    """Distinct sentences of the Open-i training split (``report_splits(..., seed)["train"]``)."""
    counts: Counter = Counter()
    sections: dict[str, Counter] = {}
    for report in report_splits(load_reports(), seed=seed)["train"]:
        for section, text in (("findings", report.findings_text), ("impression", report.impression_text)):
            for sentence in type(report)("", text, "", (), ()).sentences():
                sentence = re.sub(r"\.{2,}$", ".", sentence.strip())
                if ANONYMISED in sentence.lower() or len(sentence.split()) < 2:
                    continue
                counts[sentence] += 1
                sections.setdefault(sentence, Counter())[section] += 1
    return tuple(CorpusSentence(text, sections[text].most_common(1)[0][0], n, label_text(text))
                 for text, n in counts.items())


def contradicts(a: TextLabels, b: TextLabels) -> bool:
    """Whether one text reports a finding (present or uncertain) that the other negates."""
    return bool((a.positive | a.uncertain) & b.negative or (b.positive | b.uncertain) & a.negative)


# ---------------------------------------------------------------------------------------------
# Results


@dataclass
class DraftSentence:
    """One sentence of a draft: its section, similarity to the image and the findings it states."""

    text: str
    section: str
    similarity: float
    labels: dict[str, list[str]]
    corpus_count: int | None = None  # how often the sentence occurs in the training reports (retrieval)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ReportDraft(SavesJson):
    """A draft report for one image and how it was made; ``ood`` says whether the image is like the model's
    training images (None for drafts made from cached features, see :func:`retrieval_draft`)."""

    SAVED_NAME = "report"

    method: str
    model: str
    sentences: list[DraftSentence]
    findings: dict[str, list[str]]
    seconds: float
    notes: list[str] = field(default_factory=list)
    prompted: dict[str, float] | None = None  # decoder with diagnosis prompts: findings prompted present -> probability
    ood: OodVerdict | None = None

    def section_text(self, section: str) -> str:
        return " ".join(s.text for s in self.sentences if s.section == section)

    @property
    def text(self) -> str:
        parts = [(label, self.section_text(section)) for label, section in
                 (("FINDINGS", "findings"), ("IMPRESSION", "impression"))]
        return " ".join(f"{label}: {body}" for label, body in parts if body)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "model": self.model, "text": self.text,
                "sentences": [s.to_dict() for s in self.sentences], "findings": self.findings,
                "seconds": round(self.seconds, 3), "notes": self.notes, "prompted_findings": self.prompted,
                "ood": self.ood.to_dict() if self.ood else None}


# ---------------------------------------------------------------------------------------------
# Per-model state: sentence embeddings and their calibration


@dataclass
class _ModelReference:
    sentence_vectors: np.ndarray     # (S, D) L2-normalised text embeddings of the corpus
    sentence_prior: np.ndarray       # (S,) mean similarity of each sentence to the reference images


def reference_embeddings(model: ClipModel) -> np.ndarray:
    """Pooled embeddings (REFERENCE_IMAGES, D) of the first phantom validation images, through the
    embedding cache (shipped for the embedded models): the reference of the sentence calibration."""
    from medclip_core.data.galleries import phantom_collection
    from medclip_core.models.embedding_cache import cached_vectors, content_digest, model_fingerprint

    model_fp = model_fingerprint(model)
    source = content_digest("report-reference", FEATURE_FORMAT, GRID,
                            phantom_collection(REFERENCE_IMAGES, split="val", size=model.image_size).fingerprint)
    fingerprint = {"modality": "report-reference", "model": model_fp, "source": source,
                   "model_name": model.card.name, "n": REFERENCE_IMAGES}
    return cached_vectors(f"reference-{model_fp[:16]}-{source[:16]}", fingerprint,
                          lambda: phantom_features(model, "val", limit=REFERENCE_IMAGES).pooled)


class ReportReferenceCache:
    """Sentence embeddings and reference statistics per loaded model (weakly keyed: they go with it)."""

    def __init__(self) -> None:
        self._entries: weakref.WeakKeyDictionary[ClipModel, _ModelReference] = weakref.WeakKeyDictionary()

    def get(self, model: ClipModel, progress: Progress | None = None) -> _ModelReference:
        """The model's entry, built on first use: ``progress(done, total)`` follows the sentences
        embedded (nothing to embed for the embedded models, whose vectors ship in ``assets/``)."""
        if model not in self._entries:
            corpus = sentence_corpus()
            vectors = build_report_index(model, [s.text for s in corpus], progress=progress).vectors
            reference = reference_embeddings(model)
            self._entries[model] = _ModelReference(vectors, (reference @ vectors.T).mean(axis=0))
        return self._entries[model]

    def clear(self) -> None:
        self._entries.clear()


REFERENCE_CACHE = ReportReferenceCache()


# ---------------------------------------------------------------------------------------------
# Methods


def _labels_dict(labels: TextLabels) -> dict[str, list[str]]:
    summary = labels.to_dict()
    return {key: summary[key] for key in ("positive", "uncertain", "negative")}


def select_sentences(scores: np.ndarray, k: int = 4, impression_k: int = 1, duplicate_threshold: float = 0.9,
                     vectors: np.ndarray | None = None, corpus: Sequence[CorpusSentence] | None = None,
                     unsupported: frozenset[str] = frozenset()) -> list[int]:
    """Corpus rows chosen for one image from its per-sentence ``scores``: greedy by score, no near-duplicate
    (cosine of ``vectors`` above ``duplicate_threshold``), no contradiction, no sentence stating (or
    suspecting) a finding in ``unsupported``; ``k`` findings then ``impression_k`` impression sentences,
    in report order."""
    corpus = corpus if corpus is not None else sentence_corpus()
    wanted = {"findings": k, "impression": impression_k}
    chosen: dict[str, list[int]] = {"findings": [], "impression": []}
    taken: list[int] = []
    for row in np.argsort(-scores, kind="stable"):
        sentence = corpus[row]
        if len(chosen[sentence.section]) >= wanted[sentence.section]:
            continue
        if unsupported & (sentence.labels.positive | sentence.labels.uncertain):
            continue
        if any(contradicts(sentence.labels, corpus[t].labels) for t in taken):
            continue
        if vectors is not None and taken and float((vectors[taken] @ vectors[row]).max()) > duplicate_threshold:
            continue
        chosen[sentence.section].append(int(row))
        taken.append(int(row))
        if all(len(chosen[s]) >= wanted[s] for s in wanted):
            break
    return chosen["findings"] + chosen["impression"]


def retrieval_scores(model: ClipModel, pooled: np.ndarray, calibration: float = 1.0) -> np.ndarray:
    """Calibrated similarity of every corpus sentence to the (D,) or (B, D) image embedding(s)."""
    reference = REFERENCE_CACHE.get(model)
    return pooled @ reference.sentence_vectors.T - calibration * reference.sentence_prior


def _check_k(k: int, name: str) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k <= MAX_K:
        raise TaskInputError(f"{name} must be a whole number from 0 to {MAX_K}, got {k!r}.")
    return int(k)


def retrieve_report(model: ClipModel, image: ImageLike, k: int = 4, impression_k: int = 1,
                    calibration: float = 1.0, duplicate_threshold: float = 0.9, support: float = SUPPORT,
                    progress: Progress | None = None) -> ReportDraft:
    """A draft made of corpus sentences retrieved for ``image`` (see the module docstring); ``progress``
    follows the sentence embedding of a model's first use (:meth:`ReportReferenceCache.get`)."""
    k, impression_k = _check_k(k, "k"), _check_k(impression_k, "impression_k")
    if k + impression_k == 0:
        raise TaskInputError("Ask for at least one sentence (k or impression_k above 0).")
    if isinstance(support, bool) or not isinstance(support, (int, float)) or not 0 <= support <= 1:
        raise TaskInputError(f"support must be a probability from 0 to 1, got {support!r}.")
    start = time.perf_counter()
    REFERENCE_CACHE.get(model, progress)
    pooled = encode_for_report(model, [image])[0][0]
    draft = retrieval_draft(model, pooled, k, impression_k, calibration, duplicate_threshold, support)
    draft.ood = ood_verdict(model, pooled)
    draft.seconds = time.perf_counter() - start
    return draft


def unsupported_findings(model: ClipModel, pooled: np.ndarray, support: float = SUPPORT) -> frozenset[str]:
    """Abnormal findings whose zero-shot probability (pairwise prompts) for the image is below ``support``."""
    if support <= 0:
        return frozenset()
    abnormal = [name for name in FINDINGS if name != "normal"]
    probabilities = score_images(model, torch.from_numpy(np.asarray(pooled, dtype=np.float32)[None]), abnormal)[0]
    return frozenset(name for name, p in zip(abnormal, probabilities) if p < support)


def retrieval_draft(model: ClipModel, pooled: np.ndarray, k: int, impression_k: int, calibration: float,
                    duplicate_threshold: float, support: float = SUPPORT) -> ReportDraft:
    """The retrieval draft for an image already encoded (``pooled``, its (D,) embedding): the sentence
    selection of :func:`retrieve_report` without input checks, OOD verdict or timing, so that the report
    evaluation can draft from cached image features."""
    corpus = sentence_corpus()
    vectors = REFERENCE_CACHE.get(model).sentence_vectors
    rows = select_sentences(retrieval_scores(model, pooled, calibration), k, impression_k, duplicate_threshold,
                            vectors, corpus, unsupported_findings(model, pooled, support))
    similarity = vectors[rows] @ pooled
    sentences = [DraftSentence(corpus[r].text, corpus[r].section, float(s), _labels_dict(corpus[r].labels),
                               corpus[r].count) for r, s in zip(rows, similarity)]
    draft = ReportDraft("retrieval", model.card.name, sentences, {}, 0.0)
    draft.findings = _labels_dict(label_text(draft.text))
    return draft


def decoder_folder(model_name: str) -> Path:
    """Where the report decoder of a model lives: ``<checkpoint folder>/report``."""
    from medclip_core.models import get_spec

    if model_name.startswith("local-dir:"):
        return Path(model_name[len("local-dir:"):]).expanduser() / DECODER_FOLDER
    spec = get_spec(model_name)
    if spec.backend != "checkpoint":
        raise ModelUnavailableError(f"'{model_name}' has no trained report decoder; use the retrieval method, "
                                    "or train one with `python -m medclip_core train --task report`.")
    return spec.local_path / DECODER_FOLDER


@functools.lru_cache(maxsize=4)
def _cached_decoder(folder: str, mtime: int) -> LoadedDecoder:
    return load_decoder(Path(folder))


def decoder_for(model: ClipModel, model_name: str) -> LoadedDecoder:
    """The decoder trained for ``model`` (loaded once); refuses one trained on other weights."""
    from medclip_core.models.embedding_cache import model_fingerprint

    folder = decoder_folder(model_name)
    weights = folder / "report_decoder.safetensors"
    if not weights.is_file():
        raise ModelUnavailableError(f"'{model_name}' has no trained report decoder (looked in {folder}); use the "
                                    "retrieval method, or train one with `python -m medclip_core train --task report`.")
    decoder = _cached_decoder(str(folder), weights.stat().st_mtime_ns)
    if decoder.base_fingerprint != model_fingerprint(model, buffers=False):
        raise ModelUnavailableError(f"The report decoder in {folder} was trained on other weights than "
                                    f"'{model_name}'; retrain it for this model.")
    return decoder


def _split_sentences(text: str) -> list[str]:
    from medclip_core.data.reports import Report

    return Report("", text, "", (), ()).sentences()


def generate_report(model: ClipModel, image: ImageLike, decoder: LoadedDecoder, beam: int = 3,
                    max_words: int | None = None, progress: Progress | None = None) -> ReportDraft:
    """A draft written by ``decoder`` for ``image``: beam search of width ``beam``, at most ``max_words``
    (``progress`` as in :func:`retrieve_report`: the chest check reads the same per-model reference)."""
    if isinstance(beam, bool) or not isinstance(beam, (int, np.integer)) or not 1 <= beam <= 8:
        raise TaskInputError(f"beam must be a whole number from 1 to 8, got {beam!r}.")
    start = time.perf_counter()
    REFERENCE_CACHE.get(model, progress)
    pooled, patches = encode_for_report(model, [image])
    draft = generated_draft(model, decoder, pooled[0], patches[0], beam, max_words)
    draft.ood = ood_verdict(model, pooled[0])
    draft.seconds = time.perf_counter() - start
    return draft


def _candidate_rank(text: str, prompted: frozenset[str]) -> tuple[bool, bool, float]:
    """(free of the corpus's de-identification token, no two sentences contradict each other, F1 between
    the findings the labeller reads in ``text`` and the prompted findings (none prompted = normal)):
    how a generated candidate is judged."""
    readings = [label_text(sentence) for sentence in _split_sentences(text)]
    coherent = not any(contradicts(a, b) for i, a in enumerate(readings) for b in readings[i + 1:])
    found, wanted = label_text(text).present(), prompted or frozenset({"normal"})
    return ANONYMISED not in text.lower(), coherent, 2 * len(found & wanted) / (len(found) + len(wanted))


@torch.inference_mode()
def write_report_ids(decoder: LoadedDecoder, pooled: torch.Tensor, patches: torch.Tensor,
                     present: torch.Tensor | None = None, beam: int = 3, max_len: int | None = None,
                     candidates: int = 16) -> list[int]:
    """Word ids the decoder writes for one image's features ((1, D), (1, N, D)) and diagnosis prompts
    ``present`` ((1, F) booleans; required when the decoder has prompts).

    Beam search alone writes the stock normal wording whatever the prompts say; with prompts, the
    result is the one among the beam result and ``candidates`` seeded nucleus samples that does not
    write the de-identification token ``xxxx`` (the training reports hold it), does not contradict
    itself and whose findings (read by the labeller) agree best with the prompts, then the beam
    result, then the likeliest.
    """
    memory = decoder.module.memory(pooled, patches, present if decoder.findings else None)
    ids = beam_search(decoder.module, memory, beam=beam, max_len=max_len)
    if not decoder.findings or not candidates:
        return ids
    prompted = frozenset(name for name, on in zip(decoder.findings, present[0]) if on)
    options = [(ids, 1, 0.0)] + [(sample, 0, logp) for sample, logp in
                                 sample_reports(decoder.module, memory, candidates, max_len=max_len)]
    return max(options, key=lambda o: (*_candidate_rank(" ".join(decoder.vocab.decode(o[0])), prompted), o[1], o[2]))[0]


@torch.inference_mode()
def generated_draft(model: ClipModel, decoder: LoadedDecoder, pooled: np.ndarray, patches: np.ndarray,
                    beam: int = 3, max_words: int | None = None, candidates: int = 16) -> ReportDraft:
    """The decoder's draft for an image already encoded (``pooled`` (D,), ``patches`` (N, D)): what
    :func:`generate_report` writes, without input checks, OOD verdict or timing, so that the report
    evaluation can draft from cached image features."""
    device = next(decoder.module.parameters()).device
    pooled_t, patches_t = torch.from_numpy(pooled[None]).to(device), torch.from_numpy(patches[None]).to(device)
    probabilities, present = decoder.diagnose(pooled_t, patches_t)
    ids = write_report_ids(decoder, pooled_t, patches_t, present, beam, max_words + 2 if max_words else None,
                           candidates)
    findings, impression = decoder.vocab.decode(ids)
    written = [(s, "findings") for s in _split_sentences(findings)] + \
              [(s, "impression") for s in _split_sentences(impression)]
    pieces = [(text, section) for text, section in written if ANONYMISED not in text.lower()]
    notes = [f"{len(written) - len(pieces)} sentence(s) holding the training reports' de-identification token "
             "were left out."] if len(pieces) < len(written) else []
    similarity = (model.encode_text([p for p, _ in pieces]).cpu().numpy() @ pooled) if pieces else []
    sentences = [DraftSentence(text, section, float(s), _labels_dict(label_text(text)))
                 for (text, section), s in zip(pieces, similarity)]
    draft = ReportDraft("generative", model.card.name, sentences, {}, 0.0,
                        notes + ([] if pieces else ["The decoder produced no sentence for this image."]),
                        {name: round(float(p), 3) for name, p, on in zip(decoder.findings, probabilities[0], present[0])
                         if on} if decoder.findings else None)
    draft.findings = _labels_dict(label_text(draft.text))
    return draft


def draft_report(image: ImageLike, method: str = "retrieval", model: str | ClipModel | None = None,
                 k: int = 4, impression_k: int = 1, beam: int = 3, support: float = SUPPORT,
                 progress: Progress | None = None) -> ReportDraft:
    """One entry point for the CLI and the app: a draft by ``method`` with the model named ``model``
    (``progress(done, total)``: the corpus sentences embedded on a model's first use)."""
    from medclip_core.models import default_model_name, load_model

    if method not in METHODS:
        raise TaskInputError(f"Unknown report method '{method}'; choose one of: {', '.join(METHODS)}.")
    name = model if isinstance(model, str) and model else default_model_name()
    clip = model if isinstance(model, ClipModel) else load_model(name)
    if method == "retrieval":
        return retrieve_report(clip, image, k=k, impression_k=impression_k, support=support, progress=progress)
    return generate_report(clip, image, decoder_for(clip, name if not isinstance(model, ClipModel) else
                                                    clip.card.name), beam=beam, progress=progress)
