"""Live purchase events: checked, made durable exactly once per ``event_id``, replayed by every
serving process.

One record format, two stores behind one interface (:class:`EventStore`):

* :class:`FileEventLog` (the default, nothing to start): ``<events_dir>/events.jsonl``, one JSON
  object per line. A line is written, flushed and ``fsync``-ed under an exclusive ``flock`` before
  the request is answered, so the worker processes of one server can share the file; each tails it
  from its own byte offset.
* :class:`RedisEventStream` (``recsys serve --events redis://...``): one Redis Stream that every
  replica appends to and reads. An append is one Lua script -- atomic on the Redis server -- that
  adds only the events whose id it has not seen (a hash of ids beside the stream), so a retried
  event is recorded once whichever replica receives it; each replica follows the stream with a
  blocking ``XREAD``. Durability is Redis's: run it with ``appendonly yes`` and ``appendfsync
  always`` (every write on disk before Redis answers, hence before the server does).

Record format (UTF-8 JSON; a file line, or the field ``e`` of a stream entry)::

    {"event_id": "pos-17:3", "member_id": "M001", "product_id": "P042", "ts": "2024-05-01T09:30:00Z",
     "quantity": 2.0, "amount": 19.8, "channel": "app", "received_at": "2024-05-01T09:30:01Z",
     "batch_id": "pos-17"}

=============  ================================================================================
event_id       the client's id for this purchase line (or ``<batch_id>/<position>``, or a new
               random id); unique in the store. Lines written before ids existed have none.
member_id      printable text; a member the bundle may not know yet (a new member gets a row)
product_id     printable text; a product of the bundle that was serving when it was received
ts             ISO 8601 UTC (``Z``, four-digit year): when the purchase happened (defaults to
               ``received_at``); within the accepted window (:func:`prepare`)
quantity       units bought (> 0; default 1)
amount         what the member paid for the line (not per unit), or null
channel        printable text (``store``, ``app``, ``mini_program`` ...), or null
received_at    ISO 8601 UTC: when the server accepted it
batch_id       the request's ``Idempotency-Key``, or null
=============  ================================================================================

Nothing is acknowledged that cannot be read back: every record is serialised and parsed again
(:func:`check_round_trip`) before it is written. Reading never fails on a bad line or entry: it
is counted and skipped with a log line.

**Trimming** (:meth:`EventStore.trim`, one rule for both stores). A bundle holds every purchase
before its events watermark (:func:`recsys.bundle.events_watermark`: 00:00 UTC of the day its data
ends) and a server replays into it only the records at or after it. Given the lowest watermark of
every bundle that is served or could be loaded (:mod:`serving.events_trim` works it out), a trim
removes the longest *prefix* of the log whose records are all before it: it stops at the first
record at or after the watermark and at the first entry it cannot parse, so nothing a bundle would
replay is ever removed, and a restart replays the same state as before. A record of a late purchase
(an old ``ts`` received after newer ones) waits behind the records before it. The ids of removed
records are kept (the stream's ids hash; ``trimmed_ids.jsonl`` beside the file), so a late retry is
still acknowledged once. The stream is trimmed with ``XTRIM MINID`` (exact) to the id of the first
record kept; the file is rewritten under its lock from that record on, behind a header line
(``{"log_start": N, ...}``) that keeps every reader's byte offsets valid: a cursor counts bytes
since the log began, trimmed ones included.

**Replicas** (:meth:`EventStore.report_replica`): every serving process records in the store which
bundles it serves and their watermark (``{key}:replicas`` beside the stream; ``replicas/`` in the
events folder), refreshed while it runs and withdrawn when it stops, so a trim never removes what a
replica still serving an older bundle (a rolling reload) would replay.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import shutil
import stat
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections import ChainMap
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from recsys.errors import InputError
from serving.errors import ConflictError, NotReadyError

if TYPE_CHECKING:
    from serving.schemas import PurchaseEvent

log = logging.getLogger("serving.events")

FIELDS = ("event_id", "member_id", "product_id", "ts", "quantity", "amount", "channel", "received_at", "batch_id")
STREAM_SCHEMES = ("redis", "rediss", "unix")
READ_CHUNK = 10_000  # stream entries per XREAD

Cursor = int | str  # a byte offset into the file, or the last stream entry id read


class EventsUnavailableError(NotReadyError):
    """The events store cannot be reached (503): nothing was acknowledged, the client retries."""


def utc_iso(ts: datetime) -> str:
    """``2024-05-01T09:30:00Z`` (naive datetimes are taken as UTC; years always have 4 digits)."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC).replace(tzinfo=None).isoformat() + "Z"


def parse_ts(text: str) -> datetime:
    """The inverse of :func:`utc_iso` (any ISO 8601 accepted; naive means UTC)."""
    ts = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def _opt_str(doc: Mapping[str, Any], name: str) -> str | None:
    value = doc.get(name)
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{name} must be text")
    return value


