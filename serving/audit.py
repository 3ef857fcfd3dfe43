"""The audit trail of member lists that leave the server, stored in the shared database.

Audiences as JSON (``POST /v1/audiences``) and CSV (``/v1/audiences/export``), batch picks
(``POST /v1/picks:batch``) and campaign exports (the route and ``recsys campaign export``) each
write one row of ``audit_entries`` (:class:`serving.db.AuditEntry`) in the database the campaigns
live in: SQLite for the workers of one machine, PostgreSQL for replicas on several -- one trail,
whichever process answered. The row is committed, in its own transaction, before the member list is
sent; when it cannot be (the database is down, the table is gone, the disk is full) the request
fails with a 503 and the list never leaves (:class:`AuditUnavailableError`).

An entry: ``time`` (UTC), ``key_id`` (the API key's public id), ``scope`` (the key's member scope,
or null), ``route``, ``format``, ``rows`` (how many rows left), ``model_version``, and what was asked
(``request``: ``product_id`` or ``attributes``, ``filters``, ``exclude_bought_within_days``, ``size``;
``k`` and ``mode`` for picks; ``campaign_id`` for a campaign), plus ``origin`` (host:pid of the
process). No member data: the members themselves are only in the response.

A trail kept by an older version as JSON lines (``--audit-log``) is brought in with
``recsys audit import FILE`` (:func:`import_lines`).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import and_, or_, select
from sqlalchemy.exc import SQLAlchemyError

from serving.db import AuditEntry, Database, redacted
from serving.errors import NotReadyError

log = logging.getLogger("serving.audit")
COLUMNS = ("key_id", "scope", "route", "format", "rows", "model_version")
PAGE = 200  # rows read per query by newest_first
# entries of the JSON-lines trail before it named its route were audience CSV exports
OLD_DEFAULT_ROUTE, OLD_DEFAULT_FORMAT = "/v1/audiences/export", "csv"


class AuditUnavailableError(NotReadyError):
    """The audit entry could not be committed, so the member list was not sent (503)."""


def _origin() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"[:200]


def _iso(t: datetime) -> str:
    return t.replace(tzinfo=UTC).isoformat(timespec="milliseconds")


def _as_dict(row: AuditEntry) -> dict[str, Any]:
    """An entry as the API shows it: the request's fields beside the columns (the JSON-lines shape)."""
    return {**(row.request or {}), "time": _iso(row.time), "key_id": row.key_id, "scope": row.scope,
            "route": row.route, "format": row.format, "rows": row.rows, "model_version": row.model_version,
            "origin": row.origin}


def _row(entry: dict[str, Any], time: datetime, origin: str | None) -> AuditEntry:
    request = {k: v for k, v in entry.items() if k not in (*COLUMNS, "time", "origin")}
    # plain JSON values only (a pydantic dump, ints, strings): what the database stores is what is read back
    request = orjson.loads(orjson.dumps(request))
    return AuditEntry(time=time.astimezone(UTC).replace(tzinfo=None), key_id=str(entry["key_id"]),
                      scope=entry.get("scope"), route=str(entry["route"]), format=str(entry["format"]),
                      rows=int(entry["rows"]), model_version=entry.get("model_version"), request=request,
                      origin=origin)


class AuditLog:
    """The audit trail in ``db`` (migrated on first use, like the campaigns)."""

    def __init__(self, db: Database):
        self.db = db
        self.origin = _origin()

    @property
    def where(self) -> str:
        """Where the trail is, for messages (the database URL without its password)."""
        return f"audit_entries in {redacted(self.db.url)}"

    def write(self, entry: dict[str, Any]) -> None:
        """Commit one entry (``key_id``, ``route``, ``format``, ``rows`` required; the rest as
        above). Raises :class:`AuditUnavailableError` when it is not stored: the caller must not
        send the list."""
        row = _row(entry, datetime.now(UTC), self.origin)
        try:
            self.db.ensure()
            with self.db.sessions.begin() as session:  # its own transaction, committed on exit
                session.add(row)
        except (SQLAlchemyError, NotReadyError) as exc:
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            log.error("audit entry not stored (%s %s, key %s): %s", row.route, row.format, row.key_id, reason)
            raise AuditUnavailableError(
                f"the member list was not sent: its audit entry could not be stored in {self.where} ({reason}); "
                "retry when the database is back") from None

    def newest_first(self, key_id: str | None = None, routes: Iterable[str] | None = None) -> Iterator[dict[str, Any]]:
        """Entries (of ``key_id`` and among ``routes`` when given), newest first by time (then by
        the order they were stored), read a page at a time: stop iterating to stop reading."""
        self.db.ensure()
        wanted = list(routes) if routes is not None else None
        after: tuple[datetime, int] | None = None
        while True:
            query = select(AuditEntry).order_by(AuditEntry.time.desc(), AuditEntry.id.desc()).limit(PAGE)
            if key_id is not None:
                query = query.where(AuditEntry.key_id == key_id)
            if wanted is not None:
                query = query.where(AuditEntry.route.in_(wanted))
            if after is not None:  # the next page: older than the last entry read
                t, i = after
                query = query.where(or_(AuditEntry.time < t, and_(AuditEntry.time == t, AuditEntry.id < i)))
            with self.db.sessions() as session:
                rows = session.scalars(query).all()
            for row in rows:
                yield _as_dict(row)
            if len(rows) < PAGE:
                return
            after = (rows[-1].time, rows[-1].id)


@dataclass(frozen=True)
class ImportResult:
    imported: int
    already: int  # entries the table already held (a file imported twice)
    unreadable: int  # lines that are not an entry (damaged, hand-edited), with their numbers
    unreadable_lines: list[int]


def import_lines(audit: AuditLog, lines: Iterable[bytes]) -> ImportResult:
    """Bring a JSON-lines trail of an older version into the table, keeping each entry's time and
    marking its origin ``file``; an entry already there (same time, key, route, rows) is not
    added again, a line that is not an entry is counted with its number. One transaction."""
    audit.db.ensure()
    parsed: list[AuditEntry] = []
    bad: list[int] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry = orjson.loads(line)
            if not isinstance(entry, dict):
                raise ValueError("not an object")
            time = datetime.fromisoformat(str(entry["time"]))
            if time.tzinfo is None:
                time = time.replace(tzinfo=UTC)
            row = _row({"route": OLD_DEFAULT_ROUTE, "format": OLD_DEFAULT_FORMAT, "scope": None, **entry}, time,
                       entry.get("origin") or "file")
        except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
            bad.append(number)
            continue
        parsed.append(row)
    already = 0
    with audit.db.sessions.begin() as session:
        if parsed:
            lo, hi = min(r.time for r in parsed), max(r.time for r in parsed)
            seen = {(t, k, r, n) for t, k, r, n in session.execute(
                select(AuditEntry.time, AuditEntry.key_id, AuditEntry.route, AuditEntry.rows)
                .where(AuditEntry.time >= lo, AuditEntry.time <= hi))}
            fresh = []
            for row in sorted(parsed, key=lambda r: r.time):  # oldest first: ids in time order
                key = (row.time, row.key_id, row.route, row.rows)
                if key in seen:
                    already += 1
                    continue
                seen.add(key)
                fresh.append(row)
            session.add_all(fresh)
    return ImportResult(len(parsed) - already, already, len(bad), bad[:20])
