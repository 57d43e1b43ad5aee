"""The names this package takes from the retrieval task, imported in this one place.

``medclip_core.tasks.retrieval`` is being split (galleries, model fingerprint + disk cache, index and
search); when those names move, only these imports change.
"""
from medclip_core.tasks.retrieval import (  # noqa: F401  (re-exported for the index package)
    IMAGE_SUFFIXES,
    MAX_K,
    RetrievalHit,
    RetrievalResult,
    model_fingerprint,
    text_exceeds_context,
)

__all__ = ["IMAGE_SUFFIXES", "MAX_K", "RetrievalHit", "RetrievalResult", "model_fingerprint", "text_exceeds_context"]
