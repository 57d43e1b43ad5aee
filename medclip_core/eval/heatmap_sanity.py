"""Sanity checks for heatmaps: does a method's map change when the phrase or the model's weights change?

After Adebayo et al. 2018, "Sanity Checks for Saliency Maps" (NeurIPS): a saliency method whose maps
stay the same when the model's learned weights are destroyed shows the image (edges, bright regions),
not what the model computes. Text-prompted maps add a second control: the map of a phrase that names
nothing in the image. CLIP Surgery (Li et al. 2023) starts from the observation that raw CLIP maps of
different phrases look alike; a method with that fault answers every phrase with the same picture.

Two checks per heatmap method of :mod:`medclip_core.tasks.grounding` (or any map function passed in),
each the Spearman rank correlation between two maps of the same image, on the method's own grid
(``GroundingResult.grids``: drawing maps back onto the image would add smoothness the model did not make):

* **prompt**: the map of the image's real phrase vs the map of :data:`CONTROL_PHRASE`, by the same model;
* **weights**: the model's map of the phrase vs the map of a copy whose last image block has random
  weights (``ClipModel.with_randomised_blocks``; ``blocks`` > 1 randomises the last few, the cascading
  variant).

A method whose median correlation exceeds :data:`FLAG_THRESHOLD` is flagged ("insensitive to the
prompt" / "insensitive to the model's weights"): its maps barely depend on what they claim to explain.
Each phrase is grounded alone, so surgery removes the neutral prompt in both maps of a pair, never
the other phrase. Two identical maps (two constant maps included) correlate 1; a constant map
against a varying one has no rank correlation and counts as undefined (left out of the median).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from medclip_core.data.findings import GROUNDING_FINDINGS
from medclip_core.errors import TaskInputError
from medclip_core.eval.engine import CONTROL_PHRASE, FLAG_THRESHOLD
from medclip_core.eval.metrics import spearman
from medclip_core.eval.phantom_eval import Progress, eval_mode, phantom_eval_order
from medclip_core.models.base import ClipModel, ImageLike, TowerPartUnsupported
from medclip_core.tasks.grounding import METHODS, ground, method_support
from medclip_core.tasks.saving import SavesJson

PROMPT_FLAG = "insensitive to the prompt"
WEIGHTS_FLAG = "insensitive to the model's weights"

HeatmapFunction = Callable[[ClipModel, ImageLike, str], np.ndarray]
"""(model, image, one phrase) -> a 2-D map; any shape, as long as it is the same for every call on one image."""


@dataclass
class SanityItem:
    """One image and the phrase whose map is checked on it."""

    image: ImageLike
    phrase: str



@dataclass
class CorrelationSummary:
    """Per-image correlations of one check (NaN where undefined) and their median and interquartile range."""

    values: list[float]

    @property
    def defined(self) -> np.ndarray:
        values = np.asarray(self.values, dtype=np.float64)
        return values[~np.isnan(values)]

    @property
    def median(self) -> float | None:
        return float(np.median(self.defined)) if self.defined.size else None

    @property
    def iqr(self) -> tuple[float, float] | None:
        if not self.defined.size:
            return None
        low, high = np.percentile(self.defined, [25, 75])
        return float(low), float(high)

    def to_dict(self) -> dict[str, Any]:
        iqr = self.iqr
        return {"median": None if self.median is None else round(self.median, 4),
                "iqr": None if iqr is None else [round(iqr[0], 4), round(iqr[1], 4)],
                "n": int(self.defined.size), "undefined": len(self.values) - int(self.defined.size),
                "values": [None if math.isnan(v) else round(v, 4) for v in self.values]}


@dataclass
class MethodSanity:
    """Both checks of one method; ``weights`` is None when the model cannot be randomised."""

    prompt: CorrelationSummary
    weights: CorrelationSummary | None
    threshold: float

    @property
    def flags(self) -> list[str]:
        checks = ((self.prompt, PROMPT_FLAG), (self.weights, WEIGHTS_FLAG))
        return [flag for summary, flag in checks
                if summary is not None and summary.median is not None and summary.median > self.threshold]

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt.to_dict(), "weights": None if self.weights is None else self.weights.to_dict(),
                "flags": self.flags}


@dataclass
class HeatmapSanityResult(SavesJson):
    """The sanity checks of every method on one model and one set of images."""

    SAVED_NAME = "heatmap_sanity"

    model: str
    n_images: int
    control_phrase: str
    randomised_blocks: int
    seed: int
    threshold: float
    methods: dict[str, MethodSanity]
    skipped: dict[str, str]            # method -> why it did not run
    weights_skipped: str | None        # why the weights check did not run (the model cannot be randomised)
    seconds: float

    @property
    def flags(self) -> dict[str, list[str]]:
        """Method -> its flags, for the flagged methods only."""
        return {name: sanity.flags for name, sanity in self.methods.items() if sanity.flags}

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "n_images": self.n_images, "control_phrase": self.control_phrase,
                "randomised_blocks": self.randomised_blocks, "seed": self.seed, "threshold": self.threshold,
                "methods": {name: sanity.to_dict() for name, sanity in self.methods.items()},
                "flags": self.flags, "skipped": self.skipped, "weights_skipped": self.weights_skipped,
                "seconds": round(self.seconds, 2)}


def method_heatmap(method: str) -> HeatmapFunction:
    """A grounding method (see ``METHODS``) as a map function: the raw map on the model's grid, one phrase."""
    return lambda model, image, phrase: ground(image, [phrase], model=model, method=method).grids[0]


