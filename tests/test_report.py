"""Report drafts with the embedded model: retrieval, the shipped decoder, its training, CLI and endpoint."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medclip_core.data.findings import FINDINGS
from medclip_core.errors import ModelUnavailableError
from medclip_core.io import load_image
from medclip_core.models import load_model
from medclip_core.tasks.report import contradicts, decoder_for, draft_report, sentence_corpus

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "assets" / "examples"
DECODER_DIR = ROOT / "assets" / "medclip-phantom" / "report"


@pytest.fixture(scope="module")
def phantom_model():
    return load_model("medclip-phantom")


@pytest.fixture(scope="module")
def colour_photo(tmp_path_factory) -> Path:
    """A colour picture that is no radiograph: a sky-to-grass gradient with a red disc."""
    yy, xx = np.mgrid[0:120, 0:160]
    rgb = np.zeros((120, 160, 3), np.uint8)
    rgb[..., 2] = np.where(yy < 70, 230, 40)
    rgb[..., 1] = np.where(yy < 70, 160, 170)
    rgb[((xx - 110) ** 2 + (yy - 35) ** 2) < 300] = (220, 30, 30)
    path = tmp_path_factory.mktemp("photo") / "garden.png"
    Image.fromarray(rgb).save(path)
    return path


def test_retrieval_draft_has_no_contradictions_or_duplicates(phantom_model) -> None:
    corpus = {s.text: s for s in sentence_corpus()}
    for name in ("000.png", "002.png", "005.png"):
        draft = draft_report(load_image(EXAMPLES / "phantom" / name), "retrieval", phantom_model, k=5)
        texts = [s.text for s in draft.sentences]
        assert len(texts) == 6 and len(set(texts)) == 6
        assert [s.section for s in draft.sentences] == ["findings"] * 5 + ["impression"]
        labels = [corpus[t].labels for t in texts]
        assert not any(contradicts(a, b) for i, a in enumerate(labels) for b in labels[i + 1:])
        assert draft.ood.in_distribution is True
        assert draft.text.startswith("FINDINGS: ") and "IMPRESSION: " in draft.text


def test_retrieval_finds_the_effusion_of_the_effusion_example(phantom_model) -> None:
    draft = draft_report(load_image(EXAMPLES / "phantom_effusion.dcm"), "retrieval", phantom_model)
    assert "pleural effusion" in draft.findings["positive"] + draft.findings["uncertain"]


def test_retrieval_states_only_findings_the_image_supports(phantom_model) -> None:
    from medclip_core.errors import TaskInputError
    from medclip_core.tasks.zero_shot import zero_shot

    image = load_image(EXAMPLES / "phantom" / "002.png")
    draft = draft_report(image, "retrieval", phantom_model, k=5, support=0.6)
    stated = set(draft.findings["positive"] + draft.findings["uncertain"]) - {"normal"}
    scores = dict(zip(FINDINGS, zero_shot(phantom_model, image, FINDINGS).probabilities))
    assert "pleural effusion" in stated and all(scores[f] >= 0.6 for f in stated), (stated, scores)
    with pytest.raises(TaskInputError, match="support"):
        draft_report(image, "retrieval", phantom_model, support=1.5)


def test_non_radiograph_gets_an_answer_and_the_out_of_distribution_warning(phantom_model, colour_photo) -> None:
    draft = draft_report(load_image(colour_photo), "retrieval", phantom_model)
    assert draft.sentences and draft.ood.in_distribution is False
    assert draft.to_dict()["ood"]["message"].startswith("This image does not look like")


@pytest.mark.skipif(not (DECODER_DIR / "report_decoder.safetensors").is_file(), reason="no shipped decoder")
def test_shipped_decoder_writes_a_report(phantom_model, colour_photo) -> None:
    draft = draft_report(load_image(EXAMPLES / "phantom" / "002.png"), "generative", phantom_model)
    assert draft.method == "generative" and len(draft.sentences) >= 2
    assert all(-1 <= s.similarity <= 1 for s in draft.sentences)
    assert sum(len(s.text.split()) for s in draft.sentences) <= 110  # the length limit
    odd = draft_report(load_image(colour_photo), "generative", phantom_model)
    assert odd.ood.in_distribution is False and odd.sentences
    from medclip_core.data.labeller import label_text

    for name in ("001.png", "005.png", "008.png"):  # the pneumothorax example used to say "no pneumothorax" too
        readings = [label_text(s.text) for s in draft_report(load_image(EXAMPLES / "phantom" / name), "generative",
                                                             phantom_model).sentences]
        assert not any(contradicts(a, b) for i, a in enumerate(readings) for b in readings[i + 1:]), name


@pytest.mark.skipif(not (DECODER_DIR / "report_decoder.safetensors").is_file(), reason="no shipped decoder")
def test_shipped_decoder_states_what_its_diagnosis_prompts_say(phantom_model) -> None:
    """The cardiomegaly example is prompted with cardiomegaly and its draft says so. Prompted with
    'pleural effusion' alone, the drafts of at least four of the six examples without an effusion
    state one (the image still pulls some back to normal: README); prompted 'normal', none does."""
    import torch

    from medclip_core.data.labeller import label_text
    from medclip_core.tasks.report import write_report_ids
    from medclip_core.tasks.report_features import encode_for_report

    decoder = decoder_for(phantom_model, "medclip-phantom")
    draft = draft_report(load_image(EXAMPLES / "phantom" / "001.png"), "generative", phantom_model)
    assert "cardiomegaly" in draft.prompted and "cardiomegaly" in label_text(draft.text).present()
    names = ("000", "001", "003", "004", "006", "007")
    features = encode_for_report(phantom_model, [load_image(EXAMPLES / "phantom" / f"{n}.png") for n in names])
    stated = {"pleural effusion": 0, "normal": 0}
    for i in range(len(names)):
        pooled, patches = (torch.from_numpy(a[i:i + 1]) for a in features)
        for finding in stated:
            present = torch.tensor([[name == finding for name in decoder.findings]])
            text = " ".join(decoder.vocab.decode(write_report_ids(decoder, pooled, patches, present)))
            stated[finding] += "pleural effusion" in label_text(text).present()
    assert stated["pleural effusion"] >= 4 and stated["normal"] == 0, stated


def test_the_grounding_model_keeps_its_own_decoders() -> None:
    """medclip-phantom-grounding (the first release, moved) drafts with its own report decoder and
    outlines with its own segmentation decoder; the default's decoders would not match its weights."""
    from medclip_core.tasks.segmentation import segment

    model = load_model("medclip-phantom-grounding")
    assert model.card.name == "medclip-phantom-grounding"
    image = load_image(EXAMPLES / "phantom" / "001.png")
    draft = draft_report(image, "generative", model)
    assert draft.sentences and "cardiomegaly" in draft.prompted
    masks = segment(image, ["cardiomegaly"], model=model, method="trained").masks
    assert masks.shape == (1, 224, 224) and masks.any()
    with pytest.raises(ModelUnavailableError):
        decoder_for(model, "medclip-phantom")


