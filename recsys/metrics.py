"""Ranking metrics as pure, vectorised functions.

Conventions
-----------
``topk`` is an ``(n_queries, k)`` integer array of ranked candidate indices, best first, padded
with ``-1`` where a list is shorter than ``k``. ``truth`` is a ``(n_queries, n_candidates)`` sparse
matrix whose non-zeros are the relevant candidates (the products a member bought in the test
window, or the members who bought a product). Queries with no relevant candidate are the caller's
to drop; here they count as zero where a metric is undefined and are excluded by ``mask_nonempty``.

Two normalisations of recall are in use and both are supported:

* ``"min"``  — hits / min(k, |truth|): the temporal-split convention (a member who bought 3 products
  can reach 1.0 with a list of 10);
* ``"truth"`` — hits / |truth|: the next-basket literature's convention.

NDCG uses binary gains; its ideal DCG sums over ``min(k, |truth|)`` positions (``ideal="min"``) or
over all ``|truth|`` positions (``ideal="full"``, as the next-basket literature does).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import scipy.sparse as sp

from recsys.arrays import unique_ints

Normalization = Literal["min", "truth"]


def hit_matrix(topk: np.ndarray, truth: sp.spmatrix) -> np.ndarray:
    """Boolean ``(n, k)``: whether ``topk[q, j]`` is relevant for query ``q``.

    Examples
    --------
    >>> truth = sp.csr_matrix(np.array([[0, 1, 1], [1, 0, 0]]))
    >>> hit_matrix(np.array([[1, 0], [2, -1]]), truth).tolist()
    [[True, False], [False, False]]
    """
    truth = _relevant(truth)
    n, k = topk.shape
    if truth.shape[0] != n:
        raise ValueError(f"topk has {n} rows but truth has {truth.shape[0]}")
    n_cols = truth.shape[1]
    coo = truth.tocoo()
    keys = unique_ints(coo.row.astype(np.int64) * n_cols + coo.col.astype(np.int64))
    cand = np.arange(n, dtype=np.int64)[:, None] * n_cols + topk.astype(np.int64)
    pos = np.searchsorted(keys, cand)
    pos = np.minimum(pos, max(len(keys) - 1, 0))
    hits = (keys[pos] == cand) if len(keys) else np.zeros_like(cand, dtype=bool)
    return hits & (topk >= 0)


def _relevant(truth: sp.spmatrix) -> sp.csr_matrix:
    """The non-zeros of ``truth`` (a stored zero is not relevant)."""
    t = sp.csr_matrix(truth, copy=True)
    t.eliminate_zeros()
    return t


def truth_sizes(truth: sp.spmatrix) -> np.ndarray:
    return np.diff(_relevant(truth).indptr)


def recall_at_k(
    topk: np.ndarray, truth: sp.spmatrix, k: int, normalization: Normalization = "min"
) -> np.ndarray:
    """Per-query recall@k; 0 where truth is empty.

    >>> truth = sp.csr_matrix(np.array([[1, 1, 1, 0]]))
    >>> recall_at_k(np.array([[0, 3]]), truth, 2, "min").tolist()
    [0.5]
    >>> recall_at_k(np.array([[0, 3]]), truth, 2, "truth").tolist()
    [0.3333333333333333]
    """
    hits = hit_matrix(topk[:, :k], truth).sum(axis=1)
    size = truth_sizes(truth).astype(np.float64)
    denom = np.minimum(size, k) if normalization == "min" else size
    return np.divide(hits, denom, out=np.zeros(len(hits)), where=denom > 0)


def precision_at_k(topk: np.ndarray, truth: sp.spmatrix, k: int) -> np.ndarray:
    return hit_matrix(topk[:, :k], truth).sum(axis=1) / float(k)


def ndcg_at_k(
    topk: np.ndarray, truth: sp.spmatrix, k: int, ideal: Literal["min", "full"] = "min"
) -> np.ndarray:
    """Per-query NDCG@k with binary gains.

    >>> truth = sp.csr_matrix(np.array([[0, 1, 0]]))
    >>> round(float(ndcg_at_k(np.array([[0, 1]]), truth, 2)[0]), 4)
    0.6309
    """
    hits = hit_matrix(topk[:, :k], truth)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (hits * discounts[: hits.shape[1]]).sum(axis=1)
    size = truth_sizes(truth)
    n_ideal = np.minimum(size, k) if ideal == "min" else size
    max_len = int(n_ideal.max()) if len(n_ideal) else 0
    cum = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, max_len + 2)))])
    idcg = cum[n_ideal]
    return np.divide(dcg, idcg, out=np.zeros(len(dcg)), where=idcg > 0)


def average_precision_at_k(topk: np.ndarray, truth: sp.spmatrix, k: int) -> np.ndarray:
    """Per-query AP@k, normalised by min(k, |truth|).

    >>> truth = sp.csr_matrix(np.array([[1, 0, 1]]))
    >>> float(average_precision_at_k(np.array([[0, 1, 2]]), truth, 3)[0])
    0.8333333333333333
    """
    hits = hit_matrix(topk[:, :k], truth)
    ranks = np.arange(1, hits.shape[1] + 1)
    prec = np.cumsum(hits, axis=1) / ranks
    size = np.minimum(truth_sizes(truth), k).astype(np.float64)
    return np.divide((prec * hits).sum(axis=1), size, out=np.zeros(len(size)), where=size > 0)


def hit_rate_at_k(topk: np.ndarray, truth: sp.spmatrix, k: int) -> np.ndarray:
    """1.0 where at least one of the top k is relevant (PHR in the next-basket literature)."""
    return hit_matrix(topk[:, :k], truth).any(axis=1).astype(np.float64)


def coverage_at_k(topk: np.ndarray, n_candidates: int, k: int) -> float:
    """Share of all candidates that appear in at least one top-k list."""
    top = topk[:, :k]
    return float(len(np.unique(top[top >= 0]))) / float(n_candidates) if n_candidates else 0.0


def mask_nonempty(truth: sp.spmatrix) -> np.ndarray:
    return truth_sizes(truth) > 0


def ranking_report(
    topk: np.ndarray,
    truth: sp.spmatrix,
    ks: tuple[int, ...] = (10, 20),
    normalization: Normalization = "min",
    ideal: Literal["min", "full"] = "min",
    prefix: str = "",
) -> dict[str, float]:
    """Mean of every ranking metric over the queries with a non-empty truth."""
    keep = mask_nonempty(truth)
    t = sp.csr_matrix(truth)[keep]
    top = topk[keep]
    out: dict[str, float] = {f"{prefix}n_queries": float(keep.sum())}
    if not keep.any():
        return out
    for k in ks:
        out[f"{prefix}recall@{k}"] = float(recall_at_k(top, t, k, normalization).mean())
        out[f"{prefix}ndcg@{k}"] = float(ndcg_at_k(top, t, k, ideal).mean())
        out[f"{prefix}map@{k}"] = float(average_precision_at_k(top, t, k).mean())
        out[f"{prefix}hit_rate@{k}"] = float(hit_rate_at_k(top, t, k).mean())
        out[f"{prefix}precision@{k}"] = float(precision_at_k(top, t, k).mean())
    return out
