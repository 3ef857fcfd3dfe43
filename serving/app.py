"""The FastAPI application: :func:`create_app` wires settings, keys, metrics and routers; the
``lifespan`` loads the model (once), tails the live-events file and records what it serves there.

Nothing heavy happens at import or in :func:`create_app`: the bundle, FAISS indexes and tag columns
are built in the lifespan (in a worker thread, so ``/health/live`` answers while a large bundle
loads; ``/health/ready`` turns 200 once it is in). Routes get the current state through
``Annotated`` dependencies (:mod:`serving.deps`).

Examples
--------
>>> from serving.settings import ServingSettings
>>> app = create_app(ServingSettings(bundle="bundles/latest", auth_disabled=True))  # doctest: +SKIP
>>> # uvicorn.run(app) or: uvicorn --factory serving.app:create_app_from_env
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException

from recsys.errors import RecsysError
from serving.audit import AuditLog
from serving.db import Database
from serving.downloads import remove_in_progress
from serving.errors import status_of
from serving.keys import load_key_store
from serving.limits import BodyLimitMiddleware
from serving.memory import release_memory
from serving.metrics import Metrics, MetricsMiddleware
from serving.replicas import ReplicaReport
from serving.routers import (
    admin,
    audiences,
    campaigns,
    console,
    events,
    health,
    picks,
    similar,
    tags,
)
from serving.settings import ServingSettings
from serving.state import StateHolder, resolve_and_build

log = logging.getLogger("serving")
DOCS_ASSETS = "/docs-assets"
FASTAPI_BODY_ERROR = "There was an error parsing the body"


def limit_threads(n: int) -> None:
    """Pin BLAS / OpenMP to ``n`` threads in this process: a web server's own concurrency (thread
    pool, one worker per core) fights multi-threaded BLAS — measured 35 req/s vs 1,000 req/s."""
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(n))
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=n)
    import faiss

    faiss.omp_set_num_threads(n)


# The docs pages may load nothing from beyond this server: ReDoc's bundle still shows a logo from
# its vendor's CDN (an <img> that hides itself when it fails to load); the browser blocks it here.
DOCS_POLICY = (
    b"default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    b"script-src 'self' 'unsafe-inline'; worker-src 'self' blob:; font-src 'self' data:; connect-src 'self'"
)


class DocsPolicyMiddleware:
    """Adds :data:`DOCS_POLICY` (Content-Security-Policy) to the ``/docs`` and ``/redoc`` pages."""

    def __init__(self, app: Any, paths: tuple[str, ...] = ("/docs", "/redoc")):
        self.app = app
        self.paths = paths

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return

        async def with_policy(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"content-security-policy", DOCS_POLICY)]
            await send(message)

        await self.app(scope, receive, with_policy)


def _json(status: int, detail: str, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps({"detail": detail}), status_code=status, media_type="application/json",
                    headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:10]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


async def _load(app: FastAPI) -> None:
    holder: StateHolder = app.state.holder
    settings: ServingSettings = app.state.settings
    holder.loading = True
    try:
        state = await anyio.to_thread.run_sync(lambda: resolve_and_build(settings))
        holder.state, holder.error = state, None
        app.state.metrics.set_model(state.info.version, state.info.model, state.info.run_id)
        app.state.replica.add(state)
        del state
        await anyio.to_thread.run_sync(app.state.replica.publish)
        await anyio.to_thread.run_sync(release_memory)  # what loading needed only while it ran
    except RecsysError as exc:
        holder.error = str(exc)
        log.error("start-up model load failed: %s", exc)
    except Exception as exc:  # noqa: BLE001 - report any start-up failure through /health/ready
        holder.error = f"{type(exc).__name__}: {exc}"
        log.exception("start-up model load failed")
    finally:
        holder.loading = False


async def _tail_events(app: FastAPI, every: float) -> None:
    """Apply events other processes store (the shared file, or the stream other replicas write):
    each call waits up to ``every`` seconds for new ones (serving.state.ServingState.follow_events)."""
    while True:
        state = app.state.holder.state
        if state is None:
            await asyncio.sleep(every)
            continue
        try:
            await anyio.to_thread.run_sync(state.follow_events, every, abandon_on_cancel=True)
        except Exception:  # noqa: BLE001 - a bad tail must not stop the loop
            log.exception("applying live events failed")
            await asyncio.sleep(every)


async def _heartbeat(app: FastAPI, every: float) -> None:
    """Refresh this app's record of what it serves in the events store (serving.replicas)."""
    while True:
        await asyncio.sleep(every)
        try:
            await anyio.to_thread.run_sync(app.state.replica.publish, abandon_on_cancel=True)
        except Exception:  # noqa: BLE001 - a failed heartbeat must not stop the loop
            log.exception("recording what this replica serves failed")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: ServingSettings = app.state.settings
    limit_threads(settings.blas_threads)
    tasks: list[asyncio.Task[None]] = []
    if settings.load_in_background:
        tasks.append(asyncio.create_task(_load(app)))
    else:
        await _load(app)
    if settings.events_poll_seconds > 0:
        tasks.append(asyncio.create_task(_tail_events(app, settings.events_poll_seconds)))
    if settings.events_replica_heartbeat_seconds > 0:
        tasks.append(asyncio.create_task(_heartbeat(app, settings.events_replica_heartbeat_seconds)))
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await anyio.to_thread.run_sync(app.state.replica.withdraw)  # this app no longer holds the log back
        remove_in_progress()  # a load still running in a worker thread leaves no download behind


