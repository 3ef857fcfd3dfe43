"""The tag registry: the one declaration of every member and product tag.

A tag is a named, labelled attribute of a member (``lifecycle``, ``channel``, a retailer's rule
such as "no purchase in 60 days") or of a product (``price_band``) that marketers filter on and
read. Each :class:`TagDef` says everything about one tag:

* ``name`` -- the column in the feature snapshot and the bundle, and the key of an audience filter;
* ``zh`` / ``en`` -- its labels, and ``values`` -- its declared values with their labels;
* ``entity`` -- ``member`` or ``product``;
* ``multi`` -- whether an entity holds a *list* of values (a member who bought through the app and
  in a store has ``channel = [app, store]`` and matches a filter on either);
* ``open`` -- whether values beyond the declared ones may occur (regions, stores, channels: they
  come from the retailer's data; a declared value just has a nicer label);
* how it is computed: ``expr``, a SQL expression over the entity's base row, or ``query``, a
  ``SELECT`` giving ``(member_id | product_id, value)`` rows; ``default`` fills entities the query
  gives no row (``false`` for a flag);
* ``kind`` / ``source`` -- ``builtin`` (this module) or e.g. ``rule`` (a retailer's rules file).

The feature build (:mod:`features.build`) computes every tag of a registry in SQL, checks each
value it produced against the declaration, and writes the registry -- with the values actually
seen -- into the snapshot's manifest. Training copies it into the serving bundle
(:mod:`recsys.bundle`), and the server validates filters, lists options and labels profiles from
the bundle's copy: a tag the build computed is filterable and labelled everywhere, with no other
code to change.

Writing the SQL
---------------
Member tags read the views the feature build defines (see ``features/sql``): ``lines`` (purchase
lines before the as-of date, with ``category``, ``channel``, ``store_id``, ``occasion_id``),
``members`` and ``products`` (the canonical tables) and ``member_base`` (one row per member: the
aggregates of ``member_features.sql`` -- ``recency_days``, ``frequency``, ``monetary``,
``r_score`` ... and ``_``-prefixed helper columns that are not written out). An ``expr`` is
evaluated on a ``member_base`` row; a ``query`` may read any of them. Product tags likewise, over
``product_base``. ``${name}`` placeholders are the feature thresholds (``${sleeping_days}``,
``${as_of}``, ... see :func:`features.build.sql_params`); write ``$$`` for a literal ``$``.
Use the SQL DuckDB and Spark SQL share (the feature definitions run on both).

Extending
---------
Built-in tags are :data:`BUILTIN_TAGS`. Tags defined elsewhere (a retailer's rules file) are
ordinary entries added at build time::

    registry = TagRegistry.builtin().extend(rule_tags, source="rules.toml")
    build_features(canonical, out, as_of, cfg, tags=registry)
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from recsys.errors import InputError

if TYPE_CHECKING:  # importing recsys.models loads every model; the feature build needs none of them
    import scipy.sparse as sp

    from recsys.models.base import Tag

Entity = Literal["member", "product"]

# the tag the "popular in your segment" picks fallback groups members by
SEGMENT_TAG = "value_segment"

# Unicode letters, digits and underscore, not starting with a digit: a tag name is a column name
# (quoted in SQL) and a JSON key; Chinese names such as 未购60天 are fine.
_NAME = re.compile(r"^[^\W\d]\w{0,63}$")
# what a key column or a value may not be named, so composed SQL never clashes with them
RESERVED = frozenset({"member_id", "product_id", "value", "_k", "_v"})

TRUE, FALSE = "true", "false"


class TagValue(BaseModel):
    """One value of a tag: what the data holds (``value``) and its Chinese and English labels."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    value: str = Field(min_length=1, max_length=200)
    zh: str = Field(min_length=1, max_length=200)
    en: str = Field(min_length=1, max_length=200)


def values(*entries: tuple[str, str, str]) -> tuple[TagValue, ...]:
    """``values(("new", "新客", "new"), ...)``: a tag's declared values, in display order."""
    return tuple(TagValue(value=v, zh=zh, en=en) for v, zh, en in entries)


FLAG_VALUES = values((TRUE, "是", "yes"), (FALSE, "否", "no"))


