"""The recommender contract.

Every model scores members x products; the shared mechanics — filters, discover / replenish,
top-k, audiences with a member mask, save / load — live here once. A model implements four hooks:

* ``_fit(data)``                     learn from a :class:`TrainData`;
* ``_score_items(members)``          ``(len(members), n_products)`` scores for picks;
* ``_score_members(products)``       ``(len(products), n_members)`` scores for audiences;
* ``_state()`` / ``_set_state(s)``   arrays and JSON-able values that make it whole again.

A model that ranks a candidate set (a few hundred products per member) may also implement
``_score_candidates(members)`` returning the candidates' scores as a sparse matrix; ``recommend``
then ranks those entries alone instead of a dense row per member (absent entries are ``-inf``).
The hooks are the models' business: callers use the public methods (``recommend``,
``recommend_modes``, ``audience``, ``member_scores``, ``similar_items``, ``warm_products``, ...).

What a model can do beyond that is declared, not probed: its ``capabilities`` (a frozenset of
:class:`Capability`) name the optional methods it implements, each declared here (the base
version raises :class:`CapabilityError`). The declaration is checked once, when the class is
created: a model that declares a capability implements its methods, and a model that implements
them declares it. Callers ask ``model.has(Capability.X)``.

Scores are float32; ``-inf`` means "never recommend". Everything is batch-first: a call takes an
array of internal indices and returns ``(indices, scores)`` arrays with ``-1`` / ``-inf`` padding.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict

from recsys.interactions import Interactions

Mode = Literal["discover", "replenish"]
NEG_INF = np.float32(-np.inf)
# called after each training iteration: (iteration, seconds since the fit started, training loss)
IterationCallback = Callable[[int, float, float], None]


class Capability(StrEnum):
    """What a model can do beyond the contract every model meets; :data:`CAPABILITY_METHODS`
    names the methods each one brings (documented on :class:`Recommender`)."""

    PROBABILITIES = "probabilities"  # audience scores convert to calibrated purchase probabilities
    VECTORS = "vectors"  # member and product vectors whose dot products are the model's scores
    FOLD_IN = "fold_in"  # a member's vector from their purchases, the product vectors fixed
    ITEM_VECTORS = "item_vectors"  # product vectors whose cosine is product similarity
    PURCHASE_AGES = "purchase_ages"  # each member's days since their last purchase of each product
    PURCHASE_COUNTS = "purchase_counts"  # purchase days per member and product
    ITERATIONS = "iterations"  # trains in iterations it reports, and can be scored between them
    # scores every member for a product described only by attributes (in no row of the model)
    ATTRIBUTE_AUDIENCE = "attribute_audience"


CAPABILITY_METHODS: dict[Capability, tuple[str, ...]] = {
    Capability.PROBABILITIES: ("purchase_probability",),
    Capability.VECTORS: ("factor_vectors",),
    Capability.FOLD_IN: ("fold_in_member",),
    Capability.ITEM_VECTORS: ("item_vectors",),
    Capability.PURCHASE_AGES: ("purchase_ages",),
    Capability.PURCHASE_COUNTS: ("purchase_counts",),
    Capability.ITERATIONS: ("watch_iterations", "planned_iterations", "snapshot"),
    Capability.ATTRIBUTE_AUDIENCE: ("attribute_member_scores", "read_attributes"),
}
# a capability that only makes sense on top of another
CAPABILITY_NEEDS: dict[Capability, Capability] = {Capability.FOLD_IN: Capability.VECTORS}


class CapabilityError(NotImplementedError):
    """A capability's method called on a model that does not declare it."""


@dataclass(frozen=True)
class Tag:
    """A categorical attribute aligned with a member or product index: ``labels[codes[i]]``;
    code -1 means unknown."""

    codes: np.ndarray
    labels: tuple[str, ...]

    @classmethod
    def from_values(cls, values: np.ndarray | list[Any]) -> Tag:
        arr = np.asarray(values, dtype=object)
        known = np.array([v is not None and v == v and str(v) != "" for v in arr], dtype=bool)
        labels = tuple(sorted({str(v) for v in arr[known]}))
        lookup = {label: i for i, label in enumerate(labels)}
        codes = np.full(len(arr), -1, dtype=np.int32)
        codes[known] = [lookup[str(v)] for v in arr[known]]
        return cls(codes, labels)

    def code(self, label: str) -> int:
        try:
            return self.labels.index(label)
        except ValueError:
            return -1

    def mask(self, labels: list[str] | tuple[str, ...]) -> np.ndarray:
        wanted = [self.code(label) for label in labels]
        return np.isin(self.codes, [w for w in wanted if w >= 0])

    def values(self) -> np.ndarray:
        lab = np.array([*self.labels, None], dtype=object)
        return lab[self.codes]


