"""Live purchases (``/v1/events``): written durably, then applied to the loaded state."""

from __future__ import annotations

from datetime import UTC, datetime

from recsys.errors import InputError
from serving.errors import NotFoundError
from serving.events import EventRecord
from serving.schemas import PurchaseEvent
from serving.state import ServingState


def record_events(state: ServingState, events: list[PurchaseEvent]) -> tuple[int, int, list[str]]:
    """Write the events durably, then apply everything new in the file (these included).

    Returns (accepted, applied, ids of members first seen here). Every product must be in the
    model's catalogue (404 naming the unknown ones; nothing is written then).
    """
    if len(events) > state.settings.max_events:
        raise InputError(f"at most {state.settings.max_events} events per request; got {len(events)}")
    unknown = sorted({e.product_id for e in events if state.products.get(e.product_id) < 0})
    if unknown:
        raise NotFoundError(f"unknown product(s) {', '.join(map(repr, unknown[:20]))}: not in the model's catalogue")
    now = datetime.now(UTC)
    records = [
        EventRecord(
            member_id=e.member_id, product_id=e.product_id,
            ts=(e.ts if e.ts is None or e.ts.tzinfo else e.ts.replace(tzinfo=UTC)) or now,
            quantity=e.quantity, amount=e.amount, channel=e.channel, received_at=now,
        )
        for e in events
    ]
    new_members = sorted({e.member_id for e in events if state.members.get(e.member_id) < 0})
    state.event_log.append(records)
    applied = state.sync_events()
    return len(records), applied, new_members
