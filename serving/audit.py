"""The audit trail of member lists that leave the server: one JSON line per answer, appended
and fsync-ed. Audiences as JSON (``POST /v1/audiences``) and CSV (``/v1/audiences/export``), and
batch picks (``POST /v1/picks:batch``) are written here; ``route`` and ``format`` say which.

Each audience line: ``time`` (UTC), ``key_id`` (the API key's public id), ``scope`` (the key's
member scope, or null), ``route``, ``format``, ``product_id`` or
``attributes``, ``filters``, ``exclude_bought_within_days``, ``size`` (asked), ``rows``
(returned), ``model_version``. No member data: the members themselves are only in the response.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson


class AuditLog:
    """Append-only JSON lines at ``path`` (folders created on first write)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()

    def write(self, entry: dict[str, Any]) -> None:
        line = orjson.dumps({"time": datetime.now(UTC).isoformat(timespec="milliseconds"), **entry}) + b"\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab") as fh:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())

    def newest_first(self, key_id: str | None = None) -> Iterator[dict[str, Any]]:
        """Entries (of ``key_id`` when given), newest first; unreadable lines are skipped. Reads
        the whole file: the trail grows by one short line per export."""
        if not self.path.exists():
            return
        with self._lock, open(self.path, "rb") as fh:
            lines = fh.read().splitlines()
        for line in reversed(lines):
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(entry, dict) and (key_id is None or entry.get("key_id") == key_id):
                yield entry
