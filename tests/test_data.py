"""Tests of the report corpus (medclip_core.data.reports) and the phantom renderer."""
from __future__ import annotations

import pytest

from medclip_core.data import FINDINGS, corpus_stats, load_reports, report_splits
from medclip_core.data.reports import parse_mesh, parse_report_xml


@pytest.fixture(scope="module")
def reports():
    return load_reports()


def by_id(reports, report_id):
    return next(r for r in reports if r.report_id == report_id)


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