@dataclass(frozen=True)
class EventRecord:
    """One purchase line as stored (see the module docstring)."""

    member_id: str
    product_id: str
    ts: datetime
    quantity: float = 1.0
    amount: float | None = None
    channel: str | None = None
    received_at: datetime | None = None
    event_id: str | None = None
    batch_id: str | None = None

    def to_json(self) -> bytes:
        """The stored form, without a line end."""
        doc: dict[str, Any] = {
            "event_id": self.event_id,
            "member_id": self.member_id,
            "product_id": self.product_id,
            "ts": utc_iso(self.ts),
            "quantity": self.quantity,
            "amount": self.amount,
            "channel": self.channel,
            "received_at": utc_iso(self.received_at or datetime.now(UTC)),
            "batch_id": self.batch_id,
        }
        return orjson.dumps(doc)

    @classmethod
    def from_json(cls, line: bytes) -> EventRecord:
        """Parse a stored record; ValueError / TypeError / KeyError for anything malformed."""
        doc = orjson.loads(line)
        if not isinstance(doc, dict):
            raise TypeError("an event must be a JSON object")
        member, product = doc["member_id"], doc["product_id"]
        if not isinstance(member, str) or not isinstance(product, str) or not member or not product:
            raise TypeError("member_id and product_id must be non-empty text")
        quantity = doc.get("quantity")
        amount = doc.get("amount")
        received = _opt_str(doc, "received_at")
        return cls(
            member_id=member,
            product_id=product,
            ts=parse_ts(str(doc["ts"])),
            quantity=float(quantity) if quantity is not None else 1.0,
            amount=None if amount is None else float(amount),
            channel=_opt_str(doc, "channel"),
            received_at=parse_ts(received) if received else None,
            event_id=_opt_str(doc, "event_id"),
            batch_id=_opt_str(doc, "batch_id"),
        )

    @property
    def content(self) -> str:
        """What makes two records with one ``event_id`` the same purchase (``ts`` aside): a
        64-bit digest of member, product, quantity, amount and channel."""
        raw = orjson.dumps([self.member_id, self.product_id, self.quantity, self.amount, self.channel])
        return hashlib.blake2b(raw, digest_size=8).hexdigest()


def check_round_trip(record: EventRecord) -> bytes:
    """The record's stored form, after checking it parses back to the same record: an event that
    could not be replayed is never acknowledged."""
    line = record.to_json()
    try:
        back = EventRecord.from_json(line)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise InputError(f"event {record.event_id!r} cannot be stored: it does not read back ({exc})") from None
    if back != record:
        diff = [f for f in FIELDS if getattr(back, f) != getattr(record, f)]
        raise InputError(f"event {record.event_id!r} cannot be stored: {', '.join(diff)} would not read back "
                         "as sent; nothing was recorded")
    return line


# --------------------------------------------------------------------------- incoming events
@dataclass(frozen=True)
class Seen:
    """What the store holds for an ``event_id``: the record's :attr:`EventRecord.content` and ts."""

    content: str
    ts: str

    def encode(self) -> str:
        return f"{self.content}|{self.ts}"

    @classmethod
    def decode(cls, text: str) -> Seen:
        content, _, ts = text.partition("|")
        return cls(content, ts)


@dataclass(frozen=True)
class Incoming:
    """A checked event ready to be stored, and whether the client gave its ``ts`` (a retry that
    left ``ts`` to the server is the same purchase whatever time the retry was received)."""

    record: EventRecord
    ts_given: bool
    line: bytes

    @property
    def event_id(self) -> str:
        assert self.record.event_id is not None
        return self.record.event_id

    @property
    def seen(self) -> Seen:
        return Seen(self.record.content, utc_iso(self.record.ts))

    def conflicts_with(self, old: Seen) -> bool:
        return old.content != self.record.content or (self.ts_given and old.ts != utc_iso(self.record.ts))


def _conflict(event_id: str) -> ConflictError:
    return ConflictError(
        f"event_id {event_id!r} was already recorded for a different purchase (member, product, quantity, "
        "amount, channel or ts differ); a retry must repeat the event as first sent, a new purchase needs a "
        "new event_id. Nothing in this request was recorded"
    )


@dataclass(frozen=True)
class Window:
    """The purchase times an event may have: from ``days_before`` days before the day the model's
    data ends to ``seconds_ahead`` after now."""

    as_of: date
    days_before: int
    seconds_ahead: float

    def bounds(self, now: datetime) -> tuple[datetime, datetime]:
        start = datetime.combine(self.as_of, datetime.min.time(), tzinfo=UTC) - timedelta(days=self.days_before)
        return start, now + timedelta(seconds=self.seconds_ahead)


