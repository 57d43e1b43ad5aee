"""The Indiana University chest X-ray report corpus (Open-i), parsed into findings we can render.

The 3,955 reports ship inside the installed ``torchxrayvision`` package as
``data/NLMCXR_reports.tgz`` (licence CC BY-NC-ND 4.0), so they are read from there at run time
and never copied into this repository. Each report carries free text (FINDINGS, IMPRESSION) and
curated MeSH terms such as ``Opacity/lung/base/left`` or ``Cardiomegaly/mild``: a head term, then
qualifiers for place, side and severity. The phantom renderer draws exactly what these terms name,
so the mapping from MeSH head to our finding label lives here, in one documented table.

Only the curated ``major`` MeSH terms are used. The ``automatic`` terms are machine-extracted,
carry no location and mostly repeat the major ones (they also pick up hedges such as "mass
lesion" from "may represent ... mass lesion"), so they would add noise, not information.
"""
from __future__ import annotations

import functools
import importlib.util
import random
import re
import tarfile
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from medclip_core.data.findings import FINDINGS, NORMAL

# MeSH head term (lower case) -> finding label(s). Heads whose meaning depends on the qualifiers
# (e.g. "Lung/hypoinflation" vs "Lung/hyperdistention") are in QUALIFIED_MESH below instead.
MESH_TO_FINDING: dict[str, tuple[str, ...]] = {
    # heart
    "cardiomegaly": ("cardiomegaly",),
    "enlarged heart": ("cardiomegaly",),
    "pericardial effusion": ("cardiomegaly",),  # seen on a radiograph as an enlarged silhouette
    "cardiomyopathy, dilated": ("cardiomegaly",),
    # pleura
    "pleural effusion": ("pleural effusion",),
    "pleural effusions": ("pleural effusion",),
    "hemothorax": ("pleural effusion",),
    "empyema": ("pleural effusion",),
    "pneumothorax": ("pneumothorax",),
    "hydropneumothorax": ("pleural effusion", "pneumothorax"),
    "hemopneumothorax": ("pleural effusion", "pneumothorax"),
    # airspace
    "opacity": ("opacity",),
    "airspace disease": ("opacity",),
    "consolidation": ("opacity",),
    "infiltrate": ("opacity",),
    "pneumonia": ("opacity",),
    "pneumonitis": ("opacity",),
    "lung diseases": ("opacity",),
    "pulmonary atelectasis": ("atelectasis",),
    "atelectasis": ("atelectasis",),
    # focal lesions
    "nodule": ("nodule",),
    "mass": ("nodule",),
    "multiple pulmonary nodules": ("nodule",),
    "solitary pulmonary nodule": ("nodule",),
    "lung neoplasms": ("nodule",),
    "calcified granuloma": ("calcified granuloma",),
    "granuloma": ("calcified granuloma",),
    "granulomas": ("calcified granuloma",),
    "granulomatous disease": ("calcified granuloma",),
    "cicatrix": ("scarring",),
    "scar": ("scarring",),
    "scars": ("scarring",),
    # fluid / interstitium
    "pulmonary edema": ("edema",),
    "edema": ("edema",),
    "pulmonary congestion": ("edema",),
    "lung diseases, interstitial": ("interstitial markings",),
    "pulmonary fibrosis": ("interstitial markings",),
    "fibrosis": ("interstitial markings",),
    # volume
    "emphysema": ("hyperinflation",),
    "pulmonary emphysema": ("hyperinflation",),
    "pulmonary disease, chronic obstructive": ("hyperinflation",),
    "lung, hyperlucent": ("hyperinflation",),
    "bullous emphysema": ("hyperinflation",),
    "diaphragmatic eventration": ("elevated diaphragm",),
    # hilum / vessels
    "lymphadenopathy": ("hilar prominence",),
    "pulmonary artery": ("hilar prominence",),
    "hypertension, pulmonary": ("hilar prominence",),
    "aortic aneurysm": ("tortuous aorta",),
    "ectasia": ("tortuous aorta",),
    "atherosclerosis": ("aortic calcification",),
    # devices (anything man-made the report names)
    "catheters, indwelling": ("devices",),
    "catheterization, central venous": ("devices",),
    "central venous catheter": ("devices",),
    "catheters": ("devices",),
    "catheter": ("devices",),
    "surgical instruments": ("devices",),
    "implanted medical device": ("devices",),
    "medical device": ("devices",),
    "tube, inserted": ("devices",),
    "pacemaker, artificial": ("devices",),
    "defibrillators": ("devices",),
    "stents": ("devices",),
    "stent": ("devices",),
    "sutures": ("devices",),
    "clip": ("devices",),
    "surgical clip": ("devices",),
    "sternotomy": ("devices",),  # seen as sternal wires
    "foreign bodies": ("devices",),
    "heart valve prosthesis": ("devices",),
    "tracheostomy": ("devices",),
    "spinal fusion": ("devices",),  # fixation hardware
    # bones
    "scoliosis": ("scoliosis",),
    "spondylosis": ("degenerative spine",),
    "thoracic spondylosis": ("degenerative spine",),
    "osteophyte": ("degenerative spine",),
    "spinal osteophytosis": ("degenerative spine",),
    "kyphosis": ("degenerative spine",),
    "hyperostosis, diffuse idiopathic skeletal": ("degenerative spine",),
    "fractures, bone": ("fracture",),
    "rib fractures": ("fracture",),
    "spinal fractures": ("fracture",),
    "hernia, hiatal": ("hiatal hernia",),
}

