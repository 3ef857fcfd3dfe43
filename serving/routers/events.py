"""Live purchase events: written durably, then reflected in the next picks."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends

from serving.deps import MetricsDep, State, require
from serving.keys import Principal
from serving.schemas import ErrorResponse, EventsResponse, PurchaseEvent
from serving.service import events as event_service

router = APIRouter(tags=["events"], responses={401: {"model": ErrorResponse}, 403: {"model": ErrorResponse}})


@router.post(
    "/v1/events",
    summary="Record purchases (fsync-ed before the answer); picks reflect them at once",
    responses={404: {"model": ErrorResponse}, 422: {"model": ErrorResponse}},
)
def post_events(
    state: State,
    metrics: MetricsDep,
    _: Annotated[Principal, Depends(require("events"))],
    events: Annotated[list[PurchaseEvent], Body(min_length=1, description="At most max_events (1,000)")],
) -> EventsResponse:
    # a def handler: fsync blocks, so it runs in the thread pool, never on the event loop
    accepted, applied, new_members = event_service.record_events(state, events)
    metrics.events.inc(accepted)
    return EventsResponse(
        accepted=accepted, applied=applied, new_members=new_members, model_version=state.info.version
    )