def prepare(
    events: Sequence[PurchaseEvent], *, batch_id: str | None, window: Window, now: datetime | None = None
) -> list[Incoming]:
    """Records for ``events`` (validated by :class:`~serving.schemas.PurchaseEvent`): ids given or
    derived, ``ts`` inside ``window`` (else a 422 naming the event and the window), each checked to
    read back as sent. Repeating an id within one request is a 422 unless it repeats the event."""
    now = now or datetime.now(UTC)
    lo, hi = window.bounds(now)
    out: list[Incoming] = []
    in_request: dict[str, Incoming] = {}
    for i, e in enumerate(events):
        ts = e.ts or now
        if not lo <= ts <= hi:
            raise InputError(
                f"events[{i}].ts {utc_iso(ts)} is not a plausible purchase time: accepted from {utc_iso(lo)} "
                f"({window.days_before} days before the model's data ends on {window.as_of.isoformat()}) to "
                f"{utc_iso(hi)} (now + {window.seconds_ahead:g} s); send the time of the purchase in ISO 8601 "
                "with its UTC offset (RECSYS_EVENTS_MAX_DAYS_BEFORE_AS_OF / RECSYS_EVENTS_MAX_SECONDS_AHEAD "
                "set the window)"
            )
        event_id = e.event_id or (f"{batch_id}/{i}" if batch_id else uuid.uuid4().hex)
        rec = EventRecord(
            member_id=e.member_id, product_id=e.product_id, ts=ts, quantity=e.quantity, amount=e.amount,
            channel=e.channel, received_at=now, event_id=event_id, batch_id=batch_id,
        )
        item = Incoming(rec, e.ts is not None, check_round_trip(rec))
        first = in_request.get(event_id)
        if first is not None and item.conflicts_with(first.seen):
            raise InputError(f"events[{i}]: event_id {event_id!r} is repeated in this request for a different purchase")
        in_request.setdefault(event_id, item)
        out.append(item)
    return out


def classify(items: Sequence[Incoming], known: Mapping[str, Seen]) -> list[bool]:
    """Per item, True when its id is new (to be written), False for a repeat of a recorded event
    (or of an earlier item); :class:`~serving.errors.ConflictError` (409) when an id is known for
    another purchase."""
    fresh: list[bool] = []
    batch: set[str] = set()
    for item in items:
        old = known.get(item.event_id)
        if old is not None and item.conflicts_with(old):
            raise _conflict(item.event_id)
        fresh.append(old is None and item.event_id not in batch)
        batch.add(item.event_id)
    return fresh


# --------------------------------------------------------------------------- stores
@dataclass
class ReadBatch:
    """Records read after a cursor, the cursor after them and how many entries were unparsable."""

    records: list[EventRecord]
    cursor: Cursor
    bad: int = 0


CatchUp = Callable[[], Mapping[str, Seen]]


@dataclass(frozen=True)
class LogEntry:
    """One entry of the log as a trim scans it: where it starts and where the next one starts (a
    stream id and its successor; logical byte offsets), and its record (None: cannot be parsed)."""

    start: Cursor
    end: Cursor
    record: EventRecord | None


@dataclass
class Prefix:
    """What :func:`folded_prefix` found: the records before the watermark at the head of the log."""

    records: list[EventRecord]
    bound: Cursor | None = None  # where the first entry kept starts (None: nothing to remove)
    first_kept: LogEntry | None = None  # the record that stopped the scan (at or after the watermark)
    unparsable_at: Cursor | None = None  # ... or the entry that could not be parsed


def folded_prefix(entries: Iterable[LogEntry], watermark: datetime) -> Prefix:
    """The longest run of entries from the head of the log whose records are all before
    ``watermark`` -- what every bundle with that watermark or a later one holds already. The scan
    stops at the first record at or after the watermark and at the first entry that cannot be
    parsed (it might be a record another release wrote: it is never removed unread)."""
    out = Prefix([])
    end: Cursor | None = None
    for entry in entries:
        if entry.record is None or entry.record.ts >= watermark:
            if entry.record is None:
                out.unparsable_at = entry.start
            else:
                out.first_kept = entry
            end = entry.start  # the log will start with the entry that stopped the scan
            break
        out.records.append(entry.record)
        end = entry.end
    out.bound = end if out.records else None
    return out


@dataclass(frozen=True)
class TrimResult:
    """What a trim removed (or, ``dry_run``, would remove) and where the log now starts."""

    where: str
    watermark: datetime
    removed: int
    bound: str | None  # the log now starts there (stream id / logical byte offset); None: unchanged
    first_kept: dict[str, Any] | None  # position, event_id and ts of the record the scan stopped at
    unparsable_at: str | None  # the unparsable entry the scan stopped at
    removed_total: int | None  # removed by every trim of this log so far (None: dry run)
    dry_run: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"where": self.where, "watermark": utc_iso(self.watermark), "removed": self.removed,
                "bound": self.bound, "first_kept": self.first_kept, "unparsable_at": self.unparsable_at,
                "removed_total": self.removed_total, "dry_run": self.dry_run}


