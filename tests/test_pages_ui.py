"""What the tabs show, without a browser: implausible masks, absent metadata, the sorted chart, legend
colours, and the methods offered per model."""
from __future__ import annotations

import numpy as np
from PIL import Image

from medclip_core.data.findings import FINDINGS
from medclip_core.tasks.diagnose import Diagnosis, probability_figure
from medclip_core.tasks.embedding import GROUP_GREYS, HIGHLIGHT_COLOUR, MULTIPLE_LABEL, EmbeddingMap, figure
from medclip_core.tasks.segmentation import SegmentationResult
from pages.inspect import NOT_RECORDED, displayed_metadata
from medclip_core.tasks.segmentation import implausible_masks
from pages.segment import methods_for_model as segment_methods
from pages.grounding import methods_for_model as grounding_methods


def radiograph_like(size: int = 100) -> Image.Image:
    """A bright body with two darker lungs, on black air with a 15-pixel border."""
    grey = np.zeros((size, size), np.uint8)
    grey[15:-15, 15:-15] = 200
    grey[30:70, 25:45] = grey[30:70, 55:75] = 70
    return Image.fromarray(grey)


def test_masks_over_half_the_image_or_outside_the_body_are_implausible() -> None:
    masks = np.zeros((3, 100, 100), bool)
    masks[0, 5:95, 5:95] = True          # 81 % of the image
    masks[1, 2:8, 2:8] = True            # a speck on the air in a corner
    masks[2, 40:60, 28:42] = True        # inside the left lung
    result = SegmentationResult(["nodule", "speck", "effusion"], "zero-shot:surgery", "m", masks,
                                masks.astype(np.float32), radiograph_like(), 0.0)
    reasons = implausible_masks(result)
    assert set(reasons) == {"nodule", "speck"}
    assert "81%" in reasons["nodule"] and "outside the body" in reasons["speck"]


def test_absent_or_zero_metadata_reads_not_recorded() -> None:
    shown = displayed_metadata({"format": "DICOM", "modality": "CT", "pixel_spacing_mm": [0.0, 0.0],
                                "view_position": ""})
    assert shown["modality"] == "CT"
    assert shown["pixel_spacing_mm"] == shown["view_position"] == shown["body_part_examined"] == NOT_RECORDED
    assert displayed_metadata({"format": "DICOM", "pixel_spacing_mm": [0.7, 0.7]})["pixel_spacing_mm"] == [0.7, 0.7]


def test_chart_is_sorted_by_the_first_series_with_the_threshold_drawn() -> None:
    diagnosis = Diagnosis(["a", "b", "c"], "pairwise", {"m": [0.2, 0.9, 0.5], "other": [0.9, 0.1, 0.1]}, {})
    chart = probability_figure(diagnosis)
    assert list(chart.layout.yaxis.categoryarray) == ["b", "c", "a"]
    assert [shape.x0 for shape in chart.layout.shapes] == [0.5]
    softmax = probability_figure(Diagnosis(["a", "b", "c", "d"], "softmax", {"m": [0.1, 0.2, 0.3, 0.4]}, {}))
    assert [shape.x0 for shape in softmax.layout.shapes] == [0.25]  # chance across four labels


def _map(labels: list[list[str] | None]) -> EmbeddingMap:
    n = len(labels)
    group = [MULTIPLE_LABEL if l and len(l) > 1 else (l[0] if l else "no findings") for l in labels]
    return EmbeddingMap("pca", "label", 0, "m", "s", np.random.default_rng(0).random((n, 2)), ["image"] * n,
                        [str(i) for i in range(n)], group, labels, [""] * n, [None] * n, None, None)


def test_every_finding_gets_its_own_colour_and_a_highlight_greys_the_rest() -> None:
    labels = [[finding] for finding in FINDINGS] + [["nodule", "opacity"], []]
    traces = figure(_map(labels)).data
    colours = [trace.marker.color for trace in traces]
    assert len(traces) == len(FINDINGS) + 2 and len(set(colours)) == len(colours)
    assert {t.name: t.marker.color for t in traces}[MULTIPLE_LABEL] == GROUP_GREYS[MULTIPLE_LABEL]
    highlighted = {t.name: t.marker.color for t in figure(_map(labels), highlight="nodule").data}
    assert highlighted == {"nodule": HIGHLIGHT_COLOUR, "other (not nodule)": "#c7c7c7"}
    assert sum(len(t.x) for t in figure(_map(labels), highlight="nodule").data if t.name == "nodule") == 2


def test_methods_a_model_cannot_serve_are_not_offered(open_clip_dir) -> None:
    resnet = grounding_methods("medclip-phantom", ["similarity", "relevance"])
    assert "relevance" not in [value for _, value in resnet["choices"]] and resnet["value"] == ["similarity"]
    assert "Attention relevance" in resnet["info"]
    assert "trained" in segment_methods("medclip-phantom", "trained")["choices"]
    vit = segment_methods(f"local-dir:{open_clip_dir}", "trained")
    assert "zero-shot:relevance" in vit["choices"] and "trained" not in vit["choices"]
    assert vit["value"] == "zero-shot:similarity" and "no trained decoder" in vit["info"]


def inline_thumbnails(grid: str) -> list[tuple[Image.Image, str]]:
    """The (image, caption) pairs of a thumbnail grid's HTML (``pages.common.thumbnail_grid_html``)."""
    import base64
    import html
    import io
    import re

    found = re.findall(r'<img src="data:image/jpeg;base64,([^"]+)"[^>]*><figcaption>(.*?)</figcaption>', grid)
    return [(Image.open(io.BytesIO(base64.b64decode(source))), html.unescape(caption)) for source, caption in found]


def test_result_thumbnails_are_inline_bounded_jpegs_with_escaped_captions() -> None:
    from pages.common import THUMBNAIL_SIDE, thumbnail_grid_html

    wide = Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), (384, 8)))  # 2048 x 384
    grid = thumbnail_grid_html([(wide, "1. 0.912 — effusion"), (Image.new("L", (64, 64)), '<img src=x onerror="alert(1)">')])
    thumbnails = inline_thumbnails(grid)
    assert [image.size for image, _ in thumbnails] == [(THUMBNAIL_SIDE, 60), (64, 64)]  # drawn down, never up
    assert [caption for _, caption in thumbnails] == ["1. 0.912 — effusion", '<img src=x onerror="alert(1)">']
    assert "onerror=\"alert" not in grid and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in grid
    assert thumbnail_grid_html([]) == ""
