"""The production app plus benchmark-only routes, for ``experiments/bench_serving.py``.

``uvicorn --factory experiments.bench_serving_app:create_app`` builds exactly what
``serving.app:create_app_from_env`` builds (same settings, middleware, lifespan, thread pool) and,
only here, adds:

* ``Server-Timing: app;dur=<ms>`` on every response: time from the request entering the app to the
  response headers being sent (for a JSON route that is all the work: validation, scoring,
  serialisation). The client-side figures still come from the load generator.
* with ``RECSYS_BENCH_BARE=1``: ``GET /bench/bare`` (async) and ``GET /bench/bare-sync`` (a ``def``
  handler, run in the thread pool) returning ``{"ok": true}`` -- the baseline a real route is held
  against, served by the same process with the same settings.
* with ``RECSYS_BENCH_VARIANTS=1``: twins of the picks route, to compare handler styles and JSON
  encoders without editing production code:

  - ``GET /bench/picks-sync/{member_id}``: the same work in a ``def`` handler (thread pool);
  - ``GET /bench/picks-orjson/{member_id}``: async, the pydantic model dumped with ``orjson``
    and returned as bytes, skipping FastAPI's response-model validation pass;
  - ``GET /bench/recall?k=&queries=&seed=&value_segment=``: :func:`serving.index.recall_at_k` of the
    loaded member index (HNSW above ``exact_max_members``) against exact search, queried with
    product vectors as audiences are -- measured on the server's own index, so a 1M-member HNSW
    graph is built once, not again in the benchmark process.
* with ``RECSYS_BENCH_PATCH_GATHER=1``: a candidate fix for ``recsys.models.hybrid._gather``
  monkeypatched in (experiments only): it gathers from the rows of the requested members instead
  of building a key array over the whole matrix on every call. Same values.

Nothing in ``serving/`` imports this module.
"""

from __future__ import annotations

import os
import time
from typing import Annotated, Any

import orjson
from fastapi import Depends, FastAPI, Path
from fastapi.responses import Response

from serving import service
from serving.app import create_app_from_env
from serving.deps import State, require
from serving.keys import Principal
from serving.schemas import PicksResponse

Caller = Annotated[Principal, Depends(require("picks"))]
MemberId = Annotated[str, Path(min_length=1, max_length=200)]


class ServerTiming:
    """Pure ASGI middleware (outermost): adds ``Server-Timing: app;dur=<ms>`` to each response."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()

        async def send_timed(message: Any) -> None:
            if message["type"] == "http.response.start":
                dur = (time.perf_counter() - start) * 1000.0
                headers = list(message.get("headers", []))
                headers.append((b"server-timing", f"app;dur={dur:.3f}".encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_timed)


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes"}


def _row_restricted_gather() -> None:
    import numpy as np
    import scipy.sparse as sp

    from recsys.models import hybrid

    whole = hybrid._gather

    def gather(m: Any, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        m = m if sp.isspmatrix_csr(m) else sp.csr_matrix(m)
        rows = np.asarray(rows, dtype=np.int64)
        if m.nnz == 0 or len(rows) == 0:
            return np.zeros(len(rows), dtype=np.float32)
        uniq, inv = np.unique(rows, return_inverse=True)
        if len(uniq) * 8 < m.shape[0]:  # few members (serving): only their rows
            return whole(m[uniq], inv, cols)
        return whole(m, rows, cols)

    hybrid._gather = gather


def create_app() -> FastAPI:
    if _flag("RECSYS_BENCH_PATCH_GATHER"):
        _row_restricted_gather()
    app = create_app_from_env()

    if _flag("RECSYS_BENCH_BARE"):

        @app.get("/bench/bare", include_in_schema=False)
        async def bare() -> dict[str, bool]:
            return {"ok": True}

        @app.get("/bench/bare-sync", include_in_schema=False)
        def bare_sync() -> dict[str, bool]:
            return {"ok": True}

    if _flag("RECSYS_BENCH_VARIANTS"):

        @app.get("/bench/picks-sync/{member_id}", include_in_schema=False)
        def picks_sync(state: State, _: Caller, member_id: MemberId, k: int = 10) -> PicksResponse:
            return service.picks(state, [member_id], k, "replenish")[0]

        @app.get("/bench/picks-orjson/{member_id}", include_in_schema=False)
        async def picks_orjson(state: State, _: Caller, member_id: MemberId, k: int = 10) -> Response:
            result = service.picks(state, [member_id], k, "replenish")[0]
            return Response(orjson.dumps(result.model_dump()), media_type="application/json")

        @app.get("/bench/recall", include_in_schema=False)
        def recall(
            state: State, _: Annotated[Principal, Depends(require("audiences"))], k: int = 10,
            queries: int = 200, seed: int = 0, value_segment: str | None = None,
        ) -> dict[str, Any]:
            import numpy as np

            from serving.index import VectorIndex, brute_force, recall_at_k

            index = getattr(state.scorer, "member_index", None)
            if not isinstance(index, VectorIndex):
                return {"error": f"scorer {state.scorer.kind!r} has no member vector index"}
            items = state.scorer.items  # type: ignore[attr-defined]
            q = items[np.random.default_rng(seed).choice(len(items), size=min(queries, len(items)), replace=False)]
            start = time.perf_counter()
            if value_segment is None:
                value = recall_at_k(index, q, k)
                share = 1.0
            else:  # a tag filter, applied inside the search as audiences do
                allowed = state.tag_masks["value_segment"][value_segment]
                exact, _ = brute_force(index.vectors, q, k, allowed)
                approx, _ = index.search(q, k, allowed)
                hits = [len(np.intersect1d(a[a >= 0], e[e >= 0])) / max(int((e >= 0).sum()), 1)
                        for a, e in zip(approx, exact, strict=True)]
                value, share = float(np.mean(hits)), float(allowed.mean())
            return {"recall": value, "k": k, "queries": len(q), "filter_share": share,
                    "seconds": time.perf_counter() - start, "index": index.describe()}

    app.add_middleware(ServerTiming)  # added last: outermost, so it times everything inside
    return app