def _result(store: EventStore, watermark: datetime, prefix: Prefix, removed: int, total: int | None,
            dry_run: bool) -> TrimResult:
    first = prefix.first_kept
    kept = None if first is None or first.record is None else {
        "position": str(first.start), "event_id": first.record.event_id, "ts": utc_iso(first.record.ts)}
    result = TrimResult(store.where, watermark, removed, None if prefix.bound is None else str(prefix.bound), kept,
                        None if prefix.unparsable_at is None else str(prefix.unparsable_at), total, dry_run)
    verb = "would remove" if dry_run else "trimmed"
    log.info("events log %s: %s %d record(s) before the watermark %s%s", store.where, verb, removed,
             utc_iso(watermark), f" (the log now starts at {result.bound}; {total} trimmed in all)"
             if removed and not dry_run else "")
    if result.unparsable_at is not None:
        log.warning("events log %s: trimming stops at entry %s, which cannot be parsed: inspect it and remove it "
                    "by hand if it is not an event (it is skipped by every replica)", store.where, result.unparsable_at)
    return result


def _replica_name(replica: str) -> str:
    return re.sub(r"[^\w.-]", "_", replica)[:200] or "replica"


class EventStore(ABC):
    """Where acknowledged events live. ``append`` returns only once the new records are durable;
    ``read`` / ``wait`` return what follows a cursor, in order, the same for every reader."""

    kind: str = ""
    start: Cursor = 0

    @property
    @abstractmethod
    def where(self) -> str:
        """The file or (password-free) URL, for messages."""

    @abstractmethod
    def append(self, items: Sequence[Incoming], catch_up: CatchUp) -> list[bool]:
        """Store the items whose ids are new; per item, whether it was written. ``catch_up``
        brings the caller's view up to the store's end (under the store's write lock, for stores
        that have one) and returns the ids it knows."""

    @abstractmethod
    def read(self, cursor: Cursor) -> ReadBatch:
        """Everything complete after ``cursor`` (a stream: up to :data:`READ_CHUNK` entries)."""

    def wait(self, cursor: Cursor, timeout: float) -> ReadBatch:
        """:meth:`read`, after waiting up to ``timeout`` seconds for something new."""
        time.sleep(timeout)
        return self.read(cursor)

    @abstractmethod
    def check(self) -> None:
        """Raise :class:`EventsUnavailableError` when the store cannot be used."""

    @property
    def error(self) -> str | None:
        """Why the last operation failed, until one succeeds (None: working)."""
        return None

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "where": self.where, "error": self.error}

    # ---------------------------------------------------------------- trimming
    @abstractmethod
    def trim(self, watermark: datetime, *, dry_run: bool = False) -> TrimResult:
        """Remove the records at the head of the log that are before ``watermark``
        (:func:`folded_prefix`); ``watermark`` must be at or below the events watermark of every
        bundle that is served or could be loaded (:mod:`serving.events_trim`)."""

    @abstractmethod
    def trim_info(self) -> dict[str, Any] | None:
        """The last trim (``at``, ``watermark``, ``removed``, ``removed_total``), None if never."""

    # ---------------------------------------------------------------- what replicas serve
    @abstractmethod
    def report_replica(self, replica: str, record: Mapping[str, Any]) -> None:
        """Record (or refresh) what serving process ``replica`` serves: ``record`` has its
        ``watermark`` (the lowest of its bundles'), ``bundles`` and the time ``at``."""

    @abstractmethod
    def withdraw_replica(self, replica: str) -> None:
        """Remove ``replica``'s record (it stops serving)."""

    @abstractmethod
    def replicas(self) -> dict[str, dict[str, Any]]:
        """Every replica's record, by replica id (a record that cannot be read is left out)."""


LOG_START = b'{"log_start":'  # the first line of a trimmed events file (see the module docstring)
PARSE_ERRORS = (orjson.JSONDecodeError, KeyError, TypeError, ValueError, OverflowError)


def _header(fh: Any) -> tuple[int, int, dict[str, Any]]:
    """(logical offset of the first byte after the header, header length, header) of an open
    events file, left positioned after the header; (0, 0, {}) for a file that was never trimmed."""
    fh.seek(0)
    first = fh.readline()
    if first.startswith(LOG_START) and first.endswith(b"\n"):
        try:
            doc = orjson.loads(first)
            return int(doc["log_start"]), len(first), doc
        except (*PARSE_ERRORS, AttributeError):
            pass  # not a header after all: read (and counted unparsable) like any other line
    fh.seek(0)
    return 0, 0, {}