class TagDef(BaseModel):
    """One tag: names, labels, values and the SQL it is computed by (see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    entity: Entity
    zh: str = Field(min_length=1, max_length=100)
    en: str = Field(min_length=1, max_length=100)
    values: tuple[TagValue, ...] = ()
    open: bool = False
    multi: bool = False
    expr: str | None = None
    query: str | None = None
    default: str | None = None
    kind: str = Field("builtin", min_length=1, max_length=50)
    source: str = Field("recsys.tags", max_length=1000)
    description: str = Field("", max_length=2000)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v) or v in RESERVED:
            raise ValueError(
                f"tag name {v!r} must be 1-64 letters, digits or _ (not starting with a digit) "
                f"and none of {', '.join(sorted(RESERVED))}"
            )
        return v

    @model_validator(mode="after")
    def _check(self) -> TagDef:
        if (self.expr is None) == (self.query is None):
            raise ValueError(f"tag {self.name!r}: give exactly one of expr (over the base row) or query (SQL rows)")
        seen = [v.value for v in self.values]
        if len(set(seen)) != len(seen):
            raise ValueError(f"tag {self.name!r}: a value is declared twice")
        if not self.open and not self.values:
            raise ValueError(f"tag {self.name!r}: a closed tag (open = false) must declare its values")
        if self.default is not None and self.multi:
            raise ValueError(f"tag {self.name!r}: a multi-valued tag's default is the empty list; drop default")
        if self.default is not None and not self.open and self.default not in seen:
            raise ValueError(f"tag {self.name!r}: default {self.default!r} is not one of its values")
        if self.expr is not None and self.multi:
            raise ValueError(f"tag {self.name!r}: a multi-valued tag needs a query (one row per value)")
        return self

    # ---------------------------------------------------------------- reading
    @property
    def value_names(self) -> tuple[str, ...]:
        return tuple(v.value for v in self.values)

    @property
    def is_flag(self) -> bool:
        return set(self.value_names) == {TRUE, FALSE}

    def label(self, value: str | None) -> tuple[str, str]:
        """(Chinese, English) label of ``value``: the declared one, else the value itself."""
        if value is None:
            return "未知", "unknown"
        for v in self.values:
            if v.value == value:
                return v.zh, v.en
        return value, value

    def public(self) -> dict[str, Any]:
        """What clients see (``/v1/tags``, options): everything but the SQL."""
        return self.model_dump(mode="json", exclude={"expr", "query"})


@dataclass(frozen=True)
class TagRegistry:
    """An ordered set of tags with unique names; the order is the display order."""

    tags: tuple[TagDef, ...]

    def __post_init__(self) -> None:
        names = [t.name for t in self.tags]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            sources = {n: sorted({t.source for t in self.tags if t.name == n}) for n in dup}
            raise InputError(
                "tag name(s) defined twice: " + "; ".join(f"{n!r} ({', '.join(s)})" for n, s in sources.items())
            )

    # ---------------------------------------------------------------- building
    @classmethod
    def builtin(cls) -> TagRegistry:
        """The built-in tags (:data:`BUILTIN_TAGS`)."""
        return cls(BUILTIN_TAGS)

    def extend(self, tags: Iterable[TagDef]) -> TagRegistry:
        """This registry followed by ``tags`` (a name already here is an :class:`InputError`)."""
        return TagRegistry((*self.tags, *tags))

    def only(self, names: Iterable[str]) -> TagRegistry:
        """The tags named in ``names``, in registry order."""
        keep = set(names)
        return TagRegistry(tuple(t for t in self.tags if t.name in keep))

    # ---------------------------------------------------------------- reading
    def __iter__(self) -> Iterator[TagDef]:
        return iter(self.tags)

    def __len__(self) -> int:
        return len(self.tags)

    def __contains__(self, name: object) -> bool:
        return any(t.name == name for t in self.tags)

    def get(self, name: str) -> TagDef | None:
        for t in self.tags:
            if t.name == name:
                return t
        return None

    def of(self, entity: Entity) -> tuple[TagDef, ...]:
        return tuple(t for t in self.tags if t.entity == entity)

    def names(self, entity: Entity | None = None) -> tuple[str, ...]:
        return tuple(t.name for t in self.tags if entity is None or t.entity == entity)

    # ---------------------------------------------------------------- checking requests
    def check_filters(self, filters: Mapping[str, Sequence[str]], entity: Entity = "member") -> None:
        """:class:`InputError` naming what exists when ``filters`` name an unknown tag or value.

        An open tag accepts the values this registry lists (a snapshot's or bundle's registry lists
        every value seen); a value declared but held by nobody is valid (it selects nobody).
        """
        known = {t.name: t for t in self.of(entity)}
        for name, wanted in filters.items():
            tag = known.get(name)
            if tag is None:
                raise InputError(
                    f"unknown {entity} tag {name!r}; tags: {', '.join(known) or 'none in this bundle'}"
                )
            allowed = tag.value_names
            unknown = [v for v in wanted if v not in allowed]
            if unknown:
                raise InputError(
                    f"unknown {name} value(s) {', '.join(map(repr, unknown))}; allowed: {listing(allowed)}"
                )

    # ---------------------------------------------------------------- JSON
    def to_json(self) -> list[dict[str, Any]]:
        return [t.model_dump(mode="json", exclude_defaults=False) for t in self.tags]

    @classmethod
    def from_json(cls, entries: Any, where: str = "tags") -> TagRegistry:
        """The registry written by :meth:`to_json` (extra keys such as snapshot ``counts`` are
        dropped); :class:`InputError` saying which entry is malformed."""
        if not isinstance(entries, list):
            raise InputError(f"{where}: expected a list of tags, got {type(entries).__name__}")
        out = []
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise InputError(f"{where}[{i}]: expected a tag object")
            body = {k: v for k, v in entry.items() if k in TagDef.model_fields}
            try:
                out.append(TagDef.model_validate(body))
            except ValidationError as exc:
                raise InputError(f"{where}[{i}] ({entry.get('name')!r}): {exc.errors()[0]['msg']}") from None
        return cls(tuple(out))


def listing(values: Sequence[str], limit: int = 30) -> str:
    shown = ", ".join(values[:limit])
    return shown + (f" ... ({len(values)} in all)" if len(values) > limit else "")


def with_seen_values(tag: TagDef, seen: Iterable[str]) -> TagDef:
    """``tag`` with the values a build produced: a closed tag keeps every declared value (seen or
    not: ``prospect`` is a lifecycle stage even when nobody is in it); an open tag lists the declared
    values that were seen, in their order, then the others sorted, labelled by themselves.
    :class:`InputError` when a closed tag's SQL produced a value it does not declare."""
    seen = {str(v) for v in seen}
    extra = sorted(seen - set(tag.value_names))
    if extra and not tag.open:
        raise InputError(
            f"tag {tag.name!r} ({tag.source}): its SQL produced value(s) {listing(extra)} that are not among "
            f"its declared values ({listing(tag.value_names)}); declare them or mark the tag open"
        )
    kept = tag.values if not tag.open else tuple(v for v in tag.values if v.value in seen)
    return tag.model_copy(update={"values": (*kept, *(TagValue(value=v, zh=v, en=v) for v in extra))})


