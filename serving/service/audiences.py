"""Audiences for a product (``/v1/audiences``, its CSV export and ``/v1/audiences/options``): the
member filter, the target (a product, or a product not yet sold described by attributes: scored
by the model's never-sold audience model, or from reference products for a model without one),
the members and their profile, and the expected buyers of the random and most-active baselines."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recsys.errors import InputError
from recsys.models.base import Capability, ProductDescription
from recsys.tags import tag_counts
from serving.schemas import (
    AudienceBaseline,
    AudienceOptions,
    AudienceProfile,
    AudienceRequest,
    AudienceResponse,
    ProductAttributes,
)
from serving.service.common import listing, product_column, product_row
from serving.service.tags import tag_infos
from serving.state import UNKNOWN, Scope, ServingState

# a product not yet sold is scored from at most this many reference products (the most bought)
MAX_REFERENCE_PRODUCTS = 50
MIN_BRAND_REFERENCES = 3


def member_mask(
    state: ServingState, filters: dict[str, list[str]], scope: Scope | None = None
) -> np.ndarray | None:
    """Members (over every row, live ones included) whose tags pass ``filters`` and who are in
    the key's ``scope``; None: all. Any member tag of the bundle may be named (an unknown tag or
    value is an :class:`InputError` listing what exists)."""
    if not filters and scope is None:
        return None
    mask = state.tag_mask(filters)
    if scope is not None:
        mask &= state.scope_mask(scope)
    # members first seen in live events have no tags yet: no tag filter (or scope) keeps them
    return np.concatenate([mask, np.zeros(len(state.members) - state.members.n_base, dtype=bool)])


def _reference_products(state: ServingState, category: str, price: float | None, brand: str | None) -> tuple[np.ndarray, list[str]]:
    """Products that stand in for a product not yet sold, for a model that scores no product from
    attributes: the most bought of the same category, narrowed to the price band of the
    nearest-priced product and then to the brand when enough such products exist."""
    code = state.category.code(category)
    if code < 0:
        raise InputError(f"unknown category {category!r}; categories: {listing(state.category.labels)}")
    in_cat = state.category.codes == code
    sold = np.asarray(state.history.sum(axis=0)).ravel()
    warm = np.asarray(state.bundle.model.warm_products(), dtype=bool)
    if len(warm) != state.n_products:
        warm = sold > 0
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
    notes.append(f"this model scores no product from attributes (it does not declare "
                 f"Capability.{Capability.ATTRIBUTE_AUDIENCE.name}): each member's score is the mean of "
                 f"their scores for these {len(rows)} reference products")
    return rows, notes


@dataclass
class AudienceTarget:
    """What an audience is ranked for: product rows (one product, or the reference products of a
    product not yet sold, for a model that scores no product from attributes), or a product
    described by attributes that the model scores itself (``described``; ``reference`` empty)."""

    reference: np.ndarray
    described: ProductDescription | None = None
    notes: list[str] = field(default_factory=list)

    def rank(self, state: ServingState, n: int, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``n`` members for the target among ``mask`` (the scorer's answer, shapes ``(n,)``)."""
        if self.described is not None:
            return state.scorer.described_audience(self.described, n, mask)
        return state.scorer.audience(self.reference, n, mask)

    @property
    def dense(self) -> bool:
        """Whether ranking scores every member anyway (the model's own scoring, no vector search)."""
        return self.described is not None


def audience_target(
    state: ServingState, product_row: int | None, attributes: ProductAttributes | None
) -> AudienceTarget:
    """The one way an audience's target is resolved (audiences, their CSV export, campaigns): a
    product row, or a product described by attributes -- scored by the model's never-sold
    audience model when it declares ``Capability.ATTRIBUTE_AUDIENCE`` (what the report measures),
    else from reference products (:func:`_reference_products`)."""
    if product_row is not None:
        return AudienceTarget(np.array([product_row], dtype=np.int64))
    assert attributes is not None  # the request models guarantee one of the two
    model = state.bundle.model
    if not model.has(Capability.ATTRIBUTE_AUDIENCE):
        rows, notes = _reference_products(state, attributes.category, attributes.price, attributes.brand)
        return AudienceTarget(rows, notes=notes)
    described = ProductDescription(attributes.category, attributes.price, attributes.brand)
    read = model.read_attributes([described])[0]  # an unknown category: InputError naming the known ones
    brand = (f"brand {read['brand']!r}" if read["brand"] is not None
             else "no brand" if attributes.brand is None
             else f"brand {attributes.brand!r} unknown to the model (it contributes nothing)")
    price = "no price" if attributes.price is None else f"price {attributes.price:g}"
    notes = [f"scored from category {read['category']!r}, price band {read['price_band']!r} ({price}), {brand} "
             "by the model's never-sold audience model (as the report's by-attributes audiences)"]
    return AudienceTarget(np.empty(0, dtype=np.int64), described, notes)


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
    probabilities: list[float] | None = None  # calibrated purchase probabilities, when the model has them

    def as_dict(self) -> dict[str, Any]:
        """The response body as plain JSON-able values (same fields, same order)."""
        probs = self.probabilities if self.probabilities is not None else [None] * len(self.scores)
        return {
            "model_version": self.model_version,
            "product_id": self.product_id,
            "reference_products": self.reference_products,
            "members": [{"member_id": m, "score": s, "probability": q}
                        for m, s, q in zip(self.member_ids, self.scores, probs, strict=True)],
            "profile": self.profile.model_dump(),
            "notes": self.notes,
        }

    def response(self) -> AudienceResponse:
        return AudienceResponse.model_validate(self.as_dict())


