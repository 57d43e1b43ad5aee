"""MedCLIP Explorer core: load CLIP-style medical vision-language models and run tasks on them.

Nothing in this package imports Gradio; the app in ``app.py``/``pages/`` and the CLI in
``__main__.py`` are thin layers over it.
"""
from medclip_core.errors import ImageLoadError, MedclipError, ModelUnavailableError, TaskInputError

__all__ = ["ImageLoadError", "MedclipError", "ModelUnavailableError", "TaskInputError"]
