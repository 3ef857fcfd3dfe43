"""Wrappers around the ``implicit`` library: ALS, BPR (matrix factorisation) and item-kNN.

implicit trains with its own threads, so BLAS is pinned to one thread while it runs. Products
with no purchases get a vector from their attributes (see :func:`attribute_vectors`). A member's
vector can be folded in again from their purchases (:func:`als_fold_in`): what serving does after
a live purchase, through the contract's ``fold_in_member``.
"""

from __future__ import annotations

import time
import warnings
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from recsys.interactions import Weighting
from recsys.models.base import (
    Capability,
    IterationCallback,
    ModelParams,
    Recommender,
    Tag,
    TrainData,
)


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
        n_groups = int(inv.max()) + 1
        cnt = np.bincount(inv[warm], minlength=n_groups)
        # each group's sum of its sold products' vectors, as a 0/1 group x product matrix times
        # the vectors (products in order, as an unbuffered add would take them; ~40x faster
        # than np.add.at at 100k products)
        sold = np.flatnonzero(warm)
        of_group = sp.csr_matrix((np.ones(len(sold)), (inv[sold], np.arange(len(sold)))),
                                 shape=(n_groups, len(sold)))
        sums = of_group @ vectors[sold].astype(np.float64)
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


def als_fold_in(
    item_factors: np.ndarray,
    yty: np.ndarray,
    products: np.ndarray,
    confidence: np.ndarray,
    regularization: float,
) -> np.ndarray:
    """One member's ALS vector from the products they bought, the other factors held fixed.

    Solves ``(YᵀY + λI + Yᵀ(C−I)Y) x = YᵀCp`` with ``C = diag(confidence)`` over the bought
    products and ``p = 1`` on them — the same normal equations implicit's ALS solves for a user
    (``recalculate_user``), where ``confidence = alpha * weight``.

    Examples
    --------
    >>> y = np.eye(2, dtype=np.float32)
    >>> als_fold_in(y, y.T @ y, np.array([0]), np.array([3.0]), 0.0).round(3).tolist()
    [1.0, 0.0]
    """
    y = np.asarray(item_factors[products], dtype=np.float64)
    c = np.asarray(confidence, dtype=np.float64)
    a = np.asarray(yty, dtype=np.float64) + regularization * np.eye(yty.shape[0])
    a += (y.T * (c - 1.0)) @ y
    b = y.T @ c
    return np.linalg.solve(a, b).astype(np.float32)


