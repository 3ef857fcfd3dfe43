"""Synthetic retail purchase data, at any scale, shaped like a member programme's export.

:func:`synthesize` writes *source-style* files — a retailer's export whose columns happen to carry
the canonical names — plus a column-mapping config (``mapping.toml``) that ``recsys data ingest``
reads, so synthetic data goes through exactly the same validation path as a real retailer's.
:func:`synthesize_retailer` writes the same purchases as a retailer's raw export in a layout of
its own (gzip ``;`` CSV with Chinese headers, a product master, members, channel identities, and
optional export noise), mapped by the packaged ``sources/synth_retailer.toml``: a second schema
that reaches the same commands through its column mapping alone.

What makes the data useful for recommenders, rather than uniform noise:

* long-tailed (Zipf) product popularity; products grouped in categories of uneven size, each with
  its own price level (log-normal prices around it, shifted per brand);
* long-tailed member activity (most members buy rarely, a few buy a lot) and a lifecycle: join
  dates before and during the period, some members churn (last activity well before the end),
  some enrolled members never buy;
* repeat buying: every member has a small personal set of *staples* they rebuy; the other lines are
  drawn by popularity, mostly inside the member's favourite categories;
* a price tier per member (budget / mid / premium) that tilts each choice towards the cheaper or
  dearer of two candidates and makes promotions more or less frequent, so price-sensitivity tags
  have something to find;
* shopping trips: lines come in baskets that share a timestamp, a channel and a store; a member's
  trips are in time order;
* cold start: some products launch during the period (never sold before their launch) and some are
  never sold at all.

Everything is vectorised with numpy and written in chunks of members with
:class:`pyarrow.parquet.ParquetWriter`; text ids are built by :mod:`pyarrow.compute` from integer
arrays, never as Python strings per line. 50 M lines take a few minutes on two cores and well
under 2 GB of memory. The same spec (including its seed) always gives byte-identical files.
"""

from __future__ import annotations

import json
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, fields
from datetime import date, datetime, timedelta
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.columns import Col
from recsys.errors import InputError

__all__ = ["SynthSpec", "synthesize", "synthesize_retailer"]

CHANNELS = ("pos", "app", "miniprogram")
AGE_GROUPS = ("<25", "25-34", "35-44", "45-54", "55-64", "65+")
_AGE_SHARES = np.array([0.12, 0.24, 0.24, 0.19, 0.13, 0.08])
_AGE_UNKNOWN_SHARE = 0.03  # members who did not give an age: null age_group
# Primary channel by age group (rows follow AGE_GROUPS, columns follow CHANNELS): younger
# members use the app and the mini-programme more.
_CHANNEL_BY_AGE = np.array(
    [
        [0.35, 0.35, 0.30],
        [0.45, 0.30, 0.25],
        [0.55, 0.27, 0.18],
        [0.65, 0.22, 0.13],
        [0.75, 0.15, 0.10],
        [0.85, 0.10, 0.05],
    ]
)
_PRIMARY_CHANNEL_SHARE = 0.8  # share of a member's trips made on their primary channel
_HOME_STORE_SHARE = 0.85  # share of a member's trips made at their home store
REGIONS = ("north", "south", "east", "west", "central", "northeast", "southwest", "coast")
_REGION_SHARES = np.array([0.18, 0.16, 0.15, 0.12, 0.14, 0.09, 0.08, 0.08])
_DEPARTMENTS = (
    "dairy", "bakery", "produce", "meat", "seafood", "frozen", "beverages", "snacks",
    "pantry", "household", "personal-care", "baby", "pet", "health", "deli", "alcohol",
)
_PACK_SIZES = ("100g", "250g", "500g", "1kg", "330ml", "1L", "2L", "6-pack", "12-pack", "family")
_QUANTITIES = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 10.0, 12.0])
_QUANTITY_SHARES = np.array([0.60, 0.22, 0.10, 0.03, 0.02, 0.015, 0.01, 0.005])
_FAVOURITE_WEIGHTS = np.array([0.55, 0.30, 0.15])  # how a member splits favourite-category lines
_MAX_STAPLES = 12
_BUDGET, _MID, _PREMIUM = 0, 1, 2
_PROMO_BY_TIER = np.array([1.6, 1.0, 0.6])  # promotion frequency relative to promo_share
_OPEN_SECONDS, _DAY_SECONDS = 8 * 3600, 14 * 3600  # trips between 08:00 and 22:00
_ESTABLISHED_YEARS = 5  # products launched before the period launched within this many years
_MEMBER_HISTORY_YEARS = 3  # members who joined before the period joined within this many years
_CHURN_GAP_DAYS = 30  # a churned member's last purchase is at least this long before the end
_US = 1_000_000


