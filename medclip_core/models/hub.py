"""Finding hub models offline first, and failing fast with instructions when they are not there.

Every hub model is looked up in the local Hugging Face cache (``HF_HOME``) before any network
use. When it is not cached, the hub is probed once per process with a short TCP connect; an
unreachable hub or ``HF_HUB_OFFLINE=1`` turns into :class:`ModelUnavailableError` within
seconds, with the ways to make the model available, instead of a hanging download.
"""
from __future__ import annotations

import functools
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from medclip_core.errors import ModelUnavailableError

HUB_PROBE_TIMEOUT_S = 3.0


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


@functools.lru_cache(maxsize=1)
def hub_reachable() -> bool:
    """One short TCP connect to the hub endpoint (``HF_ENDPOINT`` or huggingface.co), cached."""
    if hub_offline():
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname or "huggingface.co", port), timeout=HUB_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def cached_snapshot(repo_id: str, required_file: str) -> Path | None:
    """The local snapshot folder of ``repo_id`` if ``required_file`` is in the cache, else None."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, required_file)
    if isinstance(found, str):
        return Path(found).parent
    return None


def hub_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def unavailable_message(name: str, repo_id: str) -> str:
    reason = "HF_HUB_OFFLINE is set" if hub_offline() else "the Hugging Face hub cannot be reached from this machine"
    return (
        f"Model '{name}' ({repo_id}) is not in the local cache and {reason}. "
        f"To use it: on a machine with internet run `huggingface-cli download {repo_id}` and copy the cache "
        f"to this machine's HF_HOME (now {hub_cache_dir()}), or save the model to a folder and load it as "
        f"'local-dir:/path/to/folder'."
    )


def locate(name: str, repo_id: str, required_file: str) -> Path | str:
    """A local snapshot path if cached; the repo id if it can be downloaded; else raise."""
    snapshot = cached_snapshot(repo_id, required_file)
    if snapshot is not None:
        return snapshot
    if hub_reachable():
        return repo_id
    raise ModelUnavailableError(unavailable_message(name, repo_id))


def availability(repo_id: str, required_file: str) -> str:
    """'cached', 'downloadable' or 'unavailable' (no network used beyond the cached probe)."""
    if cached_snapshot(repo_id, required_file) is not None:
        return "cached"
    return "downloadable" if hub_reachable() else "unavailable"
