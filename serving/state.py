"""Everything the server answers from, built once per loaded bundle: :class:`ServingState`.

:func:`build_state` loads a bundle, checks it answers, builds the scorer (FAISS indexes), tag
masks, popularity orders and the live-purchase overlay, and replays the events file. The app
holds the current state in a :class:`StateHolder`; a reload builds a complete new state off the
request path and swaps the reference in one assignment, so a request sees one state throughout.

Live purchases never modify the bundle's arrays: they go to :class:`LiveHistory` (what each
member bought, and when), new members to :class:`MemberRegistry`, and — for vector models — the
member's folded-in vector to the scorer's member index. A member with live purchases is no longer
answered from the bundle's list any more: their lists are ranked again in the background once the
purchase is applied (:meth:`~serving.picklists.PickLists.schedule`) and served the same way (they
are scored live until then).

Events come from an :class:`~serving.events.EventStore` (the events file, or the Redis stream every
replica shares); the state keeps its cursor into it and the ids it has applied, so an event is
applied once whatever the store holds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from recsys.bundle import Bundle, BundleError, data_end, load_bundle, watermark_of
from recsys.columns import Col
from recsys.errors import RecsysError
from recsys.idmap import IdMap
from recsys.models.base import Capability, Recommender, Tag
from recsys.tags import SEGMENT_TAG, MultiTag, TagRegistry  # noqa: F401  (SEGMENT_TAG re-exported)
from serving.events import (
    Cursor,
    EventRecord,
    EventStore,
    EventsUnavailableError,
    Incoming,
    Seen,
    open_store,
    utc_iso,
)
from serving.picklists import PickLists, build_pick_lists
from serving.scorer import Scorer, build_scorer
from serving.settings import ServingSettings
from serving.tagindex import MemberTagIndex, Scope  # noqa: F401  (Scope re-exported)

log = logging.getLogger("serving.state")

UNKNOWN = "unknown"


# --------------------------------------------------------------------------- model identity
@dataclass(frozen=True)
class ModelInfo:
    """Who the model is: what ``GET /v1/model`` and every response's ``model_version`` say."""

    version: str
    model: str
    run_id: str | None
    trained_on: str | None
    saved_at: str | None
    metrics: dict[str, Any]
    source: str
    registered_model: str | None = None
    registry_version: str | None = None

    @classmethod
    def from_meta(
        cls, meta: dict[str, Any], source: str, registered_model: str | None = None,
        registry_version: str | None = None,
    ) -> ModelInfo:
        run_id = meta.get("run_id")
        if meta.get("model_version"):
            version = str(meta["model_version"])
        elif registered_model and registry_version:
            version = f"{registered_model}/v{registry_version}"
        else:
            version = f"{meta.get('model', 'model')}:{(run_id or 'local')[:12]}:{meta.get('saved_at', '')}"
        metrics = meta.get("metrics") if isinstance(meta.get("metrics"), dict) else {}
        return cls(
            version=version,
            model=str(meta.get("model", "")),
            run_id=run_id,
            trained_on=_as_of(meta).isoformat(),
            saved_at=meta.get("saved_at"),
            metrics=metrics,
            source=source,
            registered_model=registered_model,
            registry_version=registry_version,
        )


def _as_of(meta: dict[str, Any]) -> date:
    """The date the model's data ends (exclusive, :func:`recsys.bundle.data_end`); today for a
    bundle that records no date at all."""
    return data_end(meta) or datetime.now(UTC).date()


# --------------------------------------------------------------------------- members
class MemberRegistry:
    """The bundle's member ids plus members first seen in live events (appended rows)."""

    def __init__(self, base: IdMap):
        self.base = base
        self.n_base = len(base)
        self._extra: dict[str, int] = {}
        self._extra_ids: list[str] = []

    def __len__(self) -> int:
        return self.n_base + len(self._extra_ids)

    def get(self, member_id: str) -> int:
        """Internal row of ``member_id``, or -1."""
        row = self.base.get(member_id)
        return row if row >= 0 else self._extra.get(member_id, -1)

    def add(self, member_id: str) -> int:
        row = self.get(member_id)
        if row < 0:
            row = self.n_base + len(self._extra_ids)
            self._extra[member_id] = row
            self._extra_ids.append(member_id)
        return row

    def external(self, rows: np.ndarray) -> list[str]:
        rows = np.asarray(rows, dtype=np.int64)
        if not len(self._extra_ids) or (rows < self.n_base).all():
            return self.base.to_external(rows).tolist()
        extra = np.asarray(self._extra_ids, dtype=object)
        base_part = rows < self.n_base
        out = np.empty(len(rows), dtype=object)
        out[base_part] = self.base.to_external(rows[base_part])
        out[~base_part] = extra[rows[~base_part] - self.n_base]
        return out.tolist()


