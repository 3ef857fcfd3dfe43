"""The scorer layer: the one thing routes ask for scores, whatever the model is.

* :class:`VectorScorer` — models that declare member and product vectors
  (:attr:`~recsys.models.base.Capability.VECTORS`: ALS, BPR, Spark ALS, any model of the same
  shape). Picks, audiences and similar products are FAISS searches (:mod:`serving.index`); a live
  purchase folds the member's vector in again by the model's own equations
  (:attr:`~recsys.models.base.Capability.FOLD_IN`), so the next request already reflects it.
* :class:`ModelScorer` — every other :class:`~recsys.models.base.Recommender`: the model's own
  ``recommend`` / ``audience`` / ``member_scores`` / ``similar_items``, which score densely.

Both answer in internal indices with ``-1`` / ``-inf`` padding, and both take the same inputs: a
mask of allowed products and, per member, the products to leave out (what they bought, in
discover mode), so the service above has one code path per route.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import scipy.sparse as sp

from recsys.ann import AnnIndex, model_vectors
from recsys.models.base import NEG_INF, Capability, ProductDescription, Recommender, topk_rows
from serving.index import VectorIndex, _sort_candidates
from serving.settings import IndexSettings


def drop_seen(
    idx: np.ndarray, sc: np.ndarray, seen: list[np.ndarray], k: int, n_products: int
) -> tuple[np.ndarray, np.ndarray]:
    """Remove, per row, the product indices listed in ``seen[row]`` and keep the best ``k``.

    Vectorised: (row, product) pairs are encoded as one integer and looked up with ``np.isin``.
    """
    if any(len(s) for s in seen):
        seen_keys = np.concatenate(
            [r * n_products + np.asarray(s, dtype=np.int64) for r, s in enumerate(seen)]
        )
        keys = np.arange(len(idx), dtype=np.int64)[:, None] * n_products + idx
        hit = np.isin(keys, seen_keys) & (idx >= 0)
        idx = np.where(hit, -1, idx)
        sc = np.where(hit, NEG_INF, sc)
    return _sort_candidates(idx, sc, k)


class Scorer(ABC):
    """What the service asks of a model. Indices are internal; -1 / -inf pad short answers."""

    kind: str = ""

    def __init__(self, model: Recommender):
        self.model = model

    @property
    @abstractmethod
    def n_members(self) -> int:
        """Members this scorer can personalise for (bundle members + folded-in new ones)."""

    @abstractmethod
    def picks(
        self, members: np.ndarray, k: int, allowed: np.ndarray | None, seen: list[np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` allowed products per member, leaving out ``seen[i]`` for member ``i``."""

    @abstractmethod
    def audience(
        self, products: np.ndarray, n: int, member_mask: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``n`` members for the product group ``products`` (one product, or the reference
        products of a product not yet sold) among ``member_mask``; shapes ``(n,)``."""

    def described_audience(
        self, product: ProductDescription, n: int, member_mask: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``n`` members for a product described by attributes, scored by the model itself
        (``Capability.ATTRIBUTE_AUDIENCE``: :meth:`~recsys.models.base.Recommender.described_audience`,
        what the report's by-attributes audiences rank by) among ``member_mask``; shapes ``(n,)``.
        The same for every scorer: the model scores its own members (a member folded in live
        has no row of the model, so no score)."""
        mask = None if member_mask is None else member_mask[: self.model.n_members]
        idx, sc = self.model.described_audience([product], n, member_mask=mask)
        return idx[0], sc[0]

    @abstractmethod
    def similar(self, product: int, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` products most similar to ``product`` (never itself); shapes ``(k,)``."""

    @abstractmethod
    def item_similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Cosine similarity ``(len(a), len(b))`` between products, for pick reasons."""

    def fold_in(self, member: int, products: np.ndarray, weights: np.ndarray) -> bool:
        """Recompute (or add, when ``member == n_members``) a member's vector from what they
        bought; False when the model has no member vectors to fold in."""
        return False

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind}


class VectorScorer(Scorer):
    """FAISS search over the model's member and product vectors (scores = dot products)."""

    kind = "vectors"

    def __init__(self, model: Recommender, users: np.ndarray, items: np.ndarray, settings: IndexSettings,
                 indexes: dict[str, AnnIndex] | None = None):
        super().__init__(model)
        self.items = np.ascontiguousarray(items, dtype=np.float32)
        norms = np.linalg.norm(self.items, axis=1, keepdims=True) + 1e-9
        self.items_unit = (self.items / norms).astype(np.float32)
        # the bundle's indexes when it carries them (built when it was made, memory-mapped), else
        # built here; each calibrated with what searches it: audiences ask the member index with
        # product vectors, picks the product index with member vectors
        built = indexes or {}
        self.member_index = VectorIndex(users, exact_max=settings.exact_max_members, settings=settings,
                                        prebuilt=built.get("members"), queries=self.items)
        self.product_index = VectorIndex(self.items, exact_max=settings.exact_max_products, settings=settings,
                                         prebuilt=built.get("products"), queries=users)
        self.similar_index = VectorIndex(self.items_unit, exact_max=settings.exact_max_products, settings=settings,
                                         prebuilt=built.get("similar"), queries=self.items_unit)
        self.folds_in = model.has(Capability.FOLD_IN)

    @property
    def n_members(self) -> int:
        return len(self.member_index)

    def picks(
        self, members: np.ndarray, k: int, allowed: np.ndarray | None, seen: list[np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        extra = max((len(s) for s in seen), default=0)
        queries = self.member_index.vectors[np.asarray(members, dtype=np.int64)]
        idx, sc = self.product_index.search(queries, min(k + extra, len(self.items)), allowed)
        return drop_seen(idx, sc, seen, k, len(self.items))

    def audience(
        self, products: np.ndarray, n: int, member_mask: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        # one product's vector, or the mean of the reference products'
        vector = self.items[np.asarray(products, dtype=np.int64)].mean(axis=0)
        idx, sc = self.member_index.search(np.asarray(vector, np.float32)[None, :], n, member_mask)
        return idx[0], sc[0]

    def similar(self, product: int, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        keep = np.ones(len(self.items), dtype=bool) if allowed is None else allowed.copy()
        keep[product] = False
        idx, sc = self.similar_index.search(self.items_unit[product][None, :], k, keep)
        return idx[0], sc[0]

    def item_similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return self.items_unit[np.asarray(a, np.int64)] @ self.items_unit[np.asarray(b, np.int64)].T

    def fold_in(self, member: int, products: np.ndarray, weights: np.ndarray) -> bool:
        if not self.folds_in:
            return False
        products = np.asarray(products, dtype=np.int64)
        vector = np.asarray(self.model.fold_in_member(products, np.asarray(weights, np.float32)), dtype=np.float32)
        self.member_index.set(member, vector)
        return True

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "members": self.member_index.describe(),
            "products": self.product_index.describe(),
            "similar_products": self.similar_index.describe(),
        }


class ModelScorer(Scorer):
    """The model's own dense scoring, for models without member and product vectors."""

    kind = "model"

    def __init__(self, model: Recommender):
        super().__init__(model)
        history = sp.csc_matrix(model.history, dtype=np.float32)
        self._buyers = history
        self._buyer_norms = np.sqrt(np.asarray(history.multiply(history).sum(axis=0)).ravel()) + 1e-9
        vectors = model.item_vectors() if model.has(Capability.ITEM_VECTORS) else None
        self._unit = None
        self._vecs: np.ndarray | None = None
        if vectors is not None:
            v = np.asarray(vectors, dtype=np.float32)
            self._unit = v / (np.linalg.norm(v, axis=1, keepdims=True) + 1e-9)
            # the model's own cosine (Recommender.similar_items), computed the same way, for similar()
            self._vecs, self._norms = v, np.linalg.norm(v, axis=1) + 1e-9

    @property
    def n_members(self) -> int:
        return self.model.n_members

    def picks(
        self, members: np.ndarray, k: int, allowed: np.ndarray | None, seen: list[np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        extra = max((len(s) for s in seen), default=0)
        include = None if allowed is None else np.flatnonzero(allowed)
        k_fetch = min(k + extra, self.model.n_products)
        idx, sc = self.model.recommend(np.asarray(members, np.int64), k_fetch, mode="replenish", include=include)
        return drop_seen(idx, sc, seen, k, self.model.n_products)

    def audience(
        self, products: np.ndarray, n: int, member_mask: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        products = np.asarray(products, dtype=np.int64)
        mask = None if member_mask is None else member_mask[: self.model.n_members]
        if len(products) == 1:
            idx, sc = self.model.audience(products, n, member_mask=mask)
            return idx[0], sc[0]
        # a product not yet sold: the mean of its reference products' scores
        total = np.zeros((1, self.model.n_members), dtype=np.float64)
        for start in range(0, len(products), 8):  # bounded memory: 8 dense member rows at a time
            chunk = np.asarray(self.model.member_scores(products[start : start + 8]), dtype=np.float64)
            total += np.where(np.isfinite(chunk), chunk, 0.0).sum(axis=0, keepdims=True)
        scores = (total / len(products)).astype(np.float32)
        if mask is not None:
            scores = scores.copy()
            scores[:, ~mask] = NEG_INF
        idx, sc = topk_rows(scores, n)
        return idx[0], sc[0]

    def similar(self, product: int, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        if self._vecs is not None:
            # one cosine row (as Recommender.similar_items computes it), masked before the top-k:
            # asking the model for all n_products ranked, to filter afterwards, cost a full sort
            # (~8 ms p50 for Ta-Feng's 24k products; this is ~0.4 ms). Same answers, ties included.
            v, norms = self._vecs, self._norms
            sims = ((v[product][None, :] @ v.T) / norms[product] / norms[None, :]).astype(np.float32)[0]
            sims[product] = NEG_INF
            if allowed is not None:
                sims[~allowed[: len(sims)]] = NEG_INF
            kk = min(k, len(sims))
            if kk == 0:
                return np.full(k, -1, np.int64), np.full(k, NEG_INF, np.float32)
            kth = np.partition(sims, len(sims) - kk)[len(sims) - kk]
            cand = np.flatnonzero(sims >= kth)  # every tie of the k-th score: lowest index wins below
            top = cand[np.lexsort((cand, -sims[cand]))[:kk]]
            idx, sc = top.astype(np.int64), sims[top]
            idx[~np.isfinite(sc)] = -1
            if kk < k:
                idx = np.pad(idx, (0, k - kk), constant_values=-1)
                sc = np.pad(sc, (0, k - kk), constant_values=NEG_INF)
            return idx, sc
        k_fetch = self.model.n_products if allowed is not None else min(k, self.model.n_products)
        idx, sc = self.model.similar_items(np.array([product]), k_fetch)
        idx, sc = idx[0], sc[0]
        if allowed is not None:
            ok = (idx >= 0) & allowed[np.maximum(idx, 0)]
            idx, sc = idx[ok], sc[ok]
        idx, sc = idx[:k], sc[:k]
        if len(idx) < k:
            idx = np.pad(idx, (0, k - len(idx)), constant_values=-1)
            sc = np.pad(sc, (0, k - len(sc)), constant_values=NEG_INF)
        return idx, sc

    def item_similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
        if self._unit is not None:
            return self._unit[a] @ self._unit[b].T
        # co-purchase cosine over the buyer sets
        co = (self._buyers[:, a].T @ self._buyers[:, b]).toarray()
        return (co / self._buyer_norms[a][:, None] / self._buyer_norms[b][None, :]).astype(np.float32)


def build_scorer(model: Recommender, settings: IndexSettings, indexes: dict[str, AnnIndex] | None = None) -> Scorer:
    """A :class:`VectorScorer` when the model has member and product vectors, else a
    :class:`ModelScorer`; ``indexes``: the bundle's prebuilt FAISS indexes (:mod:`recsys.ann`)."""
    vecs = model_vectors(model)
    if vecs is not None:
        return VectorScorer(model, vecs[0], vecs[1], settings, indexes)
    return ModelScorer(model)
