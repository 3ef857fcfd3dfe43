"""Live purchase events: checked, stored durably once per event id, then reflected in the next picks."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Header

from serving.deps import BODY, KEYED, KeyFirstRoute, MetricsDep, State, errors, require
from serving.keys import Principal
from serving.schemas import ErrorResponse, EventsResponse, PurchaseEvent
from serving.service import events as event_service

router = APIRouter(tags=["events"], responses=errors(*KEYED), route_class=KeyFirstRoute)


@router.post(
    "/v1/events",
    summary="Record purchases (durable before the answer, once per event_id); picks reflect them at once",
    responses={
        **errors(*BODY),
        404: {"model": ErrorResponse, "description": "A product is not in the model's catalogue"},
        409: {"model": ErrorResponse, "description": "An event_id was recorded before for a different purchase"},
        422: {"model": ErrorResponse, "description": "An event is not a plausible purchase (ids, ts window, ...)"},
        503: {"model": ErrorResponse, "description": "The events store cannot be reached: nothing was "
              "acknowledged; retry with the same event ids"},
    },
)
def post_events(
    state: State,
    metrics: MetricsDep,
    _: Annotated[Principal, Depends(require("events"))],
    events: Annotated[list[PurchaseEvent], Body(min_length=1, description="At most max_events (1,000)")],
    idempotency_key: Annotated[str | None, Header(
        alias="Idempotency-Key", min_length=1, max_length=100, pattern=r"^[!-~]+$",
        description="An id for this batch (visible ASCII): events without an event_id get <key>/<position>, so "
        "retrying the same batch with the same key records it once",
    )] = None,
) -> EventsResponse:
    # a def handler: fsync / the Redis round trip block, so it runs in the thread pool
    done = event_service.record_events(state, events, idempotency_key)
    metrics.events.inc(done.recorded)
    metrics.event_duplicates.inc(done.duplicates)
    return EventsResponse(
        accepted=done.accepted, recorded=done.recorded, duplicates=done.duplicates, applied=done.applied,
        new_members=done.new_members, event_ids=done.event_ids, model_version=state.info.version,
    )