def test_decoder_refuses_a_model_it_was_not_trained_on(open_clip_dir) -> None:
    with pytest.raises(ModelUnavailableError, match="no trained report decoder"):
        decoder_for(load_model(f"local-dir:{open_clip_dir}"), f"local-dir:{open_clip_dir}")


def test_two_step_decoder_training_lowers_loss_and_reloads(tmp_path) -> None:
    import torch

    from medclip_core.models.report_decoder import load_decoder
    from medclip_core.train.report import ReportTrainConfig, train_report_decoder

    config = ReportTrainConfig(out_dir=str(tmp_path / "run"), limit_reports=8, phantom_variants=1, val_reports=4,
                               max_steps=2, batch_size=8, lr=2e-3, warmup_steps=1, log_every=1, checkpoint_every=1,
                               image_token_dropout=0.0, label_smoothing=0.0, width=64, layers=1, heads=2)
    result = train_report_decoder(config, log=lambda line: None)
    losses = [row["loss"] for row in result.metrics]
    assert len(losses) == 2 and losses[1] < losses[0]
    decoder = load_decoder(tmp_path / "run")
    assert decoder.info["step"] == 2 and decoder.base_model == "medclip-phantom"
    assert decoder.findings == FINDINGS and all(0 < t <= 1.01 for t in decoder.thresholds)
    with pytest.raises(ValueError, match="finding decisions"):  # a prompted decoder needs its prompts
        decoder.module.memory(torch.zeros(1, 256), torch.zeros(1, 49, 256))
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "run" / "report_decoder.safetensors"))
    assert all(torch.equal(saved[k], v) for k, v in decoder.module.state_dict().items())
    # the same command with more steps resumes at step 2
    lines: list[str] = []
    config.max_steps = 3
    resumed = train_report_decoder(config, log=lines.append)
    assert any("resuming at step 2" in line for line in lines) and [r["step"] for r in resumed.metrics] == [3]


