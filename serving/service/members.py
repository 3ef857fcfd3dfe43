"""A member's profile for a store clerk's member view (``/v1/members/{id}/profile``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np

from recsys.tags import tag_of
from serving.schemas import CategoryShare, LastPurchase, MemberProfile
from serving.service.common import product_category, product_name
from serving.service.picks import check_in_scope
from serving.state import UNKNOWN, Scope, ServingState


def member_profile(state: ServingState, member_id: str, top: int = 5, scope: Scope | None = None) -> MemberProfile:
    """A member's tags (every member tag of the bundle; a list for a multi-valued one), purchase
    totals, top categories and last purchase (when dates are known). With a key's ``scope``, a
    member outside it is a 404."""
    if scope is not None:
        check_in_scope(state, [member_id], scope)
    row = state.members.get(member_id)
    tags: dict[str, str | list[str] | None] = {name: tag_of(t, row) for name, t in state.member_tags.items()}
    with state.lock:
        bought = state.bought(row) if row >= 0 else {}
        live_last = {
            p: buyers[row] for p, buyers in state.live.last.items() if row >= 0 and row in buyers
        }
    per_category: dict[str, float] = {}
    for p, c in bought.items():
        cat = product_category(state, p) or UNKNOWN
        per_category[cat] = per_category.get(cat, 0.0) + c
    top_categories = sorted(per_category.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    last: LastPurchase | None = None
    if live_last:  # a purchase received live: counted from today
        p, ts = max(live_last.items(), key=lambda kv: (kv[1], -kv[0]))
        day = datetime.fromtimestamp(ts, UTC).date()
        today = max(datetime.now(UTC).date(), day)
        last = LastPurchase(product_id=str(state.products.external_ids[p]), name=product_name(state, p),
                            category=product_category(state, p), date=day.isoformat(), days_ago=(today - day).days,
                            counted_from=today.isoformat())
    elif state.last_age is not None and 0 <= row < state.last_age.shape[0]:
        ages = state.last_age.getrow(row).tocoo()
        pos = ages.data > 0
        if pos.any():
            cols, vals = ages.col[pos], ages.data[pos]
            i = int(np.lexsort((cols, vals))[0])
            p = int(cols[i])
            # the model's history ends at its as-of date: days are counted from there, not from
            # today (a 2001 bundle said "9441 days ago")
            day = state.as_of - timedelta(days=int(vals[i]))
            last = LastPurchase(product_id=str(state.products.external_ids[p]), name=product_name(state, p),
                                category=product_category(state, p), date=day.isoformat(), days_ago=int(vals[i]),
                                counted_from=state.as_of.isoformat())
    return MemberProfile(
        member_id=member_id,
        model_version=state.info.version,
        known=row >= 0,
        tags=tags,
        purchases=float(sum(bought.values())),
        products_bought=len(bought),
        top_categories=[CategoryShare(category=c, purchases=v) for c, v in top_categories],
        last_purchase=last,
        as_of=state.as_of.isoformat(),
    )