class _Factorization(Recommender):
    """Shared mechanics of factorisation models: scores are dot products of member and product
    vectors (``user_factors`` / ``item_factors``), which serving searches with FAISS."""

    Params = FactorizationParams
    capabilities = frozenset({Capability.VECTORS, Capability.FOLD_IN, Capability.ITEM_VECTORS})

    def __init__(self, params: Any = None, **kwargs: Any):
        super().__init__(params, **kwargs)
        self._fold_in: tuple[np.ndarray, np.ndarray] | None = None  # product vectors and YᵀY

    def weighted_matrix(self, data: TrainData) -> sp.csr_matrix:
        p = self.params
        return data.interactions.matrix(
            p.weighting, half_life_days=p.half_life_days, bm25_k1=p.bm25_k1, bm25_b=p.bm25_b
        )

    def factor_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        return self.user_factors, self.item_factors

    def item_vectors(self) -> np.ndarray:
        return self.item_factors

    def warm_products(self) -> np.ndarray:
        """Products with a non-zero weight in the matrix the factors were fitted on."""
        return self.warm_items

    def fold_in_member(self, products: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """implicit's ALS equations for one member (:func:`als_fold_in`), confidence ``alpha *
        weights``: the product vectors and ``YᵀY`` are computed on the first call."""
        if self._fold_in is None:
            items = np.ascontiguousarray(self.item_factors, dtype=np.float32)
            self._fold_in = items, items.T.astype(np.float64) @ items.astype(np.float64)
        items, yty = self._fold_in
        p = self.params
        return als_fold_in(items, yty, np.asarray(products, dtype=np.int64), float(p.alpha) * np.asarray(weights),
                           float(p.regularization))

    def _score_items(self, members: np.ndarray) -> np.ndarray:
        return self.user_factors[members] @ self.item_factors.T

    def _score_members(self, products: np.ndarray) -> np.ndarray:
        return self.item_factors[products] @ self.user_factors.T

    def _state(self) -> dict[str, Any]:
        return {"user_factors": self.user_factors, "item_factors": self.item_factors,
                "warm_items": self.warm_items}

    def _set_state(self, s: dict[str, Any]) -> None:
        self.user_factors, self.item_factors = s["user_factors"], s["item_factors"]
        self.warm_items = s["warm_items"]
        self._fold_in = None


class _ImplicitFactorization(_Factorization):
    """ALS / BPR from implicit, which train in iterations: each one is reported (``fit_log``, the
    watcher) and the factors being trained can be scored between them (``snapshot``)."""

    capabilities = _Factorization.capabilities | {Capability.ITERATIONS}
    fit_log: list[dict[str, float]]

    def __init__(self, params: Any = None, **kwargs: Any):
        super().__init__(params, **kwargs)
        self.fit_log = []
        self.on_iteration: IterationCallback | None = None
        self._training: Any = None  # the implicit model while it fits

    def _make(self) -> Any:
        raise NotImplementedError

    def watch_iterations(self, callback: IterationCallback | None) -> None:
        self.on_iteration = callback

    def planned_iterations(self) -> int:
        return int(self.params.iterations)

    def snapshot(self) -> Recommender:
        if self._training is None:
            raise RuntimeError(f"{type(self).__name__}.snapshot() is for iteration callbacks, during fit()")
        return _FactorsSnapshot.of(self._training, self.history)

    def _fit(self, data: TrainData) -> None:
        matrix = self.weighted_matrix(data)
        model = self._make()
        self._fold_in = None
        start = time.perf_counter()

        def callback(iteration: int, elapsed: float, *stats: float) -> None:
            # ALS reports its training loss; BPR reports (correct, skipped) sample counts
            loss = float(stats[0]) if len(stats) == 1 else float("nan")
            entry = {"iteration": iteration, "seconds": time.perf_counter() - start, "loss": loss}
            self.fit_log.append(entry)
            if self.on_iteration is not None:
                self.on_iteration(iteration, entry["seconds"], float(loss))

        self._training = model
        try:
            with threadpool_limits(1, "blas"):
                model.fit(matrix, show_progress=False, callback=callback)
        finally:
            self._training = None
        self.implicit_model = model
        u = np.asarray(model.user_factors, dtype=np.float32)
        v = np.asarray(model.item_factors, dtype=np.float32)
        warm = np.diff(matrix.tocsc().indptr) > 0
        self.user_factors = u
        self.item_factors = attribute_vectors(v, warm, data.product_tags)
        self.warm_items = warm


class _FactorsSnapshot(Recommender):  # no ``name``: never registered
    """The factors an implicit model holds *while it fits*, seen as a fitted recommender (picks
    and audiences by dot product, read from the implicit model at scoring time)."""

    @classmethod
    def of(cls, inner: Any, history: sp.csr_matrix) -> _FactorsSnapshot:
        view = cls(ModelParams())
        view.inner = inner
        view.n_members, view.n_products = history.shape
        view.history, view.is_fitted = history, True
        view.category = np.zeros(history.shape[1], np.int32)
        return view

    def _fit(self, data: Any) -> None:  # pragma: no cover - never fitted
        raise NotImplementedError

    def _score_items(self, members: np.ndarray) -> np.ndarray:
        return np.asarray(self.inner.user_factors[members]) @ np.asarray(self.inner.item_factors).T

    def _score_members(self, products: np.ndarray) -> np.ndarray:
        return np.asarray(self.inner.item_factors[products]) @ np.asarray(self.inner.user_factors).T


class ALS(_ImplicitFactorization):
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


class BPR(_ImplicitFactorization):
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
