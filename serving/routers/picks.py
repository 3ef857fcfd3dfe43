"""Picks for a member (以人找物): one member by path, or many in one call.

``GET /v1/members/{member_id}/picks`` is the route the app calls thousands of times a second, and
most of its answers come straight from the bundle's pre-ranked lists (:mod:`serving.picklists`):
~15 µs of numpy and encoding. Declared the FastAPI way -- key, role, state and metrics
dependencies (eight nodes), six declared parameters, a pydantic response model validated and
serialised by FastAPI -- the same answer cost ~290 µs in the app against ~105 µs for a bare
endpoint, and reached about half of the bare endpoint's throughput under load (see
``experiments/bench_serving.py``, scenario ``picks-fastapi``; this route: ~130 µs, ~85-90 %).
So this one route

* reads its query with one pydantic model, :class:`~serving.schemas.PicksQuery`, which also
  documents the parameters in the OpenAPI schema (``openapi_extra``), and answers a bad value with
  the same 422 the other routes give;
* authorises and finds the loaded model with the plain functions behind the dependencies
  (:func:`serving.deps.authorize`, :func:`serving.deps.current_state`), in the same order: 503
  before 401 / 403;
* returns the body encoded once with orjson; ``response_model=PicksResponse`` documents it, and the
  tests validate real bodies against it.

A member whose list cannot answer (live purchases, a filter that empties a truncated list,
``k`` above the list length) is scored live: a vector model's FAISS search on the loop, any other
model (the hybrid's LightGBM ranker, milliseconds) in a worker thread, off the event loop. The batch
route keeps FastAPI's parameter handling (it is not hot) and the same encoder.
"""

from __future__ import annotations

from typing import Annotated, Any

import anyio
import orjson
from fastapi import APIRouter, Depends, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError

from recsys.errors import InputError
from serving.deps import (
    BODY,
    KEYED,
    SECURITY,
    Audit,
    KeyFirstRoute,
    MetricsDep,
    State,
    authorize,
    current_state,
    errors,
    require,
)
from serving.keys import Principal
from serving.metrics import Metrics
from serving.schemas import (
    BatchPicksRequest,
    BatchPicksResponse,
    MemberProfile,
    PicksQuery,
    PicksResponse,
)
from serving.service import members, picks

router = APIRouter(tags=["picks"], responses=errors(*KEYED), route_class=KeyFirstRoute)
Caller = Annotated[Principal, Depends(require("picks"))]

LIST_PARAMS = frozenset({"category", "exclude"})
DEFAULT_QUERY = PicksQuery()


def query_parameters(model: type[PicksQuery]) -> list[dict[str, Any]]:
    """OpenAPI query parameters for each field of ``model``, as FastAPI writes declared ones."""
    out = []
    for name, schema in model.model_json_schema()["properties"].items():
        param: dict[str, Any] = {"name": name, "in": "query", "required": False, "schema": schema}
        if "description" in schema:
            param["description"] = schema["description"]
        out.append(param)
    return out


def parse_query(request: Request) -> PicksQuery:
    """The request's query as :class:`PicksQuery` (422 with FastAPI's wording when invalid);
    repeated list parameters collect, other parameters take their last value."""
    if not request.scope.get("query_string"):
        return DEFAULT_QUERY
    params = request.query_params
    raw: dict[str, Any] = {}
    for name in PicksQuery.model_fields:
        if name in LIST_PARAMS:
            values = params.getlist(name)
            if values:
                raw[name] = values
        elif (value := params.get(name)) is not None:
            raw[name] = value
    try:
        return PicksQuery.model_validate(raw)
    except ValidationError as exc:
        errors = [{**e, "loc": ("query", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from None


def _split(values: list[str] | None) -> list[str] | None:
    """Repeated query parameters and comma-separated lists both work: ``?exclude=a,b&exclude=c``."""
    if not values:
        return None
    out = [v.strip() for value in values for v in value.split(",") if v.strip()]
    return out or None


def _count(metrics: Metrics, results: list[picks.PickList]) -> None:
    for r in results:
        if r.fallback:
            metrics.fallbacks.labels(reason=r.fallback_reason or "").inc()


def _json(body: Any) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")


@router.get(
    "/v1/members/{member_id}/picks",
    summary="Top-k products for a member, each with a reason",
    response_model=PicksResponse,
    responses=errors(404),
    openapi_extra={"parameters": query_parameters(PicksQuery), "security": SECURITY},
)
async def member_picks(request: Request, member_id: Annotated[str, Path(min_length=1, max_length=200)]) -> Response:
    state = current_state(request)
    scope = authorize(request, "picks").scope
    q = parse_query(request)
    args = (state, [member_id], q.k, q.mode, _split(q.category), _split(q.exclude), q.segment)
    # from the pre-ranked lists (microseconds) or a vector search (a fraction of a millisecond)
    results = picks.picks(*args, allow_live=state.scorer.kind == "vectors", scope=scope)
    if results is None:  # the model scoring live takes milliseconds: not on the event loop
        results = await anyio.to_thread.run_sync(lambda: picks.picks(*args, scope=scope))
    assert results is not None
    _count(request.app.state.metrics, results)
    return _json(picks.picks_dict(state, results[0]))


@router.post(
    "/v1/picks:batch",
    summary="Picks for many members in one call",
    response_model=BatchPicksResponse,
    responses=errors(*BODY, 404),
)
def batch_picks(state: State, metrics: MetricsDep, caller: Caller, audit: Audit, body: BatchPicksRequest) -> Response:
    if len(body.member_ids) > state.settings.max_batch:
        raise InputError(f"at most {state.settings.max_batch} member_ids per call; got {len(body.member_ids)}")
    results = picks.picks(
        state, body.member_ids, body.k, body.mode, _split(body.category), _split(body.exclude), body.segment,
        scope=caller.scope,
    )
    assert results is not None
    _count(metrics, results)
    # members' picks in bulk leave the server: audited like audiences (who, what, how many members)
    audit.write({
        "key_id": caller.key_id, "scope": caller.scope_dict(), "route": "/v1/picks:batch", "format": "json",
        "k": body.k, "mode": body.mode,
        "category": body.category, "exclude": len(body.exclude or ()), "segment": body.segment,
        "rows": len(results), "model_version": state.info.version,
    })
    return _json({"model_version": state.info.version, "results": [picks.picks_dict(state, r) for r in results]})


@router.get(
    "/v1/members/{member_id}/profile",
    summary="A member's tags, top categories and last purchase (for a store clerk's member view)",
    responses=errors(404),
)
def member_profile(
    state: State, caller: Caller, member_id: Annotated[str, Path(min_length=1, max_length=200)]
) -> MemberProfile:
    return members.member_profile(state, member_id, scope=caller.scope)
