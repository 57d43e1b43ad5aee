"""What users do with a model: zero-shot diagnosis, retrieval, grounding, segmentation, reports.

Tasks take a :class:`~medclip_core.models.ClipModel` and plain arrays or strings and return result
dataclasses; they never read files or widgets, so the app, the CLI and the evaluation share them.
"""

from typing import Iterable

from medclip_core.errors import TaskInputError


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