# --------------------------------------------------------------------------- live purchases
class LiveHistory:
    """Purchases received while serving: per member (counts, last day) and per product."""

    def __init__(self) -> None:
        self.count: dict[int, dict[int, float]] = defaultdict(dict)  # member -> product -> occasions
        self.last: dict[int, dict[int, float]] = defaultdict(dict)  # product -> member -> last ts (epoch s)

    def add(self, member: int, product: int, ts: float) -> None:
        bought = self.count[member]
        bought[product] = bought.get(product, 0.0) + 1.0
        buyers = self.last[product]
        buyers[member] = max(buyers.get(member, -np.inf), ts)

    def products_of(self, member: int) -> dict[int, float]:
        return dict(self.count.get(member, {}))


# --------------------------------------------------------------------------- response text
@dataclass(frozen=True)
class ProductText:
    """Per product, the strings responses carry, built once per bundle: id, category, name and
    the two product-specific reasons ("often buys X", "members who buy X also buy this")."""

    ids: list[str]
    categories: list[str | None]
    names: list[str | None]
    often_zh: list[str]
    often_en: list[str]
    also_zh: list[str]
    also_en: list[str]

    @classmethod
    def build(cls, ids: np.ndarray, category: Tag, names: np.ndarray | None) -> ProductText:
        id_list = [str(i) for i in ids]
        if names is None:
            name_list: list[str | None] = [None] * len(id_list)
            labels = id_list
        else:
            name_list = [None if n is None else str(n) for n in names]
            # a product is named by its name when it has a non-empty one, else by its id
            labels = [str(n) if n else i for n, i in zip(names, id_list, strict=True)]
        cats = [category.labels[c] if c >= 0 else None for c in category.codes.tolist()]
        return cls(
            ids=id_list, categories=cats, names=name_list,
            often_zh=[f"您经常购买「{x}」" for x in labels], often_en=[f"often buys {x}" for x in labels],
            also_zh=[f"购买「{x}」的会员也常买这款" for x in labels],
            also_en=[f"members who buy {x} also buy this" for x in labels],
        )


