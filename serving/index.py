"""Inner-product search over member or product vectors with FAISS: exact or HNSW.

Up to a configurable size the index is exact (``IndexFlatIP``); above it, an HNSW graph
(``IndexHNSWFlat`` with ``METRIC_INNER_PRODUCT``) answers small-k queries and the flat storage
answers large ones (an audience of 100,000 members would need ``efSearch >= 100,000`` anyway).
:func:`recall_at_k` measures the approximate index against exact search.

The FAISS index is never modified after it is built, so searches need no lock. Vectors that
change while serving (a member folded in after a live purchase, a new member) are kept in a
growable numpy array and marked *dirty*: searches exclude dirty rows from the FAISS results and
score them exactly with numpy, then merge. A reload rebuilds the index from the new bundle.

Examples
--------
>>> import numpy as np
>>> from serving.settings import IndexSettings
>>> ix = VectorIndex(np.eye(3, dtype=np.float32), exact_max=10, settings=IndexSettings())
>>> ix.kind, ix.search(np.array([[0., 1., 0.]], np.float32), 1)[0].tolist()
('flat', [[1]])
"""

from __future__ import annotations

import os
import threading
from typing import Literal

import faiss
import numpy as np

from recsys.models.base import NEG_INF
from serving.settings import IndexSettings

IndexKind = Literal["flat", "hnsw"]


