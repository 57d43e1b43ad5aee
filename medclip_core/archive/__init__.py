"""The hospital's image archive: DICOMweb in, DICOM SR and SEG back, whole studies at once.

* :mod:`~medclip_core.archive.config`: the host's settings (environment only) and policy.
* :mod:`~medclip_core.archive.client`: QIDO-RS / WADO-RS / STOW-RS through ``dicomweb-client``.
* :mod:`~medclip_core.archive.sr`: TID 1500 findings SR and text SR of a draft report (highdicom).
* :mod:`~medclip_core.archive.writeback`: fetch -> diagnose -> store SR / SEG, confirmed by QIDO-RS.
* :mod:`~medclip_core.archive.jobs`: zero-shot over a study, series or folder, in the background,
  resumable from files.
* :mod:`~medclip_core.archive.audit`: the JSON-lines audit trail (UIDs, never identifiers).

See ``docs/archive.md`` for how a host connects the app.
"""