@dataclass(frozen=True)
class ProductDescription:
    """A product known only by what a merchandiser can say of it before it is in the catalogue:
    its category label, its list price (None: unknown) and its brand label (None: unknown)."""

    category: str
    price: float | None = None
    brand: str | None = None


@dataclass
class TrainData:
    """What a model learns from: purchase occasions plus member and product attributes.

    ``member_tags`` are aligned with ``interactions.members`` (value_segment, lifecycle, ...),
    ``product_tags`` with ``interactions.products`` (category, price_band, brand, ...), and
    ``product_price`` is the product's list price (NaN when unknown), and
    ``category_price_bands`` the features snapshot's per-category unit-price thresholds
    ``{category: (q_low, q_high)}`` that its ``price_band`` tag was computed with
    (:func:`recsys.tags.price_band_of`): what places the price of a product not yet in the
    catalogue in a band.
    """

    interactions: Interactions
    member_tags: dict[str, Tag] = field(default_factory=dict)
    product_tags: dict[str, Tag] = field(default_factory=dict)
    product_price: np.ndarray | None = None
    category_price_bands: dict[str, tuple[float, float]] | None = None

    @property
    def n_members(self) -> int:
        return len(self.interactions.members)

    def describe(self, products: np.ndarray) -> list[ProductDescription]:
        """Product rows as a merchandiser would describe them: category, list price, brand (what
        :meth:`Recommender.attribute_member_scores` scores a product not in the catalogue from)."""
        rows = np.asarray(products, dtype=np.int64)
        cat, brand = self.product_tags.get("category"), self.product_tags.get("brand")
        cats = cat.values()[rows] if cat is not None else np.full(len(rows), "", dtype=object)
        brands = brand.values()[rows] if brand is not None else np.full(len(rows), None, dtype=object)
        price = self.product_price[rows] if self.product_price is not None else np.full(len(rows), np.nan)
        return [ProductDescription(str(c), None if p != p else float(p), None if b is None else str(b))
                for c, p, b in zip(cats, price, brands, strict=True)]

    @property
    def n_products(self) -> int:
        return len(self.interactions.products)


class ModelParams(BaseModel):
    """Hyperparameters; subclasses add fields. Unknown keys are an error, not a silent default."""

    model_config = ConfigDict(extra="forbid")


MODELS: dict[str, type[Recommender]] = {}


class ModelStateVersionError(ValueError):
    """A saved model whose state was written by a release with another ``state_version``."""


class TieOrder:
    """A tie-break order over a row's columns, worked out once for many :func:`topk_rows` calls
    (a model's audiences rank every member by the same activity): ``perm`` lists the columns
    best first (higher ``tiebreak`` first, then the lower index), ``place`` is each column's rank
    in it."""

    __slots__ = ("perm", "place")

    def __init__(self, tiebreak: np.ndarray):
        t = np.asarray(tiebreak)
        self.perm = np.lexsort((np.arange(len(t)), -t))
        self.place = np.empty(len(t), dtype=np.uint64)
        self.place[self.perm] = np.arange(len(t), dtype=np.uint64)


def _score_keys(s: np.ndarray) -> np.ndarray:
    """uint32 keys whose ascending order is the float32 scores' descending order."""
    bits = s.view(np.int32)
    flip = bits >> 31  # 0 for positive scores, -1 (all bits) for negative ones
    np.invert(flip, out=flip)
    flip &= 0x7FFFFFFF
    flip ^= bits  # positive: every bit but the sign flipped; negative: unchanged
    return flip.view(np.uint32)