def _sort_candidates(idx: np.ndarray, sc: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` of each row of candidate (index, score) pairs; ties broken by the lower index,
    as :func:`recsys.models.base.topk_rows` does; missing entries come out as -1 / -inf."""
    sc = np.where(idx >= 0, sc, NEG_INF).astype(np.float32)
    key_idx = np.where(idx >= 0, idx, np.iinfo(np.int64).max)
    order = np.lexsort((key_idx, -sc), axis=1)[:, :k]
    out_i = np.take_along_axis(idx, order, axis=1).astype(np.int64)
    out_s = np.take_along_axis(sc, order, axis=1)
    out_i[~np.isfinite(out_s)] = -1
    if out_i.shape[1] < k:
        pad = k - out_i.shape[1]
        out_i = np.pad(out_i, ((0, 0), (0, pad)), constant_values=-1)
        out_s = np.pad(out_s, ((0, 0), (0, pad)), constant_values=NEG_INF)
    return out_i, out_s


def brute_force(
    vectors: np.ndarray, queries: np.ndarray, k: int, allowed: np.ndarray | None = None,
    rows: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner products of ``queries`` against ``vectors`` (optionally only
    ``rows``, and only where the boolean mask ``allowed`` is true)."""
    q = len(queries)
    cand = np.arange(len(vectors)) if rows is None else np.asarray(rows, dtype=np.int64)
    if rows is None:
        scores = queries @ vectors.T  # no gather: a full matrix product is cheaper than a copy
        if allowed is not None:
            scores[:, ~allowed[: len(vectors)]] = NEG_INF
    else:
        if allowed is not None:
            cand = cand[allowed[cand]]
        scores = queries @ vectors[cand].T
    if len(cand) == 0 or k == 0:
        return np.full((q, k), -1, np.int64), np.full((q, k), NEG_INF, np.float32)
    kk = min(k, len(cand))
    if kk < len(cand):
        part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
    else:
        part = np.tile(np.arange(len(cand)), (q, 1))
    return _sort_candidates(cand[part], np.take_along_axis(scores, part, axis=1), k)


class VectorIndex:
    """A FAISS inner-product index over ``vectors`` plus a numpy overlay of changed rows.

    Parameters
    ----------
    vectors : ``(n, d)`` float32
    exact_max : the largest ``n`` searched with an exact ``IndexFlatIP``; HNSW above it
    settings : HNSW parameters and the largest k the graph answers
    """

    def __init__(self, vectors: np.ndarray, *, exact_max: int, settings: IndexSettings):
        vecs = np.ascontiguousarray(vectors, dtype=np.float32)
        self.dim = vecs.shape[1]
        self.settings = settings
        self._n = len(vecs)
        self._n_indexed = len(vecs)
        self._vecs = vecs.copy()
        self._dirty = np.zeros(len(vecs), dtype=bool)
        self._n_dirty = 0
        self._write = threading.Lock()
        self.kind: IndexKind = "flat" if len(vecs) <= exact_max else "hnsw"
        if self.kind == "flat":
            self._index: faiss.Index = faiss.IndexFlatIP(self.dim)
        else:
            hnsw = faiss.IndexHNSWFlat(self.dim, settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            hnsw.hnsw.efConstruction = settings.hnsw_ef_construction
            hnsw.hnsw.efSearch = settings.hnsw_ef_search
            self._index = hnsw
        if len(vecs):
            threads = settings.build_threads or os.cpu_count() or 1
            previous = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(threads)
            try:
                self._index.add(vecs)
            finally:
                faiss.omp_set_num_threads(previous)

    # ------------------------------------------------------------------ contents
    def __len__(self) -> int:
        return self._n

    @property
    def vectors(self) -> np.ndarray:
        """The current vectors (a view; rows may be updated in place by :meth:`set`)."""
        return self._vecs[: self._n]

    @property
    def n_dirty(self) -> int:
        """Rows searched with numpy because they changed (or were added) after the build."""
        return self._n_dirty

    def describe(self) -> dict[str, object]:
        out: dict[str, object] = {"kind": self.kind, "size": self._n, "dim": self.dim, "changed_rows": self._n_dirty}
        if self.kind == "hnsw":
            out |= {"M": self.settings.hnsw_m, "ef_search": self.settings.hnsw_ef_search,
                    "max_k": self.settings.hnsw_max_k}
        return out

    def set(self, row: int, vector: np.ndarray) -> int:
        """Replace row ``row``, or append when ``row == len(self)``; returns the row."""
        vec = np.asarray(vector, dtype=np.float32).reshape(self.dim)
        with self._write:
            if row == self._n:
                if self._n == len(self._vecs):  # grow by doubling; readers keep the old array
                    cap = max(16, 2 * len(self._vecs))
                    grown = np.zeros((cap, self.dim), dtype=np.float32)
                    grown[: self._n] = self._vecs[: self._n]
                    dirty = np.zeros(cap, dtype=bool)
                    dirty[: self._n] = self._dirty[: self._n]
                    self._vecs, self._dirty = grown, dirty
                self._vecs[row] = vec
                self._n += 1
            elif 0 <= row < self._n:
                self._vecs[row] = vec
            else:
                raise IndexError(f"row {row} is outside 0..{self._n}")
            if not self._dirty[row]:
                self._dirty[row] = True
                self._n_dirty += 1
        return row

    # ------------------------------------------------------------------ search
    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` rows by inner product for each query, best first; -1 / -inf padding.

        ``allowed`` (a boolean mask over the rows) keeps only some rows; FAISS applies it during
        the search (an ``IDSelectorBitmap``), so filtered results are still the top-k.
        """
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        n, n_indexed = self._n, self._n_indexed
        vecs, dirty = self._vecs, self._dirty  # one consistent snapshot for this search
        if allowed is not None and len(allowed) < n:
            raise ValueError(f"allowed mask has {len(allowed)} entries for {n} rows")
        if k <= 0 or n == 0:
            return np.full((len(queries), max(k, 0)), -1, np.int64), np.full((len(queries), max(k, 0)), NEG_INF, np.float32)
        if self.kind == "hnsw" and k > self.settings.hnsw_max_k:
            return brute_force(vecs[:n], queries, k, None if allowed is None else allowed[:n])

        keep = np.ones(n_indexed, dtype=bool) if allowed is None else allowed[:n_indexed].copy()
        if self._n_dirty:
            keep &= ~dirty[:n_indexed]
        idx, sc = self._faiss_search(queries, min(k, n_indexed), None if keep.all() else keep)
        extra = np.flatnonzero(dirty[:n])
        if len(extra):
            ex_i, ex_s = brute_force(vecs[:n], queries, k, None if allowed is None else allowed[:n], rows=extra)
            idx, sc = np.concatenate([idx, ex_i], axis=1), np.concatenate([sc, ex_s], axis=1)
        return _sort_candidates(idx, sc, k)

    def _faiss_search(
        self, queries: np.ndarray, k: int, keep: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        if k == 0 or (keep is not None and not keep.any()):
            return np.full((len(queries), 0), -1, np.int64), np.full((len(queries), 0), NEG_INF, np.float32)
        params: faiss.SearchParameters | None = None
        bits = None
        if keep is not None:
            bits = np.packbits(keep, bitorder="little")
            sel = faiss.IDSelectorBitmap(len(keep), faiss.swig_ptr(bits))
            if self.kind == "hnsw":
                params = faiss.SearchParametersHNSW(sel=sel, efSearch=max(self.settings.hnsw_ef_search, k))
            else:
                params = faiss.SearchParameters(sel=sel)
        elif self.kind == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=max(self.settings.hnsw_ef_search, k))
        # OpenMP's thread count is per calling thread, and requests arrive on many threads
        if faiss.omp_get_max_threads() != self.settings.search_threads:
            faiss.omp_set_num_threads(self.settings.search_threads)
        dist, labels = self._index.search(queries, k, params=params)
        del bits  # the selector points into it: keep it alive until the search is over
        return labels.astype(np.int64), dist.astype(np.float32)


def recall_at_k(index: VectorIndex, queries: np.ndarray, k: int = 10) -> float:
    """Mean share of the exact top-``k`` inner-product neighbours that ``index`` returns.

    1.0 for an exact index; for HNSW it depends on ``M`` / ``efSearch`` (target >= 0.95).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> v = rng.standard_normal((500, 8)).astype(np.float32)
    >>> ix = VectorIndex(v, exact_max=100, settings=IndexSettings(hnsw_ef_search=64))
    >>> ix.kind, recall_at_k(ix, v[:20], 10) >= 0.95
    ('hnsw', True)
    """
    queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    exact, _ = brute_force(index.vectors, queries, k)
    approx, _ = index.search(queries, k)
    hits = [len(np.intersect1d(a[a >= 0], e[e >= 0])) / max(int((e >= 0).sum()), 1) for a, e in zip(approx, exact, strict=True)]
    return float(np.mean(hits)) if hits else 1.0
