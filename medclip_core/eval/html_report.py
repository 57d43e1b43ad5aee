"""One self-contained HTML page for an evaluation: tables and plotly figures, readable offline.

The plotly.js bundle is inlined once (no CDN), so the file opens on a machine without internet.
Built from the JSON payload of :class:`~medclip_core.eval.engine.EvaluationResult`, so a saved JSON
can be turned into a report again. The figures are also what the Evaluate tab shows.
"""
from __future__ import annotations

import html
import math
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

MAX_FIGURE_FINDINGS = 24


def _number(value: Any, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _interval(ci: list[float] | None) -> str:
    return "–" if not ci else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def auc_figure(payload: dict[str, Any]) -> go.Figure:
    """AUC per finding and model with its 95 % interval as error bars."""
    figure = go.Figure()
    for model, per in payload["classification"].items():
        names = [f for f, m in per["findings"].items() if m["auc"] is not None]
        aucs = [per["findings"][f]["auc"] for f in names]
        ci = [per["findings"][f]["ci"] or [a, a] for f, a in zip(names, aucs)]
        figure.add_bar(name=model, x=names, y=aucs,
                       error_y={"type": "data", "symmetric": False, "array": [c[1] - a for c, a in zip(ci, aucs)],
                                "arrayminus": [a - c[0] for c, a in zip(ci, aucs)]})
    figure.update_layout(title="AUC per finding (95 % bootstrap interval)", yaxis={"range": [0, 1], "title": "AUC"},
                         barmode="group", height=420)
    return figure


def _grid(payload: dict[str, Any], title: str, draw: Any) -> go.Figure:
    models = payload["classification"]
    first = next(iter(models.values()))
    names = [f for f, m in first["findings"].items() if m["auc"] is not None][:MAX_FIGURE_FINDINGS]
    columns = 4
    rows = max(1, math.ceil(len(names) / columns))
    figure = make_subplots(rows=rows, cols=columns, subplot_titles=names)
    for k, finding in enumerate(names):
        for index, (model, per) in enumerate(models.items()):
            draw(figure, per["findings"][finding], model, index, k // columns + 1, k % columns + 1, k == 0)
    figure.update_layout(title=title, height=260 * rows, showlegend=True)
    return figure


def _roc_trace(figure: go.Figure, m: dict[str, Any], model: str, index: int, row: int, col: int, legend: bool) -> None:
    if m["roc"]:
        figure.add_scatter(x=m["roc"]["fpr"], y=m["roc"]["tpr"], mode="lines", name=model, legendgroup=model,
                           showlegend=legend, line={"color": _colour(index)}, row=row, col=col)


def _reliability_trace(figure: go.Figure, m: dict[str, Any], model: str, index: int, row: int, col: int,
                       legend: bool) -> None:
    bins = m["reliability"]
    figure.add_scatter(x=[b["mean_probability"] for b in bins], y=[b["observed_frequency"] for b in bins],
                       mode="lines+markers", name=model, legendgroup=model, showlegend=legend,
                       line={"color": _colour(index)}, row=row, col=col)
    if index == 0:
        figure.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "grey"},
                           showlegend=False, row=row, col=col)


def _colour(index: int) -> str:
    return ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")[index % 5]


def roc_figure(payload: dict[str, Any]) -> go.Figure:
    """ROC curves, one panel per finding (defined ones), one line per model."""
    return _grid(payload, "ROC curves (x: 1 - specificity, y: sensitivity)", _roc_trace)


def reliability_figure(payload: dict[str, Any]) -> go.Figure:
    """Reliability diagrams: observed frequency against mean probability per bin; the diagonal is calibrated."""
    return _grid(payload, "Reliability diagrams (dotted: perfect calibration)", _reliability_trace)


