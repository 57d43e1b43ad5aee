"""What users do with a model: zero-shot diagnosis, retrieval, grounding, segmentation, reports.

Tasks take a :class:`~medclip_core.models.ClipModel` and plain arrays or strings and return result
dataclasses; they never read files or widgets, so the app, the CLI and the evaluation share them.
"""

from typing import Any, Callable, Iterable, Sequence

import numpy as np

from medclip_core.errors import MedclipError, TaskInputError


def check_text_items(items: Iterable[str], *, noun: str, max_items: int, max_chars: int, example: str) -> list[str]:
    """User-typed labels or phrases: whitespace collapsed, blanks and repeats dropped; an empty list, more
    than ``max_items`` or one longer than ``max_chars`` is refused with a message naming ``noun``."""
    cleaned: list[str] = []
    for raw in items:
        item = " ".join((raw or "").split())
        if item and item not in cleaned:
            cleaned.append(item)
    if not cleaned:
        raise TaskInputError(f"Enter at least one {noun} (one per line), e.g. '{example}'.")
    if len(cleaned) > max_items:
        raise TaskInputError(f"{len(cleaned)} {noun}s given; at most {max_items} at once.")
    too_long = next((item for item in cleaned if len(item) > max_chars), None)
    if too_long is not None:
        raise TaskInputError(f"Keep each {noun} to at most {max_chars} characters; "
                             f"'{too_long[:40]}…' has {len(too_long)}.")
    return cleaned


def embed_in_batches(encode: Callable[[list], Any], inputs: Sequence, batch_size: int,
                     progress: Callable[[int, int], Any] | None = None) -> np.ndarray:
    """``encode`` (a model's ``encode_image`` or ``encode_text``) over ``inputs`` in batches -> (N, D) numpy.

    ``inputs`` may hold callables (item loaders), called only for the batch being encoded, so a
    large gallery is never held in memory at once. ``progress(done, total)`` follows each batch.
    """
    if batch_size < 1:
        raise MedclipError("batch_size must be at least 1.")
    chunks = []
    for start in range(0, len(inputs), batch_size):
        batch = [x() if callable(x) else x for x in inputs[start:start + batch_size]]
        chunks.append(encode(batch).float().cpu().numpy())
        if progress is not None:
            progress(min(start + batch_size, len(inputs)), len(inputs))
    return np.concatenate(chunks)
