"""Grounding and zero-shot segmentation measured on the phantom test split.

For every rendered image and every grounding finding it shows (``GROUNDING_FINDINGS``), each heatmap
method draws the map of the finding's name as a phrase. Per method and finding:

* pointing game: the map's maximum lies in one of the finding's boxes; also counted with the
  15-px tolerance of Zhang et al. 2016 (``pointing_15px``; at 224 px about one 16-px patch), which
  tells a map that peaks beside the finding from one that peaks elsewhere;
* IoU and Dice of the zero-shot mask (``segmentation.mask_from_heatmap``) with the rendered mask.

Surgery removes what the phrases of a set share, so every image is grounded with the same set
(all grounding findings) for the cheap methods; gradient methods only run for the findings present.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

from medclip_core.data.findings import GROUNDING_FINDINGS
from medclip_core.eval.metrics import box_area_fraction, dice, iou, pointing_game
from medclip_core.eval.engine import POINTING_TOLERANCE, eval_mode, mean_of_numbers
from medclip_core.eval.phantom_eval import IMAGE_SIZE, Progress, phantom_eval_order
from medclip_core.models.base import ClipModel
from medclip_core.tasks.grounding import METHODS, ground, method_support
from medclip_core.tasks.segmentation import mask_from_heatmap

SET_METHODS = ("similarity", "surgery")   # one pass grounds the whole phrase set


@dataclass
class GroundingEvalResult:
    model: str
    split: str
    n_images: int
    methods: dict[str, Any]       # method -> {"pointing", "pointing_15px", "iou", "dice": {finding: mean, "mean": ...},
                                  #            "seconds_per_map"}
    chance: dict[str, float]      # finding -> mean box area fraction (pointing by chance)
    n_targets: dict[str, int]
    skipped: dict[str, str]       # method -> why not run
    ranking: list[str]            # methods by mean pointing game, best first
    chance_15px: dict[str, float]  # finding -> mean area fraction of the boxes grown by 15 px

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _summarise(per_finding: dict[str, list[float]]) -> dict[str, float]:
    rates = {f: mean_of_numbers(v) for f, v in per_finding.items() if v}
    return {**rates, "mean": mean_of_numbers(list(rates.values()))}


def evaluate_grounding(model: ClipModel, n: int = 1000, methods: Sequence[str] = METHODS, split: str = "test",
                       seed: int = 0, progress: Progress | None = None) -> GroundingEvalResult:
    """Pointing game, IoU and Dice per method and focal finding over ``n`` phantom samples."""
    support = method_support(model)
    skipped = {m: support[m] for m in methods if support[m]}
    runnable = [m for m in methods if not support[m]]
    dataset, order = phantom_eval_order(n, split, seed)
    scores = {m: {k: {f: [] for f in GROUNDING_FINDINGS} for k in ("pointing", "pointing_15px", "iou", "dice")}
              for m in runnable}
    seconds = {m: [0.0, 0] for m in runnable}
    chance: dict[str, list[float]] = {f: [] for f in GROUNDING_FINDINGS}
    chance_15px: dict[str, list[float]] = {f: [] for f in GROUNDING_FINDINGS}
    with eval_mode(model):
        for done, index in enumerate(order, start=1):
            sample = dataset[index]
            present = [f for f in GROUNDING_FINDINGS if (sample.boxes or {}).get(f)]
            if present:
                for f in present:
                    chance[f].append(box_area_fraction(sample.boxes[f], IMAGE_SIZE, IMAGE_SIZE))
                    chance_15px[f].append(box_area_fraction(sample.boxes[f], IMAGE_SIZE, IMAGE_SIZE,
                                                            POINTING_TOLERANCE))
                for method in runnable:
                    phrases = list(GROUNDING_FINDINGS) if method in SET_METHODS else present
                    result = ground(sample.image, phrases, model=model, method=method)
                    seconds[method][0] += result.seconds
                    seconds[method][1] += len(phrases)
                    for finding in present:
                        heatmap = result.maps[phrases.index(finding)]
                        truth = sample.masks[finding]
                        mask = mask_from_heatmap(heatmap)
                        boxes = sample.boxes[finding]
                        scores[method]["pointing"][finding].append(float(pointing_game(heatmap, boxes)))
                        scores[method]["pointing_15px"][finding].append(
                            float(pointing_game(heatmap, boxes, POINTING_TOLERANCE)))
                        scores[method]["iou"][finding].append(iou(mask, truth))
                        scores[method]["dice"][finding].append(dice(mask, truth))
            if progress is not None and done % 50 == 0:
                progress(done / len(order), f"grounded {done}/{len(order)} images")
    summary = {m: {**{k: _summarise(v) for k, v in scores[m].items()},
                   "seconds_per_map": seconds[m][0] / max(1, seconds[m][1])} for m in runnable}
    ranking = sorted(runnable, key=lambda m: -summary[m]["pointing"]["mean"])
    return GroundingEvalResult(model.card.name, split, len(order), summary,
                               {f: mean_of_numbers(v) for f, v in chance.items() if v},
                               {f: len(v) for f, v in chance.items()}, skipped, ranking,
                               {f: mean_of_numbers(v) for f, v in chance_15px.items() if v})
