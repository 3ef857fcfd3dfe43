"""TIFUKNN (Hu, He, Gao and Zhang, SIGIR 2020): temporal item frequencies + user kNN.

A member's vector sums their baskets (member + day), each a 0/1 vector over products:

* basket ``b`` of ``n`` (oldest first) weighs ``within_decay ** (n - 1 - b)``;
* the baskets are cut, in order, into ``groups`` consecutive groups (``floor(n / groups)`` baskets
  each, the last ``n mod groups`` groups one more; a member with fewer baskets than groups has one
  basket per group); a group's vector is the mean of its weighted baskets;
* group ``g`` weighs ``group_decay ** (groups - 1 - g)``, and the member vector is the weighted sum
  divided by the number of groups the member has.

The score of product ``j`` for member ``u`` is ``alpha * v_u[j] + (1 - alpha) * mean of v_w[j]`` over
the ``neighbours`` members ``w`` nearest to ``u`` by Euclidean distance between vectors (the member
itself excluded). These are the definitions of the authors' released code, including its one quirk:
a member with fewer baskets than groups still has their groups decayed from ``groups - 1``. The
paper's hyperparameters for Ta-Feng are the defaults.

Audiences (product -> person) score every member by the same formula for the product's column.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from recsys.interactions import Interactions
from recsys.models.base import ModelParams, Recommender, TrainData, topk_rows


class TIFUKNNParams(ModelParams):
    neighbours: int = 300
    within_decay: float = 0.9
    group_decay: float = 0.7
    alpha: float = 0.7
    groups: int = 7


def tifu_vectors(x: Interactions, within_decay: float, group_decay: float, groups: int) -> sp.csr_matrix:
    """Members x products TIFU vectors (float32) from purchase occasions; a basket is a member's
    purchase day (one ``age_days`` value).

    Examples
    --------
    One member, baskets {a} then {a, b} (1 group each: fewer baskets than groups): the older basket
    weighs 0.5 (within decay) and sits in group 0 (group decay 0.1 ** (3 - 1 - 0)), the newer one
    weighs 1 in group 1 (0.1 ** 1); both are divided by the 2 groups the member has.

    >>> from datetime import date
    >>> from recsys.idmap import IdMap
    >>> x = Interactions(IdMap(["m"]), IdMap(["a", "b"]), np.array([0, 0, 0]), np.array([0, 0, 1]),
    ...     np.array([9, 2, 2]), np.ones(3, np.float32), np.ones(3, np.float32), date(2001, 2, 1))
    >>> np.round(tifu_vectors(x, 0.5, 0.1, 3).toarray(), 4).tolist()
    [[0.0525, 0.05]]
    """
    n_members, n_products = x.shape
    if len(x.member) == 0:
        return sp.csr_matrix((n_members, n_products), dtype=np.float32)
    # baskets: distinct (member, age); oldest first within a member
    span = int(x.age_days.max()) + 1
    key = x.member.astype(np.int64) * span + (span - 1 - x.age_days.astype(np.int64))
    baskets, occ_basket = np.unique(key, return_inverse=True)
    basket_member = baskets // span
    n_baskets = np.bincount(basket_member, minlength=n_members)
    first = np.concatenate([[0], np.cumsum(n_baskets)[:-1]])
    b = np.arange(len(baskets)) - first[basket_member]  # basket's place in its member's sequence
    n = n_baskets[basket_member]
    within = np.power(within_decay, (n - 1 - b).astype(np.float64))
    # groups, as in the released code: base = n // groups baskets per group, the last n % groups
    # groups one more; fewer baskets than groups: one basket per group
    base = n // groups
    extra = n - base * groups
    short = n < groups
    small_groups = groups - extra  # groups of `base` baskets, first
    split = small_groups * base
    g = np.where(
        b < split, b // np.maximum(base, 1), small_groups + (b - split) // (base + 1)
    )
    size = np.where(b < split, base, base + 1)
    g = np.where(short, b, g)
    size = np.where(short, 1, size)
    real_groups = np.where(short, n, groups)
    weight = within / size * np.power(group_decay, (groups - 1 - g).astype(np.float64)) / real_groups
    w = weight[occ_basket].astype(np.float32)
    m = sp.csr_matrix((w, (x.member, x.product)), shape=(n_members, n_products), dtype=np.float32)
    m.sum_duplicates()
    return m


def nearest_members(vectors: sp.csr_matrix, k: int, batch_size: int = 1024) -> np.ndarray:
    """``(n_members, k)`` indices of each member's ``k`` nearest other members by Euclidean
    distance between rows (ties by the lower index), -1 where fewer than ``k`` others exist."""
    n = vectors.shape[0]
    out = np.full((n, k), -1, dtype=np.int64)
    if n < 2 or k <= 0:
        return out
    v = sp.csr_matrix(vectors, dtype=np.float64)
    sq = np.asarray(v.multiply(v).sum(axis=1)).ravel()
    vt = sp.csc_matrix(v.T)
    for lo in range(0, n, batch_size):
        hi = min(n, lo + batch_size)
        dot = (v[lo:hi] @ vt).toarray()
        dist = sq[lo:hi, None] + sq[None, :] - 2.0 * dot
        np.maximum(dist, 0.0, out=dist)
        dist[np.arange(hi - lo), np.arange(lo, hi)] = np.inf  # never one's own neighbour
        # nearest first, ties by the lower index (a deterministic answer where the cut is a tie)
        out[lo:hi] = topk_rows(-dist.astype(np.float32), k)[0]
    return out


class TIFUKNN(Recommender):
    """Temporal item frequencies plus the nearest members' (see the module docstring)."""

    name = "tifuknn"
    Params = TIFUKNNParams

    def _fit(self, data: TrainData) -> None:
        p = self.params
        self.vectors = tifu_vectors(data.interactions, p.within_decay, p.group_decay, p.groups)
        self.vectors_csc = self.vectors.tocsc()
        neighbours = nearest_members(self.vectors, p.neighbours)
        self.neighbour_mean = _mean_matrix(neighbours, self.n_members)
        self.activity = np.asarray(data.interactions.member_days(), dtype=np.float32)
        self.activity /= max(float(self.activity.max(initial=0)), 1.0)

    def _score_items(self, members: np.ndarray) -> np.ndarray:
        a = np.float32(self.params.alpha)
        own = self.vectors[members].toarray()
        near = (self.neighbour_mean[members] @ self.vectors).toarray()
        return a * own + (1 - a) * near

    def _score_members(self, products: np.ndarray) -> np.ndarray:
        a = np.float32(self.params.alpha)
        cols = self.vectors_csc[:, products]
        own = cols.T.toarray()
        near = (self.neighbour_mean @ cols).T.toarray()
        return a * own + (1 - a) * near

    def _state(self) -> dict[str, Any]:
        return {"vectors": self.vectors, "neighbour_mean": self.neighbour_mean, "activity": self.activity}

    def _set_state(self, s: dict[str, Any]) -> None:
        self.vectors, self.neighbour_mean, self.activity = s["vectors"], s["neighbour_mean"], s["activity"]
        self.vectors_csc = self.vectors.tocsc()


def _mean_matrix(neighbours: np.ndarray, n: int) -> sp.csr_matrix:
    """Members x members: 1 / (number of neighbours) at each neighbour of each row."""
    ok = neighbours >= 0
    counts = ok.sum(axis=1)
    rows = np.repeat(np.arange(len(neighbours)), counts)
    w = (1.0 / np.maximum(counts, 1))[rows]
    return sp.csr_matrix((w.astype(np.float32), (rows, neighbours[ok])), shape=(len(neighbours), n))