def topk_rows(
    scores: np.ndarray, k: int, tiebreak: np.ndarray | TieOrder | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k per row of a dense score matrix, best first; ``-inf`` entries come out as -1.

    Ties are broken by ``tiebreak`` (higher first, e.g. member activity; or its
    :class:`TieOrder`, worked out once) and then by the lower index, also at the cut: top-1 is
    always the head of top-2.

    Examples
    --------
    >>> topk_rows(np.array([[0., 0., 1., 1.]], np.float32), 2)[0].tolist()
    [[2, 3]]
    >>> topk_rows(np.array([[0., 0., 1., 1.]], np.float32), 1)[0].tolist()
    [[2]]
    """
    n, m = scores.shape
    k_eff = min(k, m)
    idx = np.full((n, k), -1, dtype=np.int64)
    sc = np.full((n, k), NEG_INF, dtype=np.float32)
    if k_eff == 0 or n == 0:
        return idx, sc
    s = np.asarray(scores, dtype=np.float32)
    if np.isnan(s).any():
        s = np.where(np.isnan(s), NEG_INF, s)  # NaN ranks with -inf, i.e. never
    s = s + np.float32(0.0)  # -0.0 becomes 0.0: the two tie, as they compare equal
    if tiebreak is None:
        order = None
    else:
        order = tiebreak if isinstance(tiebreak, TieOrder) else TieOrder(np.asarray(tiebreak)[:m])
    top = np.empty((n, k_eff), dtype=np.int64)
    if k_eff * 8 <= m:
        # A cut far inside the row: the k-th best score of each row by a float partition, and
        # the entries at or above it as the candidates. A row with exactly k of them (no tie at
        # the cut) orders just those k; a row with a tie at the cut goes the exact way below.
        kth = np.partition(s, m - k_eff, axis=1)[:, m - k_eff]
        above = s >= kth[:, None]
        fast = np.count_nonzero(above, axis=1) == k_eff
        rows = np.flatnonzero(fast)
        if len(rows) == n:  # no tie at any cut: no copy of the rows
            cols = np.nonzero(above)[1].reshape(n, k_eff)
            top = _order_candidates(np.take_along_axis(s, cols, axis=1), cols, order)
        elif len(rows):
            cols = np.nonzero(above[rows])[1].reshape(-1, k_eff)
            top[rows] = _order_candidates(np.take_along_axis(s[rows], cols, axis=1), cols, order)
        slow = np.flatnonzero(~fast)
        if len(slow):
            top[slow] = _keyed_top(s[slow], k_eff, order)
    else:
        top = _keyed_top(s, k_eff, order)
    vals = np.take_along_axis(s, top, axis=1)
    finite = vals > NEG_INF
    idx[:, :k_eff] = np.where(finite, top, -1)
    sc[:, :k_eff] = np.where(finite, vals, NEG_INF)
    return idx, sc


def _keyed_top(s: np.ndarray, k: int, order: TieOrder | None) -> np.ndarray:
    """Columns of each row's top ``k``, best first, by one unsigned 64-bit key per entry: in the
    high half the score, as an integer whose order is the reverse of the score's; in the low half
    the column's place in tie order. Keys are distinct, so a partition finds exactly the top k,
    ties at the cut included, and a plain sort of those k orders them: no argsort, no lexsort
    over the candidates."""
    m = s.shape[1]
    key = _score_keys(s).astype(np.uint64)
    key <<= np.uint64(32)
    key |= np.arange(m, dtype=np.uint64) if order is None else order.place
    if k < m:
        key = np.partition(key, k - 1, axis=1)[:, :k]
    key.sort(axis=1)
    top = (key & np.uint64(0xFFFFFFFF)).astype(np.int64)
    return top if order is None else order.perm[top]


def _order_candidates(vals: np.ndarray, cols: np.ndarray, order: TieOrder | None) -> np.ndarray:
    """``cols`` (each row's top-k columns, in any order; ``vals`` their scores) best first."""
    key = _score_keys(np.ascontiguousarray(vals)).astype(np.uint64)
    key <<= np.uint64(32)
    key |= cols.astype(np.uint64) if order is None else order.place[cols]
    key.sort(axis=1)
    top = (key & np.uint64(0xFFFFFFFF)).astype(np.int64)
    return top if order is None else order.perm[top]


def topk_sparse(scores: sp.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`topk_rows` for a sparse matrix whose stored entries are the only candidates
    (absent entries count as ``-inf``); ties go to the lower index.

    Examples
    --------
    >>> m = sp.csr_matrix(np.array([[0, 2, 0, 2], [1, 0, 0, 0]], np.float32))
    >>> topk_sparse(m, 3)[0].tolist()
    [[1, 3, -1], [0, -1, -1]]
    """
    coo = scores.tocoo()
    n = scores.shape[0]
    idx = np.full((n, k), -1, dtype=np.int64)
    sc = np.full((n, k), NEG_INF, dtype=np.float32)
    finite = np.isfinite(coo.data)
    rows, cols, vals = coo.row[finite].astype(np.int64), coo.col[finite].astype(np.int64), coo.data[finite]
    order = np.lexsort((cols, -vals, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    rank = np.arange(len(rows)) - np.searchsorted(rows, rows)
    keep = rank < k
    idx[rows[keep], rank[keep]] = cols[keep]
    sc[rows[keep], rank[keep]] = vals[keep]
    return idx, sc


def _batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


class Recommender(ABC):
    """Base class of every model. Subclasses set ``name`` and ``Params`` (and ``capabilities``,
    with the methods they bring) and implement the hooks."""

    name: ClassVar[str] = ""
    Params: ClassVar[type[ModelParams]] = ModelParams
    # bump when what ``_state`` writes changes, so an old saved model is refused by name
    state_version: ClassVar[int] = 1
    capabilities: ClassVar[frozenset[Capability]] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _check_capabilities(cls)
        if cls.name:
            MODELS[cls.name] = cls

    def __init__(self, params: ModelParams | dict[str, Any] | None = None, **kwargs: Any):
        if isinstance(params, ModelParams):
            self.params = params
        else:
            self.params = self.Params(**{**(params or {}), **kwargs})
        self.n_members = 0
        self.n_products = 0
        self.history: sp.csr_matrix | None = None  # members x products, what each member bought
        self.category: np.ndarray | None = None  # product -> category code
        # how active each member is (higher first): every audience's tie-breaker; None: ties go
        # to the lower member index
        self.activity: np.ndarray | None = None
        # JSON-able facts about the last fit (rows learnt from, engine, ...), logged with the run
        self.training_summary: dict[str, Any] = {}
        self.is_fitted = False

    # ----------------------------------------------------------------- fitting
    def fit(self, data: TrainData) -> Recommender:
        self.n_members, self.n_products = data.n_members, data.n_products
        self.history = data.interactions.matrix("binary")
        cat = data.product_tags.get("category")
        self.category = cat.codes if cat is not None else np.zeros(self.n_products, np.int32)
        self._fit(data)
        self.is_fitted = True
        return self

    @abstractmethod
    def _fit(self, data: TrainData) -> None: ...

    @abstractmethod
    def _score_items(self, members: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def _score_members(self, products: np.ndarray) -> np.ndarray: ...

    def _score_candidates(self, members: np.ndarray) -> sp.csr_matrix | None:
        """Scores of each member's candidate products as a sparse ``(len(members), n_products)``
        matrix (absent = never recommend), for models that rank a candidate set; ``None`` (the
        default) means the model scores every product densely with ``_score_items``."""
        return None

    # ----------------------------------------------------------------- capabilities
    @classmethod
    def has(cls, capability: Capability) -> bool:
        """Whether the model declares ``capability`` (and so implements its methods)."""
        return capability in cls.capabilities

    def _lacks(self, capability: Capability) -> CapabilityError:
        return CapabilityError(f"{type(self).__name__} does not declare Capability.{capability.name}")

    def purchase_probability(self, scores: np.ndarray) -> np.ndarray:
        """PROBABILITIES: audience scores (as :meth:`audience` returns them) -> the probability
        that the member buys the product, calibrated: an audience's expected buyers are their sum."""
        raise self._lacks(Capability.PROBABILITIES)

    def factor_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """VECTORS: ``(n_members, f)`` member and ``(n_products, f)`` product vectors whose dot
        products are the model's picks and audience scores (a vector search can serve them)."""
        raise self._lacks(Capability.VECTORS)

    def fold_in_member(self, products: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """FOLD_IN: a member's ``(f,)`` vector from the products they bought (rows) and how often
        (purchase occasions), the product vectors held fixed, by the model's own equations: what
        serving computes after a live purchase, for a known or a new member."""
        raise self._lacks(Capability.FOLD_IN)

    def item_vectors(self) -> np.ndarray:
        """ITEM_VECTORS: ``(n_products, d)`` product vectors; similar products are the nearest by
        cosine (without them, :meth:`similar_items` uses the cosine of the buyer sets)."""
        raise self._lacks(Capability.ITEM_VECTORS)

    def purchase_ages(self) -> sp.spmatrix:
        """PURCHASE_AGES: members x products, days before the training data's ``as_of`` of the
        member's last purchase of the product (stored only where they bought it), as
        :meth:`recsys.interactions.Interactions.last_age`."""
        raise self._lacks(Capability.PURCHASE_AGES)

    def purchase_counts(self) -> sp.spmatrix:
        """PURCHASE_COUNTS: members x products, the days each member bought each product."""
        raise self._lacks(Capability.PURCHASE_COUNTS)

    def watch_iterations(self, callback: IterationCallback | None) -> None:
        """ITERATIONS: call ``callback(iteration, seconds, loss)`` after each training iteration
        of the next :meth:`fit` (None: stop)."""
        raise self._lacks(Capability.ITERATIONS)

    def attribute_member_scores(self, products: Sequence[ProductDescription]) -> np.ndarray:
        """ATTRIBUTE_AUDIENCE: ``(len(products), n_members)`` audience scores (as :meth:`audience`
        returns them: with PROBABILITIES they convert by :meth:`purchase_probability`) for products
        described only by attributes (:class:`ProductDescription`), products in no row of the
        model: what the model's never-sold audiences score from those attributes, so that a
        product row scored by :meth:`attribute_audience` gets exactly these scores from its own
        category, price and brand. An unknown category is an :class:`~recsys.errors.InputError`
        naming the known ones; an unknown brand (or none) contributes nothing, as a brand nobody
        bought."""
        raise self._lacks(Capability.ATTRIBUTE_AUDIENCE)

    def read_attributes(self, products: Sequence[ProductDescription]) -> list[dict[str, str | None]]:
        """ATTRIBUTE_AUDIENCE: what :meth:`attribute_member_scores` reads of each described product,
        ``{"category", "price_band", "brand"}`` labels (the band the price falls in; None where the
        model knows no such value, so it contributes nothing): what a user is told it was scored by."""
        raise self._lacks(Capability.ATTRIBUTE_AUDIENCE)

    def planned_iterations(self) -> int:
        """ITERATIONS: how many iterations a fit runs."""
        raise self._lacks(Capability.ITERATIONS)

    def snapshot(self) -> Recommender:
        """ITERATIONS: inside an iteration callback, the model as far as it is trained, as a fitted
        recommender that scores picks (e.g. to prune a hopeless fit early)."""
        raise self._lacks(Capability.ITERATIONS)

    # ----------------------------------------------------------------- public API
    def recommend(
        self,
        members: np.ndarray,
        k: int = 10,
        *,
        mode: Mode = "discover",
        include: np.ndarray | None = None,
        exclude: np.ndarray | None = None,
        categories: np.ndarray | None = None,
        batch_size: int = 1024,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k products for each member (internal indices).

        Parameters
        ----------
        members : member indices
        mode : ``"discover"`` leaves out what the member already bought; ``"replenish"`` keeps it
        include : only these product indices (a whitelist)
        exclude : never these product indices (a blacklist)
        categories : only products whose category code is in this array

        Returns
        -------
        (indices, scores), each ``(len(members), k)``; -1 / -inf where fewer than k qualify.
        """
        self.check_fitted()
        members = np.asarray(members, dtype=np.int64)
        allowed = self._allowed_products(include, exclude, categories)
        out_i = np.empty((len(members), k), dtype=np.int64)
        out_s = np.empty((len(members), k), dtype=np.float32)
        if mode not in ("discover", "replenish"):
            raise ValueError(f"mode must be 'discover' or 'replenish', not {mode!r}")
        for sl in _batches(len(members), batch_size):
            batch = members[sl]
            cand = self._score_candidates(batch)
            if cand is not None:
                out_i[sl], out_s[sl] = topk_sparse(self._filter_candidates(cand, batch, allowed, mode), k)
                continue
            scores = np.array(self._score_items(batch), dtype=np.float32, copy=True)
            if allowed is not None:
                scores[:, ~allowed] = NEG_INF
            if mode == "discover":
                seen = self.history[batch].tocoo()
                scores[seen.row, seen.col] = NEG_INF
            out_i[sl], out_s[sl] = topk_rows(scores, k)
        return out_i, out_s

    def _filter_candidates(
        self, cand: sp.csr_matrix, batch: np.ndarray, allowed: np.ndarray | None, mode: Mode
    ) -> sp.csr_matrix:
        """The filters of :meth:`recommend` on sparse candidate scores: drop disallowed products
        and, in discover mode, what the member already bought."""
        coo = cand.tocoo()
        keep = np.ones(coo.nnz, dtype=bool) if allowed is None else allowed[coo.col]
        if mode == "discover":
            seen = self.history[batch].tocoo()
            n = cand.shape[1]
            keep &= ~np.isin(coo.row.astype(np.int64) * n + coo.col, seen.row.astype(np.int64) * n + seen.col)
        return sp.csr_matrix((coo.data[keep], (coo.row[keep], coo.col[keep])), shape=cand.shape)

    def recommend_modes(
        self, members: np.ndarray, n: int, modes: tuple[str, ...] = ("replenish", "discover")
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Unfiltered top-``n`` of one batch of members in each of ``modes``: for every mode, what
        ``recommend(members, n, mode=mode)`` returns, from one scoring pass for all of them (the
        pre-ranked pick lists of :mod:`recsys.precompute` rank every member this way)."""
        self.check_fitted()
        members = np.asarray(members, dtype=np.int64)
        out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if type(self).recommend is not Recommender.recommend:  # the model ranks its own way: ask it
            for mode in modes:
                out[mode] = self.recommend(members, n, mode=mode)  # type: ignore[arg-type]
            return out
        cand = self._score_candidates(members)
        if cand is not None:
            # what recommend does for a model that ranks candidates, scored once for both modes:
            # the candidates' scores, (discover) what they bought dropped, top-n
            for mode in modes:
                out[mode] = topk_sparse(self._filter_candidates(cand, members, None, mode), n)  # type: ignore[arg-type]
            return out
        # ... and for a model that scores every product: dense scores, (discover) mask, top-n
        block = np.array(self._score_items(members), dtype=np.float32, copy=True)
        for mode in sorted(modes, key=lambda m: m != "replenish"):  # replenish before masking
            if mode == "discover":
                seen = self.history[members].tocoo()
                block[seen.row, seen.col] = NEG_INF
            out[mode] = topk_rows(block, n)
        return {mode: out[mode] for mode in modes}

    def member_scores(self, products: np.ndarray) -> np.ndarray:
        """Every member's audience score for each product, ``(len(products), n_members)``,
        unfiltered (``-inf``: never)."""
        self.check_fitted()
        return self._score_members(np.asarray(products, dtype=np.int64))

    def warm_products(self) -> np.ndarray:
        """Products with purchases in the training data (bool per product): those whose own history
        the model learnt from, as opposed to never-sold ones scored from their attributes."""
        self.check_fitted()
        return np.asarray(self.history.sum(axis=0)).ravel() > 0

    def audience(
        self,
        products: np.ndarray,
        n: int = 1000,
        *,
        member_mask: np.ndarray | None = None,
        batch_size: int = 64,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-n members for each product (internal indices); ``member_mask`` keeps only some."""
        return self._top_members(self._score_members, products, n, member_mask, batch_size)

    def _top_members(
        self, score: Any, products: np.ndarray, n: int, member_mask: np.ndarray | None, batch_size: int = 64,
        groups: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-n members for each product by ``score(products) -> (len(products), n_members)``;
        ``groups``: what to batch the products by (their category codes by default)."""
        self.check_fitted()
        products = np.asarray(products, dtype=np.int64)
        out_i = np.empty((len(products), n), dtype=np.int64)
        out_s = np.empty((len(products), n), dtype=np.float32)
        # batches of products of one category: a model that scores by category (or by anything
        # its products share) computes each category's part once rather than once per batch
        order = self.audience_batch_order(products) if groups is None else np.argsort(groups, kind="stable")
        for sl in _batches(len(products), batch_size):
            rows = order[sl] if order is not None else sl
            scores = np.asarray(score(products[rows]), dtype=np.float32)
            if member_mask is not None:
                scores = np.where(member_mask[None, :], scores, NEG_INF)
            out_i[rows], out_s[rows] = topk_rows(scores, n, tiebreak=self._tie_order())
        return out_i, out_s

    def _tie_order(self) -> TieOrder | None:
        """The members' tie order for audiences (:attr:`activity`), worked out on first use
        and again only when the activity array is replaced (a refit, a load)."""
        if self.activity is None:
            return None
        cached = self.__dict__.get("_tie_cache")
        if cached is None or cached[0] is not self.activity:
            cached = (self.activity, TieOrder(self.activity))
            self._tie_cache = cached
        return cached[1]

    def bulk_scoring(self, members: int) -> contextlib.AbstractContextManager[None]:
        """Inside this context the model scores for a batch job that ranks ``members`` members (the
        pre-ranked lists): a model may prepare a faster scorer for as long as it lasts (the hybrid
        compiles its ranker's trees) and must give the same scores; nothing is left behind after.
        Default: nothing to prepare."""
        return contextlib.nullcontext()

    def audience_batch_order(self, products: np.ndarray) -> np.ndarray | None:
        """The order in which :meth:`audience` batches ``products``: by category (stable; None
        without categories). A caller scoring many products in several calls (the audience
        evaluation) passes them in this order, so each category's shared part is computed for
        one run of batches instead of once in every call."""
        if self.category is None:
            return None
        return np.argsort(self.category[np.asarray(products, dtype=np.int64)], kind="stable")

    def attribute_audience(
        self, products: np.ndarray, n: int = 1000, *, member_mask: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-n members for never-sold ``products`` scored from their attributes alone (category,
        price band, brand), as for a product not yet in the catalogue: nothing of the product's own
        id beyond them (no product line) and no sales. The default is :meth:`audience`, which is
        exactly that for every model whose never-sold scores read only those attributes (ALS's cold
        vectors come from category and price band, category buyers from the category); a model that
        reads more of a never-sold product overrides it."""
        return self.audience(products, n, member_mask=member_mask)

    def described_audience(
        self, products: Sequence[ProductDescription], n: int = 1000, *, member_mask: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-n members for each product described by attributes (ATTRIBUTE_AUDIENCE:
        :meth:`attribute_member_scores`), ``(len(products), n)``, ranked and tie-broken as
        :meth:`attribute_audience` ranks product rows (batched by category the same way, so the
        two give the same lists for a never-sold product and its own attributes)."""
        if not self.has(Capability.ATTRIBUTE_AUDIENCE):
            raise self._lacks(Capability.ATTRIBUTE_AUDIENCE)
        products = list(products)
        # category labels order as their codes do (Tag labels are sorted): the same batches
        labels = np.array([p.category for p in products], dtype=object)
        return self._top_members(lambda rows: self.attribute_member_scores([products[r] for r in rows]),
                                 np.arange(len(products)), n, member_mask, groups=labels)

    def similar_items(self, products: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Top-k most similar products (cosine of the model's product vectors, or of buyers)."""
        self.check_fitted()
        products = np.asarray(products, dtype=np.int64)
        vecs = self.item_vectors() if self.has(Capability.ITEM_VECTORS) else None
        if vecs is None:  # fall back on co-purchase: cosine over the buyer sets
            x = sp.csc_matrix(self.history)
            norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=0)).ravel()) + 1e-9
            sims = (x[:, products].T @ x).toarray() / norms[products][:, None] / norms[None, :]
        else:
            norms = np.linalg.norm(vecs, axis=1) + 1e-9
            sims = (vecs[products] @ vecs.T) / norms[products][:, None] / norms[None, :]
        sims = sims.astype(np.float32)
        sims[np.arange(len(products)), products] = NEG_INF
        return topk_rows(sims, k)

    # ----------------------------------------------------------------- persistence
    def _state(self) -> dict[str, Any]:
        return {}

    def _set_state(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Restore what ``_state`` returned; models without state keep the default."""

    def save(self, path: Path | str) -> Path:
        """Write the model to a folder: ``model.json`` (name, params, JSON state) + one ``.npy``
        file per array under ``arrays/`` (a sparse matrix as its ``data`` / ``indices`` /
        ``indptr`` / ``shape``), which :meth:`load` memory-maps (see :data:`ARRAYS_DIR`)."""
        self.check_fitted()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {"history": self.history, "category": self.category, **self._state()}
        arrays: dict[str, np.ndarray] = {}
        meta: dict[str, Any] = {}
        for key, value in state.items():
            if sp.issparse(value):
                csr = sp.csr_matrix(value)
                arrays[f"{key}.data"], arrays[f"{key}.indices"] = csr.data, csr.indices
                arrays[f"{key}.indptr"] = csr.indptr
                arrays[f"{key}.shape"] = np.asarray(csr.shape)
                meta[key] = {"__sparse__": True}
            elif isinstance(value, np.ndarray):
                arrays[key] = value
                meta[key] = {"__array__": True}
            else:
                meta[key] = value
        folder = path / ARRAYS_DIR
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir()
        for key, value in arrays.items():
            if not ARRAY_NAME.fullmatch(key):
                raise ValueError(f"{type(self).__name__}: array name {key!r} is not a file name ({ARRAY_NAME.pattern})")
            if value.dtype.hasobject:
                raise ValueError(f"{type(self).__name__}: array {key!r} holds Python objects; save numbers or text")
            np.save(folder / f"{key}.npy", np.ascontiguousarray(value), allow_pickle=False)
        (path / "arrays.npz").unlink(missing_ok=True)  # a model saved over an older one
        doc = {
            "model": self.name,
            "state_version": self.state_version,
            "params": self.params.model_dump(mode="json"),
            "n_members": self.n_members,
            "n_products": self.n_products,
            "arrays": ARRAYS_FORMAT,
            "state": meta,
        }
        (path / "model.json").write_text(json.dumps(doc, indent=1))
        return path

    @classmethod
    def load(cls, path: Path | str) -> Recommender:
        """A model written by :meth:`save`. Its arrays are memory-mapped read-only: loading
        costs no read, pages come in as they are used (shared by every process that maps the
        file), and a consumer that needs to change one works on a copy. A model saved before
        the ``arrays/`` folder (one ``arrays.npz``) is read into memory as it always was."""
        path = Path(path)
        try:
            doc = json.loads((path / "model.json").read_text(encoding="utf-8"))
            name = doc["model"]
        except (ValueError, KeyError, TypeError) as exc:  # not JSON, not UTF-8, not a model document
            raise ValueError(f"{path / 'model.json'}: not a saved model ({type(exc).__name__}: {exc})") from None
        model_cls = MODELS.get(name)
        if model_cls is None:
            raise ValueError(f"{path}: unknown model {doc['model']!r}; known: {sorted(MODELS)}")
        saved = doc.get("state_version", 1)
        if saved != model_cls.state_version:
            raise ModelStateVersionError(
                f"{path}: {doc['model']} model state version {saved}, this release reads "
                f"{model_cls.state_version}; retrain it with this release"
            )
        model = model_cls(doc["params"])
        model.n_members, model.n_products = doc["n_members"], doc["n_products"]
        layout = doc.get("arrays", "npz")
        if layout == ARRAYS_FORMAT:
            arrays = _ArrayFolder(path / ARRAYS_DIR)
        elif layout == "npz":
            arrays = _read_npz(path / "arrays.npz")
        else:
            raise ValueError(f"{path / 'model.json'}: arrays stored as {layout!r}, this release reads "
                             f"{ARRAYS_FORMAT!r} or 'npz'; save the model with this release")
        state: dict[str, Any] = {}
        for key, value in doc["state"].items():
            if isinstance(value, dict) and value.get("__sparse__"):
                state[key] = sp.csr_matrix(
                    (arrays[f"{key}.data"], arrays[f"{key}.indices"], arrays[f"{key}.indptr"]),
                    shape=tuple(int(x) for x in arrays[f"{key}.shape"]),
                )
            elif isinstance(value, dict) and value.get("__array__"):
                state[key] = arrays[key]
            else:
                state[key] = value
        model.history = state.pop("history")
        model.category = state.pop("category")
        model._set_state(state)
        model.is_fitted = True
        return model

    # ----------------------------------------------------------------- helpers
    def check_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit() or load() first")

    def _allowed_products(
        self,
        include: np.ndarray | None,
        exclude: np.ndarray | None,
        categories: np.ndarray | None,
    ) -> np.ndarray | None:
        if include is None and exclude is None and categories is None:
            return None
        allowed = np.ones(self.n_products, dtype=bool)
        if include is not None:
            allowed[:] = False
            allowed[np.asarray(include, dtype=np.int64)] = True
        if exclude is not None:
            allowed[np.asarray(exclude, dtype=np.int64)] = False
        if categories is not None:
            allowed &= np.isin(self.category, np.asarray(categories))
        return allowed


def _check_capabilities(cls: type[Recommender]) -> None:
    """At class creation: every declared capability is implemented and needs nothing undeclared,
    and every capability method the class overrides is declared."""
    for cap in cls.capabilities:
        if not isinstance(cap, Capability):
            raise TypeError(f"{cls.__name__}.capabilities: {cap!r} is not a Capability")
        need = CAPABILITY_NEEDS.get(cap)
        if need is not None and need not in cls.capabilities:
            raise TypeError(f"{cls.__name__} declares Capability.{cap.name} without Capability.{need.name}")
    for cap, methods in CAPABILITY_METHODS.items():
        for method in methods:
            implemented = getattr(cls, method) is not getattr(Recommender, method)
            if cap in cls.capabilities and not implemented:
                raise TypeError(f"{cls.__name__} declares Capability.{cap.name} but does not implement {method}()")
            if implemented and cap not in cls.capabilities:
                raise TypeError(f"{cls.__name__} implements {method}() but does not declare Capability.{cap.name}")


def get_model(name: str) -> type[Recommender]:
    import recsys.models  # noqa: F401  (registers every model module)

    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; choose one of {', '.join(sorted(MODELS))}") from None


# ----------------------------------------------------------------------------- saved arrays
ARRAYS_DIR = "arrays"  # one NAME.npy per array of a saved model (``Recommender.save``)
ARRAYS_FORMAT = "npy"  # what ``model.json`` says under "arrays"; models saved before it have one arrays.npz
ARRAY_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


class _ArrayFolder:
    """The arrays of a saved model's ``arrays/`` folder, each memory-mapped read-only when asked
    for (ValueError naming the file when one is missing or is not the ``.npy`` it should be)."""

    def __init__(self, folder: Path):
        self.folder = folder

    def __getitem__(self, key: str) -> np.ndarray:
        if not ARRAY_NAME.fullmatch(key):
            raise ValueError(f"{self.folder}: bad array name {key!r} in model.json")
        file = self.folder / f"{key}.npy"
        try:
            arr = np.load(file, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise ValueError(f"{file}: missing") from None
        except Exception as exc:  # noqa: BLE001 - a header numpy cannot parse, shorter than its header says
            raise ValueError(f"{file}: unreadable ({type(exc).__name__}: {exc})") from None
        # a plain read-only ndarray over the mapping (np.memmap's subclass leaks into results)
        return arr.view(np.ndarray) if isinstance(arr, np.memmap) else arr


def _read_npz(file: Path) -> dict[str, np.ndarray]:
    """Every array of an ``arrays.npz`` (models saved before ``arrays/``), read into memory."""
    try:
        with np.load(file, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - BadZipFile, bad CRC, zlib, a header numpy cannot parse
        raise ValueError(f"{file}: unreadable ({type(exc).__name__}: {exc})") from None
