"""The hybrid's feature state: everything its pair features are computed from, for one history
(the training history, or the history before a label window), and the sparse look-ups over it."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from recsys.columns import BARCODE_MIN_LENGTH
from recsys.interactions import Interactions
from recsys.models.base import Tag
from recsys.models.factorization import attribute_vectors, item_similarity
from recsys.models.hybrid.params import HybridParams


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
    # members x (category, price band) pairs, purchase occasions: a member's price level within a category
    member_cat_band_csc: sp.csc_matrix | None
    item_cat_band: np.ndarray | None  # product -> its (category, price band) pair, -1 unknown
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
    # the product vectors' inverted-file index for the ALS candidates (a serialised FAISS
    # IndexIVFFlat and its recsys.ann meta), built with the state above
    # ``params.cf_exact_max_products``; None: the candidates are searched exactly
    cf_ivf: np.ndarray | None = None
    cf_ivf_meta: dict[str, Any] | None = None
    _cf_index: Any = field(default=None, repr=False, compare=False)
    _csc: dict[str, sp.csc_matrix] = field(default_factory=dict, repr=False, compare=False)

    @cached_property
    def member_recent(self) -> np.ndarray:
        """Recency-weighted purchases (14-day half-life) per member: how much they buy lately,
        derived from ``recency14`` on first use (not saved)."""
        return np.asarray(self.recency14.sum(axis=1)).ravel().astype(np.float32)

    def csc(self, name: str) -> sp.csc_matrix:
        """A column-major copy of a products x columns table (``knn``, ``cat_knn``,
        ``brand_knn``), made on first use. A member's affinity to a few columns is
        ``counts_csc @ csc(name)[:, cols]``: it reads only the products those columns touch,
        where the row-major product reads all of ``counts`` (0.4 vs 9.8 ms for one column)."""
        if name not in self._csc:
            self._csc[name] = sp.csc_matrix(getattr(self, name))
        return self._csc[name]

    def cf_index(self) -> Any:
        """The :class:`recsys.ann.AnnIndex` the members' top products by ALS score (picks
        candidates) are searched in, made on first use: the state's inverted-file index when it
        has one, else an exact inner-product index over the product vectors."""
        if self._cf_index is None:
            import faiss

            from recsys.ann import AnnIndex

            if self.cf_ivf is not None and self.cf_ivf_meta is not None:
                index = faiss.deserialize_index(np.array(self.cf_ivf, dtype=np.uint8))
                self._cf_index = AnnIndex(index, "ivf", dict(self.cf_ivf_meta))
            else:
                index = faiss.IndexFlatIP(self.item_factors.shape[1])
                index.add(np.ascontiguousarray(self.item_factors, dtype=np.float32))
                self._cf_index = AnnIndex(index, "flat", {"n": self.n_products, "dim": self.item_factors.shape[1]})
        return self._cf_index

    def cf_top(self, members: np.ndarray, k: int) -> np.ndarray:
        """``(len(members), k)`` products of largest ALS score for each member (-1 where an
        approximate search found fewer), from :meth:`cf_index`; an inverted-file search probes
        the cells its calibration found for ``k``."""
        from recsys.ann import exact_top, ivf_nprobe

        ann = self.cf_index()
        q = np.ascontiguousarray(self.user_factors[members], dtype=np.float32)
        if ann.kind == "ivf":
            nprobe = ivf_nprobe(ann.meta, k)
            if nprobe is None:  # the calibration found no nprobe worth it: the exact answer
                return exact_top(self.item_factors, q, k, threads=1)[1]
            return ann.search(q, k, nprobe=nprobe)[1]
        return ann.search(q, k)[1]

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


def gather(m: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Values of a sparse matrix at (rows, cols) pairs, 0 where absent, without densifying.

    SciPy's element indexing searches each pair within its row; the global sorted keys this
    built before cost a pass over every stored entry per call and a cache miss per step of a
    search over all of them (1M members x 40 purchases, 5M pairs: experiments/bench_gather.py)."""
    m = m if sp.isspmatrix_csr(m) else sp.csr_matrix(m)
    if m.nnz == 0 or len(rows) == 0:
        return np.zeros(len(rows), dtype=np.float32)
    return np.asarray(m[np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)], dtype=np.float32).ravel()


# (member, product) pairs whose ALS vectors pair_dots gathers at a time: gathering both vectors
# of every pair at once took 2 x pairs x factors x 4 bytes (5.6 GB each for the 22M audience
# examples of a million members)
DOT_BLOCK_PAIRS = 1 << 18


