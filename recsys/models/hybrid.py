"""The default model: repeat behaviour + collaborative filtering + propensity, learned.

Picks (person -> product)
    Candidates per member — everything they bought, the nearest products by ALS, the popular
    ones — are scored by a gradient-boosted classifier over pair features: how often and how
    recently the member bought the product, how repeatable the product is, the ALS affinity, the
    member's affinity to the product's category, item-kNN similarity to their basket, popularity.
    The classifier learns from the model's own training data: the last window before the cut-off
    (a *label window*) is hidden, features are computed on what came before it, and the label is
    whether the member bought the product in the window. Windows that overlap a configured
    holiday are skipped: a holiday rush teaches the model a popularity that does not last.

Audiences (product -> person)
    A logistic model over member features for the product — bought it before, category affinity,
    activity, recency, ALS affinity (from attributes for a never-sold product) — trained on the
    same label windows with sampled negatives and corrected for the sampling, so its scores are
    calibrated purchase probabilities: an audience of N contains sum(p) expected buyers.
"""

from __future__ import annotations

import importlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from recsys.arrays import unique_ints
from recsys.errors import RecsysError
from recsys.interactions import Interactions
from recsys.models.base import ModelParams, Recommender, Tag, TrainData
from recsys.models.factorization import attribute_vectors, item_similarity

NEG_INF = np.float32(-np.inf)

PAIR_FEATURES = (
    "count", "count_rel", "count_rate", "recency14", "last_age", "cf", "buyers_rate",
    "occasions_rate", "recent_pop", "rebuy_rate", "member_days_rate", "member_last_age",
    "blend", "member_repeat_share", "category_count", "category_share", "knn", "member_occ_rate",
)
AUDIENCE_FEATURES = (
    "log_count", "log_category_count", "category_share", "log_member_occ", "log_member_days",
    "log_member_last_age", "cf", "log_knn", "member_repeat_share", "log_brand_count",
    "log_count_x_recency", "log_category_x_occ", "log_early_adoptions", "early_adoption_share",
    "band_share", "log_category_recent", "log_line_count", "log_brand_knn", "log_category_knn",
)


class HybridParams(ModelParams):
    # collaborative filtering (implicit ALS on BM25-weighted purchase-day counts)
    factors: int = 64
    iterations: int = 15
    regularization: float = 0.05
    bm25_k1: float = 100.0
    bm25_b: float = 0.8
    knn_neighbours: int = 100
    # Without a brand column, a product id that is a retail barcode (EAN-13 / GS1) still names its
    # maker in its first digits: group products by that prefix as a stand-in for brand.
    brand_from_id_prefix: int | None = None
    # ... and a longer prefix names a product line (one maker's sizes and flavours of a product): a
    # never-sold product is often a new variant of a line that sold
    line_from_id_prefix: int | None = None
    # candidates for picks
    candidates_popular: int = 60
    candidates_cf: int = 40
    # label windows
    label_mode: Literal["days", "last_basket"] = "days"
    label_days: int = 31
    label_windows: int = 1  # how many windows (newest usable first) to learn from
    holidays: list[date] = []
    holiday_margin_days: int = 14
    # the picks ranker (LightGBM)
    n_estimators: int = 150
    learning_rate: float = 0.05
    num_leaves: int = 31
    min_child_samples: int = 100
    negative_rate: float = 0.25
    drop_features: list[str] = ["buyers_rate", "occasions_rate", "recent_pop"]
    # the audience models (logistic regression); off where only picks are evaluated (the
    # next-basket protocol): the model then ranks products for members, not members for products
    audiences: bool = True
    audience_negatives: int = 20
    audience_max_products: int = 3000
    audience_l2: float = 1.0
    # a never-sold product has no purchase history to learn from, and a model with many free
    # weights over-fits the one window it learns from: keep it to the signals that transfer
    cold_audience_features: list[str] = [
        "log_category_count", "log_member_occ", "cf", "log_brand_count", "log_early_adoptions", "band_share",
        "log_category_recent", "log_line_count", "log_brand_knn", "log_category_knn",
    ]
    seed: int = 0
    num_threads: int = 0


# ----------------------------------------------------------------------------- feature state
@dataclass
class FeatureState:
    """Everything pair features are computed from, for one history (train or a label window's)."""

    counts: sp.csr_matrix
    counts_csc: sp.csc_matrix
    last_age: sp.csr_matrix
    recency14: sp.csr_matrix
    member_cat: sp.csr_matrix
    member_cat_csc: sp.csc_matrix
    member_cat_recent: sp.csc_matrix  # recency-weighted (14-day half-life) category affinity
    member_band: np.ndarray  # members x price bands (+1 unknown), purchase occasions
    item_band: np.ndarray
    member_brand: sp.csr_matrix | None
    member_brand_csc: sp.csc_matrix | None
    member_line: sp.csr_matrix | None  # members x product lines (id prefix), purchase occasions
    member_line_csc: sp.csc_matrix | None
    brand_knn: sp.csr_matrix | None  # products x brands: mean item-kNN similarity to the brand's sold products
    cat_knn: sp.csr_matrix  # products x categories: the same for the category
    knn: sp.csr_matrix  # product x product similarity
    user_factors: np.ndarray
    item_factors: np.ndarray
    item_cat: np.ndarray
    item_brand: np.ndarray | None
    item_line: np.ndarray | None
    span: float
    buyers: np.ndarray
    occasions: np.ndarray
    recent_pop: np.ndarray
    rebuy_rate: np.ndarray
    member_days: np.ndarray
    member_last: np.ndarray
    member_max: np.ndarray
    member_occ: np.ndarray
    member_repeat: np.ndarray
    member_early: np.ndarray  # purchases of products in their first weeks on sale
    _cf_index: Any = field(default=None, repr=False, compare=False)
    _csc: dict[str, sp.csc_matrix] = field(default_factory=dict, repr=False, compare=False)

    def csc(self, name: str) -> sp.csc_matrix:
        """A column-major copy of a products x columns table (``knn``, ``cat_knn``,
        ``brand_knn``), made on first use. A member's affinity to a few columns is
        ``counts_csc @ csc(name)[:, cols]``: it reads only the products those columns touch,
        where the row-major product reads all of ``counts`` (0.4 vs 9.8 ms for one column)."""
        if name not in self._csc:
            self._csc[name] = sp.csc_matrix(getattr(self, name))
        return self._csc[name]

    def cf_index(self) -> Any:
        """An exact inner-product FAISS index over the product vectors, built on first use: the
        members' top products by ALS score (picks candidates) without sorting every product."""
        if self._cf_index is None:
            import faiss

            index = faiss.IndexFlatIP(self.item_factors.shape[1])
            index.add(np.ascontiguousarray(self.item_factors, dtype=np.float32))
            self._cf_index = index
        return self._cf_index

    def __getstate__(self) -> dict[str, Any]:  # the FAISS index does not pickle; caches are rebuilt
        return {**self.__dict__, "_cf_index": None, "_csc": {}}

    @property
    def n_members(self) -> int:
        return self.counts.shape[0]

    @property
    def n_products(self) -> int:
        return self.counts.shape[1]