# Heads whose label depends on a qualifier: head -> ((qualifier, label), ...); first match wins,
# no match means the term is ignored (e.g. "Lung/azygos lobe", a normal variant).
QUALIFIED_MESH: dict[str, tuple[tuple[str, str], ...]] = {
    "lung": (("hypoinflation", "low lung volumes"), ("hyperdistention", "hyperinflation"),
             ("hilum", "hilar prominence"), ("interstitial", "interstitial markings")),
    "markings": (("interstitial", "interstitial markings"),
                 ("bronchovascular", "interstitial markings")),
    "diaphragm": (("elevated", "elevated diaphragm"), ("flattened", "hyperinflation")),
    "costophrenic angle": (("blunted", "pleural effusion"),),  # blunting = small effusion
    "cardiac shadow": (("enlarged", "cardiomegaly"),),
    "density": (("lung", "opacity"), ("retrocardiac", "opacity")),
    "calcinosis": (("aorta", "aortic calcification"), ("aorta, thoracic", "aortic calcification"), ("lung", "calcified granuloma"),
                   ("lymph nodes", "calcified granuloma"), ("mediastinum", "calcified granuloma")),
    "aorta": (("tortuous", "tortuous aorta"), ("prominent", "tortuous aorta")),
    "aorta, thoracic": (("tortuous", "tortuous aorta"), ("prominent", "tortuous aorta")),
    "thoracic vertebrae": (("degenerative", "degenerative spine"),),
    "spine": (("degenerative", "degenerative spine"),),
    "arthritis": (("spine", "degenerative spine"),),
    "deformity": (("ribs", "fracture"), ("clavicle", "fracture"), ("thoracic vertebrae", "degenerative spine")),
    "thickening": (("pleura", "scarring"),),  # pleural thickening drawn as a pleural scar
    "lymph nodes": (("enlarged", "hilar prominence"),),
}

# Ignored on purpose (no rendering counterpart, or not a finding): "No Indexing", "Technical
# Quality of Image Unsatisfactory" (the renderer reads it to degrade exposure, it is no label),
# osteopenia/"Bone Diseases, Metabolic", shoulder/abdominal terms, "Mediastinum/prominent",
# "Lucency", "Hypoventilation", post-surgical terms without hardware. A report whose terms all
# fall here gets the label NORMAL ("normal"), as does the explicit MeSH "normal".

SIDES = {"left": "left", "right": "right", "bilateral": "bilateral"}
ZONES = {
    "upper lobe": "upper", "middle lobe": "middle", "lower lobe": "lower", "base": "base",
    "apex": "apex", "lingula": "lingula", "retrocardiac": "retrocardiac", "hilum": "hilum",
    "costophrenic angle": "base", "paratracheal": "paratracheal", "mediastinum": "mediastinum",
    "thoracic vertebrae": "spine", "lumbar vertebrae": "spine", "spine": "spine",
    "ribs": "ribs", "clavicle": "clavicle", "sternum": "sternum", "abdomen": "abdomen",
    "aortic valve": "heart", "heart": "heart", "trachea": "trachea", "trachea, carina": "trachea",
}
SEVERITIES = ("borderline", "mild", "small", "moderate", "large", "severe")


@dataclass(frozen=True)
class Finding:
    """One abnormality a MeSH term names, with the place and degree it gives."""

    label: str
    side: str | None
    zone: str | None
    severity: str | None
    mesh: str


@dataclass(frozen=True)
class Report:
    """One radiology report: its free text, its MeSH terms and the findings mapped from them."""

    report_id: str
    findings_text: str
    impression_text: str
    mesh: tuple[str, ...]
    findings: tuple[Finding, ...]

    @property
    def text(self) -> str:
        parts = [f"FINDINGS: {self.findings_text}" if self.findings_text else "",
                 f"IMPRESSION: {self.impression_text}" if self.impression_text else ""]
        return " ".join(p for p in parts if p)

    @property
    def labels(self) -> frozenset[str]:
        return frozenset(f.label for f in self.findings) or frozenset({NORMAL})

    def sentences(self) -> list[str]:
        """The report's sentences (findings then impression), without list numbering."""
        out = []
        for block in (self.findings_text, self.impression_text):
            for piece in re.split(r"(?<=[.!?])\s+", block):
                piece = re.sub(r"^\d+\.\s*", "", piece).strip()
                if piece and not re.fullmatch(r"\d+\.?", piece):
                    out.append(piece)
        return out


