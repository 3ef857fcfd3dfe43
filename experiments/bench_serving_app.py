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
* with ``RECSYS_BENCH_VARIANTS=1``: twins of the picks route, to compare handler styles and
  encoders without editing production code, and two measurements taken inside the server:

  - ``GET /bench/picks-sync/{member_id}``: the production route's work in a ``def`` handler
    (thread pool);
  - ``GET /bench/picks-fastapi/{member_id}``: the same answer the FastAPI way -- dependencies for
    key, role and state, six declared query parameters, a pydantic ``PicksResponse`` validated and
    serialised by FastAPI (what the route did before it read its query with one model);
  - ``GET /bench/picks-live/{member_id}``: the production route with the pre-ranked lists ignored
    (every member scored live by the model);
  - ``GET /bench/recall?k=&queries=&seed=&filter=``: recall of the loaded member index against
    exact search, queried with product vectors as audiences are -- the index as served (IVF at
    its calibrated nprobe, HNSW, or exact search where the index routes a large ``k`` or a
    restrictive filter; ``filter`` is ``high`` or ``high+mid,active``: value segments and a
    lifecycle) and, for HNSW, the graph alone -- measured on the server's own index;
  - ``GET /bench/agreement?members=&seed=&re_ranked=``: picks answered from the pre-ranked lists
    against the same requests scored live, for random known members (``re_ranked=true``: members
    whose lists were ranked again after live purchases), both modes, with and without a category
    filter and an exclusion; counts differences (product ids, order, scores, reasons).

