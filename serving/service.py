"""What each route does, in one place: ids in, the scorer asked once, ids and reasons out.

Routes parse and authorise; these functions validate against the loaded bundle (categories, tag
values), convert external ids to rows, ask :class:`~serving.scorer.Scorer` and turn rows back into
ids. Errors are :mod:`serving.errors` / :class:`~recsys.errors.InputError` (404 / 422).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from recsys.errors import InputError
from serving.errors import NotFoundError
from serving.events import EventRecord
from serving.picklists import REASON_MIN_SIMILARITY, reason_parts  # noqa: F401  (re-exported)
from serving.schemas import (
    AudienceBaseline,
    AudienceOptions,
    AudienceProfile,
    AudienceRequest,
    AudienceResponse,
    CategoryShare,
    FallbackReason,
    LastPurchase,
    MemberProfile,
    Mode,
    PicksResponse,
    ProductInfo,
    ProductSearchResponse,
    PurchaseEvent,
    SimilarResponse,
)
from serving.state import SEGMENT_TAG, UNKNOWN, ServingState

# a product not yet sold is scored from at most this many reference products (the most bought)
MAX_REFERENCE_PRODUCTS = 50
MIN_BRAND_REFERENCES = 3


def _listing(values: list[str] | tuple[str, ...], limit: int = 30) -> str:
    shown = ", ".join(values[:limit])
    return shown + (f" ... ({len(values)} in all)" if len(values) > limit else "")


# --------------------------------------------------------------------------- products
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
                f"unknown category {', '.join(map(repr, unknown))}; categories: {_listing(state.category.labels)}"
            )
        allowed &= state.category.mask(categories)
    if exclude:
        rows = state.products.to_index(exclude, missing="ignore")
        allowed[rows[rows >= 0]] = False
    return allowed


def _product_row(state: ServingState, product_id: str) -> int:
    row = state.products.get(product_id)
    if row < 0:
        raise NotFoundError(f"unknown product {product_id!r}: not in the model's catalogue ({state.info.version})")
    return row


def _category(state: ServingState, row: int) -> str | None:
    code = state.category.codes[row]
    return state.category.labels[code] if code >= 0 else None


def _name(state: ServingState, row: int) -> str | None:
    if state.product_names is None or state.product_names[row] is None:
        return None
    return str(state.product_names[row])


# --------------------------------------------------------------------------- picks
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
    source: str  # "pre_ranked" (the bundle's lists), "live" (scored now) or "popular" (fallback)


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


def _member_segment(state: ServingState, member: int) -> str | None:
    tag = state.member_tags.get(SEGMENT_TAG)
    if tag is None or member < 0 or member >= len(tag.codes) or tag.codes[member] < 0:
        return None
    return tag.labels[tag.codes[member]]


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
) -> list[PickList] | None:
    """Picks for each member, in input order; unknown members get a flagged popular fallback.

    A known member is answered from the bundle's pre-ranked list when it can answer exactly (see
    :mod:`serving.picklists`), else scored live; both give the same picks. With ``allow_live=False``
    the answer is None as soon as one member would need live scoring (so a caller on the event
    loop can hand the slow case to a worker thread); ``use_lists=False`` scores every known member
    live (to compare the two)."""
    if k > state.settings.max_k:
        raise InputError(f"k must be between 1 and {state.settings.max_k}; got {k}")
    if segment is not None:
        tag = state.member_tags.get(SEGMENT_TAG)
        if tag is None or segment not in tag.labels:
            allowed_segments = tag.labels if tag is not None else ()
            raise InputError(f"unknown segment {segment!r}; segments: {_listing(allowed_segments) or 'none in this bundle'}")
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
                          _member_segment(state, row), "pre_ranked")
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


# --------------------------------------------------------------------------- similar
def similar_dict(state: ServingState, product_id: str, k: int) -> dict[str, Any]:
    """A :class:`~serving.schemas.SimilarResponse` as a plain dict."""
    if k > state.settings.max_k:
        raise InputError(f"k must be between 1 and {state.settings.max_k}; got {k}")
    row = _product_row(state, product_id)
    idx, sc = state.scorer.similar(row, k, state.product_active)
    ok = idx >= 0
    text = state.text
    assert text is not None
    return {
        "product_id": product_id,
        "model_version": state.info.version,
        "similar": [
            {"product_id": text.ids[p], "score": s, "category": text.categories[p], "name": text.names[p]}
            for p, s in zip(idx[ok].tolist(), sc[ok].tolist(), strict=True)
        ],
    }


def similar(state: ServingState, product_id: str, k: int) -> SimilarResponse:
    return SimilarResponse.model_validate(similar_dict(state, product_id, k))


# --------------------------------------------------------------------------- audiences
def member_mask(state: ServingState, filters: dict[str, list[str]]) -> np.ndarray | None:
    """Members (over every row, live ones included) whose tags pass ``filters``; None: all."""
    if not filters:
        return None
    mask = np.ones(state.members.n_base, dtype=bool)
    for tag, labels in filters.items():
        masks = state.tag_masks.get(tag)
        if masks is None:
            present = ", ".join(sorted(state.tag_masks)) or "none"
            raise InputError(f"member tag {tag!r} is not in this bundle; tags: {present}")
        unknown = [v for v in labels if v not in masks]
        if unknown:
            raise InputError(
                f"unknown {tag} value(s) {', '.join(map(repr, unknown))}; allowed: {_listing(sorted(masks))}"
            )
        keep = np.zeros(state.members.n_base, dtype=bool)
        for label in labels:
            keep |= masks[label]
        mask &= keep
    # members first seen in live events have no tags yet: no tag filter keeps them
    return np.concatenate([mask, np.zeros(len(state.members) - state.members.n_base, dtype=bool)])


def _reference_products(state: ServingState, category: str, price: float | None, brand: str | None) -> tuple[np.ndarray, list[str]]:
    """Products that stand in for a product not yet sold: the most bought of the same category,
    narrowed to the price band of the nearest-priced product and then to the brand when enough
    such products exist."""
    code = state.category.code(category)
    if code < 0:
        raise InputError(f"unknown category {category!r}; categories: {_listing(state.category.labels)}")
    in_cat = state.category.codes == code
    sold = np.asarray(state.history.sum(axis=0)).ravel()
    warm = getattr(state.bundle.model, "warm_items", None)
    warm = np.asarray(warm, dtype=bool) if warm is not None and len(warm) == state.n_products else sold > 0
    cand = in_cat & warm if (in_cat & warm).any() else in_cat
    notes = [f"scored from products of category {category!r}"]
    table = state.product_table
    if price is not None and {"price", "price_band"} <= set(table.column_names):
        prices = np.asarray(table.column("price").to_pylist(), dtype=np.float64)
        bands = np.asarray(table.column("price_band").to_pylist(), dtype=object)
        priced = np.flatnonzero(cand & np.isfinite(prices))
        if len(priced):
            nearest = priced[np.argmin(np.abs(prices[priced] - price))]
            band = bands[nearest]
            narrowed = cand & (bands == band)
            if band is not None and narrowed.any():
                cand = narrowed
                notes.append(f"price band {band!r} (nearest-priced product {state.products.external_ids[nearest]})")
    if brand is not None and "brand" in table.column_names:
        brands = np.asarray(table.column("brand").to_pylist(), dtype=object)
        narrowed = cand & (brands == brand)
        if narrowed.sum() >= MIN_BRAND_REFERENCES:
            cand = narrowed
            notes.append(f"brand {brand!r}")
    rows = np.flatnonzero(cand)
    rows = rows[np.lexsort((rows, -sold[rows]))][:MAX_REFERENCE_PRODUCTS]
    return rows, notes


@dataclass
class AudienceResult:
    """An audience before encoding: :class:`~serving.schemas.AudienceResponse`'s fields with the
    members as two parallel lists (ids, scores), not 100,000 pydantic objects."""

    model_version: str
    product_id: str | None
    reference_products: list[str]
    member_ids: list[str]
    scores: list[float]
    profile: AudienceProfile
    notes: list[str]

    def as_dict(self) -> dict[str, Any]:
        """The response body as plain JSON-able values (same fields, same order)."""
        return {
            "model_version": self.model_version,
            "product_id": self.product_id,
            "reference_products": self.reference_products,
            "members": [{"member_id": m, "score": s} for m, s in zip(self.member_ids, self.scores, strict=True)],
            "profile": self.profile.model_dump(),
            "notes": self.notes,
        }

    def response(self) -> AudienceResponse:
        return AudienceResponse.model_validate(self.as_dict())


def audience(state: ServingState, req: AudienceRequest) -> AudienceResult:
    """The members most likely to buy the product (or a product described by attributes)."""
    if req.size > state.settings.max_audience:
        raise InputError(f"size must be between 1 and {state.settings.max_audience}; got {req.size}")
    notes: list[str] = []
    vector = None
    if req.product_id is not None:
        reference = np.array([_product_row(state, req.product_id)], dtype=np.int64)
    else:
        attrs = req.attributes
        assert attrs is not None  # the request model guarantees one of the two
        reference, notes = _reference_products(state, attrs.category, attrs.price, attrs.brand)
        hook = getattr(state.bundle.model, "virtual_item_vector", None)
        if callable(hook) and state.scorer.kind == "vectors":
            vector = hook(attrs.model_dump())
            if vector is not None:
                notes = ["scored from the model's own vector for these attributes"]
    with state.lock:  # live events may add member rows: mask and search see the same rows
        mask = member_mask(state, req.filters.active())
        if req.exclude_bought_within_days is not None:
            if req.product_id is None:
                notes.append("exclude_bought_within_days ignored: a product not yet sold has no buyers")
            else:
                recent, dated = state.recent_buyers(int(reference[0]), req.exclude_bought_within_days)
                if not dated:
                    notes.append(
                        "purchase dates are not in this bundle: every past buyer of the product is excluded "
                        "(plus live buyers within the window)"
                    )
                mask = (np.ones(len(state.members), dtype=bool) if mask is None else mask) & ~recent
        whole = None
        if callable(getattr(state.bundle.model, "purchase_probability", None)) and state.scorer.kind == "model":
            # the baselines need every pool member's score: rank the pool once and take its head
            # (the model's top-n is the head of its top-(n+1): recsys.models.base.topk_rows)
            n_rows = state.scorer.n_members
            pool = n_rows if mask is None else int(np.count_nonzero(mask[:n_rows]))
            whole = state.scorer.audience(reference, max(pool, req.size), mask, vector)
            idx, sc = whole[0][: req.size], whole[1][: req.size]
        else:
            idx, sc = state.scorer.audience(reference, req.size, mask, vector)
        ok = idx >= 0
        rows, scores = idx[ok], sc[ok]
        result = profile(state, rows, scores)
        _add_baselines(state, result, reference, mask, vector, whole)
    return AudienceResult(
        model_version=state.info.version,
        product_id=req.product_id,
        reference_products=state.products.to_external(reference).tolist(),
        member_ids=state.members.external(rows),
        scores=scores.tolist(),
        profile=result,
        notes=notes,
    )


def member_activity(state: ServingState) -> np.ndarray:
    """Purchase occasions per member row (bundle history + live events): who is "most active"."""
    activity = np.zeros(len(state.members), dtype=np.float64)
    base = np.asarray(state.purchase_counts.sum(axis=1), dtype=np.float64).ravel()
    activity[: len(base)] = base
    for member, bought in state.live.count.items():
        if member < len(activity):
            activity[member] += sum(bought.values())
    return activity


def _add_baselines(
    state: ServingState, result: AudienceProfile, reference: np.ndarray, mask: np.ndarray | None,
    vector: np.ndarray | None, whole: tuple[np.ndarray, np.ndarray] | None = None,
) -> None:
    """The pool the filters keep and, when the model gives calibrated purchase probabilities, the
    expected buyers of two other ways to pick as many members from that pool: at random (size x
    the pool's mean probability) and the most active members (most purchase occasions)."""
    n_rows = state.scorer.n_members
    pool_mask = np.ones(n_rows, dtype=bool) if mask is None else mask[:n_rows]
    pool_size = int(pool_mask.sum())
    result.eligible = pool_size
    hook = getattr(state.bundle.model, "purchase_probability", None)
    n = result.size
    if not callable(hook) or result.expected_buyers is None or n == 0 or pool_size == 0:
        return
    # every pool member's score for the product: the same scorer call as the audience itself
    idx, sc = whole if whole is not None else state.scorer.audience(reference, pool_size, mask, vector)
    ok = (idx >= 0) & np.isfinite(sc)
    rows = idx[ok]
    if not len(rows):
        return
    prob = np.zeros(n_rows, dtype=np.float64)
    prob[rows] = np.asarray(hook(sc[ok]), dtype=np.float64)
    pool = np.flatnonzero(pool_mask)
    random_expected = n * float(prob[pool].mean())
    activity = member_activity(state)[:n_rows][pool]
    most_active = pool[np.lexsort((pool, -activity))][:n]
    active_expected = float(prob[most_active].sum())
    result.random = AudienceBaseline(size=n, expected_buyers=random_expected)
    result.most_active = AudienceBaseline(size=len(most_active), expected_buyers=active_expected)
    result.lift_vs_random = result.expected_buyers / random_expected if random_expected > 0 else None
    result.lift_vs_most_active = result.expected_buyers / active_expected if active_expected > 0 else None


def profile(state: ServingState, rows: np.ndarray, scores: np.ndarray) -> AudienceProfile:
    """Members per tag value (``unknown`` for none) and, when the model provides calibrated
    probabilities (a ``purchase_probability(scores)`` hook), the expected number of buyers."""
    counts: dict[str, dict[str, int]] = {}
    base = rows[rows < state.members.n_base]
    n_new = len(rows) - len(base)
    for tag, t in state.member_tags.items():
        codes = t.codes[base]
        bins = np.bincount(np.where(codes >= 0, codes, len(t.labels)), minlength=len(t.labels) + 1)
        c = {label: int(bins[i]) for i, label in enumerate(t.labels) if bins[i]}
        if bins[-1] + n_new:
            c[UNKNOWN] = int(bins[-1]) + n_new
        counts[tag] = c
    expected = None
    hook = getattr(state.bundle.model, "purchase_probability", None)
    if callable(hook) and len(scores):
        expected = float(np.sum(np.asarray(hook(scores), dtype=np.float64)))
    elif callable(hook):
        expected = 0.0
    return AudienceProfile(size=int(len(rows)), counts=counts, expected_buyers=expected)


# --------------------------------------------------------------------------- console look-ups
def _column(state: ServingState, name: str) -> list[object] | None:
    table = state.product_table
    return table.column(name).to_pylist() if name in table.column_names else None


def audience_options(state: ServingState) -> AudienceOptions:
    """Tag values, categories and brands an audience request may name."""
    brands = _column(state, "brand") or []
    return AudienceOptions(
        model_version=state.info.version,
        tags={tag: sorted(masks) for tag, masks in state.tag_masks.items()},
        categories=sorted(state.category.labels),
        brands=sorted({str(b) for b in brands if b}),
        max_audience=state.settings.max_audience,
    )


def search_products(state: ServingState, q: str | None, category: str | None, limit: int) -> ProductSearchResponse:
    """Products whose id or name contains ``q`` (case-insensitive) and, when given, of
    ``category``; an exact id match first, then the most bought."""
    n = state.n_products
    keep = np.ones(n, dtype=bool)
    if category:
        if state.category.code(category) < 0:
            raise InputError(f"unknown category {category!r}; categories: {_listing(state.category.labels)}")
        keep &= state.category.mask([category])
    ids = state.products.external_ids
    if q:
        needle = q.strip().casefold()
        names = state.product_names if state.product_names is not None else np.full(n, None, dtype=object)
        hit = np.fromiter(
            (needle in str(i).casefold() or (nm is not None and needle in str(nm).casefold())
             for i, nm in zip(ids, names, strict=True)),
            dtype=bool, count=n,
        )
        keep &= hit
    buyers = np.asarray((state.history > 0).sum(axis=0)).ravel()
    rows = np.flatnonzero(keep)
    exact = np.array([str(ids[r]).casefold() == (q or "").strip().casefold() for r in rows], dtype=bool)
    rows = rows[np.lexsort((rows, -buyers[rows], ~exact))]
    brands, prices = _column(state, "brand"), _column(state, "price")
    out = []
    for r in rows[:limit].tolist():
        price = prices[r] if prices is not None else None
        out.append(ProductInfo(
            product_id=str(ids[r]), name=_name(state, r), category=_category(state, r),
            brand=str(brands[r]) if brands is not None and brands[r] else None,
            price=float(price) if price is not None and np.isfinite(price) else None,
            active=bool(state.product_active[r]), buyers=int(buyers[r]),
        ))
    return ProductSearchResponse(model_version=state.info.version, total=len(rows), products=out)


def member_profile(state: ServingState, member_id: str, top: int = 5) -> MemberProfile:
    """A member's tags, purchase totals, top categories and last purchase (when dates are known)."""
    row = state.members.get(member_id)
    tags: dict[str, str | None] = {}
    for tag, t in state.member_tags.items():
        code = t.codes[row] if 0 <= row < len(t.codes) else -1
        tags[tag] = t.labels[code] if code >= 0 else None
    with state.lock:
        bought = state.bought(row) if row >= 0 else {}
        live_last = {
            p: buyers[row] for p, buyers in state.live.last.items() if row >= 0 and row in buyers
        }
    per_category: dict[str, float] = {}
    for p, c in bought.items():
        cat = _category(state, p) or UNKNOWN
        per_category[cat] = per_category.get(cat, 0.0) + c
    top_categories = sorted(per_category.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    last: LastPurchase | None = None
    today = datetime.now(UTC).date()
    if live_last:
        p, ts = max(live_last.items(), key=lambda kv: (kv[1], -kv[0]))
        day = datetime.fromtimestamp(ts, UTC).date()
        last = LastPurchase(product_id=str(state.products.external_ids[p]), name=_name(state, p),
                            category=_category(state, p), date=day.isoformat(), days_ago=(today - day).days)
    elif state.last_age is not None and 0 <= row < state.last_age.shape[0]:
        ages = state.last_age.getrow(row).tocoo()
        pos = ages.data > 0
        if pos.any():
            cols, vals = ages.col[pos], ages.data[pos]
            i = int(np.lexsort((cols, vals))[0])
            p = int(cols[i])
            day = state.as_of - timedelta(days=int(vals[i]))
            last = LastPurchase(product_id=str(state.products.external_ids[p]), name=_name(state, p),
                                category=_category(state, p), date=day.isoformat(), days_ago=(today - day).days)
    return MemberProfile(
        member_id=member_id,
        model_version=state.info.version,
        known=row >= 0,
        tags=tags,
        purchases=float(sum(bought.values())),
        products_bought=len(bought),
        top_categories=[CategoryShare(category=c, purchases=v) for c, v in top_categories],
        last_purchase=last,
    )


# --------------------------------------------------------------------------- events
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
