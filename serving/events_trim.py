"""Trimming the live-events log (``recsys events trim``): how far every bundle that is served or
could be loaded allows, then one :meth:`~serving.events.EventStore.trim` -- the same for the Redis
stream and the local events folder.

A bundle holds every purchase before its events watermark (:func:`recsys.bundle.events_watermark`)
and a server replays only the events at or after it, so the log may drop an event once it is before
the watermark of every bundle that

* a replica may load: each version of the registered model that holds an **alias** (``champion``,
  ``challenger``, any other -- what ``recsys serve --alias``, a reload by alias and an A/B arm
  resolve; give a rollback target an alias such as ``previous`` to keep it replayable), and each
  bundle **folder** named (replicas serving ``--bundle DIR``);
* a replica **serves now**: the record each serving process keeps in the store
  (:mod:`serving.replicas`). During a rolling reload a replica still on the old bundle holds the
  log back to the old watermark until it has reloaded (or stopped). A record not refreshed for
  ``stale_after`` seconds (a replica that died without withdrawing it) is ignored and removed: when
  that replica starts again it loads what the first point covers.

The trim goes to the lowest of those watermarks, and removes only the records at the head of the
log before it (:func:`serving.events.folded_prefix`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from recsys.bundle import BundleError, events_watermark
from recsys.errors import InputError, RecsysError
from serving.events import EventStore, TrimResult, parse_ts, utc_iso

log = logging.getLogger("serving.events")

DEFAULT_STALE_AFTER = 300.0  # seconds: ten heartbeats of a replica (events_replica_heartbeat_seconds)


@dataclass(frozen=True)
class Hold:
    """Something that needs the events from ``watermark`` on: a bundle, or a replica serving one."""

    what: str
    watermark: datetime


@dataclass
class TrimPlan:
    holds: list[Hold]
    stale: dict[str, dict[str, Any]] = field(default_factory=dict)  # replica records ignored as stale

    @property
    def watermark(self) -> datetime:
        return min(h.watermark for h in self.holds)

    @property
    def lowest(self) -> list[Hold]:
        """What holds the log back (the holds at the lowest watermark)."""
        return [h for h in self.holds if h.watermark == self.watermark]


def _bundle_watermark(meta: dict[str, Any], what: str) -> datetime:
    mark = events_watermark(meta)
    if mark is None:
        raise BundleError(f"{what}: bundle.json records no date its data ends (as_of), so which live events it "
                          "holds is unknown; nothing was trimmed")
    return mark


def registry_holds(registered_model: str, tracking_uri: str | None = None) -> list[Hold]:
    """Every version of ``registered_model`` that holds an alias, with its bundle's watermark."""
    from recsys.pyfunc import (
        get_registered_model,
        mlflow_client,
        registered_bundle_meta,
        resolve_tracking_uri,
    )

    uri = resolve_tracking_uri(tracking_uri)
    client = mlflow_client(uri)
    aliases = {a: str(v) for a, v in (get_registered_model(client, registered_model).aliases or {}).items()}
    if not aliases:
        raise RecsysError(f"{registered_model!r} has no version with an alias, so nothing says which one replicas "
                          "load (set one with `recsys promote`); nothing was trimmed")
    by_version: dict[str, list[str]] = {}
    for alias, version in sorted(aliases.items()):
        by_version.setdefault(version, []).append(alias)
    holds = []
    for version, names in sorted(by_version.items(), key=lambda kv: int(kv[0])):
        what = f"{registered_model} v{version} ({', '.join(names)})"
        holds.append(Hold(what, _bundle_watermark(registered_bundle_meta(client, registered_model, version, uri), what)))
    return holds


def bundle_holds(folders: list[Path]) -> list[Hold]:
    """Each bundle folder's watermark (read from its ``bundle.json``)."""
    holds = []
    for folder in folders:
        meta_path = Path(folder) / "bundle.json"
        if not meta_path.is_file():
            raise BundleError(f"{folder} is not a model bundle (no bundle.json); nothing was trimmed")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise BundleError(f"{meta_path} is not valid JSON ({exc}); nothing was trimmed") from None
        if not isinstance(meta, dict):
            raise BundleError(f"{meta_path} is not a JSON object; nothing was trimmed")
        holds.append(Hold(f"bundle {folder}", _bundle_watermark(meta, str(folder))))
    return holds


def replica_holds(store: EventStore, stale_after: float, now: datetime | None = None
                  ) -> tuple[list[Hold], dict[str, dict[str, Any]]]:
    """The replicas' records: a hold for each refreshed within ``stale_after`` seconds, and the
    stale ones."""
    now = now or datetime.now(UTC)
    holds: list[Hold] = []
    stale: dict[str, dict[str, Any]] = {}
    for replica, record in sorted(store.replicas().items()):
        try:
            mark, at = parse_ts(str(record["watermark"])), parse_ts(str(record["at"]))
        except (KeyError, TypeError, ValueError):
            raise InputError(f"the record of replica {replica!r} in {store.where} does not say what it serves "
                             f"({str(record)[:200]}); nothing was trimmed. Stop that replica or remove the record") from None
        if now - at > timedelta(seconds=stale_after):
            stale[replica] = record
            continue
        versions = ", ".join(str(b.get("version")) for b in record.get("bundles") or [] if isinstance(b, dict))
        holds.append(Hold(f"replica {replica} serving {versions or 'a bundle'}", mark))
    return holds, stale


def plan_trim(store: EventStore, *, registered_model: str | None = None, tracking_uri: str | None = None,
              bundles: list[Path] | None = None, stale_after: float = DEFAULT_STALE_AFTER,
              now: datetime | None = None) -> TrimPlan:
    """What may be trimmed (see the module docstring)."""
    if not registered_model and not bundles:
        raise InputError("say what replicas load: --registered-model NAME (every version with an alias) and/or "
                         "--bundle DIR; what replicas serve now does not say what a restart loads")
    holds = registry_holds(registered_model, tracking_uri) if registered_model else []
    holds += bundle_holds(list(bundles or []))
    live, stale = replica_holds(store, stale_after, now)
    return TrimPlan(holds + live, stale)


def run_trim(store: EventStore, plan: TrimPlan, *, dry_run: bool = False) -> TrimResult:
    """Trim ``store`` to ``plan``'s watermark; stale replica records are removed with it."""
    lowest = "; ".join(f"{h.what} ({utc_iso(h.watermark)})" for h in plan.lowest)
    log.info("events log %s: trimming to the watermark %s, held by %s", store.where, utc_iso(plan.watermark), lowest)
    for replica, record in plan.stale.items():
        log.warning("events log %s: replica %s last recorded what it serves at %s: stale, ignored%s", store.where,
                    replica, record.get("at"), "" if dry_run else " and removed")
    result = store.trim(plan.watermark, dry_run=dry_run)
    if not dry_run:
        for replica in plan.stale:
            store.withdraw_replica(replica)
    return result