# --------------------------------------------------------------------------- tag columns
@dataclass(frozen=True)
class MultiTag:
    """A multi-valued tag aligned with an index: row ``i`` holds ``labels[j]`` for every ``j`` in
    ``matrix[i]`` (a boolean CSR matrix rows x labels); a row with none is unknown."""

    matrix: sp.csr_matrix
    labels: tuple[str, ...]

    @classmethod
    def from_lists(cls, lists: Sequence[Sequence[str] | None], labels: Sequence[str] | None = None) -> MultiTag:
        seen = sorted({str(v) for row in lists if row for v in row if v is not None and v != ""})
        labels = tuple(labels) if labels is not None else tuple(seen)
        lookup = {label: j for j, label in enumerate(labels)}
        indptr = np.zeros(len(lists) + 1, dtype=np.int64)
        cols: list[int] = []
        for i, row in enumerate(lists):
            codes = sorted({lookup[str(v)] for v in (row or ()) if v is not None and v != "" and str(v) in lookup})
            cols.extend(codes)
            indptr[i + 1] = len(cols)
        import scipy.sparse as sp

        data = np.ones(len(cols), dtype=bool)
        matrix = sp.csr_matrix((data, np.asarray(cols, dtype=np.int32), indptr), shape=(len(lists), len(labels)))
        return cls(matrix, labels)

    def code(self, label: str) -> int:
        try:
            return self.labels.index(label)
        except ValueError:
            return -1

    def mask(self, labels: Sequence[str]) -> np.ndarray:
        """Rows holding any of ``labels``: touches only the rows holding them."""
        out = np.zeros(self.matrix.shape[0], dtype=bool)
        by_label = self._by_label
        for code in {c for c in (self.code(label) for label in labels) if c >= 0}:
            out[by_label.indices[by_label.indptr[code]:by_label.indptr[code + 1]]] = True
        return out

    @cached_property
    def _by_label(self) -> sp.csc_matrix:
        """The rows of each label (a frozen dataclass may still cache: the property writes the
        instance dict directly)."""
        return self.matrix.tocsc()

    def of(self, row: int) -> list[str]:
        m = self.matrix
        return [self.labels[j] for j in m.indices[m.indptr[row]:m.indptr[row + 1]]]

    def holds_any(self, row: int, codes: frozenset[int]) -> bool:
        m = self.matrix
        return any(int(j) in codes for j in m.indices[m.indptr[row]:m.indptr[row + 1]])

    def counts(self, rows: np.ndarray) -> tuple[np.ndarray, int]:
        """Per label, how many of ``rows`` hold it; and how many hold none."""
        sub = self.matrix[np.asarray(rows, dtype=np.int64)]
        per = np.asarray(sub.sum(axis=0)).ravel().astype(np.int64)
        return per, int((np.diff(sub.indptr) == 0).sum())