def classification_rows(payload: dict[str, Any]) -> list[list[str]]:
    """Rows of the classification table: model, finding, AUC, interval, counts, status, operating point, ECE."""
    rows = []
    for model, per in payload["classification"].items():
        for finding, m in per["findings"].items():
            rows.append([model, finding, _number(m["auc"]), _interval(m["ci"]), m["n_positives"], m["n_negatives"],
                         m["status"], _number(m["threshold"]), _number(m["sensitivity"]), _number(m["specificity"]),
                         _number(m["ece"])])
    return rows


def evaluation_html(payload: dict[str, Any]) -> str:
    """The report page of an evaluation payload (``EvaluationResult.to_dict()``)."""
    data = payload["data"]
    parts = [f"<h1>Evaluation: {html.escape(', '.join(payload['models']))}</h1>",
             f"<p>Data: {html.escape(str(data['name']))} — {payload['n_images']} images evaluated "
             f"({len(payload['skipped_images'])} unreadable, skipped); {data['rows']} rows read; "
             f"unmatched columns or labels: {html.escape(', '.join(data['unmatched']) or 'none')}; "
             f"uncertain labels: {html.escape(data['uncertain_policy'])}; "
             f"{payload['options']['bootstrap']} bootstrap resamples.</p>"]
    figures: list[go.Figure] = []
    if payload["classification"]:
        parts.append("<h2>Classification (zero-shot)</h2>")
        parts.append(_table(["model", "finding", "AUC", "95 % CI", "positives", "negatives", "status", "threshold",
                             "sensitivity", "specificity", "ECE"], classification_rows(payload)))
        for name, comparison in payload["comparisons"].items():
            parts.append(f"<h3>Paired AUC difference: {html.escape(name)}</h3>")
            parts.append(_table(["finding", "difference", "95 % CI"],
                                [[f, _number(c["difference"]), _interval(c["ci"])]
                                 for f, c in comparison["findings"].items()]))
        figures += [auc_figure(payload), roc_figure(payload), reliability_figure(payload)]
    if payload["retrieval"]:
        parts.append("<h2>Retrieval (each distinct report once)</h2>")
        rows = [[model, direction, k, _number(v["value"]), _interval(v["ci"])]
                for model, r in payload["retrieval"].items() for direction in ("image_to_text", "text_to_image")
                for k, v in r[direction].items()]
        parts.append(_table(["model", "direction", "metric", "value", "95 % CI"], rows))
    if payload["grounding"]:
        parts.append("<h2>Grounding: pointing game</h2>")
        rows = []
        for model, g in payload["grounding"].items():
            tolerance = f"{g['tolerance_px']:g}px"
            for method, m in g["methods"].items():
                rows.append([model, method, _number(m["pointing"]["mean"]), _number(m[f"pointing_{tolerance}"]["mean"]),
                             _number(g["chance"]["mean"]), _number(g[f"chance_{tolerance}"]["mean"])])
        parts.append(_table(["model", "method", "pointing", "pointing (tolerance)", "chance", "chance (tolerance)"],
                            rows))
        flag = next(iter(payload["grounding"].values()))["sanity"]["flag_above"]
        parts.append("<h3>Sanity checks: rank correlation of each map with the map of a nonsense phrase, and "
                     f"with the map of the model with its last block randomised (flagged above {flag})</h3>")
        parts.append(_table(["model", "method", "check", "median rank correlation", "maps", "flagged"],
                            [[model, method, check.replace("_", " "), _number(c["median_rank_correlation"]),
                              c["n_maps"], "yes: the map ignores it" if c["flagged"] else "no"]
                             for model, g in payload["grounding"].items()
                             for method, per in g["sanity"]["methods"].items() for check, c in per.items()]))
    if payload["segmentation"]:
        parts.append("<h2>Segmentation</h2>")
        rows = [[model, method, _number(m["dice"]["mean"]), _number(m["iou"]["mean"])]
                for model, s in payload["segmentation"].items() for method, m in s["methods"].items()]
        parts.append(_table(["model", "method", "Dice", "IoU"], rows))
    for i, figure in enumerate(figures):
        parts.append(figure.to_html(full_html=False, include_plotlyjs="inline" if i == 0 else False))
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>MedCLIP evaluation</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")
