"""Live purchases (``/v1/events``): checked, stored durably once per event id, then applied to the
loaded state."""

from __future__ import annotations

from dataclasses import dataclass

from recsys.errors import InputError
from serving.errors import NotFoundError
from serving.events import Window, prepare
from serving.schemas import PurchaseEvent
from serving.state import ServingState


@dataclass
class Recorded:
    """What :func:`record_events` did: the fields of :class:`~serving.schemas.EventsResponse`."""

    accepted: int
    recorded: int
    duplicates: int
    applied: int
    new_members: list[str]
    event_ids: list[str]


def record_events(state: ServingState, events: list[PurchaseEvent], batch_id: str | None = None) -> Recorded:
    """Check the events, store the new ones durably (a repeated ``event_id`` is acknowledged and
    not stored again), then apply everything new in the store (these included).

    Every product must be in the model's catalogue (404 naming the unknown ones) and every ``ts``
    in the accepted window (422); nothing is written then. ``batch_id`` (the request's
    ``Idempotency-Key``) names events that have no ``event_id``: ``<batch_id>/<position>``.
    """
    if len(events) > state.settings.max_events:
        raise InputError(f"at most {state.settings.max_events} events per request; got {len(events)}")
    unknown = sorted({e.product_id for e in events if state.products.get(e.product_id) < 0})
    if unknown:
        raise NotFoundError(f"unknown product(s) {', '.join(map(repr, unknown[:20]))}: not in the model's catalogue")
    settings = state.settings
    window = Window(state.as_of, settings.events_max_days_before_as_of, settings.events_max_seconds_ahead)
    items = prepare(events, batch_id=batch_id, window=window)
    new_members = sorted({e.member_id for e in events if state.members.get(e.member_id) < 0})
    fresh, applied = state.record(items)
    recorded = sum(fresh)
    return Recorded(accepted=len(items), recorded=recorded, duplicates=len(items) - recorded, applied=applied,
                    new_members=new_members, event_ids=[it.event_id for it in items])