Nothing in ``serving/`` imports this module.
"""

from __future__ import annotations

import os
import time
from typing import Annotated, Any

import orjson
from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.responses import Response

from serving.app import create_app_from_env
from serving.deps import State, authorize, current_state, require
from serving.keys import Principal
from serving.schemas import Mode, PicksResponse
from serving.service import picks as pick_service

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


def create_app() -> FastAPI:
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
        def picks_sync(request: Request, member_id: MemberId) -> Response:
            # the production handler's work in a def handler (thread pool), lists and orjson included
            state = current_state(request)
            authorize(request, "picks")
            result = pick_service.picks(state, [member_id], 10, "replenish")
            assert result is not None
            return Response(orjson.dumps(pick_service.picks_dict(state, result[0])), media_type="application/json")

        @app.get("/bench/picks-fastapi/{member_id}", include_in_schema=False)
        async def picks_fastapi(
            state: State, _: Caller, member_id: MemberId,
            k: Annotated[int, Query(ge=1, le=10_000)] = 10, mode: Mode = "replenish",
            category: Annotated[list[str] | None, Query()] = None, exclude: Annotated[list[str] | None, Query()] = None,
            segment: Annotated[str | None, Query(max_length=100)] = None,
        ) -> PicksResponse:
            # the same answer the FastAPI way: dependencies, declared parameters, a pydantic
            # response model validated and serialised by FastAPI
            result = pick_service.picks(state, [member_id], k, mode, category, exclude, segment)
            assert result is not None
            return pick_service.picks_response(state, result[0])

        @app.get("/bench/picks-live/{member_id}", include_in_schema=False)
        async def picks_live(request: Request, member_id: MemberId) -> Response:
            # the production route's work with the pre-ranked lists ignored: every member scored live
            state = current_state(request)
            authorize(request, "picks")
            result = pick_service.picks(state, [member_id], 10, "replenish", use_lists=False)
            assert result is not None
            return Response(orjson.dumps(pick_service.picks_dict(state, result[0])), media_type="application/json")

        @app.get("/bench/recall", include_in_schema=False)
        def recall(
            state: State, _: Annotated[Principal, Depends(require("audiences"))], k: int = 10,
            queries: int = 200, seed: int = 0, filter: str | None = None,  # noqa: A002
        ) -> dict[str, Any]:
            import numpy as np

            from recsys.ann import exact_top, recall_vs_exact
            from serving.index import VectorIndex

            index = getattr(state.scorer, "member_index", None)
            if not isinstance(index, VectorIndex):
                return {"error": f"scorer {state.scorer.kind!r} has no member vector index"}
            items = state.scorer.items  # type: ignore[attr-defined]
            q = items[np.random.default_rng(seed).choice(len(items), size=min(queries, len(items)), replace=False)]
            # filter: "high" (a value segment) or "high+mid,active" (segments, and a lifecycle)
            allowed = None
            if filter:
                seg, _, life = filter.partition(",")
                wanted = {"value_segment": seg.split("+")} | ({"lifecycle": [life]} if life else {})
                allowed = state.tag_mask(wanted)
            start = time.perf_counter()
            vecs = index.vectors
            rows = np.flatnonzero(allowed) if allowed is not None else None
            # exact top-k in blocks (FAISS's flat search): 200 queries x 10M scores would be 8 GB
            exact_s, exact = exact_top(vecs if rows is None else vecs[rows], q, k)
            if rows is not None:
                exact = np.where(exact >= 0, rows[np.maximum(exact, 0)], -1)

            def share(found: np.ndarray) -> float:  # a member tied with the k-th counts as found
                return recall_vs_exact(found, exact_s, exact, vecs, q)

            served = np.vstack([index.search(q[i : i + 1], k, allowed)[0] for i in range(len(q))])  # one at a time, as served
            route = "exact" if index.exact_for(k, allowed) else index.kind
            alone, nprobe = None, None
            if index.kind == "ivf":
                nprobe = index.nprobe(k, allowed)
            if index.kind == "hnsw" and k <= 1000:  # the graph alone, for what the routing avoids
                graph_i, _ = index._faiss_search(q, k, allowed)  # (above k=1,000 efSearch gets huge)
                alone = share(graph_i)
            return {"recall": share(served), "route": route, "nprobe": nprobe, "index_alone_recall": alone, "k": k,
                    "queries": len(q), "filter_share": 1.0 if allowed is None else float(allowed.mean()),
                    "seconds": time.perf_counter() - start, "index": index.describe()}

        @app.get("/bench/agreement", include_in_schema=False)
        def agreement(
            state: State, _: Annotated[Principal, Depends(require("picks"))], members: int = 300, seed: int = 0,
            re_ranked: bool = False,
        ) -> dict[str, Any]:
            import numpy as np

            if state.pick_lists is None:
                return {"error": "the bundle has no pre-ranked lists"}
            rng = np.random.default_rng(seed)
            lists = state.pick_lists
            if re_ranked:  # members whose lists were ranked again after live purchases
                pool = np.asarray(sorted(lists.re_ranked), dtype=np.int64)
                rows = pool[rng.permutation(len(pool))[:members]] if len(pool) else pool
            else:
                rows = rng.choice(state.members.n_base, size=min(members, state.members.n_base), replace=False)
            ids = state.members.external(rows)
            compared = differ = from_lists = 0
            examples: list[str] = []
            start = time.perf_counter()
            for member, row in zip(ids, rows.tolist(), strict=True):
                bought = state.bought(row)
                some_bought = [state.text.ids[p] for p in list(bought)[:2]] if bought else []  # type: ignore[union-attr]
                own = lists.re_ranked.get(row)
                if own is not None and "replenish" in own.rows:
                    head = own.rows["replenish"]
                else:
                    head = lists.rows["replenish"][row, : lists.length["replenish"][row]] if "replenish" in lists.rows else []
                # a category the member's list reaches into (a random one would mostly match nothing)
                code = state.category.codes[head[int(rng.integers(len(head)))]] if len(head) else -1
                category = [state.category.labels[code]] if code >= 0 else None
                for mode in ("replenish", "discover"):
                    for categories, exclude in ((None, None), (category, None), (None, some_bought or None)):
                        args = (state, [member], 10, mode, categories, exclude, None)
                        fast = pick_service.picks(*args, allow_live=False)
                        if fast is None:
                            continue  # the lists cannot answer this one: the server scores it live
                        live = pick_service.picks(*args, use_lists=False)
                        assert live is not None
                        compared += 1
                        from_lists += fast[0].source in ("pre_ranked", "re_ranked")
                        if pick_service.picks_dict(state, fast[0]) != pick_service.picks_dict(state, live[0]):
                            differ += 1
                            if len(examples) < 5:
                                examples.append(f"{member} {mode} {categories} {exclude}")
            return {"members": len(ids), "requests_compared": compared, "answered_from_lists": from_lists,
                    "differences": differ, "examples": examples, "seconds": time.perf_counter() - start,
                    "lists": state.pick_lists.describe()}

    app.add_middleware(ServerTiming)  # added last: outermost, so it times everything inside
    return app
