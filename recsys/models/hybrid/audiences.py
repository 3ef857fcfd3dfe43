"""The hybrid's audience models: logistic regressions over member features for a product, one for
products with sales and one for never-sold products, trained on the label windows with sampled
negatives and corrected for the sampling, so their scores are calibrated purchase probabilities.

:func:`audience_pair_features` computes the features for sampled (member, product) pairs (what
the models learn from); :func:`audience_logits` scores a block of products against every member
with the same features, without materialising them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from recsys.models.hybrid.params import HybridParams
from recsys.models.hybrid.state import (
    FeatureState,
    cat_band_codes,
    cold_factors,
    gather,
    knn_affinity,
    pair_dots,
)

AUDIENCE_FEATURES = (
    "log_count", "log_category_count", "category_share", "log_member_occ", "log_member_days",
    "log_member_last_age", "cf", "log_knn", "member_repeat_share", "log_brand_count",
    "log_count_x_recency", "log_category_x_occ", "log_early_adoptions", "early_adoption_share",
    "band_share", "log_category_recent", "log_line_count", "log_brand_knn", "log_category_knn",
    "cat_band_share", "log_member_recent",
)



@dataclass(frozen=True)
class ProductSide:
    """What the audience models read of the products they score, one entry per product: gathered
    from product rows of the state (:meth:`of_rows`) or from attributes alone, for a product in no
    row (:meth:`of_attributes`), so both are scored by one code path."""

    cat: np.ndarray  # category codes
    band: np.ndarray  # price-band codes (-1 unknown)
    cat_band: np.ndarray | None  # (category, price band) codes (None: the state has no bands)
    brand: np.ndarray | None  # brand codes (-1 unknown; None: the state has no brands)
    line: np.ndarray | None  # product-line codes (None: left out)
    factors: np.ndarray  # (k, f) ALS product vectors
    level: np.ndarray  # (k, 2) product_level
    warm: np.ndarray  # sold in the history (the sold-product model scores those)
    rows: np.ndarray | None  # product rows, for the terms of the member's own purchases; None: none

    @classmethod
    def of_rows(cls, s: FeatureState, products: np.ndarray, with_line: bool = True) -> ProductSide:
        i = np.atleast_1d(np.asarray(products, dtype=np.int64))
        return cls(
            cat=s.item_cat[i], band=s.item_band[i],
            cat_band=s.item_cat_band[i] if s.item_cat_band is not None else None,
            brand=s.item_brand[i] if s.item_brand is not None else None,
            line=s.item_line[i] if with_line and s.item_line is not None else None,
            factors=s.item_factors[i], level=product_level(s, i),
            warm=np.diff(s.counts_csc.indptr)[i] > 0, rows=i,
        )

    @classmethod
    def of_attributes(
        cls, s: FeatureState, cat: np.ndarray, band: np.ndarray, brand: np.ndarray, keys: tuple[str, ...]
    ) -> ProductSide:
        """Products in no row, by category, price-band and brand codes (-1 unknown): never sold,
        no product line, the ALS vector a never-sold product of those attributes gets
        (:func:`~recsys.models.hybrid.state.cold_factors`; ``keys``: the product tags the state
        was built with)."""
        cat, band, brand = (np.atleast_1d(np.asarray(a, dtype=np.int64)) for a in (cat, band, brand))
        n_bands = int(s.item_band.max()) + 1
        return cls(
            cat=cat, band=band,
            cat_band=cat_band_codes(cat, band, n_bands) if s.item_cat_band is not None else None,
            brand=brand if s.item_brand is not None else None, line=None,
            factors=cold_factors(s, cat, band, keys), level=np.zeros((len(cat), 2), np.float32),
            warm=np.zeros(len(cat), dtype=bool), rows=None,
        )

    def take(self, sel: np.ndarray) -> ProductSide:
        def part(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[sel]

        return ProductSide(self.cat[sel], self.band[sel], part(self.cat_band), part(self.brand), part(self.line),
                           self.factors[sel], self.level[sel], self.warm[sel], part(self.rows))

    def __len__(self) -> int:
        return len(self.cat)


def audience_logits(s: FeatureState, side: ProductSide, w: np.ndarray) -> np.ndarray:
    """``(len(side), n_members)`` float32: ``w @ features`` for each product against every
    member, the features being :func:`audience_pair_features`'s, without materialising them.

    The audience score is linear in its features, and most features depend on the member and on
    one *group* of the product (its category, brand, product line or price band) rather than on
    the product itself; others are zero except where the member bought the product or one of its
    neighbours. So the score is a member term, plus one dense row per distinct group in the
    block (copied to its products), plus a factor product, plus sparse terms added where they are
    non-zero: a few dense passes per block instead of one per feature. Features whose weight is
    zero (the never-sold model leaves most of them out) are not computed at all. A side without
    product lines (``ProductSide.of_rows(..., with_line=False)``) scores the products as if their
    line were unknown (a product described by its category, price and brand alone); one without
    rows (``of_attributes``) has no purchases or neighbours of its own."""
    wt = {f: float(w[j]) for j, f in enumerate(AUDIENCE_FEATURES)}
    occ = s.member_occ
    log_occ = np.log1p(occ)
    inv_occ = 1.0 / np.maximum(occ, 1.0)
    early = s.member_early
    member = (
        wt["log_member_occ"] * log_occ + wt["log_member_days"] * np.log1p(s.member_days)
        + wt["log_member_last_age"] * np.log1p(np.minimum(s.member_last, 1e4))
        + wt["member_repeat_share"] * s.member_repeat + wt["log_early_adoptions"] * np.log1p(early)
        + wt["early_adoption_share"] * early * inv_occ + wt["log_member_recent"] * np.log1p(s.member_recent)
    ).astype(np.float32)
    out = np.empty((len(side), s.n_members), dtype=np.float32)
    if wt["cf"] != 0.0:
        np.matmul(wt["cf"] * side.factors, s.user_factors.T, out=out)
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

    add_group(side.cat, category_term)
    if side.brand is not None and (wt["log_brand_count"] or wt["log_brand_knn"]):
        add_group(side.brand, brand_term)
    if side.line is not None and s.member_line_csc is not None and wt["log_line_count"]:
        add_group(side.line, lambda g: wt["log_line_count"] * np.log1p(rows(s.member_line_csc, g)))
    if wt["band_share"]:
        add_group(side.band,
                  lambda g: (wt["band_share"] * s.member_band[:, g].T * inv_occ).astype(np.float32))
    if wt["cat_band_share"] and side.cat_band is not None and s.member_cat_band_csc is not None:
        n_bands = int(s.item_band.max()) + 1

        def cat_band_term(g: np.ndarray) -> np.ndarray:
            """The member's share of their purchases in the category that fall in this price band."""
            in_cat = np.maximum(rows(s.member_cat_csc, g // n_bands), 1.0)
            return (wt["cat_band_share"] * rows(s.member_cat_band_csc, g) / in_cat).astype(np.float32)

        add_group(side.cat_band, cat_band_term)
    if side.rows is None:  # a product in no row: nobody bought it or a neighbour of it
        return out
    products = side.rows
    # sparse terms: the member bought the product (count, recency) or one of its neighbours (kNN);
    # the (member, product) pairs of a column slice are distinct, so a fancy-index add is exact
    if wt["log_count"] or wt["log_count_x_recency"]:
        cnt = s.counts_csc[:, products].tocoo()
        rec = 1.0 / (1.0 + gather(s.last_age, cnt.row, products[cnt.col]) / 30.0)
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
        return np.where(idx >= 0, gather(mat, u, np.maximum(idx, 0)), 0.0).astype(np.float32)

    def knn_pairs(table: str, idx: np.ndarray) -> np.ndarray:
        if getattr(s, table) is None:
            return np.zeros(len(u), np.float32)
        return np.where(idx >= 0, knn_affinity(s, u, np.maximum(idx, 0), table), 0.0).astype(np.float32)

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
    out[:, 6] = pair_dots(s, u, i)
    out[:, 7] = np.log1p(knn_affinity(s, u, i))
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
    if s.item_cat_band is not None and s.member_cat_band_csc is not None:
        cb = s.item_cat_band[i]
        in_cat = np.maximum(np.where(cats >= 0, ucat, 0.0), 1.0)
        out[:, 19] = np.where(cb >= 0, gather(s.member_cat_band_csc.tocsr(), u, np.maximum(cb, 0)), 0.0) / in_cat
    else:
        out[:, 19] = 0.0
    out[:, 20] = np.log1p(s.member_recent[u])
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


def audience_examples(
    s: FeatureState, labels: sp.csr_matrix, rng: np.random.Generator, p: HybridParams, window: int = 0
) -> AudienceExamples:
    """Each sampled product's buyers in the label window and ``audience_negatives`` random
    members per buyer, with their features on the window's history."""
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

def fit_audience(ex: AudienceExamples, p: HybridParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two logistic models: one for products with sales, one for never-sold products, whose
    buyers follow other signals (category affinity, activity, trying new products).

    The sold-product model ranks members *within* a product: its weights come from a
    logistic regression with one intercept per product (fixed effects), so they are not
    spent on telling popular products from slow ones. A second, two-parameter-plus-bias fit
    then sets its level — the ranking score's scale and the product's past popularity
    (:func:`product_level`) — so that it stays a calibrated probability.

    Returns the weights ``(2, n_features)``, the product-level weights ``(2, 2)`` and the biases
    ``(2,)``, row 0 for sold products and row 1 for never-sold ones.

    With ``audience_product_weight_power`` the ranking fits weigh the rows of a product with few
    buyers up (the level fits stay unweighted: they set probabilities for the population)."""
    n_f = ex.A.shape[1]
    w = np.zeros((2, n_f), np.float32)
    g = np.zeros((2, ex.level.shape[1]), np.float32)
    bias = np.zeros(2, np.float32)
    rate = float(np.mean(ex.rate))
    warm = ~ex.cold
    warm_cols = np.array([f not in p.warm_audience_exclude for f in AUDIENCE_FEATURES])
    # each row's weight in the ranking fits: 1, or with audience_product_weight_power a, 1 / (the
    # product's buyers in the window) ** a -- at 1 every product counts alike, as in the evaluation
    # (recall averaged over products); scaled to mean 1 within each fit (the L2 penalty's scale)
    _, ginv = np.unique(ex.group, return_inverse=True)
    n_pos = np.bincount(ginv, weights=ex.b)[ginv]
    row_w = np.maximum(n_pos, 1.0) ** -float(p.audience_product_weight_power)

    def weights(sel: np.ndarray) -> np.ndarray | None:
        if p.audience_product_weight_power == 0:
            return None
        return row_w[sel] / row_w[sel].mean()

    if warm.sum() >= 50 and len(np.unique(ex.b[warm])) == 2:
        # the rows and columns are read from ex.A a block at a time, never copied whole
        wrows, wcols = np.flatnonzero(warm), np.flatnonzero(warm_cols)
        rank_w = _logistic_within(ex.A, ex.b[warm], ex.group[warm], p.audience_l2, weight=weights(warm),
                                  rows=wrows, cols=wcols)
        score = np.concatenate([ex.A[np.ix_(wrows[lo : lo + LOGISTIC_BLOCK_ROWS], wcols)] @ rank_w
                                for lo in range(0, len(wrows), LOGISTIC_BLOCK_ROWS)])
        cal, bias[0] = _logistic(np.column_stack([score, ex.level[warm]]), ex.b[warm], p.audience_l2, rate)
        w[0, warm_cols], g[0] = cal[0] * rank_w, cal[1:]
    else:
        warm = np.ones(len(ex.b), dtype=bool)
        w[0, warm_cols], bias[0] = _logistic(ex.A[:, warm_cols], ex.b, p.audience_l2, rate)
    cold_cols = np.array([f in p.cold_audience_features for f in AUDIENCE_FEATURES])
    rows = ex.cold
    if rows.sum() < 50 or len(np.unique(ex.b[rows])) < 2:
        rows = np.ones(len(ex.b), dtype=bool)  # too few cold examples: learn from all products
    Ac, bc = ex.A[rows][:, cold_cols], ex.b[rows]
    if p.cold_audience_fit == "within":
        # weights from differences between members of the same product (they are logit slopes
        # already); only the level is then fitted. A never-sold product has no sales to set its
        # level from, so a second fit of the score's scale across products would learn how
        # products differ (and could even turn the ranking over): the scale stays as learnt.
        rank_c = _logistic_within(Ac, bc, ex.group[rows], p.audience_l2, weight=weights(rows))
        w[1, cold_cols], bias[1] = rank_c, _offset(Ac @ rank_c, bc, rate)
    else:
        w[1, cold_cols], bias[1] = _logistic(Ac, bc, p.audience_l2, rate)
    return w, g, bias

def audience_scores(
    s: FeatureState, products: np.ndarray | ProductSide, w: np.ndarray, g: np.ndarray, bias: np.ndarray,
    with_line: bool = True,
) -> np.ndarray:
    """Audience logits ``(len(products), n_members)``: the sold-product model for products
    with sales, the never-sold one for the others, each plus its product-level offset
    (``w``, ``g``, ``bias``: what :func:`fit_audience` returned). ``products``: product rows, or a
    :class:`ProductSide` (products described by attributes: ``ProductSide.of_attributes``)."""
    side = products if isinstance(products, ProductSide) else ProductSide.of_rows(s, products, with_line)
    out = np.empty((len(side), s.n_members), dtype=np.float32)
    offset = (g @ side.level.T + bias[:, None]).astype(np.float32)
    for model, sel in ((0, np.flatnonzero(side.warm)), (1, np.flatnonzero(~side.warm))):
        if len(sel):
            out[sel] = audience_logits(s, side.take(sel), w[model])
            out[sel] += offset[model, sel][:, None]
    return out


# rows of the standardised design a Newton pass of _logistic_within works on at a time: the
# features of every sampled pair (tens of millions at a million members) are never copied whole
# into float64 -- once standardised and once scaled by the Hessian weights, that was ~7 GB
LOGISTIC_BLOCK_ROWS = 1 << 20


def _logistic_within(A: np.ndarray, b: np.ndarray, group: np.ndarray, l2: float,
                     max_iter: int = 50, tol: float = 1e-8, weight: np.ndarray | None = None,
                     rows: np.ndarray | None = None, cols: np.ndarray | None = None) -> np.ndarray:
    """Weights of a logistic regression with one free intercept per group (a product): only
    differences between members of the same product inform them. Raw-feature scale.

    The objective is scikit-learn's ``LogisticRegression(C=1/l2, fit_intercept=False)`` over the
    standardised features plus one-hot group columns (every coefficient, intercepts included,
    under the L2 penalty), solved by Newton's method: the Hessian's intercept block is diagonal,
    so each step is a ``d x d`` solve (Schur complement) and costs a few passes over the rows,
    where a general solver needs hundreds of passes for thousands of intercepts. ``weight``: a
    weight per row (scikit-learn's ``sample_weight``); None, every row 1.

    ``rows`` / ``cols`` (indices): fit on ``A[rows][:, cols]`` (``b``, ``group`` and ``weight``
    given for those rows), read a block of :data:`LOGISTIC_BLOCK_ROWS` rows at a time rather than copied."""
    rows = np.arange(len(A)) if rows is None else np.asarray(rows)
    cols = np.arange(A.shape[1]) if cols is None else np.asarray(cols)
    blocks = [slice(lo, min(lo + LOGISTIC_BLOCK_ROWS, len(rows))) for lo in range(0, len(rows), LOGISTIC_BLOCK_ROWS)]
    total = np.zeros(len(cols))
    for sl in blocks:
        total += A[np.ix_(rows[sl], cols)].sum(axis=0, dtype=np.float64)
    mean = total / max(len(rows), 1)
    sq = np.zeros(len(cols))
    for sl in blocks:
        sq += np.square(A[np.ix_(rows[sl], cols)] - mean).sum(axis=0)
    std = np.sqrt(sq / max(len(rows), 1)) + 1e-6

    def design(sl: slice) -> np.ndarray:
        """One block of the standardised features, float64."""
        return (A[np.ix_(rows[sl], cols)] - mean) / std

    y = np.asarray(b, dtype=np.float64)
    _, inv = np.unique(group, return_inverse=True)
    n_groups, d = int(inv.max()) + 1, len(cols)
    w, a = np.zeros(d), np.zeros(n_groups)

    sw = np.ones(len(y)) if weight is None else np.asarray(weight, dtype=np.float64)

    def objective(w: np.ndarray, a: np.ndarray) -> tuple[float, np.ndarray]:
        z = a[inv]
        for sl in blocks:
            z[sl] += design(sl) @ w
        return float(sw @ (np.logaddexp(0.0, z) - y * z) + 0.5 * l2 * (w @ w + a @ a)), z

    f, z = objective(w, a)
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-z))
        r, h = sw * (p - y), sw * p * (1.0 - p)
        gw, hww, hwa = l2 * w, l2 * np.eye(d), np.zeros((n_groups, d))
        for sl in blocks:
            X = design(sl)
            gw += X.T @ r[sl]
            hx = X * h[sl, None]
            hww += X.T @ hx
            # each group's sum of h * x over its rows in the block
            hwa += sp.csr_matrix((np.ones(len(hx)), (inv[sl], np.arange(len(hx)))), shape=(n_groups, len(hx))) @ hx
        ga = np.bincount(inv, weights=r, minlength=n_groups) + l2 * a
        diag = np.bincount(inv, weights=h, minlength=n_groups) + l2
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


def _offset(score: np.ndarray, b: np.ndarray, rate: float, max_iter: int = 100) -> float:
    """The intercept of a logistic regression whose slope is fixed (``sigmoid(score + c)``: the
    c where the expected positives equal the observed ones), plus the sampling correction
    ``log(rate)`` as in :func:`_logistic`."""
    s, y = np.asarray(score, np.float64), float(np.sum(b))
    c = float(np.log(max(y, 1e-9) / max(len(s) - y, 1e-9)) - np.median(s))
    for _ in range(max_iter):  # Newton on the concave log-likelihood in c
        q = 1.0 / (1.0 + np.exp(-(s + c)))
        step = (y - q.sum()) / max(float((q * (1.0 - q)).sum()), 1e-12)
        c += step
        if abs(step) < 1e-10:
            break
    return float(c + np.log(rate))


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

