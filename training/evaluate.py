"""Honest evaluation in both directions on a temporal split, and the next-basket protocol.

Temporal split: the model sees purchases before the cutoff (and features as of the cutoff); the
truth is what members known at the cutoff bought in the test window.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date
from functools import partial
from typing import Any

import numpy as np
import scipy.sparse as sp

from recsys import metrics as M
from recsys.interactions import Interactions
from recsys.models.base import Capability, Recommender, TrainData
from recsys.precompute import PreRanked


@dataclass(frozen=True)
class Split:
    """Train occasions and the test truth on the same member / product indices."""

    train: Interactions
    test: Interactions  # occasions in the test window, members restricted to train members
    cutoff: date
    end: date

    def truth(self) -> sp.csr_matrix:
        return self.test.matrix("binary")

    def seen(self) -> sp.csr_matrix:
        return self.train.matrix("binary")


def evaluate_picks(
    model: Recommender,
    truth: sp.csr_matrix,
    seen: sp.csr_matrix,
    ks: tuple[int, ...] = (10, 20),
    normalization: M.Normalization = "min",
    ideal: str = "min",
    members: np.ndarray | None = None,
    pre_ranked: PreRanked | None = None,
) -> dict[str, float]:
    """Person -> product metrics over members with a non-empty truth (replenish mode: buying
    again what one bought before is a hit), also split into repeat vs new-to-member products.

    ``pre_ranked``: the model's lists from :func:`recsys.precompute.pre_rank` (checked there to
    equal ``model.recommend``); their heads are used instead of ranking the members again."""
    rows = np.where(M.mask_nonempty(truth))[0] if members is None else np.asarray(members)
    t = sp.csr_matrix(truth)[rows]
    kmax = max(ks)
    if pre_ranked is not None and "replenish" in pre_ranked.modes and kmax <= pre_ranked.n:
        topk = pre_ranked.indices["replenish"][rows, :kmax].astype(np.int64)
    else:
        topk, _ = model.recommend(rows, k=kmax, mode="replenish")
    out = M.ranking_report(topk, t, ks, normalization, ideal)  # type: ignore[arg-type]
    for k in ks:
        out[f"coverage@{k}"] = M.coverage_at_k(topk, truth.shape[1], k)
    s = sp.csr_matrix(seen)[rows].astype(bool)
    repeat = t.multiply(s).tocsr()
    new = (t - repeat).tocsr()
    new.eliminate_zeros()
    for name, part in (("repeat", repeat), ("new", new)):
        rep = M.ranking_report(topk, part, ks, normalization, ideal)  # type: ignore[arg-type]
        out.update({f"{name}_{k}": v for k, v in rep.items()})
    return out


def evaluate_audiences(
    model: Recommender,
    truth: sp.csr_matrix,
    seen: sp.csr_matrix,
    sizes: tuple[int, ...] = (100, 1000, 5000),
    min_buyers_known: int = 5,
    min_buyers_new: int = 3,
    reference: Recommender | np.ndarray | None = None,
    progress: Callable[..., None] | None = None,
    batch: int = 500,
    max_products: int | None = None,
    seed: int = 0,
    catalogue: TrainData | None = None,
    workers: int = 1,
) -> dict[str, float]:
    """Product -> person: for every product bought in the test window by enough known members,
    rank all members; recall@N is the share of its test buyers inside the top N.

    Reported separately for products sold before the cutoff (``known_``), never sold before
    (``new_``), and the same never-sold products scored from their attributes alone (``attr_``, as
    for a product not yet in the catalogue: for a model that declares
    ``Capability.ATTRIBUTE_AUDIENCE``, each product's category, price and brand from ``catalogue``
    (the data the model was trained on) through
    :meth:`~recsys.models.base.Recommender.described_audience`, what the server answers a request
    by attributes with; otherwise, or without ``catalogue``,
    :meth:`~recsys.models.base.Recommender.attribute_audience`), with lift over a random audience (N / n_members) and, when ``reference`` is given
    (a model, or a fixed member ranking such as the most active members first), over that
    audience. A model with calibrated audience scores (``Capability.PROBABILITIES``) also gets
    ``expected_over_actual@N``: the expected buyers of its audiences (the sum of their members'
    purchase probabilities) over the test buyers in them, summed over the products.

    ``max_products``: score at most this many products per group, a random sample (``seed``) of
    the eligible ones (the attribute audiences score the never-sold sample). Scoring one product
    ranks every member, so the work grows with products x members; ``audience_{group}_n_products``
    counts the eligible products and ``audience_{group}_n_scored`` the ones scored (equal without a
    sample). ``progress(done, total)`` is called as products are scored, ``batch`` at a time (the
    audiences are the same whatever the batch). ``workers``: threads ranking batches side by side
    (scoring is NumPy / SciPy calls that release the GIL and only read the fitted model; the
    batches come back in order, so the metrics do not depend on it).
    """
    buyers = sp.csc_matrix(truth)
    n_buyers = np.diff(buyers.indptr)
    sold_before = np.diff(sp.csc_matrix(seen).indptr) > 0
    n_members = truth.shape[0]
    new = np.where(~sold_before & (n_buyers >= min_buyers_new))[0]
    groups = {
        "known": (np.where(sold_before & (n_buyers >= min_buyers_known))[0], model.audience),
        "new": (new, model.audience),
        "attr": (new, model.attribute_audience),
    }
    if catalogue is not None and model.has(Capability.ATTRIBUTE_AUDIENCE):
        def by_attributes(products: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
            return model.described_audience(catalogue.describe(products), n=n)

        groups["attr"] = (new, by_attributes)
    truth_t = sp.csr_matrix(buyers.T)  # products x members
    out: dict[str, float] = {}
    nmax = min(max(sizes), n_members)
    rng = np.random.default_rng([seed, 16])
    eligible = {group: products for group, (products, _) in groups.items()}
    for group in ("known", "new"):
        products, rank = groups[group]
        if max_products is not None and len(products) > max_products:
            groups[group] = (np.sort(rng.choice(products, size=max_products, replace=False)), rank)
    groups["attr"] = (groups["new"][0], groups["attr"][1])  # the same never-sold products as by id
    total = sum(len(p) for p, _ in groups.values())
    done = 0
    if progress is not None:
        progress(0, total)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for group, (products, rank) in groups.items():
            out[f"audience_{group}_n_products"] = float(len(eligible[group]))
            out[f"audience_{group}_n_scored"] = float(len(products))
            if len(products) == 0:
                continue
            # in the model's batch order across the calls (the metrics are means over products)
            order = model.audience_batch_order(products)
            if order is not None:
                products = products[order]
            parts, scores = [], []
            blocks = [products[start : start + batch] for start in range(0, len(products), batch)]
            for idx, sc in pool.map(partial(rank, n=nmax), blocks):
                parts.append(idx)
                scores.append(sc)
                done += len(idx)
                if progress is not None:
                    progress(done, total)
            top = np.concatenate(parts)
            ref_top = None
            if isinstance(reference, Recommender):
                ref_top = reference.audience(products, n=nmax)[0]
            t = truth_t[products]
            prob = None
            if model.has(Capability.PROBABILITIES):
                sc = np.concatenate(scores)
                prob = np.where((top >= 0) & np.isfinite(sc), model.purchase_probability(np.where(np.isfinite(sc), sc, 0.0)), 0.0)
                # the rank (1-based) at which each test buyer appears in the product's audience
                ok = top >= 0
                placed = sp.csr_matrix((np.broadcast_to(np.arange(1, top.shape[1] + 1), top.shape)[ok],
                                        (np.nonzero(ok)[0], top[ok])), shape=t.shape)
                hit_rank = placed.multiply(t.astype(bool)).tocsr().data
            for n in sizes:
                n_eff = min(n, n_members)
                recall = M.recall_at_k(top, t, n_eff, "truth").mean()
                out[f"audience_{group}_recall@{n}"] = float(recall)
                out[f"audience_{group}_lift_random@{n}"] = float(recall / (n_eff / n_members))
                if prob is not None:
                    actual = float(np.count_nonzero(hit_rank <= n_eff))
                    out[f"audience_{group}_expected_buyers@{n}"] = float(prob[:, :n_eff].sum())
                    out[f"audience_{group}_actual_buyers@{n}"] = actual
                    out[f"audience_{group}_expected_over_actual@{n}"] = (
                        float(prob[:, :n_eff].sum() / actual) if actual > 0 else float("nan"))
                if reference is None:
                    continue
                if ref_top is not None:
                    ref = M.recall_at_k(ref_top, t, n_eff, "truth").mean()
                else:  # the same members for every product: count its buyers among them
                    in_top = np.zeros(n_members, dtype=bool)
                    in_top[np.asarray(reference)[:n_eff]] = True
                    sizes_t = M.truth_sizes(t)
                    ref = float(np.mean(np.asarray(t[:, in_top].sum(axis=1)).ravel() / np.maximum(sizes_t, 1)))
                out[f"audience_{group}_lift_most_active@{n}"] = float(recall / ref) if ref > 0 else float("nan")
    return out


def summarize(metrics: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: metrics.get(k) for k in keys}
