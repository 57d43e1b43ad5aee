"""A rule-based labeller: report text -> our finding labels, with negation and uncertainty.

In the spirit of the CheXpert / NegBio labellers, kept small and readable: each finding of
``FINDINGS`` has a list of mention patterns written the way the Open-i reports phrase it
(``MENTIONS``); each mention found in a sentence is then classified

* **negative** when a negation cue ("no", "without", "free of", "negative for", "resolved" ...)
  precedes it in the same clause ("no pneumothorax, effusion or consolidation" negates all three)
  or a post-negation follows it ("effusion has resolved", "is not seen");
* **uncertain** when a hedge precedes it ("possible", "may represent", "questionable", "cannot be
  excluded" after it ...);
* **positive** otherwise.

A finding positive in one sentence and negative in another counts as positive (a report that says
"no effusion on the right" and "small left effusion" has an effusion). ``normal`` is positive
when no abnormal finding is positive or uncertain, as in the MeSH mapping of
:mod:`medclip_core.data.reports`. How well this agrees with the curated MeSH labels of the real
reports is measured by :func:`medclip_core.eval.report_eval.labeller_agreement`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from medclip_core.data.findings import FINDINGS, NORMAL

_SIZE = r"(?:(?:mildly|moderately|markedly|severely|slightly|minimally|borderline|somewhat|massively)\s+)?"

# Finding -> regular expressions of its mentions (lower-case text, whole words).
MENTIONS: dict[str, tuple[str, ...]] = {
    "cardiomegaly": (
        r"cardiomegaly", r"enlarged (?:heart|cardiac|cardiomediastinal)", r"enlargement of the (?:heart|cardiac)",
        r"(?:heart|cardiac silhouette|cardiac shadow|heart size|cardiac size|cardiomediastinal silhouette)"
        rf"(?: size)? (?:is |are |appears |remains |appear )?{_SIZE}(?:enlarged|increased|large|prominent)",
        r"pericardial effusion", r"cardiac enlargement", r"heart size is at the upper limits",
    ),
    "pleural effusion": (
        r"(?<!pericardial )effusions?", r"pleural fluid", r"blunt(?:ing|ed) (?:of )?(?:the )?(?:left |right |bilateral )?"
        r"(?:lateral |posterior )?costophrenic", r"costophrenic (?:angle |sulcus )?blunting", r"hemothorax", r"empyema",
    ),
    "opacity": (
        r"(?<!nodular )(?<!interstitial )(?<!reticular )(?<!calcified )opacit(?:y|ies)", r"consolidat(?:ion|ions|ive)",
        r"infiltrates?", r"air ?space (?:disease|opacit(?:y|ies)|process)", r"pneumonia", r"pneumonitis",
        r"(?<!calcified )(?<!nodular )densit(?:y|ies)",
    ),
    "atelectasis": (r"atelecta(?:sis|ses|tic)", r"volume loss", r"collapse"),
    "nodule": (r"nodules?", r"nodular (?:opacit(?:y|ies)|densit(?:y|ies))", r"masse?s?",
               r"neoplasm", r"malignan(?:cy|t)", r"metasta(?:sis|ses|tic)"),
    "calcified granuloma": (r"granulomas?", r"granulomata", r"granulomatous", r"calcified (?:nodules?|nodes?|lymph nodes?"
                            r"|densit(?:y|ies)|foc(?:us|i)|opacit(?:y|ies))"),
    "pneumothorax": (r"pneumothora(?:x|ces)",),
    "edema": (r"edema", r"(?:vascular|pulmonary|venous) congestion", r"congestive", r"cephalization",
              r"congestive heart failure", r"\bchf\b"),
    "hyperinflation": (r"hyperinflat(?:ion|ed)", r"hyperexpan(?:sion|ded)", r"emphysema(?:tous)?", r"\bcopd\b",
                       r"chronic obstructive", r"flatten(?:ed|ing) (?:of )?(?:the )?(?:hemi)?diaphragms?",
                       r"hyperlucen(?:t|cy)", r"hyperaerat(?:ion|ed)", r"bullae|bullous"),
    "devices": (r"pacemaker", r"pacer", r"catheters?", r"\bpicc\b", r"port-?a-?cath", r"(?:chest|power) port",
                r"sternotomy", r"sternal wires?", r"(?:surgical )?clips?", r"stents?", r"(?:endotracheal|chest|feeding|"
                r"nasogastric|tracheostomy) tube", r"central (?:venous )?line", r"defibrillator", r"\baicd\b",
                r"prosthe(?:sis|tic)", r"hardware", r"fixation", r"valve replacement", r"sutures?", r"leads?\b",
                r"cabg", r"tracheostomy", r"foreign bod(?:y|ies)", r"stimulator", r"(?:spinal|cervical) fusion"),
    "scoliosis": (r"scolio(?:sis|tic)", r"(?:levo|dextro)(?:scoliosis|curvature)", r"(?:spine|spinal) curvature", r"curvature of the (?:thoracic |thoracolumbar )?spine"),
    "degenerative spine": (r"degenerative", r"spondylo(?:sis|tic)", r"osteophyt(?:e|es|osis)", r"kyphos(?:is|tic)",
                           r"kyphotic", r"\bdish\b", r"arthritic", r"arthritis", r"disc space narrowing"),
    "tortuous aorta": (r"tortu(?:ous|osity)", r"ectati?c", r"ectasia", r"aneurysm(?:al)?", r"unfold(?:ed|ing)",
                       r"(?:prominent|dilated|widened) (?:thoracic )?aort(?:a|ic)"),
    "aortic calcification": (r"aortic (?:arch |knob )?calcifications?", r"calcifi(?:ed|cation of the) (?:thoracic )?"
                             r"(?:aorta|aortic)", r"atherosclero(?:sis|tic)", r"calcified (?:aortic )?knob"),
    "hilar prominence": (r"hilar (?:prominence|enlargement|adenopathy|fullness|lymphadenopathy|mass)",
                         r"(?:prominent|enlarged|full|bulky) (?:bilateral )?(?:left |right )?hil(?:a|um|ar)",
                         r"lymphadenopathy", r"adenopathy", r"pulmonary arter(?:y|ies) (?:is |are )?"
                         rf"{_SIZE}(?:enlarged|prominent|dilated)", r"pulmonary (?:arterial )?hypertension"),
    "fracture": (r"fractures?", r"fractured", r"\bfx\b"),
    "low lung volumes": (r"low (?:lung )?volumes?", r"hypoinflat(?:ion|ed)", r"lung volumes (?:are )?"
                         rf"{_SIZE}(?:low|decreased|diminished)", r"(?:shallow|poor) inspiration"),
    "elevated diaphragm": (r"elevat(?:ed|ion of the) (?:left |right )?(?:hemi)?diaphragm",
                           r"(?:hemi)?diaphragm (?:is |remains )?" + _SIZE + r"elevated", r"eventration"),
    "scarring": (r"scar(?:s|ring)?", r"cicatri", r"fibrotic", r"pleural thickening", r"pleural-parenchymal"),
    "interstitial markings": (r"interstitial", r"fibrosis", r"reticular", r"reticulonodular", r"bronchovascular crowding",
                              r"(?:increased|prominent|coarse|coarsened) (?:bronchovascular |lung |pulmonary )?markings"),
    "hiatal hernia": (r"hiatal hernia", r"hiatus hernia"),
}

# Negation cues: before the mention (scope until a clause break), or just after it.
PRE_NEGATION = re.compile(
    r"\b(?:no|not|without|negative for|free of|clear of|absence of|absent|resolution of|resolved|"
    r"rule out|ruled out|removal of|removed|no evidence of|no convincing|no definite|nor|neither)\b")
POST_NEGATION = re.compile(
    r"^\W*(?:\w+\W+){0,3}?(?:(?:is|are|has|have|was|were)\s+(?:not|no longer)\b|(?:has|have)\s+resolved\b|"
    r"resolved\b|absent\b|not (?:seen|identified|present|visualized|evident)\b|cleared\b)")
# Hedges: before the mention (same clause), or after it.
PRE_UNCERTAIN = re.compile(
    r"\b(?:may|might|possible|possibly|probable|probably|likely|suspect(?:ed)?|suspicious for|questionable|"
    r"question of|concerning for|worrisome for|suggest(?:s|ive of|ing)?|could|differential|versus|vs|cannot|"
    r"can not|can't|equivocal|borderline|not excluded|indeterminate|uncertain)\b")
POST_UNCERTAIN = re.compile(
    r"^\W*(?:\w+\W+){0,4}?(?:(?:cannot|can not|can't) be (?:excluded|ruled out)|not excluded|(?:is|are) (?:not )?"
    r"(?:likely|possible|suspected)|versus|vs\b|\?)")
# Words that end the scope of a preceding cue.
CLAUSE_BREAK = re.compile(r"\b(?:but|however|although|though|except|aside from|apart from|there (?:is|are)|which|"
                          r"with|otherwise|yet|and (?:the|a|an|mild|small|moderate|large)|unchanged|stable)\b|[;:]")

_COMPILED = {label: [re.compile(rf"\b{p}") for p in patterns] for label, patterns in MENTIONS.items()}
_SENTENCES = re.compile(r"(?<=[.!?])\s+|\n+")


@dataclass(frozen=True)
class Mention:
    """One finding mention: where it is, and how the sentence qualifies it."""

    label: str
    sentence: int
    text: str
    status: str  # "positive", "negative" or "uncertain"


@dataclass(frozen=True)
class TextLabels:
    """The labeller's reading of one text."""

    positive: frozenset[str]
    uncertain: frozenset[str]
    negative: frozenset[str]
    mentions: tuple[Mention, ...] = field(default=())

    def present(self, uncertain_as_positive: bool = True) -> frozenset[str]:
        """Findings the text reports (``normal`` when there are none): the labels scoring compares."""
        found = self.positive | (self.uncertain if uncertain_as_positive else frozenset())
        return found or frozenset({NORMAL})

    def to_dict(self) -> dict:
        order = {label: i for i, label in enumerate(FINDINGS)}
        ordered = lambda labels: sorted(labels, key=order.get)  # noqa: E731
        return {"positive": ordered(self.positive), "uncertain": ordered(self.uncertain),
                "negative": ordered(self.negative),
                "mentions": [m.__dict__ for m in self.mentions]}


