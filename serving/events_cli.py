"""``recsys events ...``: the live-events log (the local events folder or the Redis stream the
replicas share). ``trim`` drops the events every bundle that is served or could be loaded already
holds (:mod:`serving.events_trim`); the job that makes bundles runs it after the replicas have
reloaded the new one."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from recsys.errors import RecsysError

app = typer.Typer(no_args_is_help=True, help="The live-events log: trim what every bundle holds already.")
out = Console()
err = Console(stderr=True)


def _fail(exc: Exception) -> None:
    err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def open_log(events: str | None, stream_key: str, timeout: float = 5.0):  # noqa: ANN201 - lazy import
    """The store ``recsys serve --events`` would use: a Redis URL, else a folder (default
    ``$RECSYS_EVENTS_STREAM``, then ``$RECSYS_EVENTS_DIR``, then ``events``)."""
    from serving.events import is_stream_url, open_store

    where = events or os.environ.get("RECSYS_EVENTS_STREAM") or os.environ.get("RECSYS_EVENTS_DIR") or "events"
    stream = where if is_stream_url(where) else None
    if stream is None and "://" in where:
        raise RecsysError(f"--events {where!r}: give a folder, or a Redis URL (redis://, rediss://, unix://)")
    if stream is None and not Path(where).is_dir():
        raise RecsysError(f"no events folder at {where}: pass the folder `recsys serve --events` writes, or its "
                          "Redis URL")
    store = open_store(stream=stream, stream_key=stream_key, path=Path(where) / "events.jsonl", timeout=timeout)
    store.check()
    return store


@app.command("trim")
def trim(
    events: Annotated[str | None, typer.Option(help="The events log: a folder (default: events) or a Redis URL, "
                                               "as given to `recsys serve --events`.")] = None,
    stream_key: Annotated[str, typer.Option(help="The stream's key (RECSYS_EVENTS_STREAM_KEY of the servers).")]
    = "recsys:events",
    registered_model: Annotated[str | None, typer.Option(help="Registered model the replicas serve: every version "
                                                         "with an alias holds the log back.")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI).")]
    = None,
    bundle: Annotated[list[Path] | None, typer.Option(help="A bundle folder replicas serve or may load "
                                                      "(repeatable).")] = None,
    stale_after: Annotated[float, typer.Option(min=0, help="Ignore (and remove) a replica's record not refreshed "
                                               "for this many seconds.")] = 300.0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be removed; remove nothing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")] = False,
) -> None:
    """Remove the events at the head of the log that every bundle which is served or could be
    loaded already holds: before the lowest events watermark (the day its data ends) of each
    aliased version of --registered-model, each --bundle, and each running replica's bundle."""
    from serving.events import utc_iso
    from serving.events_trim import plan_trim, run_trim

    try:
        store = open_log(events, stream_key)
        plan = plan_trim(store, registered_model=registered_model, tracking_uri=tracking_uri,
                         bundles=list(bundle or []), stale_after=stale_after)
        result = run_trim(store, plan, dry_run=dry_run)
    except (RecsysError, OSError) as exc:
        _fail(exc)
    if as_json:
        doc = {**result.to_json(), "holds": [{"what": h.what, "watermark": utc_iso(h.watermark)} for h in plan.holds],
               "stale_replicas": sorted(plan.stale)}
        out.print_json(json.dumps(doc))
        return
    out.print(f"events log {result.where}", highlight=False)
    for h in sorted(plan.holds, key=lambda h: (h.watermark, h.what)):
        mark = "  <- lowest" if h.watermark == plan.watermark else ""
        out.print(f"  {utc_iso(h.watermark)}  {h.what}{mark}", highlight=False)
    for replica, record in sorted(plan.stale.items()):
        out.print(f"  stale record of replica {replica} (last at {record.get('at')}): ignored"
                  + ("" if dry_run else " and removed"), highlight=False)
    verb = "would remove" if dry_run else "removed"
    out.print(f"{verb} {result.removed:,} event(s) before {utc_iso(result.watermark)}"
              + (f"; the log starts at {result.bound}" if result.removed and not dry_run else "")
              + (f"; {result.removed_total:,} trimmed in all" if result.removed_total is not None else ""),
              highlight=False)
    if result.first_kept:
        k = result.first_kept
        out.print(f"first kept: {k['event_id']} at {k['ts']} (position {k['position']})", highlight=False)
    if result.unparsable_at:
        out.print(f"[yellow]stopped at entry {result.unparsable_at}, which cannot be parsed: inspect it; every replica "
                  "skips it[/]", highlight=False)