def _group_matrix(counts: sp.csr_matrix, groups: np.ndarray) -> sp.csr_matrix:
    coo = counts.tocoo()
    n_groups = int(groups.max(initial=-1)) + 2
    g = np.where(groups >= 0, groups, n_groups - 1)
    return sp.csr_matrix((coo.data, (coo.row, g[coo.col])), shape=(counts.shape[0], n_groups)).astype(np.float32)


def _gather(m: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Values of a sparse matrix at (rows, cols) pairs, 0 where absent, without densifying."""
    m = m if sp.isspmatrix_csr(m) else sp.csr_matrix(m)
    if m.nnz == 0 or len(rows) == 0:
        return np.zeros(len(rows), dtype=np.float32)
    uniq, inv = np.unique(rows, return_inverse=True)
    if len(uniq) * 8 < m.shape[0]:  # a few members (serving): index only their rows
        m, rows = m[uniq], inv
        if m.nnz == 0:
            return np.zeros(len(rows), dtype=np.float32)
    n = m.shape[1]
    row_of = np.repeat(np.arange(m.shape[0], dtype=np.int64), np.diff(m.indptr))
    keys = row_of * n + m.indices  # csr with sorted indices gives sorted keys
    if not m.has_sorted_indices:
        order = np.argsort(keys)
        keys, data = keys[order], m.data[order]
    else:
        data = m.data
    q = rows.astype(np.int64) * n + cols.astype(np.int64)
    pos = np.minimum(np.searchsorted(keys, q), len(keys) - 1)
    return np.where(keys[pos] == q, data[pos], 0).astype(np.float32)


def _group_knn(counts: sp.csr_matrix, knn: sp.csr_matrix, groups: np.ndarray) -> sp.csr_matrix:
    """Products x groups: each product's item-kNN similarity to the sold products of each group,
    averaged over them. A never-sold product has no kNN column of its own; its group's sold
    products stand in for it (a member's affinity is ``counts @ this``, computed per request: the
    members x groups table would be tens of millions of entries)."""
    sold = (np.diff(counts.tocsc().indptr) > 0) & (groups >= 0)
    n_groups = int(groups.max(initial=-1)) + 1
    size = np.bincount(groups[sold], minlength=n_groups).astype(np.float32)
    j = np.where(sold)[0]
    mean = sp.csr_matrix((1.0 / size[groups[j]], (j, groups[j])), shape=(counts.shape[1], n_groups), dtype=np.float32)
    out = (knn @ mean).tocsr().astype(np.float32)
    out.sort_indices()
    return out


def _sorted_group_matrix(counts: sp.csr_matrix, groups: np.ndarray | None) -> sp.csr_matrix | None:
    if groups is None or not (groups >= 0).any():
        return None
    out = _group_matrix(counts, groups)
    out.sort_indices()
    return out


def build_state(
    x: Interactions, params: HybridParams, item_cat: np.ndarray, item_brand: np.ndarray | None,
    product_tags: dict[str, Tag], item_line: np.ndarray | None = None,
) -> FeatureState:
    from implicit.cpu.als import AlternatingLeastSquares
    from implicit.nearest_neighbours import bm25_weight

    counts = x.matrix("count")
    counts.sort_indices()
    with threadpool_limits(1, "blas"):
        als = AlternatingLeastSquares(
            factors=params.factors, iterations=params.iterations, regularization=params.regularization,
            random_state=params.seed, num_threads=params.num_threads,
        )
        als.fit(bm25_weight(counts, K1=params.bm25_k1, B=params.bm25_b).tocsr(), show_progress=False)
        knn_sim = item_similarity(counts, params.knn_neighbours, num_threads=params.num_threads)
    warm = np.diff(counts.tocsc().indptr) > 0
    item_factors = attribute_vectors(np.asarray(als.item_factors, np.float32), warm, product_tags)
    binary = counts.copy()
    binary.data[:] = 1.0
    buyers = np.asarray(binary.sum(axis=0)).ravel().astype(np.float32)
    occasions = np.asarray(counts.sum(axis=0)).ravel().astype(np.float32)
    rebuy = np.asarray((counts > 1).sum(axis=0)).ravel().astype(np.float32)
    recency14 = x.matrix("recency", half_life_days=14.0)
    recency14.sort_indices()
    last_age = x.last_age()
    last_age.sort_indices()
    member_occ = np.asarray(counts.sum(axis=1)).ravel().astype(np.float32)
    distinct = np.diff(counts.indptr).astype(np.float32)
    member_cat = _group_matrix(counts, item_cat)
    member_cat.sort_indices()
    band = product_tags.get("price_band")
    item_band = band.codes if band is not None else np.full(x.shape[1], -1, np.int32)
    member_brand = _sorted_group_matrix(counts, item_brand)
    member_line = _sorted_group_matrix(counts, item_line)
    span = float(max(int(x.age_days.max(initial=1)), 1))
    return FeatureState(
        counts=counts, counts_csc=counts.tocsc(), last_age=last_age, recency14=recency14,
        member_cat=member_cat, member_cat_csc=member_cat.tocsc(),
        member_cat_recent=_group_matrix(recency14, item_cat).tocsc(),
        member_band=np.asarray(_group_matrix(counts, item_band).todense(), dtype=np.float32),
        item_band=item_band,
        member_brand=member_brand, member_brand_csc=member_brand.tocsc() if member_brand is not None else None,
        member_line=member_line, member_line_csc=member_line.tocsc() if member_line is not None else None,
        brand_knn=_group_knn(counts, knn_sim, item_brand) if member_brand is not None else None,
        cat_knn=_group_knn(counts, knn_sim, item_cat),
        knn=knn_sim,
        user_factors=np.asarray(als.user_factors, np.float32), item_factors=item_factors,
        item_cat=item_cat, item_brand=item_brand, item_line=item_line, span=span,
        buyers=buyers, occasions=occasions,
        recent_pop=np.asarray(recency14.sum(axis=0)).ravel().astype(np.float32),
        rebuy_rate=(rebuy + 1.5) / (buyers + 5.0),
        member_days=x.member_days().astype(np.float32),
        member_last=x.member_last_age().astype(np.float32),
        member_max=np.asarray(counts.max(axis=1).todense()).ravel().astype(np.float32),
        member_occ=member_occ,
        member_repeat=(member_occ - distinct) / np.maximum(member_occ, 1.0),
        member_early=early_adoptions(x),
    )


def early_adoptions(x: Interactions, weeks: int = 2) -> np.ndarray:
    """Per member: purchases of products within ``weeks`` of the product's first sale, counting
    only products whose first sale is well inside the history (not at its start)."""
    if len(x.age_days) == 0:
        return np.zeros(len(x.members), np.float32)
    first = np.zeros(len(x.products), dtype=np.int64)
    np.maximum.at(first, x.product, x.age_days)
    oldest = int(x.age_days.max())
    launched_inside = first[x.product] < oldest - 7 * weeks
    early = launched_inside & (first[x.product] - x.age_days <= 7 * weeks)
    return np.bincount(x.member[early], minlength=len(x.members)).astype(np.float32)


def pair_features(s: FeatureState, members: np.ndarray, products: np.ndarray) -> np.ndarray:
    """``(n_pairs, len(PAIR_FEATURES))`` float32 for (member, product) pairs."""
    u, i = members.astype(np.int64), products.astype(np.int64)
    cnt = _gather(s.counts, u, i)
    rel = cnt / np.maximum(s.member_max[u], 1.0)
    last = np.where(cnt > 0, _gather(s.last_age, u, i), 999.0)
    cf = np.einsum("ij,ij->i", s.user_factors[u], s.item_factors[i])
    pop_max = max(float(s.buyers.max(initial=0)), 1.0)
    ucat = _gather(s.member_cat, u, s.item_cat[i])
    knn = _knn_pairs(s, u, i)
    return np.column_stack([
        cnt, rel, cnt / np.maximum(s.member_days[u], 1.0), _gather(s.recency14, u, i), last, cf,
        s.buyers[i] / s.span, s.occasions[i] / s.span, s.recent_pop[i], s.rebuy_rate[i],
        s.member_days[u] / s.span, s.member_last[u], rel + 0.05 * s.buyers[i] / pop_max,
        s.member_repeat[u], ucat, ucat / np.maximum(s.member_occ[u], 1.0), knn, s.member_occ[u] / s.span,
    ]).astype(np.float32)


def _knn_pairs(s: FeatureState, u: np.ndarray, i: np.ndarray, table: str = "knn") -> np.ndarray:
    """sum over the member's history h of similarity(h, i), for each pair (``table``: a products x
    columns table of the state, the item-kNN similarity by default; ``i`` indexes its columns).

    ``history @ sim`` for the pairs' members is far larger than the pairs (tens of millions of
    entries for a few million pairs): it is computed a block of columns at a time, densely, and
    only the pairs are read from each block."""
    out = np.zeros(len(u), np.float32)
    if len(u) == 0:
        return out
    members, row = np.unique(u, return_inverse=True)
    cols, col = np.unique(i, return_inverse=True)
    history = s.counts_csc if len(members) == s.n_members else s.counts[members]
    if len(members) == s.n_members:
        row = members[row]
    sim_cols = s.csc(table)[:, cols]
    block = max(1, int(_KNN_BLOCK_ENTRIES // max(len(members), 1)))
    order = np.argsort(col, kind="stable")
    starts = np.searchsorted(col[order], np.arange(0, len(cols) + block, block))
    for b, lo in enumerate(range(0, len(cols), block)):
        pairs = order[starts[b] : starts[b + 1]]
        if len(pairs) == 0:
            continue
        dense = (history @ sim_cols[:, lo : lo + block]).toarray()
        out[pairs] = dense[row[pairs], col[pairs] - lo]
    return out


_KNN_BLOCK_ENTRIES = 4_000_000  # members x columns of one dense block (16 MB)


def audience_logits(s: FeatureState, products: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``(len(products), n_members)`` float32: ``w @ features`` for each product against every
    member, the features being :func:`audience_pair_features`'s, without materialising them.

    The audience score is linear in its features, and most features depend on the member and on
    one *group* of the product (its category, brand, product line or price band) rather than on
    the product itself; others are zero except where the member bought the product or one of its
    neighbours. So the score is a member term, plus one dense row per distinct group in the
    block (copied to its products), plus a factor product, plus sparse terms added where they are
    non-zero: a few dense passes per block instead of one per feature. Features whose weight is
    zero (the never-sold model leaves most of them out) are not computed at all."""
    products = np.atleast_1d(np.asarray(products, dtype=np.int64))
    wt = {f: float(w[j]) for j, f in enumerate(AUDIENCE_FEATURES)}
    occ = s.member_occ
    log_occ = np.log1p(occ)
    inv_occ = 1.0 / np.maximum(occ, 1.0)
    early = s.member_early
    member = (
        wt["log_member_occ"] * log_occ + wt["log_member_days"] * np.log1p(s.member_days)
        + wt["log_member_last_age"] * np.log1p(np.minimum(s.member_last, 1e4))
        + wt["member_repeat_share"] * s.member_repeat + wt["log_early_adoptions"] * np.log1p(early)
        + wt["early_adoption_share"] * early * inv_occ
    ).astype(np.float32)
    out = np.empty((len(products), s.n_members), dtype=np.float32)
    if wt["cf"] != 0.0:
        np.matmul(wt["cf"] * s.item_factors[products], s.user_factors.T, out=out)
        out += member
    else:
        out[:] = member

    def rows(mat: sp.spmatrix, cols: np.ndarray) -> np.ndarray:
        """Columns ``cols`` of a members x groups matrix, as dense rows (groups x members)."""
        return mat[:, cols].T.toarray().astype(np.float32, copy=False)

    def add_group(codes: np.ndarray, term: Any) -> None:
        """out[j] += term(distinct groups)[group of product j]; products without a group skipped."""
        has = codes >= 0
        if has.any():
            uniq, inv = np.unique(codes[has], return_inverse=True)
            out[has] += term(uniq)[inv]

    def category_term(c: np.ndarray) -> np.ndarray:
        t = np.zeros((len(c), s.n_members), np.float32)
        if wt["log_category_count"] or wt["category_share"] or wt["log_category_x_occ"]:
            ucat = rows(s.member_cat_csc, c)
            t += np.log1p(ucat) * (wt["log_category_count"] + wt["log_category_x_occ"] * log_occ).astype(np.float32)
            t += ucat * (wt["category_share"] * inv_occ).astype(np.float32)
        if wt["log_category_recent"]:
            t += wt["log_category_recent"] * np.log1p(rows(s.member_cat_recent, c))
        if wt["log_category_knn"]:
            t += wt["log_category_knn"] * np.log1p(rows(s.counts_csc @ s.csc("cat_knn")[:, c], slice(None)))
        return t

    def brand_term(b: np.ndarray) -> np.ndarray:
        t = np.zeros((len(b), s.n_members), np.float32)
        if wt["log_brand_count"] and s.member_brand_csc is not None:
            t += wt["log_brand_count"] * np.log1p(rows(s.member_brand_csc, b))
        if wt["log_brand_knn"] and s.brand_knn is not None:
            t += wt["log_brand_knn"] * np.log1p(rows(s.counts_csc @ s.csc("brand_knn")[:, b], slice(None)))
        return t

    add_group(s.item_cat[products], category_term)
    if s.item_brand is not None and (wt["log_brand_count"] or wt["log_brand_knn"]):
        add_group(s.item_brand[products], brand_term)
    if s.item_line is not None and s.member_line_csc is not None and wt["log_line_count"]:
        add_group(s.item_line[products], lambda g: wt["log_line_count"] * np.log1p(rows(s.member_line_csc, g)))
    if wt["band_share"]:
        add_group(s.item_band[products],
                  lambda g: (wt["band_share"] * s.member_band[:, g].T * inv_occ).astype(np.float32))
    # sparse terms: the member bought the product (count, recency) or one of its neighbours (kNN);
    # the (member, product) pairs of a column slice are distinct, so a fancy-index add is exact
    if wt["log_count"] or wt["log_count_x_recency"]:
        cnt = s.counts_csc[:, products].tocoo()
        rec = 1.0 / (1.0 + _gather(s.last_age, cnt.row, products[cnt.col]) / 30.0)
        out[cnt.col, cnt.row] += (np.log1p(cnt.data) * (wt["log_count"] + wt["log_count_x_recency"] * rec)).astype(np.float32)
    if wt["log_knn"]:
        knn = (s.counts_csc @ s.csc("knn")[:, products]).tocoo()
        out[knn.col, knn.row] += (wt["log_knn"] * np.log1p(knn.data)).astype(np.float32)
    return out


