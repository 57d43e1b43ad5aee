"""The out-of-distribution guard: phantom radiographs in, other DICOMs and photos out, in every result."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from medclip_core.io import image_from_array, load_image
from medclip_core.models import load_model
from medclip_core.models.ood import OUT_MESSAGE, OodVerdict, fit_reference, load_reference, ood_verdict

EXAMPLES = Path(__file__).resolve().parents[1] / "assets" / "examples"
NON_CHEST_DICOMS = ("MR_small.dcm", "CT_small.dcm", "6154")  # a brain MR, a CT, a CR of the cervical spine


@pytest.fixture(scope="module")
def default_model():
    return load_model("medclip-phantom", device="cpu")


def photo():
    import skimage.data

    return image_from_array(skimage.data.astronaut())


def verdict_of(model, image) -> OodVerdict:
    return ood_verdict(model, model.encode_image([image]))


def test_phantom_radiographs_are_within_and_other_images_are_not(default_model) -> None:
    assert default_model.ood_reference is not None
    for path in [*sorted((EXAMPLES / "phantom").glob("[0-9]*.png")), EXAMPLES / "phantom_effusion.dcm"]:
        verdict = verdict_of(default_model, load_image(path))
        assert verdict.in_distribution is True and verdict.score <= verdict.threshold, (path.name, verdict)
    for name in NON_CHEST_DICOMS:
        verdict = verdict_of(default_model, load_image(get_testdata_file(name)))
        assert verdict.in_distribution is False and verdict.score > verdict.threshold, (name, verdict)
        assert verdict.message == OUT_MESSAGE
    assert verdict_of(default_model, photo()).in_distribution is False


def test_every_image_result_carries_the_verdict(default_model, tmp_path: Path) -> None:
    from medclip_core.tasks.diagnose import diagnose
    from medclip_core.tasks.grounding import ground
    from medclip_core.tasks.segmentation import segment

    mr = load_image(get_testdata_file("MR_small.dcm"))
    diagnosis = diagnose(mr, ["pleural effusion", "nodule"], model="medclip-phantom")
    assert diagnosis.ood.in_distribution is False
    saved = json.loads(Path(diagnosis.save(tmp_path)["json"]).read_text())
    assert saved["ood"] == diagnosis.to_dict()["ood"] == diagnosis.ood.to_dict()
    assert set(saved["ood"]) == {"in_distribution", "score", "threshold", "message"}
    chest = load_image(EXAMPLES / "phantom" / "002.png")
    for result in (ground(chest, ["pleural effusion"], model=default_model),
                   segment(chest, ["pleural effusion"], model=default_model, method="trained")):
        assert result.to_dict()["ood"]["in_distribution"] is True
    assert segment(mr, ["nodule"], model=default_model).to_dict()["ood"]["in_distribution"] is False


def test_image_retrieval_carries_the_verdict(default_model) -> None:
    from medclip_core.data.galleries import collection_from_spec
    from medclip_core.tasks.retrieval import build_index, search_image, search_text

    index = build_index(default_model, collection_from_spec("phantom:8"))
    result = search_image(default_model, index, load_image(get_testdata_file("CT_small.dcm")), k=3)
    assert result.to_dict()["ood"]["in_distribution"] is False
    assert search_text(default_model, index, "pleural effusion", k=3).to_dict()["ood"] is None  # no image


def test_the_cli_prints_the_verdict() -> None:
    from tests.test_cli import run_cli

    result = run_cli("zero-shot", get_testdata_file("CT_small.dcm"), "--labels", "nodule")
    assert result.returncode == 0, result.stderr
    verdict = json.loads(result.stdout)["ood"]
    assert verdict["in_distribution"] is False and verdict["message"] == OUT_MESSAGE


def test_a_model_without_reference_says_so(open_clip_dir) -> None:
    model = load_model(f"local-dir:{open_clip_dir}", device="cpu")
    verdict = verdict_of(model, load_image(EXAMPLES / "phantom" / "002.png"))
    assert verdict.to_dict() == {"in_distribution": None, "score": None, "threshold": None,
                                 "message": "no reference for this model"}


def test_fitted_reference_flags_far_points_and_survives_saving(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    scales = np.linspace(0.2, 2.0, 16)  # an anisotropic cloud: Mahalanobis, not Euclidean, distance matters
    train, val = rng.normal(size=(2000, 16)) * scales, rng.normal(size=(2000, 16)) * scales
    reference = fit_reference(train, val, quantile=0.99)
    fresh = rng.normal(size=(4000, 16)) * scales
    assert 0.003 < float((reference.distances(fresh) > reference.threshold).mean()) < 0.03
    along_wide_axis, along_narrow_axis = np.zeros(16), np.zeros(16)
    along_wide_axis[-1], along_narrow_axis[0] = 4.0, 4.0  # same Euclidean distance from the mean
    assert reference.verdict(along_wide_axis).in_distribution is True
    assert reference.verdict(along_narrow_axis).in_distribution is False
    loaded = load_reference(reference.save(tmp_path).parent)
    assert loaded.threshold == pytest.approx(reference.threshold)
    np.testing.assert_allclose(loaded.distances(fresh[:50]), reference.distances(fresh[:50]), rtol=1e-4)
    assert load_reference(tmp_path / "elsewhere") is None


def test_diagnose_tab_warns_for_a_non_chest_dicom_in_a_browser(app_url) -> None:
    from playwright.sync_api import expect

    from tests.test_browser import browser_page

    with browser_page(app_url) as page:
        page.get_by_role("tab", name="Diagnose").click()
        page.locator("#diagnose-upload input[type=file]").set_input_files(get_testdata_file("MR_small.dcm"))
        page.get_by_role("button", name="Diagnose", exact=True).click()
        expect(page.locator("#diagnose-ood")).to_contain_text("does not look like the images this model was trained on",
                                                              timeout=60_000)
        expect(page.locator("#diagnose-chart")).to_contain_text("meaningless")  # the chart's title
