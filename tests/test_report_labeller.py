"""The rule-based finding labeller and the report scores, on hand-written text with known answers."""
from __future__ import annotations

import math

import pytest

from medclip_core.data.findings import FINDINGS
from medclip_core.data.labeller import label_text
from medclip_core.eval.report_metrics import corpus_bleu, finding_f1, rouge_l, words
from medclip_core.tasks.report import CorpusSentence, contradicts, select_sentences
from medclip_core.tasks.retrieval import labels_in_text


@pytest.mark.parametrize("text, positive, uncertain, negative", [
    ("No pleural effusion.", set(), set(), {"pleural effusion"}),
    ("Small left pleural effusion.", {"pleural effusion"}, set(), set()),
    ("No pneumothorax, pleural effusion, or focal consolidation.", set(), set(),
     {"pneumothorax", "pleural effusion", "opacity"}),
    ("There is no pneumothorax but there is a large pleural effusion.", {"pleural effusion"}, set(), {"pneumothorax"}),
    ("Possible right lower lobe pneumonia.", set(), {"opacity"}, set()),
    ("Left basilar atelectasis cannot be excluded.", set(), {"atelectasis"}, set()),
    ("The pleural effusion has resolved.", set(), set(), {"pleural effusion"}),
    ("The heart is mildly enlarged. Lungs are clear without infiltrate.", {"cardiomegaly"}, set(), {"opacity"}),
    ("Heart size is normal. The lungs are clear.", set(), set(), set()),
    ("Stable calcified granuloma in the right upper lobe. Degenerative changes of the spine.",
     {"calcified granuloma", "degenerative spine"}, set(), set()),
    ("Lungs are hyperinflated. Left-sided pacemaker in place.", {"hyperinflation", "devices"}, set(), set()),
])
def test_labeller_on_hand_written_sentences(text, positive, uncertain, negative) -> None:
    labels = label_text(text)
    assert (set(labels.positive), set(labels.uncertain), set(labels.negative)) == (positive, uncertain, negative)


def test_present_labels_normal_and_uncertain() -> None:
    assert label_text("No acute cardiopulmonary abnormality. No pneumothorax.").present() == {"normal"}
    assert label_text("Possible small effusion.").present() == {"pleural effusion"}
    assert label_text("Possible small effusion.").present(uncertain_as_positive=False) == {"normal"}
    # positive in one sentence wins over negative in another
    assert label_text("No right effusion. Small left pleural effusion.").positive == {"pleural effusion"}


def test_labels_in_text_uses_the_labeller() -> None:
    assert labels_in_text("possible pneumothorax") == {"pneumothorax"}
    assert labels_in_text("pleural effusion has resolved") == frozenset()


def test_bleu_and_rouge_known_values() -> None:
    assert words("FINDINGS: No effusion. IMPRESSION: Normal.") == ["no", "effusion", "normal"]
    same = corpus_bleu(["the lungs are clear today"], ["the lungs are clear today"])
    assert all(math.isclose(v, 1.0) for v in same.values())
    short = corpus_bleu(["the cat sat"], ["the cat sat on the mat"])  # precision 1, brevity exp(1 - 6/3)
    assert math.isclose(short["bleu_1"], math.exp(-1)) and math.isclose(short["bleu_3"], math.exp(-1))
    assert corpus_bleu(["the cat"], ["the cat sat on the mat"])["bleu_3"] == 0.0
    # LCS "a c" of "a b c" and "a c d": P = R = 2/3 -> F = 2/3
    assert math.isclose(rouge_l("a b c", "a c d"), 2 / 3)
    assert rouge_l("x y", "a b") == 0.0 and rouge_l("", "a") == 0.0


def test_finding_f1_known_values() -> None:
    predicted = [{"normal"}, {"cardiomegaly", "pleural effusion"}, {"opacity"}]
    true = [{"normal"}, {"cardiomegaly"}, {"pleural effusion"}]
    scores = finding_f1(predicted, true, FINDINGS)
    # tp 2 (normal, cardiomegaly), fp 2 (effusion in 2, opacity in 3), fn 1 (effusion in 3)
    assert math.isclose(scores["micro_f1"], 4 / 7)
    assert scores["per_label"]["cardiomegaly"] == 1.0 and scores["per_label"]["opacity"] == 0.0
    assert math.isclose(scores["macro_f1"], (1 + 1 + 0) / 3)  # normal, cardiomegaly, effusion have support


def _sentence(text: str, section: str = "findings") -> CorpusSentence:
    return CorpusSentence(text, section, 1, label_text(text))


def test_selection_skips_contradictions_and_orders_sections() -> None:
    corpus = [_sentence("No acute disease.", "impression"), _sentence("Small left pleural effusion."),
              _sentence("No pleural effusion."), _sentence("Heart size is normal."),
              _sentence("Left effusion, possibly loculated.", "impression")]
    assert contradicts(corpus[1].labels, corpus[2].labels) and not contradicts(corpus[1].labels, corpus[3].labels)
    import numpy as np

    rows = select_sentences(np.array([0.9, 0.8, 0.7, 0.6, 0.5]), k=3, impression_k=1, corpus=corpus)
    assert rows == [1, 3, 0]  # "No pleural effusion." contradicts the effusion; impression comes last