def tag_column(tag: TagDef, column: pa.ChunkedArray | pa.Array) -> Tag | MultiTag:
    """The values of ``tag`` in an Arrow column (text, boolean, or lists of text for a multi-valued
    tag) as a :class:`~recsys.models.base.Tag` / :class:`MultiTag` whose labels are the tag's
    values in registry order (followed by any value the column holds that the registry does not
    list, so that nothing is silently dropped)."""
    from recsys.models.base import Tag
    declared = list(tag.value_names)
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        lists = column.to_pylist()
        seen = {str(v) for row in lists if row for v in row if v is not None and v != ""}
        labels = declared + sorted(seen - set(declared))
        return MultiTag.from_lists(lists, labels)
    if pa.types.is_boolean(column.type) or pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        # in Arrow, not row by row in Python: 10M members' tags load in seconds, not a minute
        import pyarrow.compute as pc

        text = pc.if_else(column, TRUE, FALSE) if pa.types.is_boolean(column.type) else column
        encoded = pc.dictionary_encode(text)
        chunks = encoded.chunks if isinstance(encoded, pa.ChunkedArray) else [encoded]
        found = sorted({v for c in chunks for v in c.dictionary.to_pylist() if v is not None and v != ""})
        known = set(declared)
        labels = tuple(declared + [v for v in found if v not in known])
        lookup = {label: i for i, label in enumerate(labels)}
        parts = []
        for c in chunks:  # each chunk's dictionary codes -> label codes (-1: null or empty)
            remap = np.array([lookup.get(v, -1) if v is not None else -1 for v in c.dictionary.to_pylist()] + [-1],
                             dtype=np.int32)
            idx = c.indices.fill_null(len(c.dictionary)).to_numpy(zero_copy_only=False)
            parts.append(remap[idx])
        return Tag(np.concatenate(parts) if parts else np.zeros(0, np.int32), labels)
    raw = column.to_pylist()
    seen = {str(v) for v in raw if v is not None and v != ""}
    labels = tuple(declared + sorted(seen - set(declared)))
    lookup = {label: i for i, label in enumerate(labels)}
    codes = np.fromiter((lookup.get(str(v), -1) if v is not None else -1 for v in raw), dtype=np.int32,
                        count=len(raw))
    return Tag(codes, labels)


def tag_of(column: Tag | MultiTag, row: int) -> str | list[str] | None:
    """The value(s) row ``row`` holds (None / [] when unknown or out of range)."""
    if isinstance(column, MultiTag):
        return column.of(row) if 0 <= row < column.matrix.shape[0] else []
    code = column.codes[row] if 0 <= row < len(column.codes) else -1
    return column.labels[code] if code >= 0 else None


def tag_counts(column: Tag | MultiTag, rows: np.ndarray) -> tuple[np.ndarray, int]:
    """Per label of ``column``, how many of ``rows`` hold it; and how many hold no value."""
    if isinstance(column, MultiTag):
        return column.counts(rows)
    codes = column.codes[np.asarray(rows, dtype=np.int64)]
    bins = np.bincount(np.where(codes >= 0, codes, len(column.labels)), minlength=len(column.labels) + 1)
    return bins[:-1], int(bins[-1])


