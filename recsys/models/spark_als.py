"""``spark_als``: implicit-feedback ALS on Spark MLlib, for interaction matrices beyond one machine.

The same recommender contract as :class:`~recsys.models.factorization.ALS`: the weighted
interaction matrix (same weightings) goes to ``pyspark.ml.recommendation.ALS(implicitPrefs=True)``
as (member row, product row, weight) ratings; the fitted factors come back to numpy, so the model
scores, saves, loads and serves (FAISS over ``user_factors`` / ``item_factors``) exactly as
implicit's ALS does, and a bundle never needs Spark to be served. Products without purchases get
vectors from their attributes, as in implicit's wrapper; members without purchases get zeros (what
ALS solves for them).

Spark's objective differs from implicit's in two documented ways, so equal hyperparameters are
close but not the same model:

* confidence is ``1 + alpha * weight`` (implicit: ``alpha * weight``);
* the regularisation of a member (product) vector is ``regularization * n``, ``n`` its number of
  purchased products (buyers): "ALS-WR" scaling (implicit: ``regularization``, unscaled).

The session comes from :func:`recsys.spark.session.get_spark`: the active one (``recsys train``
starts it from the config's ``[spark]`` table), else the environment's master, else ``local[*]``.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyarrow as pa

from recsys.interactions import Weighting
from recsys.models.base import ModelParams, TrainData
from recsys.models.factorization import _Factorization, attribute_vectors


class SparkALSParams(ModelParams):
    factors: int = 64
    iterations: int = 15
    regularization: float = 0.05
    alpha: float = 1.0
    weighting: Weighting = "bm25"
    bm25_k1: float = 100.0
    bm25_b: float = 0.8
    half_life_days: float = 30.0
    seed: int = 0
    # Spark's partitioning of the factor matrices (numUserBlocks / numItemBlocks); 0: Spark's
    # default. Results depend on it (the random initialisation is drawn per block).
    blocks: int = 0
    nonnegative: bool = False
    # factors are checkpointed every this many iterations when spark.checkpoint.dir is set (local
    # mode sets it): a long fit's lineage would otherwise overflow the driver's stack
    checkpoint_interval: int = 5


def spark_ratings(matrix: Any) -> pa.Table:
    """A members x products weighted matrix as Spark ALS ratings: ``member, product, weight``."""
    coo = matrix.tocoo()
    keep = coo.data > 0
    return pa.table({
        "member": pa.array(coo.row[keep].astype(np.int32)),
        "product": pa.array(coo.col[keep].astype(np.int32)),
        "weight": pa.array(coo.data[keep].astype(np.float32)),
    })


def factors_to_numpy(frame: Any, n: int, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Spark's ``userFactors`` / ``itemFactors`` (``id, features``) as an ``(n, rank)`` float32
    array in row order, and which rows Spark had a vector for (the others are zero)."""
    table = frame.toArrow()
    ids = table.column("id").to_numpy().astype(np.int64)
    feats = table.column("features").combine_chunks()
    values = feats.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    out = np.zeros((n, rank), dtype=np.float32)
    out[ids] = values.reshape(len(ids), rank)
    present = np.zeros(n, dtype=bool)
    present[ids] = True
    return out, present


def solve_member(item_factors: np.ndarray, yty: np.ndarray, products: np.ndarray, weights: np.ndarray,
                 alpha: float, regularization: float) -> np.ndarray:
    """One member's vector from what they bought, the product vectors fixed: the normal equations
    Spark's implicit ALS solves for a member (``ALS.computeFactors``),
    ``(YᵀY + Σ c₁ yyᵀ + λ·n·I) x = Σ (1 + c₁) y`` with ``c₁ = alpha * weight`` over the ``n``
    bought products.

    Examples
    --------
    >>> y = np.eye(2, dtype=np.float32)
    >>> solve_member(y, y.T @ y, np.array([0]), np.array([1.0]), 1.0, 0.0).round(3).tolist()
    [1.0, 0.0]
    """
    products = np.asarray(products, dtype=np.int64)
    w = np.asarray(weights, dtype=np.float64)
    keep = w > 0
    if not keep.any():
        return np.zeros(item_factors.shape[1], dtype=np.float32)
    y = np.asarray(item_factors[products[keep]], dtype=np.float64)
    c1 = alpha * w[keep]
    a = np.asarray(yty, dtype=np.float64) + (y.T * c1) @ y
    a += regularization * int(keep.sum()) * np.eye(a.shape[0])
    b = y.T @ (1.0 + c1)
    return np.linalg.solve(a, b).astype(np.float32)


class SparkALS(_Factorization):
    """Spark MLlib's implicit ALS behind the recommender contract (see the module docstring)."""

    name = "spark_als"
    Params = SparkALSParams

    def _fit(self, data: TrainData) -> None:
        from pyspark.ml.recommendation import ALS as MLlibALS

        from recsys.spark.session import describe, get_spark

        p = self.params
        matrix = self.weighted_matrix(data)
        spark = get_spark()
        start = time.perf_counter()
        ratings = spark.createDataFrame(spark_ratings(matrix))
        als = MLlibALS(
            rank=p.factors, maxIter=p.iterations, regParam=p.regularization, alpha=p.alpha,
            implicitPrefs=True, nonnegative=p.nonnegative, seed=p.seed, checkpointInterval=p.checkpoint_interval,
            userCol="member", itemCol="product", ratingCol="weight",
        )
        if p.blocks > 0:
            als = als.setNumUserBlocks(p.blocks).setNumItemBlocks(p.blocks)
        fitted = als.fit(ratings)
        users, _ = factors_to_numpy(fitted.userFactors, data.n_members, p.factors)
        items, warm = factors_to_numpy(fitted.itemFactors, data.n_products, p.factors)
        seconds = time.perf_counter() - start
        self.fit_log = [{"iteration": p.iterations - 1, "seconds": seconds, "loss": float("nan")}]
        self.user_factors = users
        self.item_factors = attribute_vectors(items, warm, data.product_tags)
        self.warm_items = warm
        self.training_summary = {**describe(spark), "fit_seconds": round(seconds, 2),
                                 "ratings": int(matrix.nnz)}

    def fold_in_member(self, products: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """A member's vector from their purchases (product rows and weights), by Spark's equations
        (:func:`solve_member`): what the serving layer calls after a live purchase."""
        if getattr(self, "_yty", None) is None:
            y = self.item_factors.astype(np.float64)
            self._yty = y.T @ y
        p = self.params
        return solve_member(self.item_factors, self._yty, products, weights, p.alpha, p.regularization)