def audience_pair_features(s: FeatureState, members: np.ndarray, products: np.ndarray) -> np.ndarray:
    """``(n_pairs, len(AUDIENCE_FEATURES))`` float32 for (member, product) pairs, the features of
    the audience models (training learns from sampled pairs; :func:`audience_logits` scores whole
    blocks with the same features)."""
    u, i = np.asarray(members, dtype=np.int64), np.asarray(products, dtype=np.int64)

    def pairs(mat: sp.spmatrix | None, idx: np.ndarray) -> np.ndarray:
        if mat is None:
            return np.zeros(len(u), np.float32)
        return np.where(idx >= 0, _gather(mat, u, np.maximum(idx, 0)), 0.0).astype(np.float32)

    def knn_pairs(table: str, idx: np.ndarray) -> np.ndarray:
        if getattr(s, table) is None:
            return np.zeros(len(u), np.float32)
        return np.where(idx >= 0, _knn_pairs(s, u, np.maximum(idx, 0), table), 0.0).astype(np.float32)

    cats, brands, bands = s.item_cat[i], _groups(s.item_brand, i), s.item_band[i]
    cnt, ucat = pairs(s.counts, i), pairs(s.member_cat, cats)
    rec = np.where(cnt > 0, 1.0 / (1.0 + pairs(s.last_age, i) / 30.0), 0.0)
    occ = s.member_occ[u]
    log_occ = np.log1p(occ)
    early = s.member_early[u]
    out = np.empty((len(u), len(AUDIENCE_FEATURES)), dtype=np.float32)
    out[:, 0] = np.log1p(cnt)
    out[:, 1] = np.log1p(ucat)
    out[:, 2] = ucat / np.maximum(occ, 1.0)
    out[:, 3] = log_occ
    out[:, 4] = np.log1p(s.member_days[u])
    out[:, 5] = np.log1p(np.minimum(s.member_last[u], 1e4))
    out[:, 6] = np.einsum("ij,ij->i", s.user_factors[u], s.item_factors[i])
    out[:, 7] = np.log1p(_knn_pairs(s, u, i))
    out[:, 8] = s.member_repeat[u]
    out[:, 9] = np.log1p(pairs(s.member_brand, brands))
    out[:, 10] = out[:, 0] * rec
    out[:, 11] = out[:, 1] * log_occ
    out[:, 12] = np.log1p(early)
    out[:, 13] = early / np.maximum(occ, 1.0)
    out[:, 14] = np.where(bands >= 0, s.member_band[u, np.maximum(bands, 0)], 0.0) / np.maximum(occ, 1.0)
    out[:, 15] = np.log1p(pairs(s.member_cat_recent, cats))
    out[:, 16] = np.log1p(pairs(s.member_line, _groups(s.item_line, i)))
    out[:, 17] = np.log1p(knn_pairs("brand_knn", brands))
    out[:, 18] = np.log1p(knn_pairs("cat_knn", cats))
    return out


