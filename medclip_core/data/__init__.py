"""Data for MedCLIP Explorer: the finding vocabulary, the Open-i report corpus and the phantom chest X-ray set
rendered from it."""
from medclip_core.data.findings import FINDINGS
from medclip_core.data.phantom import PhantomDataset, PhantomSample, phantom_dataset, render, write_examples
from medclip_core.data.reports import (
    MESH_TO_FINDING,
    Finding,
    Report,
    corpus_stats,
    load_reports,
    report_splits,
)

__all__ = ["FINDINGS", "MESH_TO_FINDING", "Finding", "PhantomDataset", "PhantomSample", "Report",
           "corpus_stats", "load_reports", "phantom_dataset", "render", "report_splits", "write_examples"]