@dataclass(frozen=True)
class SynthSpec:
    """What to synthesise: sizes, seed and the knobs of the purchase model.

    Parameters
    ----------
    members, products, lines, categories
        Table sizes. ``categories`` is capped at ``products`` (every category has a product).
    seed
        Same spec, same seed → byte-identical files.
    repeat_share
        Share of lines that rebuy one of the member's staples.
    favourite_share
        Share of lines drawn by popularity inside the member's three favourite categories; the
        remaining ``1 - repeat_share - favourite_share`` are drawn by popularity over the catalogue.
    staples_mean
        Mean size of a member's staple set (1 to 12 products).
    zipf_exponent
        Product popularity is ``1 / rank ** zipf_exponent``.
    activity_sigma
        Sigma of the log-normal member activity: larger means a longer tail of heavy buyers.
    basket_mean
        Mean number of lines per shopping trip.
    churn_share
        Share of members whose last purchase falls at least 30 days before the end.
    joined_before_share
        Share of members who joined before the period; the others join during it.
    late_launch_share, never_sold_share
        Shares of products launched during the period, and of products that never sell.
    promo_share
        Share of lines bought on promotion (budget members more, premium members less).
    price_tiers
        Shares of budget, mid and premium members.
    start, end
        First and last day of the period (inclusive).
    stores
        Number of stores; default scales with members (8 to 1,000).
    chunk_lines
        Approximate lines generated and written at a time; bounds memory, not the result's shape
        (a different ``chunk_lines`` gives different but equally distributed data).

    Examples
    --------
    >>> spec = SynthSpec(members=1_000, products=500, lines=20_000, seed=7)
    >>> spec.effective_categories
    200
    """

    members: int
    products: int
    lines: int
    categories: int = 200
    seed: int = 0
    repeat_share: float = 0.35
    favourite_share: float = 0.40
    staples_mean: float = 5.0
    zipf_exponent: float = 1.0
    activity_sigma: float = 1.4
    basket_mean: float = 4.0
    churn_share: float = 0.2
    joined_before_share: float = 0.65
    late_launch_share: float = 0.05
    never_sold_share: float = 0.02
    promo_share: float = 0.15
    price_tiers: tuple[float, float, float] = (0.30, 0.45, 0.25)
    start: date = date(2024, 1, 1)
    end: date = date(2024, 6, 30)
    stores: int | None = None
    chunk_lines: int = 4_000_000

    def __post_init__(self) -> None:
        for name in ("members", "products", "lines", "categories", "chunk_lines"):
            _require_int(name, getattr(self, name), minimum=1)
        _require_int("seed", self.seed, minimum=0)
        if self.stores is not None:
            _require_int("stores", self.stores, minimum=1)
        for name in (
            "repeat_share", "favourite_share", "churn_share", "joined_before_share",
            "late_launch_share", "never_sold_share", "promo_share",
        ):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
                raise InputError(f"synth: {name} must be a number between 0 and 1, got {value!r}")
        if self.repeat_share + self.favourite_share > 1:
            raise InputError(
                f"synth: repeat_share + favourite_share must be at most 1, got "
                f"{self.repeat_share} + {self.favourite_share}"
            )
        if self.late_launch_share + self.never_sold_share >= 1:
            raise InputError("synth: late_launch_share + never_sold_share must be below 1")
        for name in ("staples_mean", "zipf_exponent", "activity_sigma", "basket_mean"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise InputError(f"synth: {name} must be a non-negative number, got {value!r}")
        if self.basket_mean < 1:
            raise InputError(f"synth: basket_mean must be at least 1, got {self.basket_mean}")
        tiers = tuple(self.price_tiers)
        if len(tiers) != 3 or any(t < 0 for t in tiers) or not math.isclose(sum(tiers), 1.0):
            raise InputError(
                f"synth: price_tiers must be three non-negative shares (budget, mid, premium) "
                f"summing to 1, got {self.price_tiers!r}"
            )
        if self.end <= self.start:
            raise InputError(f"synth: end {self.end} must be after start {self.start}")

    @property
    def effective_categories(self) -> int:
        """Categories actually used: at most one per product."""
        return min(self.categories, self.products)

    @property
    def period_days(self) -> int:
        return (self.end - self.start).days + 1

    @property
    def effective_stores(self) -> int:
        return self.stores if self.stores is not None else int(np.clip(self.members // 2500, 8, 1000))

    def to_dict(self) -> dict[str, object]:
        """The spec as JSON-friendly values (dates as ISO strings)."""
        out: dict[str, object] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.isoformat() if isinstance(value, date) else value
        return out


def _require_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(f"synth: {name} must be an integer >= {minimum}, got {value!r}")


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------


class _WeightedSampler:
    """Draw products by weight, over the whole catalogue or inside given categories.

    Inverse-CDF sampling with one ``searchsorted`` per batch. Products are ordered by category
    and, inside a category, zero-weight products first, so that a draw that float rounding pushes
    past the end of its category lands on a product with weight (a zero-weight product is never
    drawn). Every category must hold at least one product with positive weight.
    """

    def __init__(self, weights: np.ndarray, category: np.ndarray, n_categories: int):
        order = np.lexsort((weights > 0, category))
        self._order = order.astype(np.int32)
        self._cum = np.cumsum(weights[order])
        counts = np.bincount(category, minlength=n_categories)
        ends = np.cumsum(counts)
        starts = ends - counts
        cum0 = np.concatenate(([0.0], self._cum))
        self._base = cum0[starts]
        self._total = cum0[ends] - self._base
        self._last = ends - 1
        if np.any(self._total <= 0):
            raise ValueError("every category needs a product with positive weight")

    def overall(self, u: np.ndarray) -> np.ndarray:
        """One product per uniform draw ``u`` in [0, 1), by weight over the catalogue."""
        idx = np.searchsorted(self._cum, u * self._cum[-1], side="right")
        np.minimum(idx, len(self._cum) - 1, out=idx)
        return self._order[idx]

    def within(self, categories: np.ndarray, u: np.ndarray) -> np.ndarray:
        """One product per (category, uniform draw), by weight inside that category."""
        x = self._base[categories] + u * self._total[categories]
        idx = np.searchsorted(self._cum, x, side="right")
        np.minimum(idx, self._last[categories], out=idx)
        return self._order[idx]


def _by_tier(a: np.ndarray, b: np.ndarray, tier: np.ndarray, rel_price: np.ndarray) -> np.ndarray:
    """Budget members keep the cheaper of two candidates, premium the dearer, mid the first.

    Prices are compared relative to the category's price level, so the tilt moves a member
    between cheap and dear products of a category rather than between categories.
    """
    ra, rb = rel_price[a], rel_price[b]
    take_b = ((tier == _BUDGET) & (rb < ra)) | ((tier == _PREMIUM) & (rb > ra))
    return np.where(take_b, b, a)


def _categorical(rng: np.random.Generator, shares: np.ndarray, size: int) -> np.ndarray:
    """Indices drawn with the given shares (vectorised inverse CDF)."""
    cum = np.cumsum(shares / shares.sum())
    return np.minimum(np.searchsorted(cum, rng.random(size), side="right"), len(shares) - 1)


def _text_ids(prefix: str, numbers: np.ndarray, width: int) -> pa.Array:
    """``prefix`` + zero-padded numbers, built in Arrow (no Python string per id)."""
    digits = pc.utf8_lpad(pc.cast(pa.array(numbers, type=pa.int64()), pa.string()), width, "0")
    return pc.binary_join_element_wise(prefix, digits, "")


def _id_width(n: int, minimum: int) -> int:
    return max(minimum, len(str(n)))


# --------------------------------------------------------------------------------------------
# Catalogue and members
# --------------------------------------------------------------------------------------------


@dataclass
class _Catalogue:
    category: np.ndarray  # int32 per product
    price: np.ndarray  # float64 per product (list price)
    rel_price: np.ndarray  # log price minus the category's log price level
    launch_day: np.ndarray  # int32, days since spec.start (negative: before the period)
    weight: np.ndarray  # popularity; 0 for never-sold products
    brand: np.ndarray  # int32 global brand index per product
    pack: np.ndarray  # int8 index into _PACK_SIZES
    category_weight: np.ndarray  # summed popularity per category
    n_brands: int
    all_sampler: _WeightedSampler
    established_sampler: _WeightedSampler  # only products launched before the period


def _make_catalogue(spec: SynthSpec, rng: np.random.Generator) -> _Catalogue:
    n_p, n_c = spec.products, spec.effective_categories
    # Uneven category sizes: each category gets one product, the rest go by Zipf-like shares.
    size_share = 1.0 / np.arange(1, n_c + 1) ** 0.7
    category = np.concatenate(
        [np.arange(n_c), _categorical(rng, rng.permutation(size_share), n_p - n_c)]
    ).astype(np.int32)
    seed_products = np.zeros(n_p, dtype=bool)
    seed_products[:n_c] = True  # one guaranteed established, selling product per category
    shuffle = rng.permutation(n_p)  # product ids carry no information about category or rank
    category, seed_products = category[shuffle], seed_products[shuffle]

    cat_level = rng.normal(math.log(6.0), 0.9, n_c)  # median prices from ~1 to ~40
    brands_per_cat = 1 + rng.poisson(4.0, n_c)
    brand_offset = np.concatenate(([0], np.cumsum(brands_per_cat)[:-1]))
    n_brands = int(brands_per_cat.sum())
    brand_level = rng.normal(0.0, 0.3, n_brands)  # premium and value brands
    brand = (brand_offset[category] + (rng.random(n_p) * brands_per_cat[category])).astype(np.int32)
    rel_price = brand_level[brand] + rng.normal(0.0, 0.35, n_p)
    price = np.maximum(np.round(np.exp(cat_level[category] + rel_price), 2), 0.1)
    pack = rng.integers(0, len(_PACK_SIZES), n_p).astype(np.int8)

    weight = 1.0 / rng.permutation(np.arange(1, n_p + 1)).astype(np.float64) ** spec.zipf_exponent
    kind = rng.random(n_p)
    never_sold = (kind < spec.never_sold_share) & ~seed_products
    late = (kind >= spec.never_sold_share) & (kind < spec.never_sold_share + spec.late_launch_share)
    late &= ~seed_products
    weight[never_sold] = 0.0
    days = spec.period_days
    launch_day = -rng.integers(1, 365 * _ESTABLISHED_YEARS, n_p)
    # Late launches fall between two weeks in and a week before the end (when the period allows).
    first, last = min(14, days - 1), max(min(14, days - 1), days - 8)
    launch_day[late] = rng.integers(first, last + 1, int(late.sum()))
    launch_day = launch_day.astype(np.int32)
    established = launch_day < 0

    return _Catalogue(
        category=category,
        price=price,
        rel_price=rel_price,
        launch_day=launch_day,
        weight=weight,
        brand=brand,
        pack=pack,
        category_weight=np.bincount(category, weights=weight, minlength=n_c),
        n_brands=n_brands,
        all_sampler=_WeightedSampler(weight, category, n_c),
        established_sampler=_WeightedSampler(weight * established, category, n_c),
    )


@dataclass
class _Members:
    join_day: np.ndarray  # int32, days since spec.start (negative: joined before)
    first_day: np.ndarray  # first day the member can buy in the period
    last_day: np.ndarray  # last day the member buys (earlier than the end for churners)
    tier: np.ndarray  # int8: _BUDGET, _MID, _PREMIUM
    age: np.ndarray  # int8 index into AGE_GROUPS, -1 unknown
    region: np.ndarray  # int8 index into REGIONS
    home_store: np.ndarray  # int32
    channel: np.ndarray  # int8 primary channel
    favourites: np.ndarray  # (members, 3) int32 categories
    staples: np.ndarray  # (members, _MAX_STAPLES) int32 products
    n_staples: np.ndarray  # int8
    lines: np.ndarray  # int64 lines per member (sums to spec.lines)


def _make_members(spec: SynthSpec, cat: _Catalogue, rng: np.random.Generator) -> _Members:
    n, days = spec.members, spec.period_days
    before = rng.random(n) < spec.joined_before_share
    join_day = np.where(
        before,
        -rng.integers(1, 365 * _MEMBER_HISTORY_YEARS + 1, n),
        rng.integers(0, days, n),
    ).astype(np.int32)
    first_day = np.maximum(join_day, 0)
    last_day = np.full(n, days - 1, dtype=np.int32)
    churn_room = days - _CHURN_GAP_DAYS - first_day  # days a churner can still be active
    churned = (rng.random(n) < spec.churn_share) & (churn_room > 0)
    last_day[churned] = first_day[churned] + (
        rng.random(int(churned.sum())) * churn_room[churned]
    ).astype(np.int32)

    # Long-tailed activity, clipped so one member cannot take a visible share of all lines;
    # expected lines are proportional to activity times the days the member is active.
    z = np.clip(rng.standard_normal(n), -4.0, 3.0)
    activity = np.exp(spec.activity_sigma * z) * (last_day - first_day + 1)
    lines = rng.multinomial(spec.lines, activity / activity.sum()).astype(np.int64)

    tier = _categorical(rng, np.asarray(spec.price_tiers, dtype=np.float64), n).astype(np.int8)
    age = _categorical(rng, _AGE_SHARES, n).astype(np.int8)
    channel_cum = np.cumsum(_CHANNEL_BY_AGE, axis=1)[age]
    channel = (rng.random(n)[:, None] >= channel_cum[:, :-1]).sum(axis=1).astype(np.int8)
    age[rng.random(n) < _AGE_UNKNOWN_SHARE] = -1
    region = _categorical(rng, _REGION_SHARES, n).astype(np.int8)
    # Stores are spread over regions round-robin; a member's home store is in their region when
    # the region has one.
    n_stores, n_regions = spec.effective_stores, len(REGIONS)
    per_region = np.bincount(np.arange(n_stores) % n_regions, minlength=n_regions)
    has_store = per_region[region] > 0
    slot = (rng.random(n) * np.maximum(per_region[region], 1)).astype(np.int64)
    home_store = np.where(
        has_store, region + n_regions * slot, rng.integers(0, n_stores, n)
    ).astype(np.int32)

    # Favourite categories follow category popularity (repeats allowed: a narrow shopper).
    favourites = _categorical_many(rng, cat.category_weight, (n, len(_FAVOURITE_WEIGHTS)))

    n_staples = np.clip(rng.poisson(spec.staples_mean, n), 1, _MAX_STAPLES).astype(np.int8)
    staples = np.empty((n, _MAX_STAPLES), dtype=np.int32)
    # Staples are established products in the member's favourite categories, tilted by tier;
    # drawn in blocks of members to bound memory at a million members.
    block = 200_000
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        k = (hi - lo) * _MAX_STAPLES
        fav_slot = _categorical(rng, _FAVOURITE_WEIGHTS, k).reshape(hi - lo, _MAX_STAPLES)
        cats = np.take_along_axis(favourites[lo:hi], fav_slot, axis=1).ravel()
        a = cat.established_sampler.within(cats, rng.random(k))
        b = cat.established_sampler.within(cats, rng.random(k))
        drawn = _by_tier(a, b, np.repeat(tier[lo:hi], _MAX_STAPLES), cat.rel_price)
        staples[lo:hi] = _distinct_rows(drawn.reshape(hi - lo, _MAX_STAPLES), cat, rng)
    return _Members(
        join_day=join_day,
        first_day=first_day,
        last_day=last_day,
        tier=tier,
        age=age,
        region=region,
        home_store=home_store,
        channel=channel,
        favourites=favourites,
        staples=staples,
        n_staples=n_staples,
        lines=lines,
    )


def _distinct_rows(rows: np.ndarray, cat: _Catalogue, rng: np.random.Generator) -> np.ndarray:
    """Replace repeated products inside each row by popular established ones (a few passes).

    A category's leading product dominates draws inside the category, so a member's staples
    would otherwise often name it several times and the staple set would be smaller than meant.
    The first occurrence keeps its slot, so the member's favourite staple stays first.
    """
    rows = rows.copy()
    n_rows, width = rows.shape
    for _ in range(4):
        order = np.argsort(rows, axis=1, kind="stable")
        ranked = np.take_along_axis(rows, order, axis=1)
        repeat_sorted = np.zeros_like(rows, dtype=bool)
        repeat_sorted[:, 1:] = ranked[:, 1:] == ranked[:, :-1]
        if not repeat_sorted.any():
            break
        repeat = np.zeros_like(repeat_sorted)
        np.put_along_axis(repeat, order, repeat_sorted, axis=1)
        rows[repeat] = cat.established_sampler.overall(rng.random(int(repeat.sum())))
    return rows


def _categorical_many(rng: np.random.Generator, shares: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A matrix of indices drawn with the given shares."""
    return _categorical(rng, shares, shape[0] * shape[1]).reshape(shape).astype(np.int32)


# --------------------------------------------------------------------------------------------
# Transactions
# --------------------------------------------------------------------------------------------


def _member_chunks(lines: np.ndarray, chunk_lines: int) -> list[tuple[int, int]]:
    """Consecutive member ranges holding about ``chunk_lines`` lines each (never empty)."""
    cum = np.cumsum(lines)
    total = int(cum[-1]) if len(cum) else 0
    cuts = np.searchsorted(cum, np.arange(chunk_lines, total, chunk_lines), side="left") + 1
    bounds = np.unique(np.concatenate(([0], cuts, [len(lines)])))
    out = []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        if lines[lo:hi].sum() > 0:
            out.append((int(lo), int(hi)))
    return out


def _transactions_chunk(
    spec: SynthSpec,
    cat: _Catalogue,
    mem: _Members,
    lo: int,
    hi: int,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Lines of members ``lo..hi-1`` as integer / float arrays (ids still as indices)."""
    counts = mem.lines[lo:hi]
    n = int(counts.sum())
    member = np.repeat(np.arange(lo, hi, dtype=np.int32), counts)

    # Trips: a new trip starts at a member's first line, then with probability 1 / basket_mean.
    first_of_member = np.zeros(n, dtype=bool)
    first_of_member[(np.cumsum(counts) - counts)[counts > 0]] = True
    new_trip = first_of_member | (rng.random(n) < 1.0 / spec.basket_mean)
    trip = np.cumsum(new_trip) - 1
    trip_member = member[new_trip]
    n_trips = len(trip_member)

    # Trip times: a day in the member's active window and a time of day peaking mid-afternoon,
    # then sorted inside each member so a member's trips are in time order.
    first, last = mem.first_day[trip_member], mem.last_day[trip_member]
    day = first + (rng.random(n_trips) * (last - first + 1)).astype(np.int64)
    tod = _OPEN_SECONDS + ((rng.random(n_trips) + rng.random(n_trips)) * (_DAY_SECONDS / 2)).astype(np.int64)
    seconds = day * 86_400 + tod
    shift = int(spec.period_days * 86_400).bit_length()
    key = np.sort((trip_member.astype(np.int64) << shift) | seconds)
    # Two trips of one member never share a second (heavy buyers would, by chance): a trip that
    # ties with the one before moves a second later, which keeps the order.
    for _ in range(16):
        tie = np.flatnonzero(key[1:] <= key[:-1]) + 1
        if not len(tie):
            break
        key[tie] = key[tie - 1] + 1
    seconds = key & ((1 << shift) - 1)
    trip_day = seconds // 86_400

    trip_channel = np.where(
        rng.random(n_trips) < _PRIMARY_CHANNEL_SHARE,
        mem.channel[trip_member],
        rng.integers(0, len(CHANNELS), n_trips),
    ).astype(np.int8)
    trip_store = np.where(
        rng.random(n_trips) < _HOME_STORE_SHARE,
        mem.home_store[trip_member],
        rng.integers(0, spec.effective_stores, n_trips),
    ).astype(np.int32)

    # Products: staples, favourite categories, or the whole catalogue.
    kind = rng.random(n)
    product = np.empty(n, dtype=np.int32)
    staple = kind < spec.repeat_share
    favourite = ~staple & (kind < spec.repeat_share + spec.favourite_share)
    explore = ~(staple | favourite)

    m = member[staple]
    # Skewed towards the first staples: members have a favourite among their favourites.
    slot = (rng.random(len(m)) ** 1.5 * mem.n_staples[m]).astype(np.int64)
    product[staple] = mem.staples[m, slot]

    m = member[favourite]
    fav = mem.favourites[m, _categorical(rng, _FAVOURITE_WEIGHTS, len(m))]
    a = cat.all_sampler.within(fav, rng.random(len(m)))
    b = cat.all_sampler.within(fav, rng.random(len(m)))
    product[favourite] = _by_tier(a, b, mem.tier[m], cat.rel_price)

    m = member[explore]
    a = cat.all_sampler.overall(rng.random(len(m)))
    b = cat.all_sampler.overall(rng.random(len(m)))
    product[explore] = _by_tier(a, b, mem.tier[m], cat.rel_price)

    # Nothing is sold before it launched: swap for an established product of the same category.
    line_day = trip_day[trip]
    early = cat.launch_day[product] > line_day
    if early.any():
        product[early] = cat.established_sampler.within(
            cat.category[product[early]], rng.random(int(early.sum()))
        )
    _one_per_trip(product, trip, n_trips, spec.products, cat, rng)

    quantity = _QUANTITIES[_categorical(rng, _QUANTITY_SHARES, n)]
    promo = rng.random(n) < spec.promo_share * _PROMO_BY_TIER[mem.tier[member]]
    factor = np.where(promo, rng.uniform(0.6, 0.95, n), 1.0)
    amount = np.round(quantity * cat.price[product] * factor, 2)

    return {
        "member": member,
        "product": product,
        "seconds": seconds[trip],
        "quantity": quantity,
        "amount": amount,
        "channel": trip_channel[trip],
        "store": trip_store[trip],
        "staple": staple,
        "trip": trip,  # trip index inside the chunk (receipt numbers of the retailer export)
    }


def _one_per_trip(
    product: np.ndarray,
    trip: np.ndarray,
    n_trips: int,
    n_products: int,
    cat: _Catalogue,
    rng: np.random.Generator,
    max_passes: int = 12,
) -> None:
    """Make each product appear at most once per trip, in place.

    A repeat inside a trip (two staple draws, say) becomes another established product drawn by
    popularity (not within the category, whose leader would often come up again). A redraw can
    collide again, so later passes re-check only the trips that changed; the first occurrence
    always keeps its product.
    """
    check = np.arange(len(product))
    for _ in range(max_passes):
        key = trip[check].astype(np.int64) * n_products + product[check]
        order = np.argsort(key, kind="stable")
        repeated = check[order[1:][key[order[1:]] == key[order[:-1]]]]
        if not len(repeated):
            return
        product[repeated] = cat.established_sampler.overall(rng.random(len(repeated)))
        touched = np.zeros(n_trips, dtype=bool)
        touched[trip[repeated]] = True
        check = np.flatnonzero(touched[trip])


TRANSACTIONS_SCHEMA = pa.schema(
    [
        (Col.MEMBER, pa.string()),
        (Col.PRODUCT, pa.string()),
        (Col.TS, pa.timestamp("us")),
        (Col.QUANTITY, pa.float64()),
        (Col.AMOUNT, pa.float64()),
        (Col.CHANNEL, pa.string()),
        (Col.STORE, pa.string()),
    ]
)


class _Ids:
    """Text ids for every member, product and store, built once and taken per chunk."""

    def __init__(self, spec: SynthSpec):
        self.members = _text_ids("M", np.arange(1, spec.members + 1), _id_width(spec.members, 7))
        self.products = _text_ids("P", np.arange(1, spec.products + 1), _id_width(spec.products, 6))
        n_stores = spec.effective_stores
        self.stores = _text_ids("S", np.arange(1, n_stores + 1), _id_width(n_stores, 4))
        self.channels = pa.array(CHANNELS, type=pa.string())


def _chunk_table(chunk: dict[str, np.ndarray], ids: _Ids, start_us: int) -> pa.Table:
    ts = pa.array(start_us + chunk["seconds"] * _US, type=pa.int64()).cast(pa.timestamp("us"))
    return pa.Table.from_arrays(
        [
            ids.members.take(pa.array(chunk["member"])),
            ids.products.take(pa.array(chunk["product"])),
            ts,
            pa.array(chunk["quantity"]),
            pa.array(chunk["amount"]),
            ids.channels.take(pa.array(chunk["channel"])),
            ids.stores.take(pa.array(chunk["store"])),
        ],
        schema=TRANSACTIONS_SCHEMA,
    )


def _epoch_us(day: date) -> int:
    return int((datetime(day.year, day.month, day.day) - datetime(1970, 1, 1)) / timedelta(microseconds=1))


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


_PARQUET_OPTIONS = {"compression": "zstd", "compression_level": 1}
_ROW_GROUP = 1 << 20


def _provenance(spec: SynthSpec) -> dict[bytes, bytes]:
    """Parquet key-value metadata recording the spec that made a file."""
    return {b"recsys.synth": json.dumps(spec.to_dict(), sort_keys=True).encode()}


def _write_table(table: pa.Table, path: Path, metadata: dict[bytes, bytes]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    table = table.replace_schema_metadata(metadata)
    pq.write_table(table, tmp, row_group_size=_ROW_GROUP, **_PARQUET_OPTIONS)
    tmp.replace(path)


def _products_table(spec: SynthSpec, cat: _Catalogue, ids: _Ids, start_us: int) -> pa.Table:
    n_c = spec.effective_categories
    dept = np.arange(n_c) % len(_DEPARTMENTS)
    category_names = pc.binary_join_element_wise(
        pa.array(_DEPARTMENTS).take(pa.array(dept)),
        pc.utf8_lpad(pc.cast(pa.array(np.arange(1, n_c + 1)), pa.string()), 3, "0"),
        "-",
    )
    brand_names = _text_ids("B", np.arange(1, cat.n_brands + 1), _id_width(cat.n_brands, 5))
    category = category_names.take(pa.array(cat.category))
    brand = brand_names.take(pa.array(cat.brand))
    name = pc.binary_join_element_wise(
        brand, category, pa.array(_PACK_SIZES).take(pa.array(cat.pack)), " "
    )
    launched = pa.array(start_us + cat.launch_day.astype(np.int64) * 86_400 * _US).cast(
        pa.timestamp("us")
    )
    return pa.table(
        {
            Col.PRODUCT: ids.products,
            Col.CATEGORY: category,
            Col.PRICE: pa.array(cat.price),
            Col.BRAND: brand,
            Col.NAME: name,
            Col.LAUNCHED_AT: launched,
        }
    )


def _members_table(mem: _Members, ids: _Ids, start_us: int) -> pa.Table:
    joined = pa.array(start_us + mem.join_day.astype(np.int64) * 86_400 * _US).cast(pa.timestamp("us"))
    age = pa.array(AGE_GROUPS).take(pa.array(np.maximum(mem.age, 0), mask=mem.age < 0))
    return pa.table(
        {
            Col.MEMBER: ids.members,
            Col.JOINED_AT: joined,
            Col.AGE_GROUP: age,
            Col.REGION: pa.array(REGIONS).take(pa.array(mem.region)),
        }
    )


def _toml_str(value: str) -> str:
    # JSON string escapes (\\, \", \uXXXX) are valid TOML basic-string escapes.
    return json.dumps(value)


def mapping_toml(name: str, transactions: Path, products: Path, members: Path) -> str:
    """A column-mapping config that maps the synthetic files' columns onto themselves."""
    tables = (
        ("transactions", transactions, TRANSACTIONS_SCHEMA.names),
        ("products", products, [Col.PRODUCT, Col.CATEGORY, Col.PRICE, Col.BRAND, Col.NAME, Col.LAUNCHED_AT]),
        ("members", members, [Col.MEMBER, Col.JOINED_AT, Col.AGE_GROUP, Col.REGION]),
    )
    out = [
        "# Column mapping for synthetic data written by `recsys data synth`.",
        "# Source columns already carry the canonical names, so every mapping is the identity.",
        f"name = {_toml_str(name)}",
    ]
    for table, path, columns in tables:
        out += ["", f"[{table}]", f"path = {_toml_str(str(path))}", "", f"[{table}.columns]"]
        out += [f"{col} = {_toml_str(col)}" for col in columns]
    return "\n".join(out) + "\n"


def _generate_chunks(spec: SynthSpec, cat: _Catalogue, mem: _Members) -> Iterator[dict[str, np.ndarray]]:
    """The lines of each member chunk, each chunk from its own seed (order-independent)."""
    for i, (lo, hi) in enumerate(_member_chunks(mem.lines, spec.chunk_lines)):
        rng = np.random.default_rng(np.random.SeedSequence(spec.seed, spawn_key=(2, i)))
        yield _transactions_chunk(spec, cat, mem, lo, hi, rng)


@contextmanager
def _parquet_sink(path: Path, schema: pa.Schema) -> Iterator[Callable[[pa.Table], None]]:
    """A Parquet file written table by table (one or more row groups per table)."""
    with pq.ParquetWriter(path, schema, **_PARQUET_OPTIONS) as out:
        yield lambda table: out.write_table(table, row_group_size=_ROW_GROUP)


def _write_transactions(
    chunks: Iterator[dict[str, np.ndarray]],
    to_table: Callable[[dict[str, np.ndarray]], pa.Table],
    sink: Callable[[Path], AbstractContextManager[Callable[[pa.Table], None]]],
    path: Path,
) -> int:
    """Write chunks in order while the next one is generated; returns staple lines written.

    Building the Arrow table (text ids), encoding and compression run in a writer thread
    (Arrow releases the GIL), overlapping numpy generation of the next chunk on the other core.
    At most three chunks are alive at once: generated, queued and being written. ``sink(tmp)``
    opens the output file and gives the function that appends one table to it.
    """
    tmp = path.with_name(path.name + ".tmp")
    pending: queue.Queue[dict[str, np.ndarray] | None] = queue.Queue(maxsize=1)
    failure: list[BaseException] = []

    def writer() -> None:
        try:
            with sink(tmp) as write:
                while (chunk := pending.get()) is not None:
                    write(to_table(chunk))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the generating thread
            failure.append(exc)
            while pending.get() is not None:  # drain so the producer never blocks forever
                pass

    thread = threading.Thread(target=writer, name="synth-writer", daemon=True)
    thread.start()
    staples = 0
    try:
        for chunk in chunks:
            if failure:
                break
            staples += int(chunk.pop("staple").sum())
            pending.put(chunk)
    finally:
        pending.put(None)
        thread.join()
    if failure:
        tmp.unlink(missing_ok=True)
        raise failure[0]
    tmp.replace(path)
    return staples



def _start(spec: SynthSpec, out_dir: Path | str) -> tuple[Path, _Catalogue, _Members]:
    """The output folder (created) and the catalogue and members every layout draws from the
    same seeded streams, so both layouts hold the same purchases."""
    out_dir = Path(out_dir).expanduser().resolve()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"synth: cannot create output folder {out_dir}: {exc.strerror}") from exc
    if not out_dir.is_dir():
        raise InputError(f"synth: output path {out_dir} exists and is not a folder")
    catalogue = _make_catalogue(spec, np.random.default_rng(np.random.SeedSequence(spec.seed, spawn_key=(0,))))
    members = _make_members(
        spec, catalogue, np.random.default_rng(np.random.SeedSequence(spec.seed, spawn_key=(1,)))
    )
    return out_dir, catalogue, members

def synthesize(spec: SynthSpec, out_dir: Path) -> str:
    """Write synthetic source files and their column mapping into ``out_dir``.

    Writes ``transactions.parquet`` (member_id, product_id, ts, quantity, amount, channel,
    store_id), ``products.parquet`` (product_id, category, price, brand, name, launched_at),
    ``members.parquet`` (member_id, joined_at, age_group, region) and ``mapping.toml``, an
    identity column mapping with absolute paths, ready for ``recsys data ingest``. Each Parquet
    file records the spec in its key-value metadata under ``recsys.synth`` (JSON).

    Parameters
    ----------
    spec
        Sizes, seed and model knobs; see :class:`SynthSpec`.
    out_dir
        Created if missing; existing files of the same names are replaced.

    Returns
    -------
    str
        A short human summary of what was written.

    Raises
    ------
    InputError
        When ``out_dir`` cannot be written (bad sizes are refused by :class:`SynthSpec` itself).

    Examples
    --------
    >>> summary = synthesize(SynthSpec(members=200, products=50, lines=5_000), Path("/tmp/s"))
    >>> Path("/tmp/s/mapping.toml").exists()
    True
    """
    t0 = time.perf_counter()
    out_dir, catalogue, members = _start(spec, out_dir)
    ids = _Ids(spec)
    start_us = _epoch_us(spec.start)

    paths = {t: out_dir / f"{t}.parquet" for t in ("transactions", "products", "members")}
    try:
        meta = _provenance(spec)
        _write_table(_products_table(spec, catalogue, ids, start_us), paths["products"], meta)
        _write_table(_members_table(members, ids, start_us), paths["members"], meta)
        staples = _write_transactions(
            _generate_chunks(spec, catalogue, members),
            lambda chunk: _chunk_table(chunk, ids, start_us),
            partial(_parquet_sink, schema=TRANSACTIONS_SCHEMA.with_metadata(meta)),
            paths["transactions"],
        )
        mapping = out_dir / "mapping.toml"
        mapping.write_text(
            mapping_toml("synth", paths["transactions"], paths["products"], paths["members"]),
            encoding="utf-8",
        )
    except OSError as exc:
        raise InputError(f"synth: cannot write into {out_dir}: {exc}") from exc
    seconds = time.perf_counter() - t0

    buyers = int((members.lines > 0).sum())
    never_sold = int((catalogue.weight == 0).sum())
    late = int((catalogue.launch_day >= 0).sum())
    return (
        f"synth: {spec.lines:,} lines, {spec.members:,} members ({buyers:,} with purchases), "
        f"{spec.products:,} products ({late:,} launched in the period, {never_sold:,} never sold), "
        f"{spec.effective_categories:,} categories, {spec.effective_stores:,} stores, "
        f"{spec.start}..{spec.end}, seed {spec.seed}; staple repeats {staples / spec.lines:.0%} "
        f"of lines; {seconds:.1f} s ({spec.lines / max(seconds, 1e-9) / 1e6:.2f} M lines/s)\n"
        f"  files: {out_dir}/{{transactions,products,members}}.parquet\n"
        f"  ingest with: recsys data ingest {mapping}"
    )


# --------------------------------------------------------------------------------------------
# A retailer-style raw export (a second schema for the same purchases)
# --------------------------------------------------------------------------------------------

RETAILER_NAME = "synth_retailer"  # the dataset name of the packaged mapping sources/synth_retailer.toml
RETAILER_FILES = {
    "transactions": "sales_lines.csv.gz",
    "products": "products.parquet",
    "members": "members.csv",
    "identities": "identities.csv",
}
# Sales lines: a POS / e-commerce back-office export, `;`-separated, gzip, Chinese headers,
# Chinese-style timestamps. 应收金额 (gross, before discounts) is there but not mapped.
RETAILER_LINE_COLUMNS = ("小票号", "销售时间", "门店", "渠道", "卡号", "商品编码", "数量", "应收金额", "实收金额")
RETAILER_TS_FORMAT = "%Y年%m月%d日 %H:%M:%S"
RETAILER_JOIN_FORMAT = "%d/%m/%Y"  # members.csv: day first
RETAILER_REGIONS = ("华北", "华南", "华东", "西北", "华中", "东北", "西南", "沿海")  # follows REGIONS
_RETAILER_DEPARTMENTS = (
    "乳品", "烘焙", "果蔬", "肉禽", "水产", "冷冻", "饮料", "零食",
    "粮油", "日化", "个护", "母婴", "宠物", "保健", "熟食", "酒类",
)  # follows _DEPARTMENTS
RETAILER_BAG_SKU = "2000000000015"  # the till's carrier bag: sold on receipts, not in the catalogue
_BAG_PRICE = 0.3
# Export noise: each kind gets ``dirty_lines`` lines, each rejected by ingest for one reason.
RETAILER_NOISE = {
    "walk_in": "missing_member_id",  # a sale to a non-member: no card number
    "return": "non_positive_quantity",  # a refund line: negative quantity and amount
    "bag": "unknown_product",  # a carrier bag: a SKU the product master does not hold
    "duplicate": "duplicate",  # a line exported twice
}
_SALE, _RETURN, _WALK_IN = 0, 1, 2
_RECEIPT_PREFIX = ("T", "R", "W")


class _RetailerIds:
    """The retailer's own ids: member numbers, one account per channel, barcodes, store codes."""

    def __init__(self, spec: SynthSpec):
        n = spec.members
        rng = np.random.default_rng(np.random.SeedSequence(spec.seed, spawn_key=(3,)))
        self.members = _text_ids("VIP", np.arange(1, n + 1), _id_width(n, 8))
        # One account per channel and member, numbered in an order unrelated to the member
        # number: a POS loyalty card, an app user id and a mini-programme open id (CHANNELS order).
        self.accounts = pa.concat_arrays([
            _text_ids("62", 1 + rng.permutation(n), 10),
            _text_ids("U", 100_000 + rng.permutation(n), _id_width(100_000 + n, 8)),
            _text_ids("oWX", rng.permutation(n), _id_width(n, 9)),
        ])
        # 13-digit barcodes with a Chinese (69x) GS1 prefix; the bag's internal code comes last.
        self.skus = pa.concat_arrays([
            _text_ids("69", 10_000_000_000 + rng.permutation(spec.products), 11),
            pa.array([RETAILER_BAG_SKU]),
        ])
        self.stores = _text_ids("MD", np.arange(1, spec.effective_stores + 1), 4)
        self.channels = pa.array(CHANNELS, type=pa.string())
        self.prefixes = pa.array(_RECEIPT_PREFIX, type=pa.string())


def _retailer_chunks(
    spec: SynthSpec, cat: _Catalogue, mem: _Members, dirty_lines: int
) -> Iterator[dict[str, np.ndarray]]:
    """The canonical generator's chunks (the same purchases), reshaped as export lines.

    Each chunk is put in time order (receipt order within a second) and gets its share of the
    noise lines, drawn from a stream of their own so the clean lines do not depend on them.
    """
    bounds = _member_chunks(mem.lines, spec.chunk_lines)
    sizes = np.array([mem.lines[lo:hi].sum() for lo, hi in bounds], dtype=np.float64)
    noise = np.diff(np.concatenate(([0], np.round(dirty_lines * np.cumsum(sizes) / sizes.sum())))).astype(np.int64)
    trips = noise_receipts = 0
    for i, chunk in enumerate(_generate_chunks(spec, cat, mem)):
        n = len(chunk["member"])
        lines = {
            "member": chunk["member"],
            "channel": chunk["channel"],
            "store": chunk["store"],
            "seconds": chunk["seconds"],
            "product": chunk["product"],
            "quantity": chunk["quantity"].astype(np.int64),
            "gross": np.round(chunk["quantity"] * cat.price[chunk["product"]], 2),
            "amount": chunk["amount"],
            "receipt": trips + chunk["trip"].astype(np.int64),
            "kind": np.zeros(n, dtype=np.int8),
        }
        trips += int(chunk["trip"][-1]) + 1
        order = np.lexsort((lines["receipt"], lines["seconds"]))  # stable: a trip keeps its order
        lines = {k: v[order] for k, v in lines.items()}
        k = int(noise[i])
        if k:
            rng = np.random.default_rng(np.random.SeedSequence(spec.seed, spawn_key=(4, i)))
            extra = _noise_lines(spec, cat, lines, k, noise_receipts, rng)
            noise_receipts += 2 * k
            # Each noise line goes in after the lines of its second: the export stays in time order.
            at = np.searchsorted(lines["seconds"], extra["seconds"], side="right")
            place = np.argsort(np.concatenate((2 * np.arange(n) + 1, 2 * at + 2)), kind="stable")
            lines = {key: np.concatenate((lines[key], extra[key]))[place] for key in lines}
        yield {**lines, "staple": chunk["staple"]}


def _noise_lines(
    spec: SynthSpec, cat: _Catalogue, lines: dict[str, np.ndarray], k: int, receipt0: int,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """``k`` lines of each kind in :data:`RETAILER_NOISE`, copied from random clean lines."""
    n = len(lines["member"])

    def copy() -> dict[str, np.ndarray]:
        picked = rng.integers(0, n, k)
        return {key: v[picked] for key, v in lines.items()}

    walk_in = copy()  # at the till without a card: no member, a receipt of its own
    walk_in["member"][:] = -1
    walk_in["channel"][:] = CHANNELS.index("pos")
    walk_in["receipt"] = receipt0 + np.arange(k)
    walk_in["kind"][:] = _WALK_IN

    refund = copy()  # brought back one to seven days later, still inside the period
    last_second = spec.period_days * 86_400 - 1
    refund["seconds"] = np.minimum(refund["seconds"] + rng.integers(1, 8, k) * 86_400, last_second)
    for key in ("quantity", "gross", "amount"):
        refund[key] = -refund[key]
    refund["receipt"] = receipt0 + k + np.arange(k)
    refund["kind"][:] = _RETURN

    bag = copy()  # a carrier bag on the same receipt
    bag["product"][:] = spec.products  # the index of RETAILER_BAG_SKU
    bag["quantity"][:] = 1
    bag["gross"][:] = bag["amount"][:] = _BAG_PRICE

    twice = copy()  # an exact copy
    parts = (walk_in, refund, bag, twice)
    return {key: np.concatenate([p[key] for p in parts]) for key in lines}


def _retailer_lines_table(chunk: dict[str, np.ndarray], ids: _RetailerIds, n_members: int,
                          start_s: int) -> pa.Table:
    member = chunk["member"]
    account = pa.array(chunk["channel"].astype(np.int64) * n_members + member, mask=member < 0)
    ts = pa.array(start_s + chunk["seconds"], type=pa.int64()).cast(pa.timestamp("s"))
    receipt = pc.binary_join_element_wise(
        ids.prefixes.take(pa.array(chunk["kind"])),
        pc.utf8_lpad(pc.cast(pa.array(chunk["receipt"]), pa.string()), 9, "0"),
        "",
    )
    values = (
        receipt,
        pc.strftime(ts, format=RETAILER_TS_FORMAT),
        ids.stores.take(pa.array(chunk["store"])),
        ids.channels.take(pa.array(chunk["channel"])),
        ids.accounts.take(account),
        ids.skus.take(pa.array(chunk["product"])),
        pa.array(chunk["quantity"]),
        pa.array(chunk["gross"]),
        pa.array(chunk["amount"]),
    )
    return pa.Table.from_arrays(list(values), names=list(RETAILER_LINE_COLUMNS))


_RETAILER_LINES_SCHEMA = pa.schema(
    [(name, pa.string()) for name in RETAILER_LINE_COLUMNS[:6]]
    + [(RETAILER_LINE_COLUMNS[6], pa.int64()), (RETAILER_LINE_COLUMNS[7], pa.float64()),
       (RETAILER_LINE_COLUMNS[8], pa.float64())]
)


@contextmanager
def _csv_gz_sink(path: Path, schema: pa.Schema, delimiter: str) -> Iterator[Callable[[pa.Table], None]]:
    """A gzip-compressed CSV written table by table (header once; no quoting, ids stay bare)."""
    import pyarrow.csv as pacsv

    options = pacsv.WriteOptions(delimiter=delimiter, quoting_style="none")
    with pa.CompressedOutputStream(str(path), "gzip") as stream, \
            pacsv.CSVWriter(stream, schema, write_options=options) as out:
        yield out.write_table


def _write_csv(table: pa.Table, path: Path) -> None:
    import pyarrow.csv as pacsv

    tmp = path.with_name(path.name + ".tmp")
    pacsv.write_csv(table, tmp, write_options=pacsv.WriteOptions(quoting_style="none"))
    tmp.replace(path)


def _retailer_products_table(spec: SynthSpec, cat: _Catalogue, ids: _RetailerIds) -> pa.Table:
    """The product master: barcode, category code, list price, brand, title, first-listed date."""
    n_c = spec.effective_categories
    dept = pa.array(_RETAILER_DEPARTMENTS).take(pa.array(np.arange(n_c) % len(_RETAILER_DEPARTMENTS)))
    codes = pc.binary_join_element_wise(
        dept, pc.utf8_lpad(pc.cast(pa.array(np.arange(1, n_c + 1)), pa.string()), 3, "0"), "-"
    )
    brand_names = _text_ids("品牌", np.arange(1, cat.n_brands + 1), _id_width(cat.n_brands, 4))
    category = codes.take(pa.array(cat.category))
    brand = brand_names.take(pa.array(cat.brand))
    title = pc.binary_join_element_wise(
        brand, category, pa.array(_PACK_SIZES).take(pa.array(cat.pack)), " "
    )
    start_day = (spec.start - date(1970, 1, 1)).days
    listed = pa.array(start_day + cat.launch_day.astype(np.int32), type=pa.date32())
    return pa.table({
        "sku": ids.skus.slice(0, spec.products),
        "cat_code": category,
        "list_price": pa.array(cat.price),
        "brand_name": brand,
        "title": title,
        "first_listed": listed,
    })


def _retailer_members_table(spec: SynthSpec, mem: _Members, ids: _RetailerIds) -> pa.Table:
    start_day = (spec.start - date(1970, 1, 1)).days
    joined = pa.array(start_day + mem.join_day, type=pa.date32())
    age = pa.array(AGE_GROUPS).take(pa.array(np.maximum(mem.age, 0), mask=mem.age < 0))
    return pa.table({
        "member_no": ids.members,
        "join_date": pc.strftime(joined, format=RETAILER_JOIN_FORMAT),
        "age_band": age,
        "area": pa.array(RETAILER_REGIONS).take(pa.array(mem.region)),
    })


def _retailer_identities_table(spec: SynthSpec, ids: _RetailerIds) -> pa.Table:
    """Every member's three accounts (channel, account id -> member number), member by member."""
    n, k = spec.members, len(CHANNELS)
    member = np.repeat(np.arange(n), k)
    channel = np.tile(np.arange(k), n)
    return pa.table({
        "channel": ids.channels.take(pa.array(channel)),
        "account_id": ids.accounts.take(pa.array(channel.astype(np.int64) * n + member)),
        "member_no": ids.members.take(pa.array(member)),
    })


def retailer_mapping_toml(out_dir: Path) -> str:
    """The packaged ``sources/synth_retailer.toml`` with its paths pointing into ``out_dir``."""
    from importlib import resources

    text = resources.files("recsys.data").joinpath("sources", f"{RETAILER_NAME}.toml").read_text(
        encoding="utf-8"
    )
    for file in RETAILER_FILES.values():
        line = f'path = "{RETAILER_NAME}/raw/{file}"'
        if line not in text:
            raise RuntimeError(f"sources/{RETAILER_NAME}.toml has no line {line!r}")
        text = text.replace(line, f"path = {_toml_str(str(out_dir / file))}")
    return text


def synthesize_retailer(spec: SynthSpec, out_dir: Path, dirty_lines: int = 0) -> str:
    """Write the synthetic purchases as a retailer's raw export, in a layout unlike Ta-Feng's.

    The purchases are those :func:`synthesize` writes for the same spec (same members, products,
    trips and lines); only the layout differs, so the column-mapping config has to do the work:

    * ``sales_lines.csv.gz`` — gzip, ``;``-separated, Chinese headers (小票号 receipt, 销售时间
      ``2024年03月05日 14:23:01``, 门店 store, 渠道 channel, 卡号 the *account* used on that
      channel, 商品编码 barcode, 数量 quantity, 应收金额 gross, 实收金额 paid), in time order;
    * ``products.parquet`` — sku, cat_code, list_price, brand_name, title, first_listed (DATE);
    * ``members.csv`` — member_no, join_date (day first, ``31/12/2023``), age_band, area;
    * ``identities.csv`` — channel, account_id, member_no: a POS card, an app user id and a
      mini-programme open id per member, which ingest folds into the member number;
    * ``mapping.toml`` — the packaged ``sources/synth_retailer.toml`` with absolute paths.

    Parameters
    ----------
    spec
        Sizes, seed and model knobs; see :class:`SynthSpec`.
    out_dir
        Created if missing; existing files of the same names are replaced.
    dirty_lines
        Lines of each kind of export noise (:data:`RETAILER_NOISE`): walk-in sales without a card,
        refunds, carrier bags and lines exported twice. Ingest rejects exactly these
        ``4 * dirty_lines`` lines and keeps ``spec.lines``.

    Returns
    -------
    str
        A short human summary of what was written.

    Examples
    --------
    >>> s = synthesize_retailer(SynthSpec(members=200, products=50, lines=5_000), Path("/tmp/r"), 5)
    >>> sorted(p.name for p in Path("/tmp/r").iterdir())[:2]
    ['identities.csv', 'mapping.toml']
    """
    if isinstance(dirty_lines, bool) or not isinstance(dirty_lines, int) or dirty_lines < 0:
        raise InputError(f"synth: dirty_lines must be an integer >= 0, got {dirty_lines!r}")
    t0 = time.perf_counter()
    out_dir, catalogue, members = _start(spec, out_dir)
    ids = _RetailerIds(spec)
    paths = {table: out_dir / file for table, file in RETAILER_FILES.items()}
    meta = {b"recsys.synth": json.dumps({**spec.to_dict(), "layout": RETAILER_NAME,
                                         "dirty_lines": dirty_lines}, sort_keys=True).encode()}
    start_s = _epoch_us(spec.start) // _US
    try:
        _write_table(_retailer_products_table(spec, catalogue, ids), paths["products"], meta)
        _write_csv(_retailer_members_table(spec, members, ids), paths["members"])
        _write_csv(_retailer_identities_table(spec, ids), paths["identities"])
        staples = _write_transactions(
            _retailer_chunks(spec, catalogue, members, dirty_lines),
            lambda chunk: _retailer_lines_table(chunk, ids, spec.members, start_s),
            partial(_csv_gz_sink, schema=_RETAILER_LINES_SCHEMA, delimiter=";"),
            paths["transactions"],
        )
        mapping = out_dir / "mapping.toml"
        mapping.write_text(retailer_mapping_toml(out_dir), encoding="utf-8")
    except OSError as exc:
        raise InputError(f"synth: cannot write into {out_dir}: {exc}") from exc
    seconds = time.perf_counter() - t0

    buyers = int((members.lines > 0).sum())
    rows = spec.lines + len(RETAILER_NOISE) * dirty_lines
    noise = (f"; plus {dirty_lines:,} lines each of "
             + ", ".join(f"{kind} ({reason})" for kind, reason in RETAILER_NOISE.items())
             if dirty_lines else "")
    return (
        f"synth (retailer export): {rows:,} sales lines = {spec.lines:,} purchases{noise}\n"
        f"  {spec.members:,} members ({buyers:,} with purchases) x {len(CHANNELS)} channel accounts, "
        f"{spec.products:,} products, {spec.effective_categories:,} categories, "
        f"{spec.effective_stores:,} stores, {spec.start}..{spec.end}, seed {spec.seed}; staple repeats "
        f"{staples / spec.lines:.0%} of purchases; {seconds:.1f} s\n"
        f"  files: {out_dir}/{{{','.join(RETAILER_FILES.values())}}}\n"
        f"  ingest with: recsys data ingest {mapping}"
    )