def registry_of_table(table: pa.Table, entity: Entity, key: str) -> TagRegistry:
    """For a table written before tags were recorded: every text column but ``key`` as a tag,
    labelled by the built-in tag of that name where there is one, values as found."""
    import pyarrow.compute as pc

    builtin = {t.name: t for t in BUILTIN_TAGS if t.entity == entity}
    out = []
    for name in table.column_names:
        column = table.column(name)
        if name == key or not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            continue
        base = builtin.get(name)
        seen = {v for v in pc.unique(column).to_pylist() if v is not None and v != ""}
        if base is None:
            try:
                base = TagDef(name=name, entity=entity, zh=name, en=name, open=True, expr=name,
                              source="bundle column")
            except ValidationError:
                continue
        out.append(with_seen_values(base.model_copy(update={"open": True}), seen))
    return TagRegistry(tuple(out))


# --------------------------------------------------------------------------- the built-in tags
_VALUE_SEGMENT = """CASE
    WHEN NOT _has_purchase THEN 'none'
    WHEN _r_high AND _f_high AND _m_high THEN 'important_value'
    WHEN _r_high AND NOT _f_high AND _m_high THEN 'important_develop'
    WHEN NOT _r_high AND _f_high AND _m_high THEN 'important_retain'
    WHEN NOT _r_high AND NOT _f_high AND _m_high THEN 'important_recover'
    WHEN _r_high AND _f_high AND NOT _m_high THEN 'general_value'
    WHEN _r_high AND NOT _f_high AND NOT _m_high THEN 'general_develop'
    WHEN NOT _r_high AND _f_high AND NOT _m_high THEN 'general_retain'
    ELSE 'general_recover'
END"""

_LIFECYCLE = """CASE
    WHEN NOT _has_purchase THEN 'prospect'
    WHEN tenure_days < ${new_days} THEN 'new'
    WHEN recency_days < ${sleeping_days} THEN 'active'
    WHEN recency_days < ${lost_days} THEN 'sleeping'
    ELSE 'lost'
END"""

_PRICE_SENSITIVITY = """CASE
    WHEN n_priced_lines < ${min_lines_for_price} THEN 'unknown'
    WHEN share_high >= ${high_end_share} AND share_low >= ${price_sensitive_share} THEN
        CASE
            WHEN share_high > share_low THEN 'high_end'
            WHEN share_low > share_high THEN 'price_sensitive'
            ELSE 'mainstream'
        END
    WHEN share_high >= ${high_end_share} THEN 'high_end'
    WHEN share_low >= ${price_sensitive_share} THEN 'price_sensitive'
    ELSE 'mainstream'
END"""

# Visits count occasions, not lines: one large basket is one visit to the store. Distinct
# (member, store, occasion) triples first: a plain GROUP BY spills where COUNT(DISTINCT) would not.
_HOME_STORE = """SELECT member_id, store_id AS value
FROM (
    SELECT
        member_id,
        store_id,
        ROW_NUMBER() OVER (PARTITION BY member_id ORDER BY COUNT(*) DESC, store_id ASC) AS rk
    FROM (SELECT DISTINCT member_id, store_id, occasion_id FROM lines WHERE store_id IS NOT NULL) AS visits
    GROUP BY member_id, store_id
) AS ranked
WHERE rk = 1"""

_PRICE_BAND = """CASE
    WHEN _q_low IS NULL OR _band_price IS NULL THEN 'unknown'
    WHEN _band_price < _q_low THEN 'low'
    WHEN _band_price > _q_high THEN 'high'
    ELSE 'mid'
END"""


def price_band_of(price: float | None, q_low: float | None, q_high: float | None) -> str:
    """The ``price_band`` tag's rule (``_PRICE_BAND`` above, which the features build evaluates)
    for one price against its category's thresholds: what band a product not yet in the catalogue
    falls in (None or NaN: unknown, as SQL's NULL). Keep the two in step: a test checks this one
    against the features build's bands.

    Examples
    --------
    >>> [price_band_of(p, 10.0, 20.0) for p in (5.0, 10.0, 20.0, 25.0, None)]
    ['low', 'mid', 'mid', 'high', 'unknown']
    """
    def null(v: float | None) -> bool:
        return v is None or v != v

    if null(q_low) or null(price):
        return "unknown"
    if price < q_low:  # type: ignore[operator]
        return "low"
    if not null(q_high) and price > q_high:  # type: ignore[operator]
        return "high"
    return "mid"