def _normalise(text: str | None) -> str:
    return re.sub(r"\s+", " ", text or "").strip()


def parse_mesh(term: str) -> tuple[Finding, ...]:
    """Map one MeSH term (``Head/qualifier/...``) to the findings it names; () if ignored."""
    parts = [p.strip().lower() for p in term.split("/") if p.strip()]
    if not parts:
        return ()
    head, qualifiers = parts[0], parts[1:]
    labels = MESH_TO_FINDING.get(head, ())
    if not labels:
        for qualifier, label in QUALIFIED_MESH.get(head, ()):
            if qualifier in qualifiers:
                labels = (label,)
                break
    side = next((SIDES[q] for q in qualifiers if q in SIDES), None)
    zone = next((ZONES[q] for q in qualifiers if q in ZONES), None)
    severity = next((q for q in qualifiers if q in SEVERITIES), None)
    return tuple(Finding(label, side, zone, severity, term.strip()) for label in labels)


def parse_report_xml(xml_text: str | bytes, fallback_id: str = "") -> Report:
    """Parse one Open-i XML report into a ``Report``."""
    root = ET.fromstring(xml_text)
    sections = {el.get("Label", "").upper(): _normalise(el.text) for el in root.iter("AbstractText")}
    uid = root.find("uId")
    report_id = uid.get("id") if uid is not None and uid.get("id") else fallback_id
    mesh_el = root.find("MeSH")
    mesh = tuple(_normalise(el.text) for el in (mesh_el if mesh_el is not None else ())
                 if el.tag == "major" and _normalise(el.text))
    findings: list[Finding] = []
    seen: set[tuple] = set()
    for term in mesh:
        for finding in parse_mesh(term):
            key = (finding.label, finding.side, finding.zone)
            if key not in seen:  # one finding per label and place
                seen.add(key)
                findings.append(finding)
    return Report(report_id, sections.get("FINDINGS", ""), sections.get("IMPRESSION", ""),
                  mesh, tuple(findings))


def torchxrayvision_data_file(name: str) -> Path:
    """A file of the installed torchxrayvision package's ``data`` folder (read there, never copied)."""
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("torchxrayvision is not installed; `pip install torchxrayvision`.")
    return Path(spec.origin).parent / "data" / name


def reports_archive() -> Path:
    """Where the installed torchxrayvision package keeps the Open-i report archive."""
    return torchxrayvision_data_file("NLMCXR_reports.tgz")


@functools.lru_cache(maxsize=1)
def _load_reports_tuple() -> tuple[Report, ...]:
    reports = []
    with tarfile.open(reports_archive()) as archive:
        members = sorted((m for m in archive.getmembers() if m.isfile() and m.name.endswith(".xml")),
                         key=lambda m: int(re.sub(r"\D", "", Path(m.name).stem) or 0))
        for member in members:
            report = parse_report_xml(archive.extractfile(member).read(), Path(member.name).stem)
            if report.findings_text or report.impression_text:
                reports.append(report)
    return tuple(reports)


def load_reports() -> list[Report]:
    """All Open-i reports with FINDINGS or IMPRESSION text, in report-number order.

    Of the 3,955 reports, 28 have neither section and are skipped: 3,927 remain.
    The parse is cached; each call returns a fresh list over the same immutable reports.
    """
    return list(_load_reports_tuple())


def report_splits(reports: list[Report], seed: int = 0,
                  fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> dict[str, list[Report]]:
    """Split reports into train/val/test by report, shuffled with ``seed`` (reproducible)."""
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise ValueError("fractions must be three non-negative numbers that sum to 1.")
    order = sorted(reports, key=lambda r: r.report_id)
    random.Random(seed).shuffle(order)
    n_train = round(fractions[0] * len(order))
    n_val = round(fractions[1] * len(order))
    return {"train": order[:n_train], "val": order[n_train:n_train + n_val],
            "test": order[n_train + n_val:]}


def corpus_stats(reports: list[Report], seed: int = 0) -> dict:
    """Counts per label overall and per split, label multiplicity, sides, and text lengths."""
    def label_counts(rs: list[Report]) -> dict[str, int]:
        counts = Counter(label for r in rs for label in r.labels)
        return {label: counts.get(label, 0) for label in FINDINGS}

    splits = report_splits(reports, seed)
    sides = Counter(f.side or "unspecified" for r in reports for f in r.findings)
    n_labels = Counter(len(r.labels - {NORMAL}) for r in reports)
    return {
        "n_reports": len(reports),
        "labels": label_counts(reports),
        "splits": {name: {"n_reports": len(rs), "labels": label_counts(rs)}
                   for name, rs in splits.items()},
        "abnormal_labels_per_report": {str(k): v for k, v in sorted(n_labels.items())},
        "finding_sides": dict(sides),
        "mean_words_per_report": round(sum(len(r.text.split()) for r in reports)
                                       / max(len(reports), 1), 1),
    }