def test_f1_thresholds_pick_the_separating_cut() -> None:
    from medclip_core.train.report import f1_thresholds

    probabilities = np.array([[0.9, 0.2], [0.7, 0.1], [0.3, 0.15], [0.1, 0.05]])
    labels = np.array([[1, 0], [1, 0], [0, 0], [0, 0]], dtype=np.float32)
    thresholds, micro_f1 = f1_thresholds(probabilities, labels)
    assert 0.3 < thresholds[0] <= 0.7 and (probabilities[:, 1] < thresholds[1]).all() and micro_f1 == 1.0
    # a finding whose calls cost more than they find is switched off
    noisy = np.array([[0.9, 0.5], [0.8, 0.9], [0.2, 0.8], [0.1, 0.7]])
    truth = np.array([[1, 1], [1, 0], [0, 0], [0, 0]], dtype=np.float32)
    thresholds, micro_f1 = f1_thresholds(noisy, truth)
    assert (noisy[:, 1] < thresholds[1]).all() and micro_f1 == pytest.approx(0.8)


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "medclip_core", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)


def test_cli_report_and_bad_input(tmp_path) -> None:
    done = _cli("report", str(EXAMPLES / "phantom" / "002.png"), "--k", "3")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["method"] == "retrieval" and len(result["sentences"]) == 4 and result["text"]
    bad = tmp_path / "x.png"
    bad.write_bytes(b"not an image")
    done = _cli("report", str(bad))
    assert done.returncode == 2 and done.stderr.startswith("error:") and len(done.stderr.strip().splitlines()) == 1
    done = _cli("report", str(EXAMPLES / "phantom" / "002.png"), "--k", "40")
    assert done.returncode == 2 and "k must be" in done.stderr


@pytest.fixture(scope="module")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False)


def test_report_endpoint(client, colour_photo) -> None:
    from gradio_client import handle_file

    preview, caution, draft, table, result, ood = client.predict(
        handle_file(str(EXAMPLES / "phantom" / "002.png")), "retrieval", 4, "medclip-phantom", api_name="/report")
    assert result["method"] == "retrieval" and len(result["sentences"]) == 5 and not caution
    assert result["ood"]["in_distribution"] is True and "⚠️" not in ood
    assert draft.startswith("FINDINGS:") and "IMPRESSION:" in draft
    assert [row[1] for row in table["value"]["data"]] == [s["text"] for s in result["sentences"]]
    _, caution, draft, _, result, ood = client.predict(handle_file(str(colour_photo)), "retrieval", 4,
                                                       "medclip-phantom", api_name="/report")
    assert draft and "does not look like the images this model was trained on" in ood
    _, caution, draft, _, result, _ = client.predict(handle_file(str(EXAMPLES / "phantom" / "001.png")), "generative", 4,
                                                  "medclip-phantom", api_name="/report")
    assert result["method"] == "generative" and "cardiomegaly" in result["prompted_findings"]
    assert "prompted to report:" in caution and "cardiomegaly (" in caution and draft.startswith("FINDINGS:")
    with pytest.raises(Exception, match="upload an image"):
        client.predict(None, "retrieval", 4, "medclip-phantom", api_name="/report")


def test_selecting_a_sentence_shows_its_heatmap() -> None:
    import gradio as gr

    from pages.report import _selected_sentence_heatmap

    path = str(EXAMPLES / "phantom_effusion.dcm")
    row = ["findings", "Small right pleural effusion.", 0.31, "pleural effusion"]
    event = gr.SelectData(None, {"index": [0, 1], "value": row[1], "row_value": row})
    overlay, caption = _selected_sentence_heatmap(path, "medclip-phantom", event)
    assert overlay.size == load_image(path).to_pil().size and "Small right pleural effusion." in caption
    with pytest.raises(gr.Error, match="upload an image"):
        _selected_sentence_heatmap(None, "medclip-phantom", event)
