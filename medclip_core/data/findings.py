"""The one finding vocabulary: the labels, how reports phrase them, and the named subsets each job uses.

``FINDINGS`` are the labels :mod:`medclip_core.data.reports` maps the Open-i MeSH terms to and the
phantom renderer draws; models, metrics and caches index labels by its order, so it never changes
order. ``LABEL_SYNONYMS`` writes each label the way Indiana University reports write it (the
prompts of CheXzero-style zero-shot scoring and the phrases of segmentation training);
``LABEL_PRESETS`` are the label lists a user picks from (CLI ``--preset``, the Diagnose tab).
"""
from __future__ import annotations

# The label set, in a fixed order (models and metrics index labels by this order).
FINDINGS: tuple[str, ...] = (
    "normal",
    "cardiomegaly",
    "pleural effusion",
    "opacity",
    "atelectasis",
    "nodule",
    "calcified granuloma",
    "pneumothorax",
    "edema",
    "hyperinflation",
    "devices",
    "scoliosis",
    "degenerative spine",
    "tortuous aorta",
    "aortic calcification",
    "hilar prominence",
    "fracture",
    "low lung volumes",
    "elevated diaphragm",
    "scarring",
    "interstitial markings",
    "hiatal hernia",
)
# The label of a study without findings (a report whose MeSH terms name none gets it too).
NORMAL = "normal"
# Labels that mean "a normal study" in the label sets users type (ours and CheXpert's).
NORMAL_LABELS: frozenset[str] = frozenset({NORMAL, "no finding"})
# Every finding but "normal": the ones that have a mask (segmentation targets, in FINDINGS order).
SEGMENTED_FINDINGS: tuple[str, ...] = tuple(f for f in FINDINGS if f != NORMAL)
# Findings drawn as a localised density, for which a box is a fair grounding target (pointing
# game of the phantom and grounding evaluations), in the order their results are reported.
GROUNDING_FINDINGS: tuple[str, ...] = tuple(
    f for f in ("nodule", "opacity", "pleural effusion", "atelectasis", "calcified granuloma", "pneumothorax")
    if f in FINDINGS)
# The focal findings segmentation training renders in extra variants and reports validation Dice
# for (where masks matter most); calcified granuloma, a few pixels wide, is left to the others.
SEGMENTATION_FOCUS_FINDINGS: frozenset[str] = frozenset(
    {"pleural effusion", "opacity", "atelectasis", "pneumothorax", "nodule"})
# Findings a report can put on one side; the others (heart, spine, whole lungs) take no side word.
SIDED_FINDINGS: frozenset[str] = frozenset({
    "pleural effusion", "opacity", "atelectasis", "nodule", "calcified granuloma", "pneumothorax",
    "scarring", "elevated diaphragm", "fracture", "hilar prominence"})

# Report phrases for each finding label of FINDINGS (1-3 each), and for the CheXpert labels.
LABEL_SYNONYMS: dict[str, tuple[str, ...]] = {
    "cardiomegaly": ("cardiomegaly", "enlarged cardiac silhouette", "enlarged heart size"),
    "pleural effusion": ("pleural effusion", "pleural fluid"),
    "opacity": ("airspace opacity", "focal consolidation", "airspace disease"),
    "atelectasis": ("atelectasis", "subsegmental atelectasis"),
    "nodule": ("pulmonary nodule", "nodular opacity", "lung mass"),
    "calcified granuloma": ("calcified granuloma", "granulomatous disease"),
    "pneumothorax": ("pneumothorax",),
    "edema": ("pulmonary edema", "vascular congestion"),
    "hyperinflation": ("hyperinflated lungs", "emphysema", "flattened diaphragms"),
    "devices": ("pacemaker", "central venous catheter", "sternotomy wires"),
    "scoliosis": ("scoliosis", "curvature of the thoracic spine"),
    "degenerative spine": ("degenerative changes of the thoracic spine", "spondylosis"),
    "tortuous aorta": ("tortuous aorta", "ectatic aorta"),
    "aortic calcification": ("aortic calcification", "atherosclerotic aorta"),
    "hilar prominence": ("hilar prominence", "hilar adenopathy"),
    "fracture": ("rib fracture", "fracture"),
    "low lung volumes": ("low lung volumes",),
    "elevated diaphragm": ("elevated hemidiaphragm",),
    "scarring": ("scarring", "pulmonary scarring"),
    "interstitial markings": ("increased interstitial markings", "interstitial opacities"),
    "hiatal hernia": ("hiatal hernia",),
    # CheXpert label names (lower case) in report language
    "enlarged cardiomediastinum": ("enlarged cardiomediastinal silhouette", "widened mediastinum"),
    "lung opacity": ("airspace opacity", "lung opacity"),
    "lung lesion": ("lung nodule", "lung mass"),
    "consolidation": ("consolidation", "focal consolidation"),
    "pneumonia": ("pneumonia", "infiltrate"),
    "pleural other": ("pleural thickening", "pleural scarring"),
    "support devices": ("support devices", "pacemaker", "central venous catheter"),
}
# Short forms people type besides the report wording.
SHORT_FORMS: dict[str, tuple[str, ...]] = {
    "pleural effusion": ("effusion",), "opacity": ("opacity", "consolidation"), "nodule": ("nodule",),
    "calcified granuloma": ("granuloma",), "edema": ("edema",)}

# Label lists a user can pick instead of typing labels.
LABEL_PRESETS: dict[str, tuple[str, ...]] = {
    "CheXpert findings": (
        "no finding", "enlarged cardiomediastinum", "cardiomegaly", "lung opacity", "lung lesion", "edema",
        "consolidation", "pneumonia", "atelectasis", "pneumothorax", "pleural effusion", "pleural other",
        "fracture", "support devices"),
    "Phantom findings": (
        "normal", "cardiomegaly", "pleural effusion", "opacity", "atelectasis", "nodule", "calcified granuloma",
        "pneumothorax", "edema", "hyperinflation", "devices", "scoliosis"),
}
DEFAULT_PRESET = "Phantom findings"


def finding_phrases(finding: str) -> list[tuple[str, str]]:
    """(phrase, side) pairs that name ``finding``: its report synonyms and short forms, each also with
    "left", "right" and "bilateral" when the finding has a side; side is "" for the plain phrase."""
    names = list(dict.fromkeys(LABEL_SYNONYMS.get(finding, (finding,)) + SHORT_FORMS.get(finding, ())))
    sides = ("", "left", "right", "bilateral") if finding in SIDED_FINDINGS else ("",)
    return [((f"{side} {name}" if side else name), side) for side in sides for name in names]
