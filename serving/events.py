"""Live purchase events: a durable, append-only JSON-lines file the server replays on start-up.

File format (``<events_dir>/events.jsonl``, UTF-8, one JSON object per line, appended in order
of arrival; the next training run reads it like the canonical transactions)::

    {"member_id": "M001", "product_id": "P042", "ts": "2024-05-01T09:30:00Z",
     "quantity": 2.0, "amount": 19.8, "channel": "app", "received_at": "2024-05-01T09:30:01Z"}

=============  ================================================================================
member_id      text; a member the bundle may not know yet (a new member gets a row)
product_id     text; always a product of the bundle that was serving when it was received
ts             ISO 8601 UTC (``Z``): when the purchase happened (defaults to ``received_at``)
quantity       units bought (> 0; default 1)
amount         what the member paid for the line (not per unit), or null
channel        free text (``store``, ``app``, ``mini_program`` ...), or null
received_at    ISO 8601 UTC: when the server wrote the line
=============  ================================================================================

A line is written, flushed and ``fsync``-ed (under an exclusive ``flock``, so several worker
processes can append to the same file) before the request is answered. Every worker tails the
file from its own byte offset — after its own writes, and every ``events_poll_seconds`` for the
others' — so one code path applies events at start-up, after a write and after a reload. Only
complete lines are read; a line that cannot be parsed is counted and skipped, never fatal.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger("serving.events")

FIELDS = ("member_id", "product_id", "ts", "quantity", "amount", "channel", "received_at")


def utc_iso(ts: datetime) -> str:
    """``2024-05-01T09:30:00Z`` (naive datetimes are taken as UTC)."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ").replace(".000000Z", "Z")


def parse_ts(text: str) -> datetime:
    """The inverse of :func:`utc_iso` (any ISO 8601 accepted; naive means UTC)."""
    ts = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


@dataclass(frozen=True)
class EventRecord:
    """One purchase line as stored in the events file."""

    member_id: str
    product_id: str
    ts: datetime
    quantity: float = 1.0
    amount: float | None = None
    channel: str | None = None
    received_at: datetime | None = None

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {
            "member_id": self.member_id,
            "product_id": self.product_id,
            "ts": utc_iso(self.ts),
            "quantity": self.quantity,
            "amount": self.amount,
            "channel": self.channel,
            "received_at": utc_iso(self.received_at or datetime.now(UTC)),
        }
        return orjson.dumps(doc) + b"\n"

    @classmethod
    def from_json(cls, line: bytes) -> EventRecord:
        doc = orjson.loads(line)
        received = doc.get("received_at")
        return cls(
            member_id=str(doc["member_id"]),
            product_id=str(doc["product_id"]),
            ts=parse_ts(str(doc["ts"])),
            quantity=float(doc.get("quantity") if doc.get("quantity") is not None else 1.0),
            amount=None if doc.get("amount") is None else float(doc["amount"]),
            channel=doc.get("channel"),
            received_at=parse_ts(received) if received else None,
        )


class EventLog:
    """Durable appends to, and incremental reads of, the events file."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()

    def append(self, records: Iterable[EventRecord]) -> int:
        """Append the records and ``fsync`` before returning; returns the bytes written."""
        payload = b"".join(r.to_json() for r in records)
        if not payload:
            return 0
        with self._lock:
            new = not self.path.exists()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    view = memoryview(payload)
                    while view:
                        written = os.write(fd, view)
                        view = view[written:]
                    os.fsync(fd)
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
            if new:  # the file's directory entry must be durable too
                dfd = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
        return len(payload)

    def read_from(self, offset: int) -> tuple[list[EventRecord], int, int]:
        """Complete lines after byte ``offset``: ``(records, new_offset, unparsable_lines)``."""
        try:
            with open(self.path, "rb") as fh:
                fh.seek(offset)
                data = fh.read()
        except FileNotFoundError:
            return [], offset, 0
        end = data.rfind(b"\n")
        if end < 0:
            return [], offset, 0  # nothing, or a line still being written by another process
        records: list[EventRecord] = []
        bad = 0
        for line in data[: end + 1].splitlines():
            if not line.strip():
                continue
            try:
                records.append(EventRecord.from_json(line))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                bad += 1
        if bad:
            log.warning("%s: skipped %d unparsable event line(s) after byte %d", self.path, bad, offset)
        return records, offset + end + 1, bad
