"""Zero-shot diagnosis of one image, as the Diagnose tab, the CLI and the API serve it.

Combines the pieces: zero-shot scores for one model, optionally a second model on the same image
and labels, and optionally few-shot adaptation (Tip-Adapter and a linear probe on a phantom or
CSV support set), all as named series of per-label probabilities with a plotly bar chart.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from medclip_core.errors import TaskInputError
from medclip_core.models import default_model_name, load_model
from medclip_core.models.base import ImageLike
from medclip_core.models.ood import OodVerdict
from medclip_core.tasks.few_shot import SUPPORT_CACHE, csv_support, few_shot_scores
from medclip_core.tasks.saving import SavesJson
from medclip_core.tasks.zero_shot import SCORE_MODES, zero_shot


@dataclass
class Diagnosis(SavesJson):
    """``scores[series][i]`` is the probability of ``labels[i]`` under that series; ``ood`` says whether the
    image is like the first model's training images (:mod:`medclip_core.models.ood`)."""

    SAVED_NAME = "diagnosis"

    labels: list[str]
    mode: str
    scores: dict[str, list[float]]
    prompts: dict[str, dict[str, list[str]]]
    notes: list[str] = field(default_factory=list)
    negatives: str | None = None  # the first model's pairwise negative style; None in softmax mode
    ood: OodVerdict | None = None

    def table(self) -> tuple[list[str], list[list[Any]]]:
        """Header and rows (one per label), probabilities rounded for display."""
        header = ["label", *self.scores]
        rows = [[label, *(round(self.scores[s][i], 4) for s in self.scores)] for i, label in enumerate(self.labels)]
        return header, rows

    def to_dict(self) -> dict[str, Any]:
        return {"labels": self.labels, "mode": self.mode, "negatives": self.negatives, "scores": self.scores,
                "prompts": self.prompts, "notes": self.notes, "ood": self.ood.to_dict() if self.ood else None}


OUT_OF_DISTRIBUTION_GREYS = ("#9e9e9e", "#cccccc", "#6b6b6b", "#e3e3e3")  # one per series, cycled

NEGATIVE_NOTES = {
    "negated": 'each finding against its negation ("No {finding}.")',
    "normal": "each finding against the sentences of a normal study",
}


def diagnose(image: ImageLike, labels: Sequence[str], mode: str = "pairwise", model: str | None = None,
             compare_with: str | None = None, shots: int = 0, support_csv: str | Path | None = None,
             negatives: str | None = None) -> Diagnosis:
    """Score ``image`` on ``labels``; ``shots`` > 0 (phantom) or ``support_csv`` adds few-shot series.
    ``negatives`` (pairwise mode) overrides each model's own negative prompts ("negated" or "normal")."""
    if mode not in SCORE_MODES:
        raise TaskInputError(f"Scoring mode must be one of {SCORE_MODES}.")
    name = model or default_model_name()
    primary = load_model(name)
    result = zero_shot(primary, image, labels, mode, negatives)
    scores = {name: result.probabilities}
    notes: list[str] = []
    if mode == "softmax":
        notes.append("softmax mode: probabilities are shared across labels and sum to 1 (single-label reading).")
    else:
        calibrated = "; probabilities calibrated on labelled held-out images" if result.calibrated else ""
        notes.append(f"pairwise mode: {NEGATIVE_NOTES[result.negatives]} ({name}{calibrated}); "
                     "each label is scored on its own, so probabilities do not sum to 1.")
    if compare_with and compare_with != name:
        compared = zero_shot(load_model(compare_with), image, labels, mode, negatives)
        scores[compare_with] = compared.probabilities
        if compared.negatives != result.negatives:
            notes.append(f"{compare_with} scores {NEGATIVE_NOTES[compared.negatives]}.")
    if shots or support_csv:
        support = (csv_support(primary, support_csv, labels) if support_csv
                   else SUPPORT_CACHE.phantom(primary, labels, shots))
        adapted = few_shot_scores(primary, image, support, mode, negatives=negatives)
        scores[f"{name} + Tip-Adapter"] = adapted.tip_adapter
        scores[f"{name} + linear probe"] = adapted.linear_probe
        notes.append(f"few-shot support: {adapted.support} ({adapted.support_size} images).")
        notes.extend(adapted.notes)
    return Diagnosis(list(result.labels), mode, scores, result.prompts, notes, result.negatives, result.ood)


def decision_threshold(diagnosis: Diagnosis) -> float:
    """The probability above which a label reads as present: 0.5 for pairwise scores (each label
    against its negatives), chance (1 / number of labels) for a softmax across labels."""
    return 0.5 if diagnosis.mode == "pairwise" else 1.0 / max(len(diagnosis.labels), 1)


def probability_figure(diagnosis: Diagnosis):
    """Grouped horizontal bars, most probable label (first series) on top, one bar per series, with
    the decision threshold drawn as a dashed line; grey bars under the warning in the title when the
    image is out of the model's training distribution."""
    import plotly.graph_objects as go

    first = next(iter(diagnosis.scores.values()))
    order = [diagnosis.labels[i] for i in sorted(range(len(first)), key=lambda i: -first[i])]
    threshold = decision_threshold(diagnosis)
    outside = diagnosis.ood is not None and diagnosis.ood.in_distribution is False
    bars = [go.Bar(name=series, y=diagnosis.labels, x=probabilities, orientation="h",
                   marker_color=OUT_OF_DISTRIBUTION_GREYS[number % len(OUT_OF_DISTRIBUTION_GREYS)] if outside else None,
                   hovertemplate="%{y}: %{x:.3f}<extra>" + series + "</extra>")
            for number, (series, probabilities) in enumerate(diagnosis.scores.items())]
    # the threshold as a layout shape and label: a sixth of the time of plotly's add_vline
    threshold_line = dict(type="line", x0=threshold, x1=threshold, xref="x", y0=0, y1=1, yref="paper",
                          line=dict(dash="dash", color="#d62728"))
    threshold_label = dict(x=threshold, y=1, xref="x", yref="paper", text=f"threshold {threshold:.2f}",
                           showarrow=False, xanchor="left", yanchor="bottom")
    figure = go.Figure(data=bars, layout=dict(
        barmode="group", xaxis=dict(range=[0, 1], title="probability"),
        yaxis=dict(categoryorder="array", categoryarray=order, autorange="reversed"),
        height=max(320, 28 * len(diagnosis.labels) * max(1, len(diagnosis.scores) // 2)),
        margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h"), shapes=[threshold_line],
        annotations=[threshold_label],
        title=f"⚠️ {diagnosis.ood.message}" if outside else f"Zero-shot ({diagnosis.mode}), sorted by probability"))
    return figure
