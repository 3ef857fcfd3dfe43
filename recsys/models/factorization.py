"""Wrappers around the ``implicit`` library: ALS, BPR (matrix factorisation) and item-kNN.

implicit trains with its own threads, so BLAS is pinned to one thread while it runs. Products
with no purchases get a vector from their attributes (see :func:`attribute_vectors`).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from recsys.interactions import Weighting
from recsys.models.base import ModelParams, Recommender, Tag, TrainData


def attribute_vectors(
    vectors: np.ndarray, warm: np.ndarray, tags: dict[str, Tag], keys: tuple[str, ...] = ("category", "price_band")
) -> np.ndarray:
    """Vectors for cold products: the mean vector of warm products sharing the most specific
    combination of attributes available (category + price band, then category, then all).

    Examples
    --------
    >>> v = np.array([[1., 0.], [3., 0.], [0., 0.]], dtype=np.float32)
    >>> t = {"category": Tag(np.array([0, 0, 0], np.int32), ("c",))}
    >>> attribute_vectors(v, np.array([True, True, False]), t, ("category",))[2].tolist()
    [2.0, 0.0]
    """
    out = vectors.copy()
    cold = ~warm
    if not cold.any() or not warm.any():
        return out
    filled = np.zeros(len(vectors), dtype=bool)
    filled[warm] = True
    levels = [tuple(k for k in keys[: i + 1] if k in tags) for i in range(len(keys) - 1, -1, -1)]
    for level in levels:
        if not level:
            continue
        codes = np.stack([tags[k].codes.astype(np.int64) for k in level], axis=1)
        if (codes < 0).all():
            continue
        key = np.zeros(len(vectors), dtype=np.int64)
        for j in range(codes.shape[1]):
            key = key * (int(codes[:, j].max()) + 2) + (codes[:, j] + 1)
        _, inv = np.unique(key, return_inverse=True)
        sums = np.zeros((inv.max() + 1, vectors.shape[1]), dtype=np.float64)
        cnt = np.bincount(inv[warm], minlength=inv.max() + 1)
        np.add.at(sums, inv[warm], vectors[warm])
        target = cold & ~filled & (cnt[inv] > 0) & (codes >= 0).all(axis=1)
        out[target] = (sums[inv[target]] / cnt[inv[target]][:, None]).astype(vectors.dtype)
        filled |= target
    rest = ~filled
    if rest.any():
        out[rest] = vectors[warm].mean(axis=0)
    return out


class FactorizationParams(ModelParams):
    factors: int = 64
    iterations: int = 15
    regularization: float = 0.05
    learning_rate: float = 0.01  # BPR only
    alpha: float = 1.0  # ALS confidence scale
    weighting: Weighting = "bm25"
    bm25_k1: float = 100.0
    bm25_b: float = 0.8
    half_life_days: float = 30.0
    seed: int = 0
    num_threads: int = 0


class _Factorization(Recommender):
    """Shared ALS / BPR mechanics: scores are dot products of member and product vectors."""

    Params = FactorizationParams
    fit_log: list[dict[str, float]]

    def __init__(self, params: Any = None, **kwargs: Any):
        super().__init__(params, **kwargs)
        self.fit_log = []
        self.on_iteration: Callable[[int, float, float], None] | None = None

    def _make(self) -> Any:
        raise NotImplementedError

    def weighted_matrix(self, data: TrainData) -> sp.csr_matrix:
        p = self.params
        return data.interactions.matrix(
            p.weighting, half_life_days=p.half_life_days, bm25_k1=p.bm25_k1, bm25_b=p.bm25_b
        )

    def _fit(self, data: TrainData) -> None:
        matrix = self.weighted_matrix(data)
        model = self._make()
        start = time.perf_counter()

        def callback(iteration: int, elapsed: float, *stats: float) -> None:
            # ALS reports its training loss; BPR reports (correct, skipped) sample counts
            loss = float(stats[0]) if len(stats) == 1 else float("nan")
            entry = {"iteration": iteration, "seconds": time.perf_counter() - start, "loss": loss}
            self.fit_log.append(entry)
            if self.on_iteration is not None:
                self.on_iteration(iteration, entry["seconds"], float(loss))

        with threadpool_limits(1, "blas"):
            model.fit(matrix, show_progress=False, callback=callback)
        self.implicit_model = model
        u = np.asarray(model.user_factors, dtype=np.float32)
        v = np.asarray(model.item_factors, dtype=np.float32)
        warm = np.diff(matrix.tocsc().indptr) > 0
        self.user_factors = u
        self.item_factors = attribute_vectors(v, warm, data.product_tags)
        self.warm_items = warm

    def _score_items(self, members: np.ndarray) -> np.ndarray:
        return self.user_factors[members] @ self.item_factors.T

    def _score_members(self, products: np.ndarray) -> np.ndarray:
        return self.item_factors[products] @ self.user_factors.T

    def _item_vectors(self) -> np.ndarray:
        return self.item_factors

    def _state(self) -> dict[str, Any]:
        return {"user_factors": self.user_factors, "item_factors": self.item_factors,
                "warm_items": self.warm_items}

    def _set_state(self, s: dict[str, Any]) -> None:
        self.user_factors, self.item_factors = s["user_factors"], s["item_factors"]
        self.warm_items = s["warm_items"]


class ALS(_Factorization):
    """implicit's alternating least squares on a weighted interaction matrix."""

    name = "als"

    def _make(self) -> Any:
        from implicit.cpu.als import AlternatingLeastSquares

        p = self.params
        return AlternatingLeastSquares(
            factors=p.factors, iterations=p.iterations, regularization=p.regularization,
            alpha=p.alpha, random_state=p.seed, num_threads=p.num_threads,
            calculate_training_loss=True,
        )