def audience(state: ServingState, req: AudienceRequest, scope: Scope | None = None) -> AudienceResult:
    """The members most likely to buy the product (or a product described by attributes), among
    those the filters keep and, for a scoped key, inside its ``scope``."""
    if req.size > state.settings.max_audience:
        raise InputError(f"size must be between 1 and {state.settings.max_audience}; got {req.size}")
    row = product_row(state, req.product_id) if req.product_id is not None else None
    target = audience_target(state, row, req.attributes)
    notes = list(target.notes)
    with state.lock:  # live events may add member rows: mask and search see the same rows
        mask = member_mask(state, req.filters, scope)
        if req.exclude_bought_within_days is not None:
            if row is None:
                notes.append("exclude_bought_within_days ignored: a product not yet sold has no buyers")
            else:
                recent, dated = state.recent_buyers(row, req.exclude_bought_within_days)
                if not dated:
                    notes.append(
                        "purchase dates are not in this bundle: every past buyer of the product is excluded "
                        "(plus live buyers within the window)"
                    )
                mask = (np.ones(len(state.members), dtype=bool) if mask is None else mask) & ~recent
        whole = None
        if _probabilities(state) is not None and (state.scorer.kind == "model" or target.dense):
            # the baselines need every pool member's score: rank the pool once and take its head
            # (the model's top-n is the head of its top-(n+1): recsys.models.base.topk_rows)
            n_rows = state.scorer.n_members
            pool = n_rows if mask is None else int(np.count_nonzero(mask[:n_rows]))
            whole = target.rank(state, max(pool, req.size), mask)
            idx, sc = whole[0][: req.size], whole[1][: req.size]
        else:
            idx, sc = target.rank(state, req.size, mask)
        ok = idx >= 0
        rows, scores = idx[ok], sc[ok]
        result = profile(state, rows, scores)
        _add_baselines(state, result, target, mask, whole)
    return AudienceResult(
        model_version=state.info.version,
        product_id=req.product_id,
        reference_products=state.products.to_external(target.reference).tolist(),
        member_ids=state.members.external(rows),
        scores=scores.tolist(),
        profile=result,
        notes=notes,
        probabilities=_member_probabilities(state, scores),
    )


def _probabilities(state: ServingState) -> Callable[[np.ndarray], np.ndarray] | None:
    """The model's audience scores -> calibrated purchase probabilities, when it declares them
    (:attr:`~recsys.models.base.Capability.PROBABILITIES`)."""
    model = state.bundle.model
    return model.purchase_probability if model.has(Capability.PROBABILITIES) else None

def _member_probabilities(state: ServingState, scores: np.ndarray) -> list[float] | None:
    """Each listed member's calibrated purchase probability (what merchandisers read), when the
    model declares them; None otherwise."""
    hook = _probabilities(state)
    if hook is None:
        return None
    return np.asarray(hook(scores), dtype=np.float64).tolist() if len(scores) else []


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
    state: ServingState, result: AudienceProfile, target: AudienceTarget, mask: np.ndarray | None,
    whole: tuple[np.ndarray, np.ndarray] | None = None,
) -> None:
    """The pool the filters keep and, when the model gives calibrated purchase probabilities, the
    expected buyers of two other ways to pick as many members from that pool: at random (size x
    the pool's mean probability) and the most active members (most purchase occasions)."""
    n_rows = state.scorer.n_members
    pool_mask = np.ones(n_rows, dtype=bool) if mask is None else mask[:n_rows]
    pool_size = int(pool_mask.sum())
    result.eligible = pool_size
    hook = _probabilities(state)
    n = result.size
    if hook is None or result.expected_buyers is None or n == 0 or pool_size == 0:
        return
    # every pool member's score for the product: the same scorer call as the audience itself
    idx, sc = whole if whole is not None else target.rank(state, pool_size, mask)
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
    probabilities (:attr:`~recsys.models.base.Capability.PROBABILITIES`), the expected number of buyers."""
    counts: dict[str, dict[str, int]] = {}
    base = rows[rows < state.members.n_base]
    n_new = len(rows) - len(base)
    for tag, t in state.member_tags.items():
        # a multi-valued tag counts a member once per value held (a member of two channels twice)
        per, none = tag_counts(t, base)
        c = {label: int(per[i]) for i, label in enumerate(t.labels) if per[i]}
        if none + n_new:
            c[UNKNOWN] = none + n_new
        counts[tag] = c
    expected = None
    hook = _probabilities(state)
    if hook is not None and len(scores):
        expected = float(np.sum(np.asarray(hook(scores), dtype=np.float64)))
    elif hook is not None:
        expected = 0.0
    return AudienceProfile(size=int(len(rows)), counts=counts, expected_buyers=expected)



def audience_options(state: ServingState, scope: Scope | None = None) -> AudienceOptions:
    """Member tags (values, labels, members per value), categories and brands an audience request
    may name. For a scoped key the counts are of its members, and a scope tag lists only the
    scope's values."""
    brands = product_column(state, "brand") or []
    return AudienceOptions(
        model_version=state.info.version,
        tags=tag_infos(state, "member", counts=True, scope=scope),
        categories=sorted(state.category.labels),
        brands=sorted({str(b) for b in brands if b}),
        max_audience=state.settings.max_audience,
        scope=None if scope is None else {tag: list(values) for tag, values in scope},
    )