def pair_dots(s: FeatureState, members: np.ndarray, products: np.ndarray) -> np.ndarray:
    """The ALS score (member vector . product vector) of each (member, product) pair, float32."""
    out = np.empty(len(members), dtype=np.float32)
    for lo in range(0, len(members), DOT_BLOCK_PAIRS):
        hi = lo + DOT_BLOCK_PAIRS
        out[lo:hi] = np.einsum("ij,ij->i", s.user_factors[members[lo:hi]], s.item_factors[products[lo:hi]])
    return out


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
    user_factors = np.asarray(als.user_factors, np.float32)
    cf_ivf, cf_ivf_meta = cf_candidate_index(item_factors, user_factors, params)
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
    item_cat_band = cat_band_codes(item_cat, item_band)
    member_cat_band = _sorted_group_matrix(counts, item_cat_band)
    member_brand = _sorted_group_matrix(counts, item_brand)
    member_line = _sorted_group_matrix(counts, item_line)
    span = float(max(int(x.age_days.max(initial=1)), 1))
    return FeatureState(
        counts=counts, counts_csc=counts.tocsc(), last_age=last_age, recency14=recency14,
        member_cat=member_cat, member_cat_csc=member_cat.tocsc(),
        member_cat_recent=_group_matrix(recency14, item_cat).tocsc(),
        member_band=np.asarray(_group_matrix(counts, item_band).todense(), dtype=np.float32),
        item_band=item_band,
        member_cat_band_csc=member_cat_band.tocsc() if member_cat_band is not None else None,
        item_cat_band=item_cat_band,
        member_brand=member_brand, member_brand_csc=member_brand.tocsc() if member_brand is not None else None,
        member_line=member_line, member_line_csc=member_line.tocsc() if member_line is not None else None,
        brand_knn=_group_knn(counts, knn_sim, item_brand) if member_brand is not None else None,
        cat_knn=_group_knn(counts, knn_sim, item_cat),
        knn=knn_sim,
        user_factors=user_factors, item_factors=item_factors, cf_ivf=cf_ivf, cf_ivf_meta=cf_ivf_meta,
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


def cf_candidate_index(
    item_factors: np.ndarray, user_factors: np.ndarray, params: HybridParams
) -> tuple[np.ndarray | None, dict[str, Any] | None]:
    """Above ``params.cf_exact_max_products`` products, an inverted-file index over the product
    vectors for the ALS candidates (:func:`recsys.ann.build_index`, k-means on one thread with
    the model's seed, so the same data gives the same index), with ``nprobe`` calibrated on a
    sample of the members' vectors to find ``candidates_cf`` products at the recall of
    :class:`recsys.ann.IndexSettings`; serialised (the saved model carries it, so a server
    searches exactly the cells training did). ``(None, None)`` below the threshold: exact.

    Why: the exact search scores every product for every member -- at a million members and
    100,000 products, 2 ms per member on one core, twice (the label window's candidates, then
    every member's lists) -- where the candidates only feed the ranker."""
    n = item_factors.shape[0]
    k = min(params.candidates_cf, n - 1)
    if n <= params.cf_exact_max_products or k <= 0:
        return None, None
    import faiss

    from recsys.ann import IndexSettings, build_index

    settings = IndexSettings(build_threads=1, calibration_ks=(k,))
    with threadpool_limits(1):
        ann = build_index(item_factors, "ivf", settings, queries=user_factors, seed=params.seed)
    meta = {key: v for key, v in ann.meta.items() if not key.endswith("_s")}  # no timings: same data, same state
    return faiss.serialize_index(ann.index), meta


def cat_band_codes(item_cat: np.ndarray, item_band: np.ndarray, n_bands: int | None = None) -> np.ndarray | None:
    """One code per (category, price band) pair a product has (-1 when either is unknown);
    ``n_bands``: the state's band count when coding products beyond its own (None: from
    ``item_band``, and None when no product has a band)."""
    if n_bands is None:
        if not (item_band >= 0).any():
            return None
        n_bands = int(item_band.max()) + 1
    return np.where((item_cat >= 0) & (item_band >= 0), item_cat.astype(np.int64) * n_bands + item_band, -1)


def cold_factors(s: FeatureState, cat: np.ndarray, band: np.ndarray, keys: tuple[str, ...]) -> np.ndarray:
    """``(len(cat), f)`` ALS vectors for products in no row, by category and price-band codes:
    exactly what :func:`build_state` gave a never-sold product of those codes
    (:func:`~recsys.models.factorization.attribute_vectors` over the same sold products, in the
    same order; ``keys``: which of ``category`` / ``price_band`` the state was built with)."""
    warm = np.diff(s.counts_csc.indptr) > 0
    n_warm, k = int(warm.sum()), len(cat)
    vectors = np.concatenate([s.item_factors[warm], np.zeros((k, s.item_factors.shape[1]), s.item_factors.dtype)])
    is_warm = np.r_[np.ones(n_warm, dtype=bool), np.zeros(k, dtype=bool)]
    codes = {"category": np.r_[s.item_cat[warm], cat], "price_band": np.r_[s.item_band[warm], band]}
    tags = {key: Tag(codes[key].astype(np.int32), ()) for key in keys if key in codes}
    return attribute_vectors(vectors, is_warm, tags)[n_warm:]


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



def knn_affinity(s: FeatureState, u: np.ndarray, i: np.ndarray, table: str = "knn", *,
                 product: Literal["cheaper", "every member", "own rows"] = "cheaper") -> np.ndarray:
    """sum over the member's history h of similarity(h, i), for each pair (``table``: a products x
    columns table of the state, the item-kNN similarity by default; ``i`` indexes its columns;
    ``product``: which of the two products below, the cheaper by default).

    ``history @ sim`` for the pairs' members is far larger than the pairs (tens of millions of
    entries for a few million pairs): it is computed a block of columns at a time, densely, and
    only the pairs are read from each block."""
    out = np.zeros(len(u), np.float32)
    if len(u) == 0:
        return out
    members, row = np.unique(u, return_inverse=True)
    cols, col = np.unique(i, return_inverse=True)
    sim_cols = s.csc(table)[:, cols]
    # Two ways to the same bits (each entry sums over the neighbours in the same order): every
    # member's row of ``counts_csc @ sim``, which costs the buyers of the columns' neighbours plus
    # a dense row per member, or the pairs' members' own rows of ``counts``, which costs their
    # purchases once per block of columns plus a dense row per member of theirs. The cheaper is
    # taken: the audience models' sampled pairs (many members, few per block) take the first, a
    # batch of pre-ranking or a request the second.
    own_block = max(1, _KNN_BLOCK_ENTRIES // len(members))
    own_cost = -(-len(cols) // own_block) * float(np.diff(s.counts.indptr)[members].sum()) + len(cols) * len(members)
    full_cost = float(np.diff(s.counts_csc.indptr)[sim_cols.indices].sum()) + len(cols) * s.n_members
    full = full_cost < own_cost if product == "cheaper" else product == "every member"
    history = s.counts_csc if full else s.counts[members]
    if full:
        row = members[row]
    block = max(1, int(_KNN_BLOCK_ENTRIES // max(history.shape[0], 1)))
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


def id_prefix_tag(ids: np.ndarray, n: int) -> Tag:
    """The first ``n`` characters of product ids that look like retail barcodes (EAN-13 / GS1: 12
    digits or more), whose prefixes name the maker and, longer, the product line; other ids stay
    unknown (-1). The labels are the prefixes (what a merchandiser names)."""
    prefix = np.array([i[:n] if len(i) >= BARCODE_MIN_LENGTH else "" for i in ids], dtype=object)
    return Tag.from_values(prefix)


def id_prefix_codes(ids: np.ndarray, n: int) -> np.ndarray:
    """:func:`id_prefix_tag`'s codes."""
    return id_prefix_tag(ids, n).codes



# the state's fields a saved model carries (the tables rebuilt on load are not saved), in this order
SAVED_FIELDS = (
    "counts", "last_age", "recency14", "member_cat", "member_brand", "knn", "user_factors",
    "item_factors", "item_cat", "item_brand", "buyers", "occasions", "recent_pop", "rebuy_rate",
    "member_days", "member_last", "member_max", "member_occ", "member_repeat", "member_early",
    "member_cat_recent", "member_band", "item_band", "item_line", "member_line",
    "brand_knn", "cat_knn", "member_cat_band_csc", "item_cat_band", "cf_ivf", "cf_ivf_meta",
)


def state_arrays(s: FeatureState) -> dict[str, Any]:
    """What a saved model keeps of a state: :data:`SAVED_FIELDS` that are set, then ``span``."""
    out: dict[str, Any] = {}
    for f in SAVED_FIELDS:
        v = getattr(s, f)
        if v is not None:
            out[f] = v
    out["span"] = s.span
    return out


def state_from_arrays(g: dict[str, Any]) -> FeatureState:
    """The state :func:`state_arrays` saved, with its column-major copies rebuilt."""
    mb, ml = g.get("member_brand"), g.get("member_line")
    return FeatureState(
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
        member_cat_band_csc=g.get("member_cat_band_csc"), item_cat_band=g.get("item_cat_band"),
        cf_ivf=g.get("cf_ivf"), cf_ivf_meta=g.get("cf_ivf_meta"),
    )
