"""The synthetic purchase model: the spec, the catalogue, the members and their purchases, drawn
chunk by chunk from seeded streams (numpy only; what the files look like is the exports' business:
:mod:`~recsys.data.synth.source` and :mod:`~recsys.data.synth.retailer`)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, fields
from datetime import date
from pathlib import Path

import numpy as np

from recsys.errors import InputError

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
DEPARTMENTS = (
    "dairy", "bakery", "produce", "meat", "seafood", "frozen", "beverages", "snacks",
    "pantry", "household", "personal-care", "baby", "pet", "health", "deli", "alcohol",
)
PACK_SIZES = ("100g", "250g", "500g", "1kg", "330ml", "1L", "2L", "6-pack", "12-pack", "family")
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
MICROSECONDS = 1_000_000


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


@dataclass
class Catalogue:
    category: np.ndarray  # int32 per product
    price: np.ndarray  # float64 per product (list price)
    rel_price: np.ndarray  # log price minus the category's log price level
    launch_day: np.ndarray  # int32, days since spec.start (negative: before the period)
    weight: np.ndarray  # popularity; 0 for never-sold products
    brand: np.ndarray  # int32 global brand index per product
    pack: np.ndarray  # int8 index into PACK_SIZES
    category_weight: np.ndarray  # summed popularity per category
    n_brands: int
    all_sampler: _WeightedSampler
    established_sampler: _WeightedSampler  # only products launched before the period


def _make_catalogue(spec: SynthSpec, rng: np.random.Generator) -> Catalogue:
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
    pack = rng.integers(0, len(PACK_SIZES), n_p).astype(np.int8)

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

    return Catalogue(
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
class Members:
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


def _make_members(spec: SynthSpec, cat: Catalogue, rng: np.random.Generator) -> Members:
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
    return Members(
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


def _distinct_rows(rows: np.ndarray, cat: Catalogue, rng: np.random.Generator) -> np.ndarray:
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


def member_chunks(lines: np.ndarray, chunk_lines: int) -> list[tuple[int, int]]:
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
    cat: Catalogue,
    mem: Members,
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
    cat: Catalogue,
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


def generate_chunks(spec: SynthSpec, cat: Catalogue, mem: Members) -> Iterator[dict[str, np.ndarray]]:
    """The lines of each member chunk, each chunk from its own seed (order-independent)."""
    for i, (lo, hi) in enumerate(member_chunks(mem.lines, spec.chunk_lines)):
        rng = np.random.default_rng(np.random.SeedSequence(spec.seed, spawn_key=(2, i)))
        yield _transactions_chunk(spec, cat, mem, lo, hi, rng)


def prepare(spec: SynthSpec, out_dir: Path | str) -> tuple[Path, Catalogue, Members]:
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
