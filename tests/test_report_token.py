"""The corpus's de-identification token ("XXXX") never reaches a report draft, retrieved or generated.

The decoder learned from Open-i reports, whose de-identified words read ``XXXX``; on unusual inputs
(a shoulder MR, a CT slice) its beam and samples write it ("Lung xxxx xxxx opacities"). The inputs
below are ones where the decoder's raw candidates do hold the token, so the test fails if the
selection or the clean-up lets it through.
"""
from __future__ import annotations

import pytest
import torch
from pydicom.data import get_testdata_file

from medclip_core.data.phantom import phantom_dataset
from medclip_core.io import image_from_array, load_image
from medclip_core.models import load_model
from medclip_core.models.report_decoder import beam_search, sample_reports
from medclip_core.tasks.report import ANONYMISED, decoder_for, generated_draft, retrieval_draft
from medclip_core.tasks.report_features import encode_for_report

MODEL = "medclip-phantom"
PHANTOM_TEST_ROWS = (0, 22, 36)  # phantom test images whose decoder candidates hold the token


@pytest.fixture(scope="module")
def model_and_decoder():
    model = load_model(MODEL)
    return model, decoder_for(model, MODEL)


def _inputs():
    dataset = phantom_dataset("test")
    return [load_image(get_testdata_file("MR_small.dcm")), load_image(get_testdata_file("CT_small.dcm"))] + \
        [image_from_array(dataset[i].image) for i in PHANTOM_TEST_ROWS]


def _raw_candidates(decoder, pooled, patches) -> list[str]:
    """What the decoder writes before the draft's selection: its beam result and 16 samples."""
    pooled_t, patches_t = torch.from_numpy(pooled), torch.from_numpy(patches)
    _, present = decoder.diagnose(pooled_t, patches_t)
    with torch.inference_mode():
        memory = decoder.module.memory(pooled_t, patches_t, present)
        ids = [beam_search(decoder.module, memory, beam=3)] + [s for s, _ in sample_reports(decoder.module, memory, 16)]
    return [" ".join(decoder.vocab.decode(i)) for i in ids]


def test_no_draft_holds_the_deidentification_token(model_and_decoder) -> None:
    model, decoder = model_and_decoder
    raw_with_token = 0
    for image in _inputs():
        pooled, patches = encode_for_report(model, [image])
        raw_with_token += any(ANONYMISED in text.lower() for text in _raw_candidates(decoder, pooled, patches))
        generated = generated_draft(model, decoder, pooled[0], patches[0])
        retrieved = retrieval_draft(model, pooled[0], 4, 1, 1.0, 0.9)
        for draft in (generated, retrieved):
            assert draft.sentences, draft.notes
            assert ANONYMISED not in draft.text.lower(), draft.text
            assert all(ANONYMISED not in s.text.lower() for s in draft.sentences)
    assert raw_with_token >= 3  # the inputs do make the decoder write the token
