"""How the host connects the app to its archive: environment variables only, read once per client.

Users never type an archive address or credentials: the host sets them (see ``docs/archive.md``).
Credentials live in this object and in the HTTP session only; :meth:`ArchiveSettings.describe`
and :attr:`ArchiveSettings.safe_url` are what may be shown or logged.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit, urlunsplit

from medclip_core.archive.errors import ArchiveNotConfiguredError

URL_VARIABLE = "MEDCLIP_DICOMWEB_URL"
DEFAULT_TIMEOUT_S = 20.0
DEFAULT_MAX_SERIES_INSTANCES = 500
DEFAULT_MAX_STUDY_RESULTS = 100


def _flag(env: Mapping[str, str], name: str, default: bool = False) -> bool:
    value = env.get(name)
    return default if value is None or value == "" else value.strip().lower() in ("1", "true", "yes", "on")


def _number(env: Mapping[str, str], name: str, default: float, kind: type = float):
    value = env.get(name)
    if not value:
        return kind(default)
    try:
        number = kind(value)
    except ValueError as exc:
        raise ArchiveNotConfiguredError(f"{name} must be a number, got '{value[:20]}'.") from exc
    if number <= 0:
        raise ArchiveNotConfiguredError(f"{name} must be positive, got {value}.")
    return number


@dataclass(frozen=True)
class ArchiveSettings:
    """The archive connection and policy the host chose.

    ``verify``: True (system CAs), a CA bundle path, or False only when the host says so explicitly.
    ``write_enabled``: STOW-RS write-back allowed (``MEDCLIP_DICOMWEB_WRITE=1``).
    ``show_identifiers``: patient name/ID and accession number may appear on screen.
    """

    url: str
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    verify: bool | str = True
    timeout_s: float = DEFAULT_TIMEOUT_S
    write_enabled: bool = False
    show_identifiers: bool = False
    max_series_instances: int = DEFAULT_MAX_SERIES_INSTANCES
    max_study_results: int = DEFAULT_MAX_STUDY_RESULTS
    audit_log: Path | None = None

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ArchiveNotConfiguredError(
                f"{URL_VARIABLE} must be an http(s) address such as https://pacs.example.org/dicom-web.")
        if parts.username or parts.password:
            raise ArchiveNotConfiguredError(
                f"{URL_VARIABLE} must not contain credentials; set MEDCLIP_DICOMWEB_USER / "
                "MEDCLIP_DICOMWEB_PASSWORD or MEDCLIP_DICOMWEB_TOKEN instead.")
        if self.token and (self.username or self.password):
            raise ArchiveNotConfiguredError("Set either a bearer token or a user and password for the archive, not both.")
        if bool(self.username) != bool(self.password):
            raise ArchiveNotConfiguredError("MEDCLIP_DICOMWEB_USER and MEDCLIP_DICOMWEB_PASSWORD go together.")

    @property
    def safe_url(self) -> str:
        """The address without query or fragment (credentials are refused in the URL altogether)."""
        parts = urlsplit(self.url)
        return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))

    @property
    def auth_kind(self) -> str:
        return "bearer" if self.token else "basic" if self.username else "none"

    def describe(self) -> dict[str, object]:
        """What may be shown about the connection: never a credential."""
        return {"url": self.safe_url, "auth": self.auth_kind, "tls_verify": bool(self.verify),
                "timeout_s": self.timeout_s, "write_enabled": self.write_enabled,
                "show_identifiers": self.show_identifiers, "max_series_instances": self.max_series_instances,
                "audit_log": self.audit_log is not None}

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ArchiveSettings:
        """Read the settings from the environment; ArchiveNotConfiguredError without MEDCLIP_DICOMWEB_URL."""
        env = os.environ if env is None else env
        url = (env.get(URL_VARIABLE) or "").strip()
        if not url:
            raise ArchiveNotConfiguredError(
                f"No image archive is configured: the host sets {URL_VARIABLE} (see docs/archive.md).")
        ca_bundle = env.get("MEDCLIP_DICOMWEB_CA_BUNDLE")
        verify: bool | str = ca_bundle if ca_bundle else _flag(env, "MEDCLIP_DICOMWEB_VERIFY", True)
        audit = env.get("MEDCLIP_AUDIT_LOG")
        return cls(
            url=url, username=env.get("MEDCLIP_DICOMWEB_USER") or None,
            password=env.get("MEDCLIP_DICOMWEB_PASSWORD") or None, token=env.get("MEDCLIP_DICOMWEB_TOKEN") or None,
            verify=verify, timeout_s=_number(env, "MEDCLIP_DICOMWEB_TIMEOUT", DEFAULT_TIMEOUT_S),
            write_enabled=_flag(env, "MEDCLIP_DICOMWEB_WRITE"), show_identifiers=_flag(env, "MEDCLIP_SHOW_IDENTIFIERS"),
            max_series_instances=_number(env, "MEDCLIP_DICOMWEB_MAX_SERIES", DEFAULT_MAX_SERIES_INSTANCES, int),
            audit_log=Path(audit) if audit else None)


def archive_configured(env: Mapping[str, str] | None = None) -> bool:
    """Whether the host configured an archive (the app shows the Archive tab only then)."""
    return bool(((os.environ if env is None else env).get(URL_VARIABLE) or "").strip())
