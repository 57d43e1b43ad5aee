"""Labelled sets and the evaluation engine: the example sets of assets/evaluation, exported phantom files
against the phantom evaluation, bootstrap arithmetic, two models compared, bad input."""
from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from medclip_core.data.labelled_sets import match_finding, read_labelled_set
from medclip_core.errors import TaskInputError
from medclip_core.eval.engine import STATUS_FEW, STATUS_UNDEFINED, EvalOptions, evaluate_set
from medclip_core.eval.metrics import bootstrap_counts, roc_auc, weighted_roc_auc
from medclip_core.io import load_image

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "assets" / "evaluation"


@pytest.fixture(scope="module")
def phantom_model():
    from medclip_core.models import load_model

    return load_model("medclip-phantom")


def test_finding_names_match_labels_synonyms_and_chexpert_names() -> None:
    assert match_finding("Effusion") == "pleural effusion"
    assert match_finding("Enlarged_Heart_Size") == "cardiomegaly"
    assert match_finding("Lung Opacity") == "lung opacity"
    assert match_finding("No Finding") == "no finding"
    assert match_finding("Kidney Stone") is None


def test_chexpert_csv_lists_unmatched_columns_missing_images_and_duplicates_once() -> None:
    labelled = read_labelled_set(EXAMPLES / "labels.csv")
    summary = labelled.to_dict()
    assert summary["unmatched"] == ["kidney stone"]          # "sex" is a study column, not a finding
    assert summary["problem_counts"] == {"missing_file": 1, "duplicate_row": 1}
    assert summary["n_images"] == 12 and summary["rows"] == 14
    assert summary["tasks"] == ["classification"]
    second, third = labelled.images[1], labelled.images[2]
    assert "opacity" not in second.labels                    # -1 left out by default
    assert "cardiomegaly" not in third.labels                # blank = unknown
    assert read_labelled_set(EXAMPLES / "labels.csv", "positive").images[1].labels["opacity"] == 1.0
    assert read_labelled_set(EXAMPLES / "labels.csv", "negative").images[1].labels["opacity"] == 0.0
    with pytest.raises(TaskInputError, match="Uncertain"):
        read_labelled_set(EXAMPLES / "labels.csv", "maybe")


def test_list_form_boxes_and_masks_are_read() -> None:
    pairs = read_labelled_set(EXAMPLES / "pairs.csv")
    assert pairs.tasks == ["classification", "retrieval"]
    first = pairs.images[0]
    assert {f for f, v in first.labels.items() if v == 1} <= set(pairs.findings)
    assert all(set(image.labels) == set(pairs.findings) for image in pairs.images)
    boxes = read_labelled_set(EXAMPLES / "boxes.csv")
    x0, y0, x1, y1 = boxes.images[0].boxes["opacity"][0]
    assert (x0, y0, x1 - x0, y1 - y0) == (31, 123, 26, 24)
    masks = read_labelled_set(EXAMPLES / "masks.csv")
    assert masks.tasks == ["segmentation"] and all(Path(p).is_file() for i in masks.images for p in i.masks.values())


def test_paths_leaving_the_set_folder_or_the_allowed_root_are_refused(tmp_path) -> None:
    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "labels.csv").write_text("image,effusion\n../x.png,1\n")
    with pytest.raises(TaskInputError, match="leaves the dataset folder"):
        read_labelled_set(tmp_path / "set")
    with pytest.raises(TaskInputError, match="must lie inside"):
        read_labelled_set(EXAMPLES / "labels.csv", allowed_root=tmp_path)


def test_weighted_auc_is_the_auc_of_the_resampled_set() -> None:
    rng = np.random.default_rng(3)
    truth = rng.random(200) < 0.3
    score = np.round(rng.random(200) + 0.4 * truth, 1)  # many ties
    counts = bootstrap_counts(200, 20, seed=5)
    assert (counts.sum(axis=1) == 200).all()
    resampled = weighted_roc_auc(truth, score, counts)
    for row, auc in zip(counts, resampled):
        picked = np.repeat(np.arange(200), row)
        assert auc == pytest.approx(roc_auc(truth[picked], score[picked]), abs=1e-12)
    assert weighted_roc_auc(truth, score, np.ones((1, 200)))[0] == pytest.approx(roc_auc(truth, score), abs=1e-12)


