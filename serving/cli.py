"""``recsys serve``: run the HTTP server with uvicorn (the lead wires :func:`serve` into the CLI).

Settings travel to the worker processes through ``RECSYS_*`` environment variables, so one and
several workers start the same way (``uvicorn --factory serving.app:create_app_from_env``).
BLAS / OpenMP are pinned to one thread before numpy is imported by any worker.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import uvicorn

from recsys.errors import InputError
from serving.protocol import server_config
from serving.settings import ServerSettings, ServingSettings


def serve(
    bundle: Path | None = None,
    registered_model: str | None = None,
    alias: str = "champion",
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int | None = None,
    *,
    api_keys_file: Path | None = None,
    events: str | None = None,
    events_dir: Path | None = None,
    audit_log: Path | None = None,
    tracking_uri: str | None = None,
    campaign_db: str | None = None,
    campaign_purchases: Path | None = None,
    auth_disabled: bool = False,
    log_level: str = "info",
    access_log: bool = False,
    bundle_roots: list[Path] | None = None,
) -> None:
    """Serve ``bundle`` (a folder) or the ``alias`` version of ``registered_model`` until stopped.

    Parameters
    ----------
    bundle, registered_model, alias
        The model: a local bundle folder, or a registered model name and alias / version.
    host, port, workers
        Where to listen, and how many worker processes (each loads the model). Default: 2 when
        ``events`` is a Redis stream, else 1. Live events reach every worker through the shared
        events file or stream.
    api_keys_file
        TOML / JSON file of hashed keys (see :mod:`serving.keys`); required unless
        ``auth_disabled`` (development only) or ``RECSYS_API_KEYS`` is set.
    events
        Where live purchase events go: a folder (the local events file, the default ``events``),
        or a Redis URL (``redis://host:6379/0``, ``rediss://``, ``unix://``): the stream every
        replica shares. Redis must answer before the server listens.
    events_dir
        The events folder (same as a folder ``events``).
    audit_log
        No longer used, refused with a message: the audit trail is a table of ``campaign_db``.
    campaign_db
        The database of campaigns, suppression lists, contact history and the audit trail of every
        member list that leaves the server: SQLite by default (the workers of one machine),
        PostgreSQL by URL (replicas on several machines).
    bundle_roots
        Folders ``POST /v1/admin/reload {"bundle": ...}`` may load from (default: the folder
        holding ``bundle``; none for a registered model).
    access_log
        uvicorn's line per request. Off by default: ``/metrics`` counts every request by route and
        status, and writing the line cost about a fifth of the server's throughput (measured with
        ``experiments/bench_serving.py``, one worker, 16 connections: a bare endpoint 3,140 ->
        4,010 req/s, picks 2,745 -> 3,433 req/s without it).

    Raises
    ------
    InputError
        When the settings are inconsistent (both or neither model source, no keys, ...).

    Examples
    --------
    >>> serve(Path("bundles/latest"), api_keys_file=Path("keys.toml"), port=8080, workers=2)  # doctest: +SKIP
    """
    if (bundle is None) == (not registered_model):
        raise InputError("serve needs exactly one of a bundle folder or a registered model name")
    if audit_log is not None:
        raise InputError(f"--audit-log {str(audit_log)!r} is no longer used: the audit trail is the audit_entries "
                         "table of the campaign database (--campaign-db), shared by every replica; drop the option, "
                         "and bring the old file in with `recsys audit import FILE --db URL`")
    from serving.events import STREAM_SCHEMES, is_stream_url, redact

    if events is not None and "://" in events and not is_stream_url(events):
        raise InputError(f"--events {redact(events)!r}: give a folder, or a Redis URL "
                         f"({' / '.join(s + '://' for s in STREAM_SCHEMES)}, e.g. redis://127.0.0.1:6379/0)")
    # an explicit --events decides; without one, RECSYS_EVENTS_STREAM (if set) still does
    stream = os.environ.get("RECSYS_EVENTS_STREAM") if events is None else events if is_stream_url(events) else None
    if events is not None and stream is None:
        if events_dir is not None and Path(events) != Path(events_dir):
            raise InputError(f"--events {events!r} and --events-dir {str(events_dir)!r} name two places; give one")
        events_dir = Path(events)
    if workers is None:
        workers = 2 if stream else 1
    if workers < 1:
        raise InputError(f"--workers must be at least 1; got {workers}")
    env = {
        "RECSYS_BUNDLE": str(Path(bundle).resolve()) if bundle is not None else None,
        "RECSYS_REGISTERED_MODEL": registered_model,
        "RECSYS_ALIAS": alias,
        "RECSYS_API_KEYS_FILE": str(Path(api_keys_file).resolve()) if api_keys_file is not None else None,
        "RECSYS_EVENTS_DIR": str(Path(events_dir).resolve()) if events_dir is not None else None,
        "RECSYS_EVENTS_STREAM": stream,
        "RECSYS_MLFLOW_TRACKING_URI": tracking_uri,
        "RECSYS_CAMPAIGN_DB": campaign_db or os.environ.get("RECSYS_CAMPAIGN_DB"),
        "RECSYS_CAMPAIGN_PURCHASES": (str(Path(campaign_purchases).resolve()) if campaign_purchases is not None
                                      else os.environ.get("RECSYS_CAMPAIGN_PURCHASES")),
        "RECSYS_AUTH_DISABLED": "true" if auth_disabled else None,
        "RECSYS_BUNDLE_ROOTS": json.dumps([str(Path(r).resolve()) for r in bundle_roots]) if bundle_roots else None,
    }
    for key, value in env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")

    from pydantic import ValidationError

    from serving.app import create_app_from_env

    try:
        settings = ServingSettings()  # fail here, with the message, rather than in every worker
        check_events(settings)
        from serving.db import Database

        Database(settings.campaign_db).ensure().dispose()  # migrated once, before any worker starts
        if workers <= 1:
            app = create_app_from_env()  # also checks the keys before listening
        else:
            create_app_from_env()
    except ValidationError as exc:
        raise InputError(f"server settings: {exc.errors()[0]['msg']}") from None

    # timeouts, header limits and the connection limit from settings.server (RECSYS_SERVER__*)
    if workers <= 1:
        uvicorn.Server(server_config(app, settings.server, host=host, port=port, log_level=log_level,
                                     access_log=access_log)).run()
    else:
        run_workers("serving.app:create_app_from_env", host=host, port=port, workers=workers, log_level=log_level,
                    access_log=access_log, server=settings.server)


def check_events(settings: ServingSettings) -> None:
    """Stop before listening when the events store cannot be used (Redis down, a folder that is not
    writable), with a message naming it."""
    from serving.events import EventsUnavailableError, open_store

    store = open_store(stream=settings.events_stream, stream_key=settings.events_stream_key,
                       path=settings.events_file, timeout=settings.events_stream_timeout_seconds)
    try:
        store.check()
    except EventsUnavailableError as exc:
        hint = ("start Redis there (with appendonly yes) or pass another --events URL" if settings.events_stream
                else "pass another --events folder")
        raise InputError(f"cannot serve: {exc}; {hint}") from None


def run_workers(app: str, *, host: str, port: int, workers: int, log_level: str = "info",
                access_log: bool = True, server: ServerSettings | None = None) -> None:
    """``uvicorn.run(app, factory=True, workers=workers)`` with the server settings (timeouts,
    limits), on a TCP listener that keeps ``TCP_NODELAY`` on accepted connections (see
    :class:`serving.protocol.ServerConfig`)."""
    from uvicorn.supervisors import Multiprocess

    config = server_config(app, server, factory=True, host=host, port=port, workers=workers,
                           log_level=log_level, access_log=access_log)
    with contextlib.suppress(KeyboardInterrupt):
        Multiprocess(config, sockets=[config.bind_socket()]).run()
