"""Audit trail of archive access: one JSON line per read or write (``MEDCLIP_AUDIT_LOG``).

Each line holds the time (UTC, ISO 8601), the action, the DICOM UIDs touched, the model, the
result series UID, the session id, the outcome and small counts. Never names, patient IDs,
accession numbers, dates of birth or search values: the fields are fixed (:data:`AUDIT_FIELDS`)
and :meth:`AuditLog.record` refuses any other, so an identifier cannot slip in by a new keyword.
"""
from __future__ import annotations

import json
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

AUDIT_FIELDS = ("time", "action", "outcome", "session_id", "study_uid", "series_uid", "instance_uid", "model",
                "result_series_uid", "count", "criteria")


class AuditLog:
    """Appends records to a JSON-lines file; a ``None`` path keeps no log (no archive audit configured)."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None
        self._lock = threading.Lock()

    def record(self, action: str, outcome: str = "ok", **fields: Any) -> dict[str, Any] | None:
        """Append one record; ``fields`` are UIDs, ``model``, ``session_id``, ``count`` or ``criteria``
        (the names of the search keys used, never their values)."""
        unknown = set(fields) - set(AUDIT_FIELDS)
        if unknown:
            raise ValueError(f"audit records take only {AUDIT_FIELDS}; got {sorted(unknown)}")
        if self.path is None:
            return None
        entry = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "action": action,
                 "outcome": outcome, **{k: v for k, v in fields.items() if v not in (None, "", [])}}
        line = json.dumps(entry, sort_keys=True)
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(line + "\n")
        return entry
