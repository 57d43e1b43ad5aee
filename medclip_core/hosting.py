"""Where the app runs: on this machine only (local) or for anyone who can reach it (public).

The app is public when it runs as a Hugging Face Space (``SPACE_ID`` is set) or listens beyond
loopback (``GRADIO_SERVER_NAME``, the address Gradio binds, is not 127.0.0.1 / localhost / ::1);
``MEDCLIP_PUBLIC=1`` or ``0`` overrides the guess (e.g. ``1`` behind a reverse proxy on loopback).
Everything is read from the environment on every call, so the mode is the one the server was
launched with and nothing here holds state.

Locally every feature is on. Public, the actions that spend the server's processes, disk or
trust (training, dataset uploads, ``local-dir:`` outside known folders) need the admin token
``MEDCLIP_ADMIN_TOKEN``: off when the host set none. Wherever a token is set it is required, in
both modes. Model size and upload size have a limit per mode (env overrides below).
"""
from __future__ import annotations

import hmac
import ipaddress
import os
from pathlib import Path
from typing import Any, Callable

from medclip_core.errors import AccessDeniedError, ModelUnavailableError

ADMIN_TOKEN_ENV = "MEDCLIP_ADMIN_TOKEN"
PUBLIC_ENV = "MEDCLIP_PUBLIC"
SERVER_NAME_ENV = "GRADIO_SERVER_NAME"
SPACE_ENV = "SPACE_ID"
MAX_PARAMS_ENV = "MEDCLIP_MAX_MODEL_PARAMS"
MODEL_DIRS_ENV = "MEDCLIP_MODEL_DIRS"
MAX_UPLOAD_ENV = "MEDCLIP_MAX_UPLOAD_MB"
# A public server builds at most a BiomedCLIP-sized model (196 M parameters) for a name outside the
# registry: a ViT-L (428 M, 1.7 GB in fp32) is refused. Locally the limit only stops typos.
PUBLIC_MAX_PARAMS = 300_000_000
LOCAL_MAX_PARAMS = 2_000_000_000
DEFAULT_MAX_UPLOAD_MB = 200
# Deeper stacks than any CLIP tower (ViT-bigG has 48 blocks) are refused before they are counted:
# even on the meta device, building a million blocks takes a long time.
MAX_MODEL_LAYERS = 96
DEPTH_KEYS = ("layers", "depth", "num_hidden_layers")
LOOPBACK_NAMES = ("localhost", "")


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    host = host.strip().strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it resolves to whatever the network says, treat it as reachable
        return False


def is_public(host: str | None = None) -> bool:
    """Whether strangers can reach the app: ``MEDCLIP_PUBLIC`` if set to 1/0, else a Space, else the
    listening address (``host``, or ``GRADIO_SERVER_NAME``; Gradio's default is 127.0.0.1)."""
    forced = os.environ.get(PUBLIC_ENV, "").strip().lower()
    if forced in ("1", "true", "yes", "on"):
        return True
    if forced in ("0", "false", "no", "off"):
        return False
    if os.environ.get(SPACE_ENV):
        return True
    return not is_loopback(host if host is not None else os.environ.get(SERVER_NAME_ENV, "127.0.0.1"))


def mode_name() -> str:
    return "public" if is_public() else "local"


def admin_token_set() -> bool:
    return bool(os.environ.get(ADMIN_TOKEN_ENV, ""))


def admin_actions_enabled() -> bool:
    """Training, dataset uploads and arbitrary ``local-dir:`` exist here at all: locally, or with a token set."""
    return admin_token_set() or not is_public()


def admin_token_needed() -> bool:
    """Whether an admin action must show a token (public servers, and wherever a token is set)."""
    return admin_token_set() or is_public()


def check_admin_token(token: str | None, action: str = "Training and dataset uploads") -> None:
    """Raise :class:`AccessDeniedError` unless ``action`` is allowed: a set token must match ``token``;
    with no token set the action is open locally and off on a public server."""
    expected = os.environ.get(ADMIN_TOKEN_ENV, "")
    if not expected:
        if is_public():
            raise AccessDeniedError(f"{action} are off on this public server: its host has not set "
                                    f"{ADMIN_TOKEN_ENV}.")
        return
    if not token:
        raise AccessDeniedError(f"{action} need the admin token on this server ({ADMIN_TOKEN_ENV} is set): "
                                "enter it first.")
    if not hmac.compare_digest(token.encode(), expected.encode()):
        raise AccessDeniedError("The admin token is wrong.")


def _int_env(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    try:
        return int(float(value)) if value else default
    except ValueError:
        raise ValueError(f"{name} must be a number, not {value!r}.") from None


def max_model_params() -> int:
    """The most parameters a model named outside the registry may have (``MEDCLIP_MAX_MODEL_PARAMS``)."""
    return _int_env(MAX_PARAMS_ENV, PUBLIC_MAX_PARAMS if is_public() else LOCAL_MAX_PARAMS)


def max_upload_bytes() -> int:
    """Gradio's ``max_file_size`` for every upload (``MEDCLIP_MAX_UPLOAD_MB``, default 200 MB)."""
    return _int_env(MAX_UPLOAD_ENV, DEFAULT_MAX_UPLOAD_MB) * 1024 ** 2


def extra_model_dirs() -> list[Path]:
    """Folders the host lets ``local-dir:`` read on a public server (``MEDCLIP_MODEL_DIRS``, os.pathsep-separated)."""
    return [Path(p).expanduser().resolve() for p in os.environ.get(MODEL_DIRS_ENV, "").split(os.pathsep) if p.strip()]


def is_within(path: Path, roots: list[Path]) -> bool:
    """Whether ``path`` (links and ``..`` resolved) is one of ``roots`` or lies under one."""
    resolved = Path(path).expanduser().resolve()
    return any(resolved == root or root in resolved.parents for root in (Path(r).resolve() for r in roots))


def _deepest(config: Any) -> int:
    """The largest layer count anywhere in a nested model config (a list of stage depths counts as its sum)."""
    if isinstance(config, dict):
        found = [_deepest(v) for v in config.values()]
        for key in DEPTH_KEYS:
            value = config.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                found.append(int(value))
            elif isinstance(value, list) and all(isinstance(v, int) for v in value):
                found.append(sum(value))
        return max(found, default=0)
    if isinstance(config, list):
        return max((_deepest(v) for v in config), default=0)
    return 0


def check_model_size(name: str, config: dict[str, Any], count_parameters: Callable[[], int], max_params: int) -> int:
    """Refuse model ``name`` when its config is deeper than :data:`MAX_MODEL_LAYERS` or
    ``count_parameters()`` (the caller counts without allocating, e.g. on the meta device) exceeds
    ``max_params``; returns the count."""
    depth = _deepest(config)
    if depth > MAX_MODEL_LAYERS:
        raise ModelUnavailableError(f"'{name}' asks for {depth} layers; this app builds at most {MAX_MODEL_LAYERS}.")
    count = count_parameters()
    if count > max_params:
        raise ModelUnavailableError(
            f"'{name}' has {count:,} parameters; this {mode_name()} server builds at most {max_params:,} "
            f"for a model outside its registry ({MAX_PARAMS_ENV}).")
    return count
