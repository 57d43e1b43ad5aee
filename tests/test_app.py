"""The app through a real client: launch on a free local port, call the endpoints, close."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"


@pytest.fixture(scope="module")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False)


def test_inspect_endpoint_png(client, tmp_path_factory) -> None:
    from gradio_client import handle_file

    png = tmp_path_factory.mktemp("app") / "x.png"
    Image.fromarray(np.tile(np.arange(0, 250, 5, dtype=np.uint8), (30, 1))).save(png)
    preview, metadata, *_ = client.predict(handle_file(str(png)), -1, api_name="/inspect")
    assert metadata["format"] == "PNG" and metadata["width"] == 50 and metadata["height"] == 30
    assert np.asarray(Image.open(preview)).shape[:2] == (30, 50)


def test_inspect_endpoint_dicom(client) -> None:
    from gradio_client import handle_file

    preview, metadata, *_ = client.predict(handle_file(get_testdata_file("MR_small.dcm")), -1, api_name="/inspect")
    assert metadata["format"] == "DICOM" and metadata["modality"] == "MR"
    assert "PatientName" not in str(metadata)
    assert Image.open(preview).size == (64, 64)


def test_inspect_endpoint_bad_file_gives_readable_error(client, tmp_path_factory) -> None:
    from gradio_client import handle_file

    bad = tmp_path_factory.mktemp("bad") / "scan.dcm"
    bad.write_bytes(b"\x00" * 10)
    with pytest.raises(Exception) as info:
        client.predict(handle_file(str(bad)), -1, api_name="/inspect")
    assert "image" in str(info.value).lower()
    # the app is still alive afterwards
    _, metadata, *_ = client.predict(handle_file(get_testdata_file("MR_small.dcm")), -1, api_name="/inspect")
    assert metadata["modality"] == "MR"


EXAMPLES = Path(__file__).resolve().parents[1] / "assets" / "examples"


def test_zero_shot_endpoint_with_png_and_dicom(client, open_clip_dir) -> None:
    from gradio_client import handle_file

    model = f"local-dir:{open_clip_dir}"
    for example in (EXAMPLES / "phantom" / "002.png", EXAMPLES / "phantom_effusion.dcm"):
        plot, table, result, _ = client.predict(
            handle_file(str(example)), "Phantom findings", "", "pairwise", model, "(none)", 0, api_name="/zero_shot")
        assert result["labels"][:3] == ["normal", "cardiomegaly", "pleural effusion"]
        probabilities = result["scores"][model]
        assert len(probabilities) == 12 and all(0 <= p <= 1 for p in probabilities)
        assert result["prompts"]["pleural effusion"]["negative"] and result["negatives"] == "negated"
    _, _, result, _ = client.predict(handle_file(str(EXAMPLES / "phantom" / "002.png")), "Phantom findings", "", "pairwise",
                                  model, "(none)", 0, "normal", api_name="/zero_shot")
    assert result["negatives"] == "normal" and "normal study" in result["notes"][0]
    assert result["prompts"]["pleural effusion"]["negative"] == result["prompts"]["nodule"]["negative"]
    _, _, result, _ = client.predict(handle_file(str(EXAMPLES / "phantom" / "000.png")), "Phantom findings",
                                  "effusion\nnodule", "softmax", model, "(none)", 0, api_name="/zero_shot")
    assert result["labels"] == ["effusion", "nodule"] and abs(sum(result["scores"][model]) - 1) < 1e-4


def test_zero_shot_endpoint_rejects_missing_image(client, open_clip_dir) -> None:
    with pytest.raises(Exception, match="upload an image"):
        client.predict(None, "Phantom findings", "", "pairwise", f"local-dir:{open_clip_dir}", "(none)", 0,
                       api_name="/zero_shot")


def test_retrieve_endpoint_text_and_image(client, open_clip_dir) -> None:
    from gradio_client import handle_file

    model = f"local-dir:{open_clip_dir}"
    gallery, table, summary, result, _ = client.predict("text → images", "pleural effusion", None, "phantom:10", 4, model,
                                                     api_name="/retrieve")
    assert len(result["hits"]) == 4 and gallery.count("<img src=\"data:image/jpeg;base64,") == 4
    scores = [hit["score"] for hit in result["hits"]]
    assert scores == sorted(scores, reverse=True)
    assert "Precision@4" in summary
    _, _, _, result, _ = client.predict("image → images", "", handle_file(str(EXAMPLES / "phantom_effusion.dcm")),
                                     "phantom:10", 3, model, api_name="/retrieve")
    assert result["query_kind"] == "image" and len(result["hits"]) == 3
    with pytest.raises(Exception, match="only serves the phantom gallery"):
        client.predict("text → images", "effusion", None, "/etc", 3, model, api_name="/retrieve")


def test_embedding_map_endpoint(client, open_clip_dir) -> None:
    plot, summary, result = client.predict("phantom:8", "pca", "label", f"local-dir:{open_clip_dir}",
                                           api_name="/embedding_map")
    assert result["n_images"] == 8 and result["n_texts"] == 8 and len(result["points"]) == 16
    assert "Modality gap" in summary and result["modality_gap"] > 0


def test_heatmap_endpoint_with_dicom_several_phrases_and_methods(client, open_clip_dir) -> None:
    from gradio_client import handle_file

    gallery, result, files, _ = client.predict(
        handle_file(str(EXAMPLES / "phantom_effusion.dcm")), "pleural effusion\nnodule", ["similarity", "gradcam"],
        0.6, "medclip-phantom", api_name="/heatmap")
    assert len(gallery) == 4                                  # 2 phrases x 2 methods
    assert [m["method"] for m in result["methods"]] == ["similarity", "gradcam"]
    assert all(m["size"] == [224, 224] for m in result["methods"])
    assert sorted(Path(f).suffix for f in files) == [".json"] * 2 + [".npy"] * 2 + [".png"] * 8
    maps = np.load(next(f for f in files if f.endswith("similarity-heatmaps.npy")))
    assert maps.shape == (2, 224, 224) and maps.min() >= 0 and maps.max() <= 1
    saved = json.loads(Path(next(f for f in files if f.endswith("gradcam-heatmap.json"))).read_text())
    assert saved == result["methods"][1]
    overlay = Image.open(next(f for f in files if f.endswith("similarity-overlay-1.png")))
    assert overlay.size == (224, 224) and overlay.mode == "RGB"
    _, result, _, _ = client.predict(handle_file(str(EXAMPLES / "phantom" / "002.png")), "nodule", ["relevance"],
                                     0.5, f"local-dir:{open_clip_dir}", api_name="/heatmap")
    assert result["methods"][0]["method"] == "relevance"


def test_heatmap_endpoint_explains_bad_requests(client) -> None:
    from gradio_client import handle_file

    image = handle_file(str(EXAMPLES / "phantom" / "002.png"))
    with pytest.raises(Exception, match="at least one phrase"):
        client.predict(image, "  ", ["similarity"], 0.5, "medclip-phantom", api_name="/heatmap")
    with pytest.raises(Exception, match="at most 16"):
        client.predict(image, "\n".join(f"finding {i}" for i in range(100)), ["similarity"], 0.5,
                       "medclip-phantom", api_name="/heatmap")
    with pytest.raises(Exception, match="class token"):
        client.predict(image, "nodule", ["relevance"], 0.5, "medclip-phantom", api_name="/heatmap")


def test_segment_endpoint_gives_masks_and_a_dicom_seg_for_a_dicom(client) -> None:
    import pydicom
    from gradio_client import handle_file

    annotated, result, files, _ = client.predict(handle_file(str(EXAMPLES / "phantom_effusion.dcm")),
                                              "pleural effusion\npneumothorax", "trained", "medclip-phantom",
                                              api_name="/segment")
    assert result["method"] == "trained" and result["phrases"] == ["pleural effusion", "pneumothorax"]
    assert len(annotated["annotations"]) == 2
    masks = [f for f in files if f.endswith(".png")]
    seg = pydicom.dcmread(next(f for f in files if f.endswith(".dcm")))
    assert len(masks) == 2 and seg.Modality == "SEG" and len(seg.SegmentSequence) == 2
    source = pydicom.dcmread(EXAMPLES / "phantom_effusion.dcm")  # a de-identified copy unless asked to keep
    assert seg.PatientIdentityRemoved == "YES" and seg.StudyInstanceUID != source.StudyInstanceUID
    assert seg.PatientID != source.PatientID
    _, _, files, _ = client.predict(handle_file(str(EXAMPLES / "phantom_effusion.dcm")), "pleural effusion", "trained",
                                    "medclip-phantom", True, api_name="/segment")
    kept = pydicom.dcmread(next(f for f in files if f.endswith(".dcm")))
    assert kept.StudyInstanceUID == source.StudyInstanceUID and kept.PatientID == source.PatientID
    _, result, files, _ = client.predict(handle_file(str(EXAMPLES / "phantom" / "002.png")), "pleural effusion",
                                      "zero-shot:similarity", "medclip-phantom", api_name="/segment")
    assert result["method"] == "zero-shot:similarity" and [Path(f).suffix for f in files] == [".json", ".png"]
    with pytest.raises(Exception, match="at least one phrase"):
        client.predict(handle_file(str(EXAMPLES / "phantom" / "002.png")), " ", "trained", "medclip-phantom",
                       api_name="/segment")


def test_both_embedded_models_get_the_synthetic_data_banner() -> None:
    from pages.common import banner_for

    for name in ("medclip-phantom", "medclip-phantom-grounding"):
        assert "not for diagnosis" in banner_for(name) and name in banner_for(name)
    for name in ("biomedclip", "local-dir:/no/such/folder"):
        assert "research use only" in banner_for(name)