def test_exported_phantom_files_reproduce_the_phantom_evaluation(phantom_model, tmp_path) -> None:
    from medclip_core.__main__ import main
    from medclip_core.eval.phantom_eval import evaluate_phantom

    n = 24
    assert main(["phantom", "export", "--format", "chexpert", "--n", str(n), "--out", str(tmp_path)]) == 0
    labelled = read_labelled_set(tmp_path)
    result = evaluate_set({"phantom": phantom_model}, labelled, EvalOptions(bootstrap=50, workers=1))
    reference = evaluate_phantom(phantom_model, n=n).zero_shot["auc"]
    assert reference  # findings with enough positives and negatives at this size
    engine = result.classification["phantom"]["findings"]
    for finding, auc in reference.items():
        assert engine[finding]["auc"] == pytest.approx(auc, abs=1e-6), finding
        low, high = engine[finding]["ci"]
        assert low <= auc <= high


def test_the_phantom_zero_shot_summary_is_the_engines() -> None:
    from medclip_core.data.findings import FINDINGS
    from medclip_core.eval.phantom_eval import MIN_CLASS_COUNT, zero_shot_summary

    rng = np.random.default_rng(0)
    label_sets = [frozenset(rng.choice(FINDINGS[:4], size=2, replace=False)) for _ in range(60)]
    truth = np.array([[f in labels for f in FINDINGS] for labels in label_sets])
    probabilities = np.clip(rng.random((60, len(FINDINGS))) * 0.6 + 0.4 * truth, 0, 1)
    summary = zero_shot_summary(probabilities, label_sets, bootstrap=200)
    for j, finding in enumerate(FINDINGS):
        engine = summary["findings"][finding]
        assert engine["n_positives"] == truth[:, j].sum() == summary["positives"][finding]
        if min(engine["n_positives"], engine["n_negatives"]) >= MIN_CLASS_COUNT:
            assert summary["auc"][finding] == engine["auc"] == pytest.approx(roc_auc(truth[:, j], probabilities[:, j]))
            assert engine["ci"][0] <= engine["auc"] <= engine["ci"][1]
        else:
            assert finding in summary["skipped"]
        if engine["n_positives"] == 0:
            assert engine["status"] == STATUS_UNDEFINED and engine["auc"] is None


def test_two_models_compared_with_paired_intervals_and_bad_findings_flagged(phantom_model, tmp_path) -> None:
    from medclip_core.models import load_model

    labelled = read_labelled_set(EXAMPLES / "labels.csv")
    models = {"phantom": phantom_model, "grounding": load_model("medclip-phantom-grounding")}
    result = evaluate_set(models, labelled, EvalOptions(bootstrap=200, workers=0, threshold=0.5))
    same = evaluate_set({"a": phantom_model, "b": phantom_model}, labelled, EvalOptions(bootstrap=100, workers=0))
    for finding, m in result.classification["phantom"]["findings"].items():
        truth = labelled.truth([finding])[:, 0]
        assert m["n_positives"] == int((truth == 1).sum()) and m["n_negatives"] == int((truth == 0).sum())
        if m["n_positives"] == 0 or m["n_negatives"] == 0:
            assert m["status"] == STATUS_UNDEFINED and m["auc"] is None and "not defined" in m["note"]
        elif m["n_positives"] < 10:
            assert m["status"] == STATUS_FEW and 0 <= m["auc"] <= 1
        assert m["threshold"] in (None, 0.5)
    pair = result.comparisons["phantom vs grounding"]["findings"]
    defined = [f for f, c in pair.items() if c["ci"]]
    assert defined
    for finding in defined:
        a = result.classification["phantom"]["findings"][finding]["auc"]
        b = result.classification["grounding"]["findings"][finding]["auc"]
        assert pair[finding]["difference"] == pytest.approx(a - b)
    assert all(c["difference"] in (0, None) and c["ci"] in ([0, 0], None)
               for c in same.comparisons["a vs b"]["findings"].values())
    saved = result.save(tmp_path / "report")
    payload = json.loads(Path(saved["json"]).read_text())
    assert payload["classification"]["phantom"]["findings"]["normal"]["auc"] == result.classification[
        "phantom"]["findings"]["normal"]["auc"]
    page = Path(saved["html"]).read_text()
    assert "Paired AUC difference" in page and "Plotly.newPlot" in page
    assert "<script src=" not in page  # plotly.js inlined: the page opens offline
    assert Path(saved["csv"]).read_text().count("\n") == 1 + 2 * len(labelled.findings)