class FileEventLog(EventStore):
    """The events file: durable appends under ``flock``, incremental reads of complete lines.
    Cursors are logical byte offsets (bytes since the log began, trimmed ones included)."""

    kind = "file"
    start = 0

    def __init__(self, path: Path):
        self.path = Path(path)
        self.ids_path = self.path.with_name("trimmed_ids.jsonl")  # ids of trimmed records (de-duplication)
        self.replicas_dir = self.path.parent / "replicas"
        self._lock = threading.Lock()
        self._trimmed_ids: tuple[tuple[int, int], dict[str, Seen]] | None = None

    @property
    def where(self) -> str:
        return str(self.path)

    def check(self) -> None:
        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EventsUnavailableError(f"the events folder {folder} cannot be created: {exc}") from None
        if not os.access(folder, os.W_OK) or (self.path.exists() and not os.access(self.path, os.W_OK)):
            raise EventsUnavailableError(f"the events file {self.path} is not writable by this process")

    def _open_locked(self) -> int:
        """A descriptor of the events file as it is now (created if need be), under an exclusive
        ``flock``: a trim replaces the file, so a lock taken on the file it replaced is let go
        and taken again on the new one."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                mine = os.fstat(fd)
                try:
                    now = os.stat(self.path)
                    current = (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino)
                except FileNotFoundError:
                    current = False
            except BaseException:
                os.close(fd)
                raise
            if current:
                return fd
            os.close(fd)  # closing lets go of the lock on the replaced file

    def _fsync_folder(self) -> None:
        dfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def append(self, items: Sequence[Incoming], catch_up: CatchUp) -> list[bool]:
        if not items:
            return []
        with self._lock:
            new = not self.path.exists()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = self._open_locked()
            try:
                try:
                    # every other writer's lines are read by now; ids of trimmed records count too
                    known = catch_up()
                    trimmed = self._known_trimmed()
                    fresh = classify(items, ChainMap(known, trimmed) if trimmed else known)  # type: ignore[arg-type]
                    payload = b"".join(it.line + b"\n" for it, ok in zip(items, fresh, strict=True) if ok)
                    if payload:
                        size = os.fstat(fd).st_size
                        if size and os.pread(fd, 1, size - 1) != b"\n":
                            # a writer killed mid-line left a fragment (never acknowledged): end it
                            # here, or it would swallow the first line written now
                            payload = b"\n" + payload
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
                self._fsync_folder()
        return fresh

    def read(self, cursor: Cursor) -> ReadBatch:
        offset = int(cursor)
        try:
            with open(self.path, "rb") as fh:
                base, head, _ = _header(fh)
                offset = max(offset, base)  # before the log's start: those records were trimmed
                fh.seek(head + offset - base)
                data = fh.read()
        except FileNotFoundError:
            return ReadBatch([], offset)
        end = data.rfind(b"\n")
        if end < 0:
            return ReadBatch([], offset)  # nothing, or a line still being written by another process
        records: list[EventRecord] = []
        bad = 0
        for line in data[: end + 1].splitlines():
            if not line.strip():
                continue
            try:
                records.append(EventRecord.from_json(line))
            except PARSE_ERRORS:
                bad += 1
        if bad:
            log.warning("%s: skipped %d unparsable event line(s) after byte %d", self.path, bad, offset)
        return ReadBatch(records, offset + end + 1, bad)

    # ---------------------------------------------------------------- trimming
    @staticmethod
    def _entries(fh: Any, base: int) -> Iterator[LogEntry]:
        """The complete lines from the file position (logical offset ``base``) on; blank lines are
        folded into the entry after them."""
        pos = start = base
        for line in fh:
            if not line.endswith(b"\n"):
                return  # a line still being written, or a killed writer's fragment
            pos += len(line)
            if not line.strip():
                continue
            try:
                record: EventRecord | None = EventRecord.from_json(line)
            except PARSE_ERRORS:
                record = None
            yield LogEntry(start, pos, record)
            start = pos

    def _known_trimmed(self) -> dict[str, Seen]:
        """The ids of trimmed records (read again whenever the file has changed)."""
        try:
            st = os.stat(self.ids_path)
        except FileNotFoundError:
            return {}
        key = (st.st_ino, st.st_size)
        if self._trimmed_ids is None or self._trimmed_ids[0] != key:
            ids: dict[str, Seen] = {}
            with open(self.ids_path, "rb") as fh:
                for line in fh:
                    try:
                        event_id, seen = orjson.loads(line)
                        ids[str(event_id)] = Seen.decode(str(seen))
                    except (*PARSE_ERRORS, AttributeError):
                        continue  # a line cut short by a crash: its ids are in the log still
            self._trimmed_ids = (key, ids)
        return self._trimmed_ids[1]

    def trim(self, watermark: datetime, *, dry_run: bool = False) -> TrimResult:
        with self._lock:
            if not self.path.exists():
                return _result(self, watermark, Prefix([]), 0, None if dry_run else self._total(), dry_run)
            fd = self._open_locked()  # writers wait for the trim; readers go on reading the old file
            try:
                with open(self.path, "rb") as fh:
                    base, head, doc = _header(fh)
                    prefix = folded_prefix(self._entries(fh, base), watermark)
                    removed = len(prefix.records)
                    total = int(doc.get("trimmed_entries", 0) or 0)
                    if dry_run or not removed:
                        return _result(self, watermark, prefix, removed, None if dry_run else total, dry_run)
                    assert prefix.bound is not None
                    total += removed
                    header = {"log_start": int(prefix.bound), "trimmed_at": utc_iso(datetime.now(UTC)),
                              "watermark": utc_iso(watermark), "trimmed": removed, "trimmed_entries": total}
                    tmp = self.path.with_name(self.path.name + ".trim")
                    try:
                        with open(tmp, "wb") as out:
                            os.fchmod(out.fileno(), stat.S_IMODE(os.fstat(fd).st_mode))
                            out.write(orjson.dumps(header) + b"\n")
                            fh.seek(head + int(prefix.bound) - base)
                            shutil.copyfileobj(fh, out, 1 << 20)
                            out.flush()
                            os.fsync(out.fileno())
                        # the trimmed ids first: after a crash here they are in both files, never in neither
                        with open(self.ids_path, "ab") as ids:
                            ids.write(b"".join(orjson.dumps([r.event_id, Seen(r.content, utc_iso(r.ts)).encode()])
                                               + b"\n" for r in prefix.records if r.event_id is not None))
                            ids.flush()
                            os.fsync(ids.fileno())
                        os.replace(tmp, self.path)
                    except BaseException:
                        tmp.unlink(missing_ok=True)  # the log as it was; nothing left beside it
                        raise
            except OSError as exc:
                raise EventsUnavailableError(f"the events file {self.path} cannot be trimmed ({exc}); nothing "
                                             "was removed") from None
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
            self._fsync_folder()  # the rename is durable
        return _result(self, watermark, prefix, removed, total, dry_run)

    def _total(self) -> int:
        info = self.trim_info()
        return int(info["removed_total"]) if info else 0

    def trim_info(self) -> dict[str, Any] | None:
        try:
            with open(self.path, "rb") as fh:
                base, _, doc = _header(fh)
        except FileNotFoundError:
            return None
        if not doc:
            return None
        return {"at": doc.get("trimmed_at"), "watermark": doc.get("watermark"), "removed": doc.get("trimmed"),
                "removed_total": doc.get("trimmed_entries"), "log_start": str(base)}

    # ---------------------------------------------------------------- what replicas serve
    def report_replica(self, replica: str, record: Mapping[str, Any]) -> None:
        self.replicas_dir.mkdir(parents=True, exist_ok=True)
        path = self.replicas_dir / f"{_replica_name(replica)}.json"
        tmp = path.with_name(path.name + f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(orjson.dumps({**record, "replica": replica}))
        os.replace(tmp, path)

    def withdraw_replica(self, replica: str) -> None:
        (self.replicas_dir / f"{_replica_name(replica)}.json").unlink(missing_ok=True)

    def replicas(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        if not self.replicas_dir.is_dir():
            return out
        for path in sorted(self.replicas_dir.glob("*.json")):
            try:
                doc = orjson.loads(path.read_bytes())
                out[str(doc["replica"])] = doc
            except (OSError, *PARSE_ERRORS):
                continue  # withdrawn meanwhile, or not a record
        return out


# Atomic on the Redis server: refuse the whole batch on a conflicting id, else add each event whose
# id is new. KEYS: stream, ids hash. ARGV: n, then per event: id, content|ts, ts given (1/0), payload.
_APPEND_LUA = """
local n = tonumber(ARGV[1])
for i = 0, n - 1 do
  local b = 2 + i * 4
  local old = redis.call('HGET', KEYS[2], ARGV[b])
  if old then
    local new = ARGV[b + 1]
    local sep_old, sep_new = string.find(old, '|', 1, true), string.find(new, '|', 1, true)
    if string.sub(old, 1, sep_old - 1) ~= string.sub(new, 1, sep_new - 1)
       or (ARGV[b + 2] == '1' and string.sub(old, sep_old + 1) ~= string.sub(new, sep_new + 1)) then
      return {'conflict', ARGV[b]}
    end
  end
