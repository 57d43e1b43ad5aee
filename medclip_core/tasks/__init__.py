"""What users do with a model: zero-shot diagnosis, retrieval, grounding, segmentation, reports.

Tasks take a :class:`~medclip_core.models.ClipModel` and plain arrays or strings and return result
dataclasses; they never read files or widgets, so the app, the CLI and the evaluation share them.
"""