# --------------------------------------------------------------------------- the state
@dataclass
class ServingState:
    """Everything a request needs, built once per bundle (see the module docstring)."""

    settings: ServingSettings
    bundle: Bundle
    info: ModelInfo
    scorer: Scorer
    members: MemberRegistry
    products: IdMap
    product_active: np.ndarray
    category: Tag
    product_names: np.ndarray | None
    product_table: pa.Table
    tags: TagRegistry  # the bundle's tags that have a column: what filters, options and profiles use
    member_tags: dict[str, Tag | MultiTag]
    tag_index: MemberTagIndex
    history: sp.csr_matrix
    purchase_counts: sp.csr_matrix
    buyers_by_product: sp.csc_matrix
    last_age: sp.csc_matrix | None
    as_of: date
    popular_order: np.ndarray
    popular_scores: np.ndarray
    segment_order: dict[str, np.ndarray]
    segment_scores: dict[str, np.ndarray]
    events: EventStore
    text: ProductText | None = None
    pick_lists: PickLists | None = None  # the bundle's pre-ranked lists, when it has them
    all_active: bool = False  # every product is active: unfiltered picks need no product mask
    live: LiveHistory = field(default_factory=LiveHistory)
    events_cursor: Cursor = 0  # where this state has read the events store up to
    event_ids: dict[str, Seen] = field(default_factory=dict)  # every event id read from the store
    events_applied: int = 0
    events_skipped: int = 0  # events for products of another bundle (kept in the store for training)
    events_unparsable: int = 0  # lines / stream entries that cannot be parsed (counted, logged, skipped)
    events_repeated: int = 0  # records whose event_id the store held already (applied once)
    loaded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    lock: threading.RLock = field(default_factory=threading.RLock)

    # ---------------------------------------------------------------- lookups
    @property
    def n_products(self) -> int:
        return len(self.products)

    def product_index(self, product_id: str) -> int:
        return self.products.get(product_id)

    def tag_mask(self, filters: dict[str, list[str]]) -> np.ndarray:
        """Bundle members whose tags pass ``filters`` (see :meth:`MemberTagIndex.mask`)."""
        return self.tag_index.mask(filters)

    def scope_mask(self, scope: Scope) -> np.ndarray:
        """Bundle members inside an API key's ``scope`` (see :meth:`MemberTagIndex.scope_mask`)."""
        return self.tag_index.scope_mask(scope)

    def in_scope(self, row: int, scope: Scope) -> bool:
        """Whether member ``row`` is inside ``scope`` (see :meth:`MemberTagIndex.in_scope`)."""
        return self.tag_index.in_scope(row, scope)

    def bought(self, member: int) -> dict[int, float]:
        """Products ``member`` bought (bundle history + live events) -> purchase occasions."""
        out: dict[int, float] = {}
        counts = self.purchase_counts
        if 0 <= member < counts.shape[0]:
            row = slice(counts.indptr[member], counts.indptr[member + 1])
            out = {int(p): float(c) for p, c in zip(counts.indices[row], counts.data[row], strict=True) if c > 0}
        for p, c in self.live.count.get(member, {}).items():
            out[p] = out.get(p, 0.0) + c
        return out

    def recent_buyers(self, product: int, days: int, now: datetime | None = None) -> tuple[np.ndarray, bool]:
        """Members (a mask over all rows) who bought ``product`` within ``days`` days, and
        whether purchase dates were known for the bundle's history.

        Without a ``last_age`` array in the model every past buyer in the bundle counts as recent
        (the conservative choice for "do not target members who just bought it").
        """
        now = now or datetime.now(UTC)
        mask = np.zeros(len(self.members), dtype=bool)
        dated = self.last_age is not None
        if dated:
            col = slice(self.last_age.indptr[product], self.last_age.indptr[product + 1])
            rows, ages = self.last_age.indices[col], self.last_age.data[col]
            # age 1 = the day before as_of; days since purchase = age + days from as_of to today
            since = ages + (now.date() - self.as_of).days
            mask[rows[(ages > 0) & (since <= days)]] = True
        else:
            col = slice(self.buyers_by_product.indptr[product], self.buyers_by_product.indptr[product + 1])
            mask[self.buyers_by_product.indices[col]] = True
        cutoff = now.timestamp() - days * 86400.0
        for member, ts in self.live.last.get(product, {}).items():
            if ts >= cutoff:
                mask[member] = True
        return mask, dated

    # ---------------------------------------------------------------- live events
    def sync_events(self) -> int:
        """Apply events stored since this state last read the store; returns how many."""
        with self.lock:
            return self._sync_locked()

    def _sync_locked(self) -> int:
        applied = 0
        while True:
            batch = self.events.read(self.events_cursor)
            moved = batch.cursor != self.events_cursor
            self.events_cursor = batch.cursor
            self.events_unparsable += batch.bad
            if batch.records:
                applied += self._apply(batch.records)
            if not moved:
                return applied

    def follow_events(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for events other processes store, and apply them (the
        lifespan's tail loop). A store that cannot be reached is retried on the next call; the
        state keeps serving what it has applied so far."""
        cursor = self.events_cursor
        try:
            batch = self.events.wait(cursor, timeout)  # outside the lock: requests go on meanwhile
            with self.lock:
                if self.events_cursor != cursor:  # a write on this process read them first
                    return self._sync_locked()
                self.events_cursor = batch.cursor
                self.events_unparsable += batch.bad
                applied = self._apply(batch.records) if batch.records else 0
                return applied + (self._sync_locked() if batch.cursor != cursor else 0)
        except EventsUnavailableError:
            time.sleep(timeout)
            return 0

    def record(self, items: list[Incoming]) -> tuple[list[bool], int]:
        """Store the events whose ids are new (durably, before returning), then apply everything
        new in the store, these included. Returns, per item, whether it was written now (False: a
        repeat of a recorded event), and how many events were applied."""
        applied = 0

        def catch_up() -> dict[str, Seen]:
            nonlocal applied
            applied += self._sync_locked()
            return self.event_ids

        with self.lock:
            fresh = self.events.append(items, catch_up)
            applied += self._sync_locked()
        return fresh, applied

    @property
    def events_watermark(self) -> datetime:
        """Live events before this instant are in the bundle's data already and are not applied
        (:func:`recsys.bundle.events_watermark`); the events log may trim them once no other
        bundle that is served or could be loaded needs them."""
        return watermark_of(self.as_of)

    def _apply(self, records: list[EventRecord]) -> int:
        start = self.events_watermark
        touched: set[int] = set()
        applied = 0
        for rec in records:
            if rec.event_id is not None:
                if rec.event_id in self.event_ids:  # stored twice (by a writer without ids): once
                    self.events_repeated += 1
                    continue
                self.event_ids[rec.event_id] = Seen(rec.content, utc_iso(rec.ts))
            if rec.ts < start:  # already in the bundle's training data
                continue
            product = self.products.get(rec.product_id)
            if product < 0:  # a product of another bundle: kept in the store for training
                self.events_skipped += 1
                continue
            member = self.members.add(rec.member_id)  # the existing row, or a new one
            self.live.add(member, product, rec.ts.timestamp())
            if self.pick_lists is not None:  # the list no longer answers until it is ranked again
                self.pick_lists.invalidate(member)
            touched.add(member)
            applied += 1
        # new members get consecutive rows, so ascending order appends their vectors in step
        for member in sorted(touched):
            if member > self.scorer.n_members:
                continue  # cannot happen with a vector scorer; other scorers keep no rows
            bought = self.bought(member)
            products = np.fromiter(bought.keys(), dtype=np.int64, count=len(bought))
            weights = np.fromiter(bought.values(), dtype=np.float32, count=len(bought))
            self.scorer.fold_in(member, products, weights)
        if self.pick_lists is not None and touched:
            self.pick_lists.schedule(self, [m for m in sorted(touched) if self.personalised(m)])
        self.events_applied += applied
        return applied

    def events_info(self) -> dict[str, Any]:
        """The events store and what this state read from it (``GET /v1/model``)."""
        try:
            trimmed = self.events.trim_info()
        except EventsUnavailableError:
            trimmed = None
        return {
            **self.events.describe(), "cursor": str(self.events_cursor), "applied": self.events_applied,
            "event_ids": len(self.event_ids), "repeated_skipped": self.events_repeated,
            "unparsable_skipped": self.events_unparsable, "other_products_skipped": self.events_skipped,
            "watermark": utc_iso(self.events_watermark), "trimmed": trimmed,
        }

    def personalised(self, member: int) -> bool:
        """Whether ``member`` has a row the scorer can rank for (bundle or folded-in member)."""
        return 0 <= member < self.scorer.n_members


class StateHolder:
    """The current :class:`ServingState` (None until the first load succeeds) and why not."""

    def __init__(self) -> None:
        self.state: ServingState | None = None
        self.error: str | None = None
        self.loading = False
        self.reload_lock = threading.Lock()


# --------------------------------------------------------------------------- building
def _string_column(table: pa.Table, name: str) -> np.ndarray | None:
    if name not in table.column_names:
        return None
    return np.asarray(table.column(name).to_pylist(), dtype=object)


def _popular_orders(
    history: sp.csr_matrix, segment: Tag | None
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    buyers = np.asarray(history.sum(axis=0)).ravel().astype(np.float64)
    n = len(buyers)
    order = np.lexsort((np.arange(n), -buyers))
    top = max(float(buyers.max(initial=0.0)), 1.0)
    seg_order: dict[str, np.ndarray] = {}
    seg_scores: dict[str, np.ndarray] = {}
    if segment is not None:
        codes = segment.codes
        known = codes >= 0
        onehot = sp.csr_matrix(
            (np.ones(int(known.sum()), np.float32), (codes[known], np.flatnonzero(known))),
            shape=(len(segment.labels), history.shape[0]),
        )
        counts = np.asarray((onehot @ history).todense(), dtype=np.float64)
        for s, label in enumerate(segment.labels):
            # segment buyers first, then global buyers, then the product index
            o = np.lexsort((np.arange(n), -buyers, -counts[s]))
            seg_order[label] = o
            seg_scores[label] = (counts[s][o] / max(float(counts[s].max(initial=0.0)), 1.0)).astype(np.float32)
    return order, (buyers[order] / top).astype(np.float32), seg_order, seg_scores


def _model_matrix(model: Recommender, capability: Capability, shape: tuple[int, int]) -> sp.spmatrix | None:
    """A members x products matrix the model declares: its purchase ages (days before as_of of
    the last purchase, 0 = never, as :meth:`recsys.interactions.Interactions.last_age`) or its
    purchase counts (purchase days); None when it declares neither."""
    if not model.has(capability):
        return None
    value = model.purchase_ages() if capability is Capability.PURCHASE_AGES else model.purchase_counts()
    if not sp.issparse(value):
        raise BundleError(f"the model's {capability.value} are a {type(value).__name__}, not a sparse matrix; re-export it")
    if value.shape != shape:
        raise BundleError(f"the model's {capability.value} have shape {value.shape}; the history is {shape}; re-export it")
    return value


def _smoke_test(state: ServingState) -> None:
    """Ask the new state for one pick list, one audience and one similar list before serving it."""
    n_members = state.bundle.model.n_members
    if n_members == 0 or state.n_products == 0:
        raise BundleError(f"{state.info.source}: the bundle has no members or no products; nothing to serve")
    idx, sc = state.scorer.picks(np.array([0]), 1, None, [np.empty(0, np.int64)])
    aud_i, _ = state.scorer.audience(np.array([0]), 1, None)
    sim_i, _ = state.scorer.similar(0, 1, None)
    for name, arr in (("picks", idx), ("audience", aud_i), ("similar", sim_i)):
        if arr.min(initial=0) < -1:
            raise BundleError(f"{state.info.source}: the model returned invalid {name} indices")
    if np.isnan(sc).any():
        raise BundleError(f"{state.info.source}: the model returned NaN scores; re-train or re-export it")


def build_state(
    settings: ServingSettings,
    bundle_path: Path,
    *,
    registered_model: str | None = None,
    registry_version: str | None = None,
    source: str | None = None,
) -> ServingState:
    """Load, validate and index a bundle, then replay the live events; raises
    :class:`~recsys.bundle.BundleError` when the bundle cannot be served. ``source`` is what
    ``/v1/model`` reports (default: the folder)."""
    t0 = time.perf_counter()
    bundle = load_bundle(bundle_path)
    model = bundle.model
    if model.history is None or model.history.shape != (model.n_members, model.n_products):
        raise BundleError(f"{bundle_path}: the model has no purchase history of the right shape; re-export it")
    info = ModelInfo.from_meta(bundle.meta, source or str(bundle_path), registered_model, registry_version)

    ptable = bundle.product_table
    if "active" in ptable.column_names:
        active = np.asarray(ptable.column("active").fill_null(False).to_pylist(), dtype=bool)
    else:
        active = np.ones(len(bundle.products), dtype=bool)
    cat_values = _string_column(ptable, Col.CATEGORY)
    category = Tag.from_values(cat_values) if cat_values is not None else Tag(
        np.zeros(len(bundle.products), np.int32), ("all",)
    )
    names = _string_column(ptable, Col.NAME)

    member_tags = bundle.member_tags()
    registry = bundle.tag_registry
    tags = registry.only([*member_tags, *(t.name for t in registry.of("product") if t.name in ptable.column_names)])
    history = sp.csr_matrix(model.history, dtype=np.float32)
    last_age = _model_matrix(model, Capability.PURCHASE_AGES, history.shape)
    counts = _model_matrix(model, Capability.PURCHASE_COUNTS, history.shape)
    segment = member_tags.get(SEGMENT_TAG)
    pop_o, pop_s, seg_o, seg_s = _popular_orders(history, segment if isinstance(segment, Tag) else None)
    active.setflags(write=False)  # handed to searches as the default product mask, never changed

    scorer = build_scorer(model, settings.index, bundle.indexes)
    events = open_store(stream=settings.events_stream, stream_key=settings.events_stream_key,
                        path=settings.events_file, timeout=settings.events_stream_timeout_seconds)
    state = ServingState(
        settings=settings,
        bundle=bundle,
        info=info,
        scorer=scorer,
        members=MemberRegistry(bundle.members),
        products=bundle.products,
        product_active=active,
        category=category,
        product_names=names,
        product_table=ptable,
        tags=tags,
        member_tags=member_tags,
        tag_index=MemberTagIndex(tags, member_tags, len(bundle.members), info.version),
        history=history,
        purchase_counts=sp.csr_matrix(counts) if counts is not None else history,
        buyers_by_product=history.tocsc(),
        last_age=sp.csc_matrix(last_age) if last_age is not None else None,
        as_of=_as_of(bundle.meta),
        popular_order=pop_o,
        popular_scores=pop_s,
        segment_order=seg_o,
        segment_scores=seg_s,
        events=events,
        events_cursor=events.start,
        text=ProductText.build(bundle.products.external_ids, category, names),
        all_active=bool(active.all()),
    )
    _smoke_test(state)
    if bundle.pre_ranked is not None and settings.use_pre_ranked:
        state.pick_lists = build_pick_lists(state, bundle.pre_ranked)
    applied = state.sync_events()  # after the lists: members with live purchases are ranked again
    log.info(
        "loaded %s (%s, %d members, %d products, scorer %s, pre-ranked picks %s) in %.2fs; replayed %d live "
        "event(s)", info.version, info.model, len(bundle.members), len(bundle.products), scorer.kind,
        state.pick_lists.describe() if state.pick_lists is not None else "none", time.perf_counter() - t0, applied,
    )
    return state


def resolve_and_build(
    settings: ServingSettings,
    bundle: Path | None = None,
    alias: str | None = None,
) -> ServingState:
    """Build a state from a bundle folder, or from the registered model's ``alias`` version
    (defaults: the settings' bundle, or their registered model and alias).

    A registry download lives only while the state is built (see :mod:`serving.downloads`).
    Whatever goes wrong with the bundle is a :class:`~recsys.bundle.BundleError` naming it: a
    reload refuses it (422) and the old state keeps serving.
    """
    if bundle is None and alias is None and settings.bundle is not None:
        bundle = settings.bundle
    if bundle is not None:
        return _guarded_build(settings, Path(bundle))
    name = settings.registered_model
    if not name:
        raise BundleError("no registered model configured (RECSYS_REGISTERED_MODEL); pass a bundle path instead")
    from recsys.pyfunc import mlflow_client, resolve_tracking_uri, resolve_version
    from serving.downloads import evict, fetched

    uri = resolve_tracking_uri(settings.mlflow_tracking_uri)
    version = resolve_version(mlflow_client(uri), name, alias or settings.alias)
    source = f"models:/{name}/{version}"
    with fetched(name, version, uri, settings.bundle_cache_dir, settings.bundle_cache_keep) as path:
        try:
            return _guarded_build(settings, path, registered_model=name, registry_version=version, source=source)
        except BundleError:
            if settings.bundle_cache_dir is not None:
                evict(path)  # a damaged cached copy: the next attempt downloads it again
            raise


def _guarded_build(settings: ServingSettings, path: Path, **kwargs: Any) -> ServingState:
    """:func:`build_state`, with anything unexpected a bundle does to it reported as a
    :class:`BundleError` naming the bundle (logged with its traceback)."""
    try:
        return build_state(settings, path, **kwargs)
    except RecsysError:
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. arrays that decode but do not fit together
        log.exception("bundle %s could not be loaded", path)
        raise BundleError(
            f"{kwargs.get('source') or path}: the bundle cannot be served ({type(exc).__name__}: {exc}); re-export it"
        ) from None