def _groups(codes: np.ndarray | None, products: np.ndarray) -> np.ndarray:
    return codes[products] if codes is not None else np.full(len(products), -1)


def product_level(s: FeatureState, products: np.ndarray) -> np.ndarray:
    """``(len(products), 2)``: how much a product sold in the history (log buyers, log
    recency-weighted sales); sets the level of its audience probabilities, not their order."""
    i = np.asarray(products, dtype=np.int64)
    return np.column_stack([np.log1p(s.buyers[i]), np.log1p(s.recent_pop[i])]).astype(np.float32)


@dataclass
class AudienceExamples:
    """Sampled (member, product) pairs for the audience models, one row each."""

    A: np.ndarray  # (rows, len(AUDIENCE_FEATURES))
    b: np.ndarray  # 1 = bought in the label window
    cold: np.ndarray  # the product had no sales in the history
    group: np.ndarray  # product (and window) of the row
    level: np.ndarray  # product_level of the row's product
    rate: np.ndarray  # the negative-sampling rate of the row's window

    @classmethod
    def concat(cls, parts: list[AudienceExamples]) -> AudienceExamples:
        return cls(*(np.concatenate([getattr(x, f) for x in parts]) for f in ("A", "b", "cold", "group", "level", "rate")))


# ----------------------------------------------------------------------------- label windows
def label_windows(x: Interactions, p: HybridParams) -> list[tuple[Interactions, sp.csr_matrix]]:
    """(history, labels) pairs carved out of the training occasions, newest usable first."""
    out: list[tuple[Interactions, sp.csr_matrix]] = []
    if p.label_mode == "last_basket":
        last = x.member_last_age()
        is_label = x.age_days == last[x.member]
        shift = last[x.member]
        out.append(_carve(x, is_label, shift, x.as_of))
        return out
    holidays = [h for h in p.holidays]
    offset = 0
    max_age = int(x.age_days.max(initial=0))
    while len(out) < p.label_windows and (offset + 1) * p.label_days < max_age:
        lo, hi = offset * p.label_days, (offset + 1) * p.label_days  # ages in (lo, hi]
        start, end = x.as_of - timedelta(days=hi), x.as_of - timedelta(days=lo)
        offset += 1
        margin = timedelta(days=p.holiday_margin_days)
        if any(start - margin < h < end + margin for h in holidays):
            continue
        is_label = (x.age_days > lo) & (x.age_days <= hi)
        out.append(_carve(x, is_label, np.full(len(x.age_days), hi), start, before=x.age_days > hi))
    return out


