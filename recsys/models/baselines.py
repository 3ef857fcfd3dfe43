"""Baselines every default model must beat. Each is small; the shared mechanics are in the base.

For audiences, ``activity`` (a member's purchase occasions) is the whole score of the
most-active-members baseline and, through the base's top-k, every audience's tie-breaker.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

from recsys.models.base import ModelParams, Recommender, Tag, TrainData

EPS = np.float32(1e-6)


def _scaled(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    top = float(x.max()) if x.size else 0.0
    return x / top if top > 0 else np.zeros_like(x)


def _activity(x: Any) -> np.ndarray:
    """How active each member is: purchase occasions (product-days), scaled to [0, 1]. This is
    the "most active members" audience, and every audience's tie-breaker."""
    return _scaled(np.bincount(x.member, minlength=len(x.members)).astype(np.float32))


def _dense_rows(m: sp.csr_matrix, rows: np.ndarray) -> np.ndarray:
    return np.asarray(m[rows].todense(), dtype=np.float32)


def _dense_cols(m: sp.csc_matrix, cols: np.ndarray) -> np.ndarray:
    return np.asarray(m[:, cols].T.todense(), dtype=np.float32)


class PopularityParams(ModelParams):
    by: Literal["buyers", "occasions", "recency"] = "buyers"
    half_life_days: float = 30.0


class Popularity(Recommender):
    """Global popularity for picks; the most active members for audiences."""

    name = "popular"
    Params = PopularityParams

    def _fit(self, data: TrainData) -> None:
        p = self.params
        x = data.interactions
        weighting = {"buyers": "binary", "occasions": "count", "recency": "recency"}[p.by]
        m = x.matrix(weighting, half_life_days=p.half_life_days)
        self.item_pop = _scaled(np.asarray(m.sum(axis=0)).ravel())
        self.activity = _activity(x)

    def _score_items(self, members: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.item_pop, (len(members), self.n_products))

    def _score_members(self, products: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.activity, (len(products), self.n_members))

    def _state(self) -> dict[str, Any]:
        return {"item_pop": self.item_pop, "activity": self.activity}

    def _set_state(self, s: dict[str, Any]) -> None:
        self.item_pop, self.activity = s["item_pop"], s["activity"]


class SegmentPopularityParams(ModelParams):
    segment_tag: str = "value_segment"
    smoothing: float = 10.0  # buyers borrowed from the global popularity for small segments


class SegmentPopularity(Recommender):
    """Popularity within the member's segment (e.g. RFM value segment), shrunk to the global one.

    Audiences: members of the segments where the product sells best, most active first.
    """

    name = "segment_popular"
    Params = SegmentPopularityParams

    def _fit(self, data: TrainData) -> None:
        seg = data.member_tags.get(self.params.segment_tag)
        if seg is None:
            seg = Tag(np.zeros(data.n_members, np.int32), ("all",))
        codes = np.where(seg.codes >= 0, seg.codes, len(seg.labels)).astype(np.int64)
        n_seg = len(seg.labels) + 1
        buyers = data.interactions.matrix("binary")
        onehot = sp.csr_matrix(
            (np.ones(len(codes), np.float32), (codes, np.arange(len(codes)))),
            shape=(n_seg, data.n_members),
        )
        seg_counts = np.asarray((onehot @ buyers).todense(), dtype=np.float32)  # segments x products
        seg_sizes = np.asarray(onehot.sum(axis=1)).ravel().astype(np.float32)
        glob = seg_counts.sum(axis=0) / max(float(seg_sizes.sum()), 1.0)
        a = self.params.smoothing
        self.seg_pop = ((seg_counts + a * glob) / (seg_sizes[:, None] + a)).astype(np.float32)
        self.member_seg = codes.astype(np.int32)
        self.activity = _activity(data.interactions)

    def _score_items(self, members: np.ndarray) -> np.ndarray:
        return self.seg_pop[self.member_seg[members]]

    def _score_members(self, products: np.ndarray) -> np.ndarray:
        share = self.seg_pop[:, products].T  # products x segments
        top = share.max(axis=1, keepdims=True)  # each product scaled on its own
        return np.divide(share, top, out=np.zeros_like(share), where=top > 0)[:, self.member_seg]

    def _state(self) -> dict[str, Any]:
        return {"seg_pop": self.seg_pop, "member_seg": self.member_seg, "activity": self.activity}

    def _set_state(self, s: dict[str, Any]) -> None:
        self.seg_pop, self.member_seg, self.activity = s["seg_pop"], s["member_seg"], s["activity"]


class TopFrequencyParams(ModelParams):
    recency_half_life_days: float | None = None  # None: plain counts of purchase days
    pad_with_popular: bool = True  # GP-TopFreq when true, P-TopFreq when false