BUILTIN_TAGS: tuple[TagDef, ...] = (
    # The standard Chinese RFM eight-segment model; flags in R, F, M order (H = score >= rfm_high_score).
    TagDef(
        name="value_segment", entity="member", zh="价值分层", en="Value segment", expr=_VALUE_SEGMENT,
        values=values(
            ("important_value", "重要价值", "important value"),  # H H H
            ("important_develop", "重要发展", "important develop"),  # H L H
            ("important_retain", "重要保持", "important retain"),  # L H H
            ("important_recover", "重要挽留", "important recover"),  # L L H
            ("general_value", "一般价值", "general value"),  # H H L
            ("general_develop", "一般发展", "general develop"),  # H L L
            ("general_retain", "一般保持", "general retain"),  # L H L
            ("general_recover", "一般挽留", "general recover"),  # L L L
            ("none", "无消费", "no purchase"),
        ),
        description="RFM eight-segment model: recency, frequency and monetary quintile scores, each high "
        "when at or above rfm_high_score",
    ),
    TagDef(
        name="lifecycle", entity="member", zh="生命周期", en="Lifecycle", expr=_LIFECYCLE,
        values=values(
            ("new", "新客", "new"), ("active", "活跃", "active"), ("sleeping", "沉睡", "sleeping"),
            ("lost", "流失", "lost"), ("prospect", "潜客", "prospect"),
        ),
        description="new: first purchase fewer than new_days ago; then by days since the last purchase: "
        "active below sleeping_days, sleeping below lost_days, lost after; prospect: never bought",
    ),
    TagDef(
        name="price_sensitivity", entity="member", zh="价格敏感度", en="Price sensitivity", expr=_PRICE_SENSITIVITY,
        values=values(
            ("high_end", "高端", "high end"), ("mainstream", "大众", "mainstream"),
            ("price_sensitive", "价格敏感", "price sensitive"), ("unknown", "未知", "unknown"),
        ),
        description="share of the member's priced lines in their category's high and low price bands",
    ),
    TagDef(
        name="age_group", entity="member", zh="年龄段", en="Age group", open=True,
        query="SELECT member_id, age_group AS value FROM members",
        description="from the members table",
    ),
    TagDef(
        name="region", entity="member", zh="地区", en="Region", open=True,
        query="SELECT member_id, region AS value FROM members",
        description="from the members table",
    ),
    TagDef(
        name="channel", entity="member", zh="购买渠道", en="Channel", open=True, multi=True,
        query="SELECT member_id, channel AS value FROM lines WHERE channel IS NOT NULL",
        values=values(
            ("app", "App", "app"), ("mini_program", "小程序", "mini-program"),
            ("miniprogram", "小程序", "mini-program"), ("store", "门店", "store"), ("pos", "门店", "store (POS)"),
            ("web", "网店", "web shop"), ("online", "线上", "online"),
        ),
        description="every channel the member bought through before the as-of date (a member matches a "
        "filter on any of them)",
    ),
    TagDef(
        name="store", entity="member", zh="常去门店", en="Home store", open=True, query=_HOME_STORE,
        description="the store of most of the member's purchase occasions (ties: the smaller store id); "
        "none when they never bought in a store",
    ),
    TagDef(
        name="price_band", entity="product", zh="价格带", en="Price band", expr=_PRICE_BAND,
        values=values(("low", "低价", "low"), ("mid", "中价", "mid"), ("high", "高价", "high"),
                      ("unknown", "未知", "unknown")),
        description="the median unit price it sells at (the list price when never sold) against its "
        "category's band_quantiles",
    ),
    TagDef(
        name="is_new", entity="product", zh="新品", en="New product",
        expr="COALESCE(first_sale >= ${new_product_cutoff}, FALSE) OR COALESCE(launched_at >= ${new_product_cutoff}, FALSE)",
        values=values((TRUE, "新品", "new"), (FALSE, "老品", "established")),
        description="first sold or launched within new_product_days of the as-of date",
    ),
    TagDef(
        name="never_sold", entity="product", zh="未售", en="Never sold", expr="n_lines = 0",
        values=values((TRUE, "未售", "never sold"), (FALSE, "已售", "sold")),
        description="no sale before the as-of date",
    ),
)


def parse_where(items: Sequence[str] | None) -> dict[str, list[str]]:
    """Command-line tag filters, ``--where TAG=VALUE[,VALUE...]`` (repeatable), as a filters
    mapping ``{tag: [values]}``; InputError for an item that is not of that form."""
    out: dict[str, list[str]] = {}
    for item in items or []:
        tag, sep, values = item.partition("=")
        if not sep or not tag.strip() or not values.strip():
            raise InputError(f"--where {item!r} is not TAG=VALUE[,VALUE...], e.g. --where lifecycle=active,sleeping")
        out.setdefault(tag.strip(), []).extend(v.strip() for v in values.split(",") if v.strip())
    return out