def _carve(
    x: Interactions, is_label: np.ndarray, shift: np.ndarray, as_of: date, before: np.ndarray | None = None
) -> tuple[Interactions, sp.csr_matrix]:
    hist = ~is_label if before is None else before
    history = Interactions(
        x.members, x.products, x.member[hist], x.product[hist], (x.age_days[hist] - shift[hist]).astype(np.int32),
        x.quantity[hist], x.amount[hist], as_of,
    )
    labels = sp.csr_matrix(
        (np.ones(int(is_label.sum()), np.float32), (x.member[is_label], x.product[is_label])), shape=x.shape
    )
    labels.data[:] = 1.0
    return history, labels


def _id_prefix_codes(ids: np.ndarray, n: int) -> np.ndarray:
    """Codes of the first ``n`` characters of product ids that look like retail barcodes (EAN-13 /
    GS1: 12 digits or more), whose prefixes name the maker and, longer, the product line; other ids
    stay unknown (-1)."""
    prefix = np.array([i[:n] if len(i) >= 12 else "" for i in ids], dtype=object)
    return Tag.from_values(prefix).codes


# ----------------------------------------------------------------------------- the model
class Hybrid(Recommender):
    """The default model for both directions (see the module docstring)."""

    name = "hybrid"
    Params = HybridParams
    # 2: price-band and recent-category audience features; 3: product-level audience terms;
    # 4: product-line and brand / category kNN audience features
    state_version = 4

    def _tags(self, data: TrainData) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Category, brand and product-line codes of every product (brand and line: ``None`` when
        unknown)."""
        cat = data.product_tags.get("category")
        brand = data.product_tags.get("brand")
        item_cat = cat.codes if cat is not None else np.zeros(data.n_products, np.int32)
        item_brand = brand.codes if brand is not None and (brand.codes >= 0).any() else None
        ids = data.interactions.products.external_ids.astype(str)
        if item_brand is None and self.params.brand_from_id_prefix:
            item_brand = _id_prefix_codes(ids, self.params.brand_from_id_prefix)
        item_line = _id_prefix_codes(ids, self.params.line_from_id_prefix) if self.params.line_from_id_prefix else None
        return item_cat, item_brand, item_line

    def _fit(self, data: TrainData) -> None:
        p = self.params
        item_cat, item_brand, item_line = self._tags(data)
        rng = np.random.default_rng(p.seed)
        # the audience samples draw from their own stream: a change to the picks candidates
        # (how many negatives they draw) must not reshuffle the audience model's examples
        audience_rng = np.random.default_rng([p.seed, 1])
        keep_cols = [j for j, f in enumerate(PAIR_FEATURES) if f not in set(p.drop_features)]
        X_parts, y_parts, examples = [], [], []
        windows = label_windows(data.interactions, p)
        if not windows:
            raise ValueError("not enough history for a label window; lower label_days or add data")
        # The final state (everything before the cut-off) depends on nothing learnt here, and the
        # ranker and the audience models on nothing of each other: they run side by side (each is
        # deterministic on its own, so the model is the same as one built in sequence). BLAS stays
        # at one thread for the whole fit, so no worker's limit can lapse inside another's.
        with threadpool_limits(1, "blas"), ThreadPoolExecutor(2) as pool:
            lightgbm = pool.submit(importlib.import_module, "lightgbm")
            final = pool.submit(build_state, data.interactions, p, item_cat, item_brand, data.product_tags, item_line)
            for w, (history, labels) in enumerate(windows):
                s = build_state(history, p, item_cat, item_brand, data.product_tags, item_line)
                users = np.where(np.diff(labels.indptr) > 0)[0]
                users = users[np.diff(s.counts.indptr)[users] > 0]  # members with a history to learn from
                r, c = self._candidates(s, users)
                y = _gather(labels, users[r], c) > 0
                keep = y | (rng.random(len(y)) < p.negative_rate)
                X_parts.append(pair_features(s, users[r[keep]], c[keep])[:, keep_cols])
                y_parts.append(y[keep])
                if p.audiences:
                    examples.append(self._audience_examples(s, labels, audience_rng, window=w))
            ex = AudienceExamples.concat(examples) if p.audiences else None
            self.audience_w = self.audience_g = self.audience_b = None  # set by _fit_audience
            audiences = pool.submit(self._fit_audience, ex) if ex is not None else None
            X, y = np.vstack(X_parts), np.concatenate(y_parts)
            classifier = lightgbm.result().LGBMClassifier(
                n_estimators=p.n_estimators, learning_rate=p.learning_rate, num_leaves=p.num_leaves,
                min_child_samples=p.min_child_samples, subsample=0.8, subsample_freq=1,
                random_state=p.seed, n_jobs=max(p.num_threads, 1), verbose=-1,
                deterministic=True, force_row_wise=True,
            )
            classifier.fit(X, y)
            self.ranker = _BoosterClassifier(classifier.booster_)
            self.keep_cols = np.asarray(keep_cols, dtype=np.int64)
            self.training_summary = {
                "label_windows": len(windows), "ranker_rows": int(len(y)), "ranker_positive_rate": float(y.mean()),
            }
            if audiences is not None and ex is not None:
                audiences.result()
                self.training_summary.update({
                    "audience_rows_sold": int((~ex.cold).sum()), "audience_rows_never_sold": int(ex.cold.sum()),
                })
            self.state = final.result()

    # -- picks
    def _candidates(self, s: FeatureState, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p = self.params
        sub = s.counts[users]
        rows = [np.repeat(np.arange(len(users)), np.diff(sub.indptr))]
        cols = [sub.indices.astype(np.int64)]
        n_pop = min(p.candidates_popular, s.n_products)
        top_pop = np.argsort(-s.buyers, kind="stable")[:n_pop]
        rows.append(np.repeat(np.arange(len(users)), n_pop))
        cols.append(np.tile(top_pop, len(users)))
        n_cf = min(p.candidates_cf, s.n_products - 1)
        if n_cf > 0:
            # one thread: FAISS brings its own OpenMP runtime, whose spinning threads would fight
            # LightGBM's (and a parallel next-basket run's) for the cores
            with threadpool_limits(1):
                _, top = s.cf_index().search(np.ascontiguousarray(s.user_factors[users]), n_cf)
            rows.append(np.repeat(np.arange(len(users)), n_cf))
            cols.append(top.ravel().astype(np.int64))
        key = unique_ints(np.concatenate(rows).astype(np.int64) * s.n_products + np.concatenate(cols))
        return key // s.n_products, key % s.n_products

    def _score_candidates(self, members: np.ndarray) -> sp.csr_matrix:
        s = self.state
        r, c = self._candidates(s, members)
        prob = self.ranker.predict_proba(pair_features(s, members[r], c)[:, self.keep_cols])[:, 1]
        return sp.csr_matrix((prob.astype(np.float32), (r, c)), shape=(len(members), s.n_products))

    def _score_items(self, members: np.ndarray) -> np.ndarray:
        cand = self._score_candidates(members).tocoo()
        out = np.full(cand.shape, NEG_INF, dtype=np.float32)
        out[cand.row, cand.col] = cand.data
        return out

    def pick_probabilities(self, members: np.ndarray, products: np.ndarray) -> np.ndarray:
        """Probability that each (member, product) pair is bought in a label-window-long period."""
        s = self.state
        return self.ranker.predict_proba(pair_features(s, members, products)[:, self.keep_cols])[:, 1]

    # -- audiences
    def _audience_examples(
        self, s: FeatureState, labels: sp.csr_matrix, rng: np.random.Generator, window: int = 0
    ) -> AudienceExamples:
        """Each sampled product's buyers in the label window and ``audience_negatives`` random
        members per buyer, with their features on the window's history."""
        p = self.params
        buyers = labels.tocsc()
        n_buyers = np.diff(buyers.indptr)
        warm = np.diff(s.counts_csc.indptr) > 0
        bought = n_buyers > 0
        # sold and never-sold products are sampled apart: the never-sold model must not starve
        groups = [np.where(bought & warm)[0], np.where(bought & ~warm)[0]]
        products = np.concatenate([
            rng.choice(g, p.audience_max_products, replace=False) if len(g) > p.audience_max_products else g
            for g in groups
        ])
        rows, cols, ys, cold = [], [], [], []
        n_members = s.n_members
        for j in products:
            pos = buyers.indices[buyers.indptr[j] : buyers.indptr[j + 1]]
            neg = rng.integers(0, n_members, size=p.audience_negatives * len(pos))
            neg = neg[~np.isin(neg, pos)]
            rows.append(np.concatenate([pos, neg]))
            cols.append(np.full(len(pos) + len(neg), j))
            ys.append(np.r_[np.ones(len(pos)), np.zeros(len(neg))])
            cold.append(np.full(len(pos) + len(neg), not warm[j]))
        n_pos = float(n_buyers[products].sum())
        rate = p.audience_negatives * n_pos / max(n_members * len(products) - n_pos, 1.0)
        members, items = np.concatenate(rows), np.concatenate(cols)
        return AudienceExamples(
            A=audience_pair_features(s, members, items), b=np.concatenate(ys), cold=np.concatenate(cold),
            group=items + window * s.n_products, level=product_level(s, items),
            rate=np.full(len(items), rate),
        )

    def _fit_audience(self, ex: AudienceExamples) -> None:
        """Two logistic models: one for products with sales, one for never-sold products, whose
        buyers follow other signals (category affinity, activity, trying new products).

        The sold-product model ranks members *within* a product: its weights come from a
        logistic regression with one intercept per product (fixed effects), so they are not
        spent on telling popular products from slow ones. A second, two-parameter-plus-bias fit
        then sets its level — the ranking score's scale and the product's past popularity
        (:func:`product_level`) — so that it stays a calibrated probability."""
        p = self.params
        n_f = ex.A.shape[1]
        w = np.zeros((2, n_f), np.float32)
        g = np.zeros((2, ex.level.shape[1]), np.float32)
        bias = np.zeros(2, np.float32)
        rate = float(np.mean(ex.rate))
        warm = ~ex.cold
        if warm.sum() >= 50 and len(np.unique(ex.b[warm])) == 2:
            rank_w = _logistic_within(ex.A[warm], ex.b[warm], ex.group[warm], p.audience_l2)
            score = ex.A[warm] @ rank_w
            cal, bias[0] = _logistic(np.column_stack([score, ex.level[warm]]), ex.b[warm], p.audience_l2, rate)
            w[0], g[0] = cal[0] * rank_w, cal[1:]
        else:
            warm = np.ones(len(ex.b), dtype=bool)
            w[0], bias[0] = _logistic(ex.A, ex.b, p.audience_l2, rate)
        cold_cols = np.array([f in p.cold_audience_features for f in AUDIENCE_FEATURES])
        rows = ex.cold
        if rows.sum() < 50 or len(np.unique(ex.b[rows])) < 2:
            rows = np.ones(len(ex.b), dtype=bool)  # too few cold examples: learn from all products
        w[1, cold_cols], bias[1] = _logistic(ex.A[rows][:, cold_cols], ex.b[rows], p.audience_l2, rate)
        self.audience_w, self.audience_g, self.audience_b = w, g, bias

    def _score_members(self, products: np.ndarray) -> np.ndarray:
        """Audience logits ``(len(products), n_members)``: the sold-product model for products
        with sales, the never-sold one for the others, each plus its product-level offset."""
        if self.audience_w is None:
            raise RecsysError("this hybrid model was fitted with audiences = false: it ranks products for "
                              "members only; train it with audiences = true to build audiences")
        products = np.asarray(products, dtype=np.int64)
        out = np.empty((len(products), self.state.n_members), dtype=np.float32)
        warm = np.diff(self.state.counts_csc.indptr)[products] > 0
        offset = (self.audience_g @ product_level(self.state, products).T + self.audience_b[:, None]).astype(np.float32)
        for model, sel in ((0, np.flatnonzero(warm)), (1, np.flatnonzero(~warm))):
            if len(sel):
                out[sel] = audience_logits(self.state, products[sel], self.audience_w[model])
                out[sel] += offset[model, sel][:, None]
        return out

    def purchase_probability(self, scores: np.ndarray) -> np.ndarray:
        """Audience scores (logits) -> calibrated purchase probabilities in a label window."""
        return 1.0 / (1.0 + np.exp(-np.asarray(scores, dtype=np.float64)))

    def _item_vectors(self) -> np.ndarray:
        return self.state.item_factors

    # -- persistence
    def _state(self) -> dict[str, Any]:
        s = self.state
        out: dict[str, Any] = {
            "ranker": self.ranker.booster_.model_to_string(),
            "keep_cols": self.keep_cols, "audience_w": self.audience_w, "audience_g": self.audience_g,
            "audience_b": self.audience_b, "training_summary": self.training_summary,
        }
        for f in ("counts", "last_age", "recency14", "member_cat", "member_brand", "knn", "user_factors",
                  "item_factors", "item_cat", "item_brand", "buyers", "occasions", "recent_pop", "rebuy_rate",
                  "member_days", "member_last", "member_max", "member_occ", "member_repeat", "member_early",
                  "member_cat_recent", "member_band", "item_band", "item_line", "member_line",
                  "brand_knn", "cat_knn"):
            v = getattr(s, f)
            if v is not None:
                out[f"s_{f}"] = v
        out["s_span"] = s.span
        return out

    def _set_state(self, st: dict[str, Any]) -> None:
        import lightgbm as lgb

        booster = lgb.Booster(model_str=st["ranker"])
        self.ranker = _BoosterClassifier(booster)
        self.keep_cols = st["keep_cols"]
        self.audience_w, self.audience_g, self.audience_b = st["audience_w"], st["audience_g"], st["audience_b"]
        self.training_summary = st.get("training_summary", {})
        g = {k[2:]: v for k, v in st.items() if k.startswith("s_")}
        mb, ml = g.get("member_brand"), g.get("member_line")
        self.state = FeatureState(
            counts=g["counts"], counts_csc=g["counts"].tocsc(), last_age=g["last_age"], recency14=g["recency14"],
            member_cat=g["member_cat"], member_cat_csc=g["member_cat"].tocsc(),
            member_brand=mb, member_brand_csc=mb.tocsc() if mb is not None else None,
            member_line=ml, member_line_csc=ml.tocsc() if ml is not None else None,
            brand_knn=g.get("brand_knn"), cat_knn=g["cat_knn"],
            knn=g["knn"], user_factors=g["user_factors"], item_factors=g["item_factors"],
            item_cat=g["item_cat"], item_brand=g.get("item_brand"), item_line=g.get("item_line"),
            span=float(g["span"]),
            buyers=g["buyers"], occasions=g["occasions"], recent_pop=g["recent_pop"],
            rebuy_rate=g["rebuy_rate"], member_days=g["member_days"], member_last=g["member_last"],
            member_max=g["member_max"], member_occ=g["member_occ"], member_repeat=g["member_repeat"],
            member_early=g["member_early"], member_cat_recent=g["member_cat_recent"].tocsc(),
            member_band=g["member_band"], item_band=g["item_band"],
        )


