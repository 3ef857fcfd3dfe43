"""What this serving process serves, recorded in the events store so that a trim of the events log
never removes what it would replay (:meth:`serving.events.EventStore.report_replica`).

Each app (a worker of ``recsys serve``, a replica on another machine) has one :class:`ReplicaReport`:
the states that follow the events log -- the model, and during a reload the new state beside the
old one still answering -- and, for each, the bundle's events watermark (a challenger loaded for an
A/B campaign replays the log once, when it is built, and follows it no further: it is not recorded). The record is
written when a state is loaded, refreshed every ``events_replica_heartbeat_seconds`` and withdrawn
when the app stops; ``recsys events trim`` never trims above the lowest watermark of a record that
is fresh (a replica that died without withdrawing stops refreshing its record, and a trim ignores
it once it is older than ``--stale-after``).

Recording is best effort: a store that cannot be reached is logged, and the next heartbeat tries
again (while it is down no trim can run either).
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import weakref
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from serving.events import EventStore, EventsUnavailableError, parse_ts, utc_iso

if TYPE_CHECKING:
    from serving.metrics import Metrics
    from serving.state import ServingState

log = logging.getLogger("serving.replicas")
_APPS = itertools.count(1)


def new_replica_id() -> str:
    """``host:pid`` of this process, and ``/n`` for the second and later app in it (tests)."""
    n = next(_APPS)
    return f"{socket.gethostname()}:{os.getpid()}" + (f"/{n}" if n > 1 else "")


class ReplicaReport:
    """The states one app serves and the record of them in the events store."""

    def __init__(self, metrics: Metrics | None = None, replica: str | None = None):
        self.replica = replica or new_replica_id()
        self.metrics = metrics
        self._states: dict[int, weakref.ref[ServingState]] = {}
        self._lock = threading.Lock()
        self._stores: dict[str, EventStore] = {}  # every store a record was written to, by where

    def add(self, state: ServingState) -> None:
        """Count ``state`` as served until it is dropped (held by nothing any more)."""
        with self._lock:
            self._states[id(state)] = weakref.ref(state)

    def served(self) -> list[ServingState]:
        with self._lock:
            alive = {k: r for k, r in self._states.items() if r() is not None}
            self._states = alive
            return [s for s in (r() for r in alive.values()) if s is not None]

    def record(self, states: list[ServingState]) -> dict[str, Any]:
        bundles = sorted(({"version": s.info.version, "source": s.info.source,
                           "watermark": utc_iso(s.events_watermark)} for s in states),
                         key=lambda b: b["watermark"])
        return {"replica": self.replica, "at": utc_iso(datetime.now(UTC)), "watermark": bundles[0]["watermark"],
                "bundles": bundles}

    def publish(self) -> None:
        """Write (or refresh) this app's record in its events store; best effort."""
        states = self.served()
        if not states:
            return
        record = self.record(states)
        store = states[0].events
        try:
            store.report_replica(self.replica, record)
            self._stores[store.where] = store
            trimmed = store.trim_info()
        except (EventsUnavailableError, OSError) as exc:
            log.warning("could not record what replica %s serves in %s: %s", self.replica, store.where, exc)
            return
        if self.metrics is not None:
            self.metrics.events_watermark.set(parse_ts(record["watermark"]).timestamp())
            if trimmed:
                self.metrics.events_trimmed.set(float(trimmed.get("removed_total") or 0))
                if trimmed.get("at"):
                    self.metrics.events_last_trim.set(parse_ts(str(trimmed["at"])).timestamp())

    def withdraw(self) -> None:
        """Remove this app's record from every store it was written to (the app stops)."""
        for store in list(self._stores.values()):
            try:
                store.withdraw_replica(self.replica)
            except (EventsUnavailableError, OSError) as exc:
                log.warning("could not withdraw replica %s's record from %s: %s (a trim ignores it once stale)",
                            self.replica, store.where, exc)
        self._stores.clear()