def phantom_sanity_items(n: int = 50, split: str = "test", seed: int = 0) -> list[SanityItem]:
    """The first ``n`` phantom samples of ``split`` (in the evaluation order) that show a grounding finding;
    the phrase is the name of the first finding they show."""
    dataset, order = phantom_eval_order(max(2, 4 * n), split, seed)
    items: list[SanityItem] = []
    for index in order:
        sample = dataset[index]
        present = [f for f in GROUNDING_FINDINGS if (sample.boxes or {}).get(f)]
        if present:
            items.append(SanityItem(sample.image, present[0]))
            if len(items) == n:
                break
    return items


def _resolve_methods(model: ClipModel, methods: Sequence[str] | Mapping[str, HeatmapFunction] | None,
                     ) -> tuple[dict[str, HeatmapFunction], dict[str, str]]:
    """Map functions to run by name, and the named methods the model cannot serve with the reason."""
    if isinstance(methods, Mapping):
        return dict(methods), {}
    names = list(methods or METHODS)
    unknown = sorted(set(names) - set(METHODS))
    if unknown:
        raise TaskInputError(f"Unknown heatmap method(s) {unknown}; choose from {', '.join(METHODS)}.")
    support = method_support(model)
    return ({name: method_heatmap(name) for name in names if not support[name]},
            {name: str(support[name]) for name in names if support[name]})


def check_heatmaps(model: ClipModel, items: Sequence[SanityItem],
                   methods: Sequence[str] | Mapping[str, HeatmapFunction] | None = None,
                   control_phrase: str = CONTROL_PHRASE, blocks: int = 1, seed: int = 0,
                   threshold: float = FLAG_THRESHOLD, progress: Progress | None = None) -> HeatmapSanityResult:
    """Prompt and weight sensitivity of each heatmap method on ``items`` (see the module docstring).

    ``methods``: names from ``METHODS`` (default: all the model allows) or ``{name: map function}``
    to check any other map. The weights check runs on ``model.with_randomised_blocks(blocks, seed)``;
    a model that cannot be randomised gets the prompt check only, with the reason in ``weights_skipped``."""
    if not items:
        raise TaskInputError("No images to check the heatmaps on.")
    started = time.perf_counter()
    functions, skipped = _resolve_methods(model, methods)
    try:
        randomised: ClipModel | None = model.with_randomised_blocks(blocks, seed)
        weights_skipped = None
    except TowerPartUnsupported as reason:
        randomised, weights_skipped = None, str(reason)
    prompt: dict[str, list[float]] = {name: [] for name in functions}
    weights: dict[str, list[float]] = {name: [] for name in functions}
    with eval_mode(model):
        if randomised is not None:
            randomised.eval()
        for done, item in enumerate(items, start=1):
            for name, heatmap in functions.items():
                real = heatmap(model, item.image, item.phrase)
                prompt[name].append(spearman(real, heatmap(model, item.image, control_phrase)))
                if randomised is not None:
                    weights[name].append(spearman(real, heatmap(randomised, item.image, item.phrase)))
            if progress is not None:
                progress(done / len(items), f"checked {done}/{len(items)} images")
    results = {name: MethodSanity(CorrelationSummary(prompt[name]),
                                  None if randomised is None else CorrelationSummary(weights[name]), threshold)
               for name in functions}
    return HeatmapSanityResult(model.card.name, len(items), control_phrase, blocks, seed, threshold, results,
                               skipped, weights_skipped, time.perf_counter() - started)