def _logistic_within(A: np.ndarray, b: np.ndarray, group: np.ndarray, l2: float,
                     max_iter: int = 50, tol: float = 1e-8) -> np.ndarray:
    """Weights of a logistic regression with one free intercept per group (a product): only
    differences between members of the same product inform them. Raw-feature scale.

    The objective is scikit-learn's ``LogisticRegression(C=1/l2, fit_intercept=False)`` over the
    standardised features plus one-hot group columns (every coefficient, intercepts included,
    under the L2 penalty), solved by Newton's method: the Hessian's intercept block is diagonal,
    so each step is a ``d x d`` solve (Schur complement) and costs a few passes over the rows,
    where a general solver needs hundreds of passes for thousands of intercepts."""
    mean, std = A.mean(axis=0), A.std(axis=0) + 1e-6
    X = (A - mean) / std
    y = np.asarray(b, dtype=np.float64)
    _, inv = np.unique(group, return_inverse=True)
    n_groups, d = int(inv.max()) + 1, X.shape[1]
    member_of = sp.csr_matrix((np.ones(len(inv)), (inv, np.arange(len(inv)))), shape=(n_groups, len(inv)))
    w, a = np.zeros(d), np.zeros(n_groups)

    def objective(w: np.ndarray, a: np.ndarray) -> tuple[float, np.ndarray]:
        z = X @ w + a[inv]
        return float(np.logaddexp(0.0, z).sum() - y @ z + 0.5 * l2 * (w @ w + a @ a)), z

    f, z = objective(w, a)
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-z))
        r, h = p - y, p * (1.0 - p)
        gw, ga = X.T @ r + l2 * w, member_of @ r + l2 * a
        hx = X * h[:, None]
        hww = X.T @ hx + l2 * np.eye(d)
        hwa = np.asarray(member_of @ hx)  # (groups, d)
        diag = np.asarray(member_of @ h).ravel() + l2
        schur = hww - hwa.T @ (hwa / diag[:, None])
        dw = np.linalg.solve(schur, gw - hwa.T @ (ga / diag))
        da = (ga - hwa @ dw) / diag
        decrement = float(gw @ dw + ga @ da)
        step = 1.0
        while True:  # backtracking: a full Newton step can overshoot far from the optimum
            f_new, z_new = objective(w - step * dw, a - step * da)
            if f_new <= f - 1e-4 * step * decrement or step < 1e-8:
                break
            step *= 0.5
        w, a, f, z = w - step * dw, a - step * da, f_new, z_new
        if decrement < tol * len(y):
            break
    return (w / std).astype(np.float32)


