"""Picks for members (``/v1/members/{id}/picks``, ``/v1/picks:batch``): from the bundle's
pre-ranked lists when they answer exactly, else scored live; unknown and new members get a flagged
popular fallback."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from recsys.errors import InputError
from recsys.models.base import Tag
from serving.errors import NotFoundError
from serving.picklists import reason_parts
from serving.schemas import FallbackReason, Mode, PicksResponse
from serving.service.common import listing
from serving.state import SEGMENT_TAG, Scope, ServingState


def product_allowed(
    state: ServingState, categories: list[str] | None, exclude: list[str] | None
) -> np.ndarray:
    """Mask of products that may be recommended: active, in ``categories``, not in ``exclude``
    (unknown excluded ids are ignored: a cart may hold products the model has never seen)."""
    allowed = state.product_active.copy()
    if categories:
        unknown = [c for c in categories if state.category.code(c) < 0]
        if unknown:
            raise InputError(
                f"unknown category {', '.join(map(repr, unknown))}; categories: {listing(state.category.labels)}"
            )
        allowed &= state.category.mask(categories)
    if exclude:
        rows = state.products.to_index(exclude, missing="ignore")
        allowed[rows[rows >= 0]] = False
    return allowed



@dataclass
class PickList:
    """One member's picks before encoding: products, scores and the parts of their reasons."""

    member_id: str
    fallback: bool
    fallback_reason: FallbackReason | None
    rows: np.ndarray
    scores: np.ndarray
    times: np.ndarray  # occasions the member bought each pick (0: never)
    anchors: np.ndarray  # for the others: the bought product it is most similar to (-1: none)
    segment: str | None  # the member's value segment (or the fallback's), for "popular in ..."
    # "pre_ranked" (the bundle's lists), "re_ranked" (the member's lists ranked again after live
    # purchases), "live" (scored now) or "popular" (fallback)
    source: str


def pick_dicts(state: ServingState, pl: PickList) -> list[dict[str, Any]]:
    """The ``picks`` of a :class:`~serving.schemas.PicksResponse`, as plain JSON-able dicts."""
    text = state.text
    assert text is not None
    if pl.segment is not None:
        popular = ("popular_in_segment", "您所在会员群体的热门商品", "popular in your segment")
    else:
        popular = ("popular", "热门商品", "popular with members")
    out = []
    for p, s, n, a in zip(pl.rows.tolist(), pl.scores.tolist(), pl.times.tolist(), pl.anchors.tolist(), strict=True):
        anchor = None
        if n > 0:
            code, zh, en = "often_buys", text.often_zh[p] + (f"（{n}次）" if n > 1 else ""), text.often_en[p]
        elif a >= 0:
            code, zh, en, anchor = "also_bought", text.also_zh[a], text.also_en[a], text.ids[a]
        else:
            code, zh, en = popular
        out.append({
            "product_id": text.ids[p], "score": s, "reason": zh, "reason_en": en, "reason_code": code,
            "anchor_product_id": anchor, "category": text.categories[p], "name": text.names[p],
        })
    return out


def picks_dict(state: ServingState, pl: PickList) -> dict[str, Any]:
    """A :class:`~serving.schemas.PicksResponse` as a plain dict (same fields, same order)."""
    return {
        "member_id": pl.member_id, "model_version": state.info.version, "fallback": pl.fallback,
        "fallback_reason": pl.fallback_reason, "picks": pick_dicts(state, pl),
    }


def picks_response(state: ServingState, pl: PickList) -> PicksResponse:
    """The same answer as a validated pydantic model (for callers that want one)."""
    return PicksResponse.model_validate(picks_dict(state, pl))