class TopFrequency(Recommender):
    """Each member's own most frequently bought products (P-TopFreq), padded with the globally
    popular ones (GP-TopFreq); optionally recency-weighted. Audiences: the product's most
    frequent buyers, then the most active members."""

    name = "top_frequency"
    Params = TopFrequencyParams

    def _fit(self, data: TrainData) -> None:
        x = data.interactions
        hl = self.params.recency_half_life_days
        self.freq = (x.matrix("recency", half_life_days=hl) if hl else x.matrix("count")).tocsr()
        self.freq_csc = self.freq.tocsc()
        # popularity only orders what the member never bought: scaled far below one purchase
        self.item_pop = _scaled(np.asarray(x.matrix("binary").sum(axis=0)).ravel()) * 1e-3
        self.activity = _activity(x)

    def _score_items(self, members: np.ndarray) -> np.ndarray:
        s = _dense_rows(self.freq, members)
        if self.params.pad_with_popular:
            return s + self.item_pop[None, :]
        s[s == 0] = -np.inf
        return s

    def _score_members(self, products: np.ndarray) -> np.ndarray:
        return _dense_cols(self.freq_csc, products)

    def _state(self) -> dict[str, Any]:
        return {"freq": self.freq, "item_pop": self.item_pop, "activity": self.activity}

    def _set_state(self, s: dict[str, Any]) -> None:
        self.freq, self.item_pop, self.activity = s["freq"], s["item_pop"], s["activity"]
        self.freq_csc = self.freq.tocsc()


class SimpleBlendParams(ModelParams):
    popularity_weight: float = 0.05


class SimpleBlend(Recommender):
    """The strongest simple baseline on Ta-Feng: a member's purchase-day counts scaled to [0, 1]
    plus ``popularity_weight`` x global popularity (buyers) scaled to [0, 1]."""

    name = "simple_blend"
    Params = SimpleBlendParams

    def _fit(self, data: TrainData) -> None:
        x = data.interactions
        counts = x.matrix("count")
        row_max = np.asarray(counts.max(axis=1).todense()).ravel()
        scale = sp.diags(1.0 / np.maximum(row_max, 1.0)).astype(np.float32)
        self.rel = (scale @ counts).tocsr().astype(np.float32)
        self.rel_csc = self.rel.tocsc()
        self.item_pop = _scaled(np.asarray(x.matrix("binary").sum(axis=0)).ravel())
        self.activity = _activity(x)

    def _score_items(self, members: np.ndarray) -> np.ndarray:
        return _dense_rows(self.rel, members) + self.params.popularity_weight * self.item_pop

    def _score_members(self, products: np.ndarray) -> np.ndarray:
        return _dense_cols(self.rel_csc, products)

    def _state(self) -> dict[str, Any]:
        return {"rel": self.rel, "item_pop": self.item_pop, "activity": self.activity}

    def _set_state(self, s: dict[str, Any]) -> None:
        self.rel, self.item_pop, self.activity = s["rel"], s["item_pop"], s["activity"]
        self.rel_csc = self.rel.tocsc()


class CategoryBuyersParams(ModelParams):
    pass


class CategoryBuyers(Recommender):
    """Audiences: the members who bought the product's category most (then the most active).
    Picks: popular products of the member's favourite categories."""

    name = "category_buyers"
    Params = CategoryBuyersParams

    def _fit(self, data: TrainData) -> None:
        counts = data.interactions.matrix("count").tocoo()
        n_cat = int(self.category.max(initial=-1)) + 2  # +1 bucket for unknown (-1)
        cat = np.where(self.category >= 0, self.category, n_cat - 1)
        self.member_cat = sp.csr_matrix(
            (counts.data, (counts.row, cat[counts.col])), shape=(data.n_members, n_cat)
        ).astype(np.float32)
        self.member_cat_csc = self.member_cat.tocsc()
        self.item_cat = cat.astype(np.int32)
        self.item_pop = _scaled(np.asarray(data.interactions.matrix("binary").sum(axis=0)).ravel())
        self.activity = _activity(data.interactions)

    def _score_items(self, members: np.ndarray) -> np.ndarray:
        per_cat = _dense_rows(self.member_cat, members)
        return per_cat[:, self.item_cat] * (1.0 + self.item_pop[None, :]) + EPS * self.item_pop

    def _score_members(self, products: np.ndarray) -> np.ndarray:
        return _dense_cols(self.member_cat_csc, self.item_cat[products])

    def _state(self) -> dict[str, Any]:
        return {"member_cat": self.member_cat, "item_cat": self.item_cat,
                "item_pop": self.item_pop, "activity": self.activity}

    def _set_state(self, s: dict[str, Any]) -> None:
        self.member_cat, self.item_cat = s["member_cat"], s["item_cat"]
        self.item_pop, self.activity = s["item_pop"], s["activity"]
        self.member_cat_csc = self.member_cat.tocsc()