def create_app(settings: ServingSettings) -> FastAPI:
    """The application for ``settings``; the model loads when the app starts (its lifespan)."""
    # /docs and /redoc with Swagger UI's and ReDoc's scripts served from the fastapi-offline
    # package (under DOCS_ASSETS), not a CDN: they work on a retailer's intranet
    app = FastAPIOffline(
        title="recsys serving",
        version="1",
        summary="Picks for members (以人找物) and audiences for products (以物找人).",
        lifespan=lifespan,
        static_url=DOCS_ASSETS,
    )
    app.state.settings = settings
    app.state.holder = StateHolder()
    app.state.metrics = Metrics()
    app.state.keys = None if settings.auth_disabled else load_key_store(settings.api_keys, settings.api_keys_file)
    app.state.db = Database(settings.campaign_db)  # migrated on first use (serving.db)
    app.state.audit = AuditLog(app.state.db)  # the audit trail: a table of the same database
    app.state.challengers = {}  # registry alias / version -> state, for A/B campaigns
    app.state.replica = ReplicaReport(app.state.metrics)  # what this app serves, recorded for trimming
    if settings.auth_disabled:
        log.warning("RECSYS_AUTH_DISABLED is set: every request is treated as admin (development only)")

    for router in (health.router, picks.router, similar.router, audiences.router, campaigns.router, tags.router,
                   events.router, admin.router):
        app.include_router(router)
    console.mount(app)  # the web console at /console (static files)

    @app.exception_handler(RecsysError)
    async def recsys_error(request: Request, exc: RecsysError) -> Response:
        status = status_of(exc)
        return _json(status, str(exc), {"Retry-After": "5"} if status == 503 else None)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        return _json(422, _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        detail = str(exc.detail)
        if exc.status_code == 400 and detail == FASTAPI_BODY_ERROR:  # FastAPI's words for a body it cannot decode
            detail = "the request body could not be parsed: send JSON encoded as UTF-8 (Content-Type: application/json)"
        return _json(exc.status_code, detail, dict(exc.headers or {}) or None)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _json(500, "internal error; the server log has the details")

    # sizes and times bounded before anything reads a body; inside the metrics, so 413s are counted
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes,
                       read_timeout=settings.body_timeout_seconds, upload_paths=campaigns.UPLOAD_PATHS,
                       max_upload_bytes=settings.max_upload_bytes)
    app.add_middleware(DocsPolicyMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    return app


def create_app_from_env() -> FastAPI:
    """``uvicorn --factory serving.app:create_app_from_env``: settings from ``RECSYS_*``."""
    return create_app(ServingSettings())
