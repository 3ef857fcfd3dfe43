"""Picks for a member (以人找物): one member by path, or many in one call."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query

from recsys.errors import InputError
from serving import service
from serving.deps import MetricsDep, State, require
from serving.keys import Principal
from serving.schemas import (
    BatchPicksRequest,
    BatchPicksResponse,
    ErrorResponse,
    MemberProfile,
    Mode,
    PicksResponse,
)

router = APIRouter(tags=["picks"], responses={401: {"model": ErrorResponse}, 403: {"model": ErrorResponse}})
Caller = Annotated[Principal, Depends(require("picks"))]


def _split(values: list[str] | None) -> list[str] | None:
    """Repeated query parameters and comma-separated lists both work: ``?exclude=a,b&exclude=c``."""
    if not values:
        return None
    out = [v.strip() for value in values for v in value.split(",") if v.strip()]
    return out or None


def _count(metrics: MetricsDep, results: list[PicksResponse]) -> None:
    for r in results:
        if r.fallback:
            metrics.fallbacks.labels(reason=r.fallback_reason or "").inc()


@router.get(
    "/v1/members/{member_id}/picks",
    summary="Top-k products for a member, each with a reason",
    responses={422: {"model": ErrorResponse}},
)
async def member_picks(
    state: State,
    metrics: MetricsDep,
    _: Caller,
    member_id: Annotated[str, Path(min_length=1, max_length=200)],
    k: Annotated[int, Query(ge=1, le=10_000, description="Number of picks, at most max_k (100)")] = 10,
    mode: Annotated[Mode, Query(description="discover: only products the member never bought")] = "replenish",
    category: Annotated[list[str] | None, Query(description="Only these categories (repeat or comma-separate)")] = None,
    exclude: Annotated[list[str] | None, Query(description="Never these product ids (repeat or comma-separate)")] = None,
    segment: Annotated[
        str | None, Query(max_length=100, description="value_segment to use for an unknown member's fallback")
    ] = None,
) -> PicksResponse:
    # numpy work here is a few milliseconds at most, with BLAS pinned to one thread: cheaper on
    # the event loop than a hop to the thread pool
    result = service.picks(state, [member_id], k, mode, _split(category), _split(exclude), segment)
    _count(metrics, result)
    return result[0]


@router.post(
    "/v1/picks:batch",
    summary="Picks for many members in one call",
    responses={422: {"model": ErrorResponse}},
)
def batch_picks(state: State, metrics: MetricsDep, _: Caller, body: BatchPicksRequest) -> BatchPicksResponse:
    if len(body.member_ids) > state.settings.max_batch:
        raise InputError(f"at most {state.settings.max_batch} member_ids per call; got {len(body.member_ids)}")
    results = service.picks(
        state, body.member_ids, body.k, body.mode, _split(body.category), _split(body.exclude), body.segment
    )
    _count(metrics, results)
    return BatchPicksResponse(model_version=state.info.version, results=results)


@router.get(
    "/v1/members/{member_id}/profile",
    summary="A member's tags, top categories and last purchase (for a store clerk's member view)",
    responses={422: {"model": ErrorResponse}},
)
def member_profile(
    state: State, _: Caller, member_id: Annotated[str, Path(min_length=1, max_length=200)]
) -> MemberProfile:
    return service.member_profile(state, member_id)
