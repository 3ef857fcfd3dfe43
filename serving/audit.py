"""The audit trail of audience exports: one JSON line per export, appended and fsync-ed.

Each line: ``time`` (UTC), ``key_id`` (the API key's public id), ``product_id`` or
``attributes``, ``filters``, ``exclude_bought_within_days``, ``size`` (asked), ``rows``
(returned), ``model_version``. No member data: the members themselves are only in the response.
"""

from __future__ import annotations

import os
import threading
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
