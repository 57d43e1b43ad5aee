"""Tests of the report corpus (medclip_core.data.reports) and the phantom renderer."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from medclip_core.data import FINDINGS, corpus_stats, load_reports, report_splits
from medclip_core.data.findings import (
    GROUNDING_FINDINGS, LABEL_PRESETS, NORMAL, SEGMENTATION_FOCUS_FINDINGS, SEGMENTED_FINDINGS, SHORT_FORMS,
    SIDED_FINDINGS,
)
from medclip_core.data.phantom import PhantomSample, lung_mask_bank, phantom_dataset, render, write_examples
from medclip_core.data.reports import parse_mesh, parse_report_xml


@pytest.fixture(scope="module")
def reports():
    return load_reports()


def by_id(reports, report_id):
    return next(r for r in reports if r.report_id == report_id)


def test_every_named_finding_set_is_drawn_from_the_one_vocabulary(reports):
    named = [GROUNDING_FINDINGS, SEGMENTATION_FOCUS_FINDINGS, SEGMENTED_FINDINGS, SIDED_FINDINGS, SHORT_FORMS,
             LABEL_PRESETS["Phantom findings"]]
    assert all(set(subset) <= set(FINDINGS) for subset in named)
    assert NORMAL not in SEGMENTED_FINDINGS and set(SEGMENTED_FINDINGS) | {NORMAL} == set(FINDINGS)
    assert set(SEGMENTATION_FOCUS_FINDINGS) <= set(GROUNDING_FINDINGS)
    assert {label for r in reports for label in r.labels} == set(FINDINGS)  # every label occurs, no other does


def test_corpus_size_and_ids(reports):
    assert len(reports) == 3927
    assert len({r.report_id for r in reports}) == len(reports)
    assert all(r.text for r in reports)


def test_left_basal_opacity_report(reports):
    report = by_id(reports, "CXR199")
    assert "Opacity/lung/base/left" in report.mesh
    opacity = next(f for f in report.findings if f.label == "opacity")
    assert (opacity.side, opacity.zone) == ("left", "base")
    assert "opacity" in report.labels


def test_normal_report_has_only_normal_label(reports):
    report = by_id(reports, "CXR1")
    assert report.mesh == ("normal",)
    assert report.labels == {"normal"}
    assert report.findings == ()
    assert report.text.startswith("FINDINGS: ") and "IMPRESSION: Normal chest" in report.text
    assert report.sentences()[0] == "The cardiac silhouette and mediastinum size are within normal limits."


def test_mesh_mapping_severity_side_and_compound_terms():
    (cardio,) = parse_mesh("Cardiomegaly/mild")
    assert (cardio.label, cardio.severity, cardio.side) == ("cardiomegaly", "mild", None)
    assert {f.label for f in parse_mesh("Hydropneumothorax/apex/right")} == {"pleural effusion", "pneumothorax"}
    assert parse_mesh("Lung/hyperdistention")[0].label == "hyperinflation"
    assert parse_mesh("Lung/hypoinflation")[0].label == "low lung volumes"
    (effusion,) = parse_mesh("Pleural Effusion/right/small")
    assert (effusion.side, effusion.severity) == ("right", "small")
    assert parse_mesh("Technical Quality of Image Unsatisfactory ") == ()
    assert parse_mesh("normal") == ()
    assert all(f.label in FINDINGS for r in load_reports() for f in r.findings)


def test_parse_report_xml_skips_automatic_terms():
    xml = """<eCitation><uId id="CXR9"/><Abstract>
      <AbstractText Label="FINDINGS">Small  left
      effusion.</AbstractText><AbstractText Label="IMPRESSION"/></Abstract>
      <MeSH><major>Pleural Effusion/left/small</major><automatic>opacity</automatic></MeSH></eCitation>"""
    report = parse_report_xml(xml)
    assert report.report_id == "CXR9"
    assert report.text == "FINDINGS: Small left effusion."
    assert report.labels == {"pleural effusion"}


def test_splits_disjoint_reproducible_complete(reports):
    a, b = report_splits(reports, seed=3), report_splits(reports, seed=3)
    ids = {k: [r.report_id for r in v] for k, v in a.items()}
    assert ids == {k: [r.report_id for r in v] for k, v in b.items()}
    sets = [set(v) for v in ids.values()]
    assert sum(map(len, sets)) == len(set().union(*sets)) == len(reports)
    assert abs(len(ids["train"]) - 0.8 * len(reports)) <= 1
    other = report_splits(reports, seed=4)
    assert [r.report_id for r in other["test"]] != ids["test"]


def test_corpus_stats_counts(reports):
    stats = corpus_stats(reports)
    assert stats["n_reports"] == len(reports)
    assert list(stats["labels"]) == list(FINDINGS)
    assert stats["labels"]["normal"] == sum(r.labels == {"normal"} for r in reports)
    assert sum(s["n_reports"] for s in stats["splits"].values()) == len(reports)
    assert stats["labels"]["cardiomegaly"] > 300 and stats["labels"]["pneumothorax"] > 20


# ---------------------------------------------------------------------------------------------
# Phantom renderer


def first_with(reports, predicate):
    return next(r for r in reports if predicate(r))


def test_lung_mask_bank_drops_empty_masks():
    bank = lung_mask_bank()
    assert 400 <= len(bank) <= 435
    assert all(m.shape == (128, 128) and (m > 127).mean() > 0.2 for m in bank)


def test_render_deterministic_shape_range(reports):
    report = by_id(reports, "CXR199")
    a, b = render(report, seed=5), render(report, seed=5)
    assert isinstance(a, PhantomSample)
    assert a.image.shape == (224, 224) and a.image.dtype == np.float32
    assert 0.0 <= a.image.min() and a.image.max() <= 1.0
    np.testing.assert_array_equal(a.image, b.image)
    assert a.boxes == b.boxes
    assert not np.array_equal(a.image, render(report, seed=6).image)
    assert render(report, seed=5, size=128).image.shape == (128, 128)


def test_radiograph_convention_lungs_dark(reports):
    sample = render(by_id(reports, "CXR1"), seed=0)
    lungs = sample.anatomy["lung_left"] | sample.anatomy["lung_right"]
    assert sample.image[lungs].mean() < sample.image[sample.anatomy["heart"] & ~lungs].mean() - 0.15
    assert sample.masks == {} and sample.labels == {"normal"}


@pytest.mark.parametrize("seed", [0, 1])
def test_masks_and_boxes_for_every_drawn_finding(reports, seed):
    picked = [r for r in reports if len(r.labels - {"normal"}) >= 2][:25]
    for report in picked:
        sample = render(report, seed=seed)
        assert set(sample.masks) == set(sample.boxes) == set(sample.labels - {"normal"}), report.report_id
        for label, mask in sample.masks.items():
            assert mask.shape == (224, 224) and mask.dtype == bool and mask.any()
            covered = np.zeros_like(mask)
            for x0, y0, x1, y1 in sample.boxes[label]:
                assert 0 <= x0 < x1 <= 224 and 0 <= y0 < y1 <= 224
                covered[y0:y1, x0:x1] = True
            assert not (mask & ~covered).any(), (report.report_id, label)


@pytest.mark.parametrize("label", ["opacity", "pleural effusion", "pneumothorax", "nodule"])
def test_finding_drawn_on_named_side(reports, label):
    for side in ("left", "right"):
        report = first_with(reports, lambda r: len(r.findings) == 1 and r.findings[0].label == label
                            and r.findings[0].side == side)
        for seed in range(3):
            mask = render(report, seed=seed).masks[label]
            centroid_x = np.nonzero(mask)[1].mean()
            # the patient's left is the image's right
            assert (centroid_x > 112) == (side == "left"), (report.report_id, seed)


def test_cardiomegaly_heart_wider_than_normal(reports):
    def ctr(sample):
        heart_cols = np.nonzero(sample.anatomy["heart"].any(0))[0]
        lungs = sample.anatomy["lung_left"] | sample.anatomy["lung_right"]
        lung_cols = np.nonzero(lungs.any(0))[0]
        return (np.ptp(heart_cols) + 1) / (np.ptp(lung_cols) + 1)

    normals = [r for r in reports if r.labels == {"normal"}][:6]
    enlarged = [r for r in reports if r.labels == {"cardiomegaly"}][:6]
    normal_ctr = [ctr(render(r, seed=1)) for r in normals]
    big_ctr = [ctr(render(r, seed=1)) for r in enlarged]
    assert max(normal_ctr) < 0.5 < min(big_ctr)
    for r in enlarged:
        assert render(r, seed=1).masks["cardiomegaly"].any()


def test_dataset_split_and_variants():
    ds = phantom_dataset("val", seed=0, variants_per_report=2)
    assert len(ds) == 2 * len(report_splits(load_reports(), 0)["val"])
    a, b = ds[0], ds[1]
    assert a.report == b.report and not np.array_equal(a.image, b.image)
    np.testing.assert_array_equal(ds[0].image, a.image)
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_write_examples(tmp_path):
    summary = write_examples(tmp_path, n=3, seed=0, size=96)
    assert summary["n"] == 3
    for name in summary["files"]:
        assert (tmp_path / name).is_file()
    assert {"000.png", "000.json", "002.png", "contact_sheet.png"} <= set(summary["files"])
    record = json.loads((tmp_path / "001.json").read_text())
    assert {"report_id", "text", "labels", "boxes", "findings"} <= set(record)
    image = Image.open(tmp_path / "000.png")
    assert image.mode == "L" and image.size == (96, 96)