def _logistic(A: np.ndarray, b: np.ndarray, l2: float, rate: float) -> tuple[np.ndarray, float]:
    """Weights and bias on raw features; the bias undoes the negative sampling (``rate``) so that
    sigmoid(score) is a probability for the whole population."""
    from sklearn.linear_model import LogisticRegression

    mean, std = A.mean(axis=0), A.std(axis=0) + 1e-6
    lr = LogisticRegression(C=1.0 / l2, max_iter=1000)
    lr.fit((A - mean) / std, b)
    coef = lr.coef_.ravel()
    bias = float(lr.intercept_[0] - (coef * mean / std).sum() + np.log(rate))
    return (coef / std).astype(np.float32), bias


class _BoosterClassifier:
    """The one method of LGBMClassifier the model uses, over the fitted or loaded Booster.

    Scores on one thread. Every caller already runs it beside other work — pre-ranking beside the
    audience evaluation, the next-basket process beside the training run, requests in the server's
    event loop — and LightGBM's OpenMP threads on top of those oversubscribe the cores: on 2 cores,
    ``recsys train`` spent ~170 CPU-seconds with two prediction threads and ~140 with one, for the
    same predictions (a tree ensemble's output does not depend on the thread count).
    """

    def __init__(self, booster: Any):
        self.booster_ = booster

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        p = self.booster_.predict(X, num_threads=1)
        return np.column_stack([1 - p, p])