class BPR(_Factorization):
    """implicit's Bayesian personalised ranking."""

    name = "bpr"

    def _make(self) -> Any:
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        p = self.params
        return BayesianPersonalizedRanking(
            factors=p.factors, iterations=p.iterations, regularization=p.regularization,
            learning_rate=p.learning_rate, random_state=p.seed, num_threads=p.num_threads,
        )

    def weighted_matrix(self, data: TrainData) -> sp.csr_matrix:
        return data.interactions.matrix("binary")


class ItemKNNParams(ModelParams):
    similarity: Literal["cosine", "bm25"] = "cosine"
    neighbours: int = 100
    bm25_k1: float = 1.2
    bm25_b: float = 0.75
    weighting: Weighting = "count"


def item_similarity(matrix: sp.csr_matrix, neighbours: int, similarity: str = "cosine", bm25_k1: float = 1.2,
                    bm25_b: float = 0.75, num_threads: int = 0) -> sp.csr_matrix:
    """implicit's item-item kNN similarity (products x products, ``neighbours`` per product) over
    a members x products matrix."""
    from implicit.nearest_neighbours import BM25Recommender, CosineRecommender

    if similarity == "bm25":
        knn = BM25Recommender(K=neighbours, K1=bm25_k1, B=bm25_b, num_threads=num_threads)
    else:
        knn = CosineRecommender(K=neighbours, num_threads=num_threads)
    with warnings.catch_warnings():
        # implicit normalises the matrix into a COO copy and then warns that it was not given CSR
        warnings.filterwarnings("ignore", message="Method expects CSR input")
        knn.fit(sp.csr_matrix(matrix), show_progress=False)
    return sp.csr_matrix(knn.similarity, dtype=np.float32)


class ItemKNN(Recommender):
    """implicit's item-item nearest neighbours (cosine or BM25): a member's score for a product
    is the similarity-weighted sum over what they bought."""

    name = "item_knn"
    Params = ItemKNNParams

    def _fit(self, data: TrainData) -> None:
        p = self.params
        matrix = data.interactions.matrix(p.weighting)
        self.similarity = item_similarity(matrix, p.neighbours, p.similarity, p.bm25_k1, p.bm25_b)
        self.user_items = matrix.astype(np.float32)
        self.activity = np.asarray(data.interactions.member_days(), dtype=np.float32)
        self.activity /= max(float(self.activity.max(initial=0)), 1.0)

    def _score_items(self, members: np.ndarray) -> np.ndarray:
        return np.asarray((self.user_items[members] @ self.similarity).todense(), dtype=np.float32)

    def _score_members(self, products: np.ndarray) -> np.ndarray:
        cols = self.similarity[:, products]  # products are columns of the similarity
        s = np.asarray((self.user_items @ cols).T.todense(), dtype=np.float32)
        return s

    def _state(self) -> dict[str, Any]:
        return {"similarity": self.similarity, "user_items": self.user_items, "activity": self.activity}

    def _set_state(self, s: dict[str, Any]) -> None:
        self.similarity, self.user_items, self.activity = s["similarity"], s["user_items"], s["activity"]