def split_sentences(text: str) -> list[str]:
    """Sentences of a report text, lower-cased, section headers removed."""
    text = re.sub(r"\b(?:findings|impression)\s*:", " ", text.lower())
    return [s.strip() for s in _SENTENCES.split(text) if s.strip(" .")]


def _status(sentence: str, start: int, end: int) -> str:
    before = sentence[:start]
    breaks = list(CLAUSE_BREAK.finditer(before))
    clause = before[breaks[-1].end():] if breaks else before
    after = sentence[end:]
    if PRE_NEGATION.search(clause) or POST_NEGATION.search(after):
        return "negative"
    if PRE_UNCERTAIN.search(clause) or POST_UNCERTAIN.search(after):
        return "uncertain"
    return "positive"


def mentions(text: str) -> list[Mention]:
    """Every finding mention in ``text`` with its status, in reading order."""
    found = []
    for number, sentence in enumerate(split_sentences(text)):
        for label, patterns in _COMPILED.items():
            for pattern in patterns:
                for match in pattern.finditer(sentence):
                    found.append(Mention(label, number, match.group(0), _status(sentence, match.start(), match.end())))
    return found


def label_text(text: str) -> TextLabels:
    """Positive, uncertain and negative findings of a report text (see the module docstring)."""
    found = mentions(text or "")
    status: dict[str, set[str]] = {}
    for mention in found:
        status.setdefault(mention.label, set()).add(mention.status)
    positive = frozenset(label for label, s in status.items() if "positive" in s)
    uncertain = frozenset(label for label, s in status.items() if "uncertain" in s) - positive
    negative = frozenset(status) - positive - uncertain
    return TextLabels(positive, uncertain, negative, tuple(found))