end
local out = {'ok'}
for i = 0, n - 1 do
  local b = 2 + i * 4
  if redis.call('HSETNX', KEYS[2], ARGV[b], ARGV[b + 1]) == 1 then
    out[#out + 1] = redis.call('XADD', KEYS[1], '*', 'e', ARGV[b + 3])
  else
    out[#out + 1] = ''
  end
end
return out
"""


# Atomic on the Redis server: trim the stream below ARGV[1] and count it. KEYS: stream, trim hash.
# ARGV: the bound (an entry id), now, the watermark.
_TRIM_LUA = """
local n = redis.call('XTRIM', KEYS[1], 'MINID', '=', ARGV[1])
local total = redis.call('HINCRBY', KEYS[2], 'removed_total', n)
redis.call('HSET', KEYS[2], 'at', ARGV[2], 'watermark', ARGV[3], 'bound', ARGV[1], 'removed', n)
return {n, total}
"""


def redact(url: str) -> str:
    """``url`` without its password (for messages and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _entries(reply: Any) -> list[Any]:
    """The ``(id, fields)`` entries of a one-stream XREAD reply: ``[[key, entries]]`` (RESP2, and
    RESP3 as redis-py 8 returns it) or ``{key: entries}`` / ``{key: [entries]}`` (RESP3, older
    clients)."""
    if not reply:
        return []
    if isinstance(reply, Mapping):
        found = list(next(iter(reply.values())))
        if len(found) == 1 and isinstance(found[0], list) and (not found[0] or isinstance(found[0][0], list | tuple)):
            found = found[0]
        return found
    return list(reply[0][1])


def stream_id(value: str) -> tuple[int, int]:
    """A stream entry id as a comparable pair (``"1700000000000-3"`` -> (1700000000000, 3))."""
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)


def next_stream_id(value: str) -> str:
    """The smallest entry id after ``value`` (``"1700000000000-3"`` -> ``"1700000000000-4"``)."""
    ms, seq = stream_id(value)
    return f"{ms}-{seq + 1}"


def _stream_record(fields: Any) -> EventRecord:
    """The record of a stream entry's fields; raises for anything that is not one."""
    payload = fields.get(b"e", fields.get("e")) if isinstance(fields, Mapping) else None
    if payload is None:
        raise KeyError("field 'e'")
    return EventRecord.from_json(payload if isinstance(payload, bytes) else str(payload).encode())


class RedisEventStream(EventStore):
    """One Redis Stream shared by every replica (see the module docstring). Keys: ``{key}`` (the
    stream; one field ``e`` per entry, the record's JSON) and ``{key}:ids`` (event id -> content
    digest and ts), ``{key}:replicas`` (replica -> what it serves) and ``{key}:trim`` (the last
    trim), all with the hash tag ``{key}`` so a cluster keeps them on one node."""

    kind = "redis"
    start = "0-0"

    def __init__(self, url: str, key: str = "recsys:events", timeout: float = 2.0):
        import redis

        self.url, self._where = url, redact(url)
        self.stream, self.ids = f"{{{key}}}", f"{{{key}}}:ids"
        self.replicas_key, self.trim_key = f"{{{key}}}:replicas", f"{{{key}}}:trim"
        self.timeout = timeout
        self._redis = redis
        try:
            self.client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
            # blocking reads hold their connection for up to a poll: their own client, longer timeout
            self.reader = redis.Redis.from_url(url, socket_timeout=timeout + 30.0, socket_connect_timeout=timeout)
        except ValueError as exc:
            raise InputError(f"events stream URL {self._where!r}: {exc}") from None
        self._append = self.client.register_script(_APPEND_LUA)
        self._trim = self.client.register_script(_TRIM_LUA)
        self._error: str | None = None

    @property
    def where(self) -> str:
        return self._where

    @property
    def error(self) -> str | None:
        return self._error

    def _call(self, doing: str, fn: Callable[[], Any], then: str = "") -> Any:
        """``fn()``; a Redis that cannot be reached (or refuses the command: out of memory, a
        read-only replica) is :class:`EventsUnavailableError` saying where and why, + ``then``."""
        try:
            out = fn()
        except (self._redis.exceptions.ConnectionError, self._redis.exceptions.TimeoutError,
                self._redis.exceptions.ResponseError, OSError) as exc:
            first = self._error is None
            self._error = f"{type(exc).__name__}: {exc}"
            if first:
                log.error("events stream %s cannot be reached while %s (%s)", self._where, doing, self._error)
            raise EventsUnavailableError(
                f"the events stream at {self._where} cannot be reached ({self._error}) while {doing}{then}"
            ) from None
        if self._error is not None:
            log.warning("events stream %s is reachable again", self._where)
            self._error = None
        return out

    def check(self) -> None:
        self._call("connecting", self.client.ping)

    def append(self, items: Sequence[Incoming], catch_up: CatchUp) -> list[bool]:
        if not items:
            return []
        args: list[Any] = [len(items)]
        for it in items:
            args += [it.event_id, it.seen.encode(), "1" if it.ts_given else "0", it.line]
        reply = self._call(
            "recording events", lambda: self._append(keys=[self.stream, self.ids], args=args),
            ": the events were not acknowledged (they may or may not have been stored); retry with the same "
            "event_ids or Idempotency-Key -- a retry is applied once",
        )
        if _text(reply[0]) == "conflict":
            raise _conflict(_text(reply[1]))
        return [bool(_text(sid)) for sid in reply[1:]]

    def _batch(self, cursor: Cursor, reply: Any) -> ReadBatch:
        records: list[EventRecord] = []
        bad, last = 0, str(cursor)
        for sid, fields in _entries(reply):
            last = _text(sid)
            try:
                records.append(_stream_record(fields))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, OverflowError, AttributeError) as exc:
                bad += 1
                log.warning("events stream %s: entry %s skipped: cannot be parsed (%s)", self._where, last, exc)
        return ReadBatch(records, last, bad)

    def read(self, cursor: Cursor) -> ReadBatch:
        reply = self._call("reading events",
                           lambda: self.client.xread({self.stream: str(cursor)}, count=READ_CHUNK))
        return self._batch(cursor, reply)

    def wait(self, cursor: Cursor, timeout: float) -> ReadBatch:
        ms = max(1, int(timeout * 1000))
        reply = self._call("following the stream",
                           lambda: self.reader.xread({self.stream: str(cursor)}, count=READ_CHUNK, block=ms))
        return self._batch(cursor, reply)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "stream": self.stream}

    # ---------------------------------------------------------------- trimming
    def _scan(self) -> Iterator[LogEntry]:
        """Every entry from the head of the stream, read :data:`READ_CHUNK` at a time as the
        caller goes on."""
        after = "-"
        while True:
            reply = self._call("reading the stream to trim it",
                               lambda lo=after: self.client.xrange(self.stream, min=lo, count=READ_CHUNK))
            if not reply:
                return
            for sid, fields in reply:
                sid = _text(sid)
                try:
                    record: EventRecord | None = _stream_record(fields)
                except (*PARSE_ERRORS, AttributeError):
                    record = None
                yield LogEntry(sid, next_stream_id(sid), record)
            after = "(" + _text(reply[-1][0])

    def trim(self, watermark: datetime, *, dry_run: bool = False) -> TrimResult:
        prefix = folded_prefix(self._scan(), watermark)
        if dry_run or prefix.bound is None:
            info = None if dry_run else self.trim_info()
            total = None if dry_run else int((info or {}).get("removed_total") or 0)
            return _result(self, watermark, prefix, len(prefix.records), total, dry_run)
        bound = str(prefix.bound)  # an entry appended meanwhile has a greater id: XTRIM keeps it
        removed, total = self._call("trimming the stream", lambda: self._trim(
            keys=[self.stream, self.trim_key], args=[bound, utc_iso(datetime.now(UTC)), utc_iso(watermark)]))
        return _result(self, watermark, prefix, int(removed), int(total), dry_run)

    def trim_info(self) -> dict[str, Any] | None:
        raw = self._call("reading the last trim", lambda: self.client.hgetall(self.trim_key))
        if not raw:
            return None
        doc = {_text(k): _text(v) for k, v in raw.items()}
        return {"at": doc.get("at"), "watermark": doc.get("watermark"), "removed": int(doc.get("removed", 0)),
                "removed_total": int(doc.get("removed_total", 0)), "log_start": doc.get("bound")}

    # ---------------------------------------------------------------- what replicas serve
    def report_replica(self, replica: str, record: Mapping[str, Any]) -> None:
        payload = orjson.dumps({**record, "replica": replica})
        self._call("recording what this replica serves",
                   lambda: self.client.hset(self.replicas_key, replica, payload))

    def withdraw_replica(self, replica: str) -> None:
        self._call("withdrawing this replica's record", lambda: self.client.hdel(self.replicas_key, replica))

    def replicas(self) -> dict[str, dict[str, Any]]:
        raw = self._call("reading what the replicas serve", lambda: self.client.hgetall(self.replicas_key))
        out: dict[str, dict[str, Any]] = {}
        for key, value in (raw or {}).items():
            try:
                doc = orjson.loads(value)
            except PARSE_ERRORS:
                continue
            if isinstance(doc, dict):
                out[_text(key)] = doc
        return out


def is_stream_url(value: str | None) -> bool:
    return bool(value) and urlsplit(str(value)).scheme in STREAM_SCHEMES


# one store per (stream, key) and process: a reload's new state shares the old one's connections
_STREAMS: dict[tuple[str, str], RedisEventStream] = {}
_STREAMS_LOCK = threading.Lock()


def open_store(*, stream: str | None, stream_key: str, path: Path, timeout: float = 2.0) -> EventStore:
    """The Redis stream when ``stream`` is a ``redis://`` / ``rediss://`` / ``unix://`` URL,
    else the events file at ``path``."""
    if stream:
        if not is_stream_url(stream):
            raise InputError(f"events stream {redact(stream)!r}: expected a redis://, rediss:// or unix:// URL")
        with _STREAMS_LOCK:
            store = _STREAMS.get((stream, stream_key))
            if store is None:
                store = _STREAMS[(stream, stream_key)] = RedisEventStream(stream, stream_key, timeout)
        return store
    return FileEventLog(path)