def _popular(
    state: ServingState, segment: str | None, k: int, allowed: np.ndarray | None, seen: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``k`` products of the segment's (or the global) popularity order that are
    allowed and not in ``seen``; scans a growing head of the order instead of all of it."""
    if segment is not None and segment in state.segment_order:
        order, scores = state.segment_order[segment], state.segment_scores[segment]
    else:
        order, scores = state.popular_order, state.popular_scores
    found: list[np.ndarray] = []
    need, start, step = k, 0, max(4 * k, 256)
    while need > 0 and start < len(order):
        head = np.arange(start, min(start + step, len(order)))
        keep = np.ones(len(head), dtype=bool) if allowed is None else allowed[order[head]]
        if len(seen):
            keep &= ~np.isin(order[head], seen)
        hit = head[keep][:need]
        found.append(hit)
        need -= len(hit)
        start, step = start + step, step * 4
    pos = np.concatenate(found) if found else np.empty(0, np.int64)
    return order[pos], scores[pos]


def _segment_tag(state: ServingState) -> Tag | None:
    tag = state.member_tags.get(SEGMENT_TAG)
    return tag if isinstance(tag, Tag) else None


def _member_segment(state: ServingState, member: int) -> str | None:
    tag = _segment_tag(state)
    if tag is None or member < 0 or member >= len(tag.codes) or tag.codes[member] < 0:
        return None
    return tag.labels[tag.codes[member]]


def check_in_scope(state: ServingState, member_ids: list[str], scope: Scope) -> None:
    """:class:`NotFoundError` naming the members outside ``scope`` (a key's scope): to the key,
    they do not exist."""
    outside = [m for m in member_ids if not state.in_scope(state.members.get(m), scope)]
    if outside:
        shown = ", ".join(map(repr, outside[:20])) + (f" ... ({len(outside)} in all)" if len(outside) > 20 else "")
        raise NotFoundError(f"unknown member(s) {shown} among the members of this key's scope ({describe_scope(scope)})")


def describe_scope(scope: Scope) -> str:
    return "; ".join(f"{tag}: {', '.join(values)}" for tag, values in scope)


def picks(
    state: ServingState,
    member_ids: list[str],
    k: int,
    mode: Mode,
    categories: list[str] | None = None,
    exclude: list[str] | None = None,
    segment: str | None = None,
    *,
    allow_live: bool = True,
    use_lists: bool = True,
    scope: Scope | None = None,
) -> list[PickList] | None:
    """Picks for each member, in input order; unknown members get a flagged popular fallback.

    With an API key's ``scope``, every member must be a bundle member inside it: any other (outside
    it, unknown, or known only from live events) is a :class:`NotFoundError` naming them, worded as
    for a member that does not exist.

    A known member is answered from the bundle's pre-ranked list when it can answer exactly (see
    :mod:`serving.picklists`), else scored live; both give the same picks. With ``allow_live=False``
    the answer is None as soon as one member would need live scoring (so a caller on the event
    loop can hand the slow case to a worker thread); ``use_lists=False`` scores every known member
    live (to compare the two)."""
    if k > state.settings.max_k:
        raise InputError(f"k must be between 1 and {state.settings.max_k}; got {k}")
    if scope is not None:
        check_in_scope(state, member_ids, scope)
    if segment is not None:
        tag = _segment_tag(state)
        if tag is None or segment not in tag.labels:
            allowed_segments = tag.labels if tag is not None else ()
            raise InputError(f"unknown segment {segment!r}; segments: {listing(allowed_segments) or 'none in this bundle'}")
    filtered = bool(categories or exclude)
    allowed = product_allowed(state, categories, exclude) if filtered else state.product_active
    list_mask = None if not filtered and state.all_active else allowed
    rows = [state.members.get(m) for m in member_ids]
    out: list[PickList | None] = [None] * len(rows)
    lists = state.pick_lists if use_lists else None
    live: list[int] = []
    # the lists need no lock: a list a concurrent live purchase invalidates answers as if the
    # request had come a moment earlier
    for i, row in enumerate(rows):
        if not state.personalised(row):
            continue
        ans = lists.answer(row, mode, k, list_mask) if lists is not None else None
        if ans is None:
            if not allow_live:
                return None
            live.append(i)
            continue
        out[i] = PickList(member_ids[i], False, None, ans.rows, ans.scores, ans.times, ans.anchors,
                          _member_segment(state, row), "re_ranked" if ans.re_ranked else "pre_ranked")
    if live or any(pl is None and row >= 0 for pl, row in zip(out, rows, strict=True)):
        with state.lock:  # a consistent view of live purchases and folded-in vectors
            _picks_locked(state, member_ids, rows, out, live, k, mode, allowed, list_mask, segment)
    for i in range(len(rows)):
        if out[i] is None:  # an unknown member: the popular fallback, nothing bought
            r, s = _popular(state, segment, k, list_mask, np.empty(0, np.int64))
            out[i] = PickList(member_ids[i], True, "unknown_member", r, s, np.zeros(len(r), np.int32),
                              np.full(len(r), -1, np.int32), segment, "popular")
    return [pl for pl in out if pl is not None]


def _picks_locked(
    state: ServingState, member_ids: list[str], rows: list[int], out: list[PickList | None], live: list[int],
    k: int, mode: Mode, allowed: np.ndarray, list_mask: np.ndarray | None, segment: str | None,
) -> None:
    """Fill ``out`` for members scored live and for new members (live purchases, no vector)."""
    if live:
        bought = [state.bought(rows[i]) for i in live]
        seen = [
            np.fromiter(b.keys(), dtype=np.int64, count=len(b)) if mode == "discover" else np.empty(0, np.int64)
            for b in bought
        ]
        idx, sc = state.scorer.picks(np.array([rows[i] for i in live], dtype=np.int64), k, allowed, seen)
        for j, i in enumerate(live):
            ok = idx[j] >= 0
            r = idx[j][ok]
            times, anchors = reason_parts(state.scorer, bought[j], r)
            out[i] = PickList(member_ids[i], False, None, r, sc[j][ok], times, anchors,
                              _member_segment(state, rows[i]), "live")
    for i, row in enumerate(rows):
        if out[i] is not None or row < 0:
            continue
        bought_i = state.bought(row)  # a new member: what they bought live, no vector to rank with
        seen_i = (np.fromiter(bought_i.keys(), dtype=np.int64, count=len(bought_i)) if mode == "discover"
                  else np.empty(0, np.int64))
        r, s = _popular(state, segment, k, list_mask, seen_i)
        times, anchors = reason_parts(state.scorer, bought_i, r)
        out[i] = PickList(member_ids[i], True, "new_member", r, s, times, anchors, segment, "popular")