def test_retrieval_counts_each_report_text_once(phantom_model, tmp_path) -> None:
    folder = tmp_path / "set"
    shutil.copytree(EXAMPLES / "images", folder / "images")
    with open(EXAMPLES / "pairs.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    # the same report for two images: one gallery text, both images hit it
    rows[5].update(report=rows[0]["report"], labels=rows[0]["labels"])
    with open(folder / "pairs.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    labelled = read_labelled_set(folder / "pairs.csv")
    result = evaluate_set({"phantom": phantom_model}, labelled,
                          EvalOptions(tasks=("retrieval",), bootstrap=100, workers=0))
    retrieval = result.retrieval["phantom"]
    assert retrieval["n_images"] == 12 and retrieval["n_texts"] == len({i.report for i in labelled.images}) < 12
    for direction in ("image_to_text", "text_to_image"):
        recalls = [retrieval[direction][f"recall@{k}"]["value"] for k in (1, 5, 10)]
        assert recalls == sorted(recalls) and recalls[-1] <= 1
        low, high = retrieval[direction]["recall@5"]["ci"]
        assert low <= recalls[1] <= high


def test_unreadable_images_are_listed_and_skipped_and_maps_are_scored(phantom_model, tmp_path) -> None:
    folder = tmp_path / "set"
    shutil.copytree(EXAMPLES / "images", folder / "images")
    shutil.copytree(EXAMPLES / "masks", folder / "masks")
    shutil.copy(EXAMPLES / "boxes.csv", folder / "boxes.csv")
    (folder / "images" / "0000.png").write_bytes(b"not a png")
    labelled = read_labelled_set(folder / "boxes.csv")
    result = evaluate_set({"phantom": phantom_model}, labelled, EvalOptions(workers=1, methods=("similarity", "surgery")))
    assert [s["image"] for s in result.skipped_images] == ["images/0000.png"]
    assert result.n_images == len(labelled.images) - 1
    grounding = result.grounding["phantom"]
    assert set(grounding["methods"]) == {"similarity", "surgery"}
    for method in grounding["methods"].values():
        strict, tolerant = method["pointing"]["mean"], method["pointing_15px"]["mean"]
        assert 0 <= strict <= tolerant <= 1
    assert 0 < grounding["chance"]["mean"] < grounding["chance_15px"]["mean"] < 1
    assert grounding["sanity"]["randomised_last_block_note"] is None
    for checks in grounding["sanity"]["methods"].values():
        for check in checks.values():
            assert check["n_maps"] == sum(grounding["n_targets"].values())
            assert -1 <= check["median_rank_correlation"] <= 1
            assert check["flagged"] == (check["median_rank_correlation"] > 0.9)
    masks = read_labelled_set(EXAMPLES / "masks.csv")
    segmentation = evaluate_set({"phantom": phantom_model}, masks, EvalOptions(workers=0)).segmentation["phantom"]
    dice = segmentation["methods"]["similarity"]["dice"]
    assert 0 <= dice["mean"] <= 1 and not math.isnan(dice["mean"])
    assert sum(segmentation["n_targets"].values()) == 8


def test_cli_compares_two_models_and_writes_json_csv_and_html(tmp_path, capsys) -> None:
    from medclip_core.__main__ import main

    out = tmp_path / "report"
    code = main(["eval", "--data", str(EXAMPLES / "pairs.csv"), "--model", "medclip-phantom", "--model",
                 "medclip-phantom-grounding", "--out", str(out), "--bootstrap", "50", "--workers", "0",
                 "--relevance", "labels"])
    answer = json.loads(capsys.readouterr().out)
    assert code == 0 and answer["models"] == ["medclip-phantom", "medclip-phantom-grounding"]
    assert sorted(p.name for p in out.iterdir()) == ["evaluation.csv", "evaluation.html", "evaluation.json"]
    assert list(answer["comparisons"]) == ["medclip-phantom vs medclip-phantom-grounding"]
    assert answer["retrieval"]["medclip-phantom"]["relevance"] == "same label set"
    assert main(["eval", "--data", str(tmp_path / "nothing.csv")]) == 2
    assert "neither a CSV file nor a folder" in capsys.readouterr().err


def test_evaluation_runs_take_only_evaluation_flags(tmp_path) -> None:
    from medclip_core.train.evaluations import evaluation_request
    from medclip_core.train.runs import run_command

    request = evaluation_request("eval-1", EXAMPLES / "labels.csv", ["medclip-phantom", "biomedclip"],
                                 ["classification"], bootstrap=200, threshold=0.3)
    command = run_command(request, tmp_path / "run")
    assert command[command.index("eval"):] == [
        "eval", "--data", str(EXAMPLES / "labels.csv"), "--model", "medclip-phantom", "--model", "biomedclip",
        "--tasks", "classification", "--bootstrap", "200", "--uncertain", "ignore", "--threshold", "0.3",
        "--device", "cpu", "--out", str(tmp_path / "run")]
    request.extra_args += ["--out", "/etc"]
    with pytest.raises(TaskInputError, match="Unknown evaluation option"):
        run_command(request, tmp_path / "run")
    with pytest.raises(TaskInputError, match="not found"):
        run_command(evaluation_request("eval-2", tmp_path / "none.csv", ["medclip-phantom"]), tmp_path / "run")


def test_server_sets_and_uploads_resolve_inside_their_folders(tmp_path, monkeypatch) -> None:
    import zipfile

    from medclip_core.train.evaluations import import_evaluation_upload, resolve_evaluation_data, server_sets

    runs = tmp_path / "runs"
    with pytest.raises(TaskInputError, match="MEDCLIP_GALLERY_ROOT"):
        monkeypatch.delenv("MEDCLIP_GALLERY_ROOT", raising=False)
        resolve_evaluation_data("labels.csv", runs)
    shutil.copytree(EXAMPLES, tmp_path / "served" / "chest")
    monkeypatch.setenv("MEDCLIP_GALLERY_ROOT", str(tmp_path / "served"))
    assert server_sets() == [f"chest/{name}.csv" for name in
                             ("boxes", "example_report/evaluation", "labels", "masks", "pairs")]
    assert resolve_evaluation_data("chest/labels.csv", runs) == (tmp_path / "served" / "chest" / "labels.csv")
    with pytest.raises(TaskInputError, match="must lie inside"):
        resolve_evaluation_data("../served/../x.csv", runs)
    archive = tmp_path / "set.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(EXAMPLES / "pairs.csv", "pairs.csv")
        zf.write(EXAMPLES / "images" / "0000.png", "images/0000.png")
    name, labelled = import_evaluation_upload([archive], runs)
    assert len(labelled.images) == 1 and labelled.to_dict()["problem_counts"] == {"missing_file": 11}
    assert resolve_evaluation_data(name, runs).is_dir()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("notes.txt", "no table here")
    with pytest.raises(TaskInputError, match="no CSV"):
        import_evaluation_upload([archive], runs)
    assert len(list((runs / "eval-datasets").iterdir())) == 1  # the refused upload left nothing behind
