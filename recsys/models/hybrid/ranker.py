"""The hybrid's picks ranker: candidates per member, their pair features, and the LightGBM
classifier that scores them (the probability that the member buys the product in a label-window
long period)."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from recsys.arrays import unique_ints
from recsys.models.hybrid.params import HybridParams
from recsys.models.hybrid.state import FeatureState, gather, knn_affinity, pair_dots

PAIR_FEATURES = (
    "count", "count_rel", "count_rate", "recency14", "last_age", "cf", "buyers_rate",
    "occasions_rate", "recent_pop", "rebuy_rate", "member_days_rate", "member_last_age",
    "blend", "member_repeat_share", "category_count", "category_share", "knn", "member_occ_rate",
)


def pair_features(s: FeatureState, members: np.ndarray, products: np.ndarray) -> np.ndarray:
    """``(n_pairs, len(PAIR_FEATURES))`` float32 for (member, product) pairs, filled a column at
    a time (no float64 copy of the whole table)."""
    u, i = members.astype(np.int64), products.astype(np.int64)
    cnt = gather(s.counts, u, i)
    rel = cnt / np.maximum(s.member_max[u], 1.0)
    pop_max = max(float(s.buyers.max(initial=0)), 1.0)
    ucat = gather(s.member_cat, u, s.item_cat[i])
    columns = {
        "count": lambda: cnt, "count_rel": lambda: rel, "count_rate": lambda: cnt / np.maximum(s.member_days[u], 1.0),
        "recency14": lambda: gather(s.recency14, u, i),
        "last_age": lambda: np.where(cnt > 0, gather(s.last_age, u, i), 999.0),
        "cf": lambda: pair_dots(s, u, i), "buyers_rate": lambda: s.buyers[i] / s.span,
        "occasions_rate": lambda: s.occasions[i] / s.span, "recent_pop": lambda: s.recent_pop[i],
        "rebuy_rate": lambda: s.rebuy_rate[i], "member_days_rate": lambda: s.member_days[u] / s.span,
        "member_last_age": lambda: s.member_last[u], "blend": lambda: rel + 0.05 * s.buyers[i] / pop_max,
        "member_repeat_share": lambda: s.member_repeat[u], "category_count": lambda: ucat,
        "category_share": lambda: ucat / np.maximum(s.member_occ[u], 1.0), "knn": lambda: knn_affinity(s, u, i),
        "member_occ_rate": lambda: s.member_occ[u] / s.span,
    }
    out = np.empty((len(u), len(PAIR_FEATURES)), dtype=np.float32)
    for j, name in enumerate(PAIR_FEATURES):
        out[:, j] = columns[name]()
    return out


def candidates(s: FeatureState, users: np.ndarray, p: HybridParams) -> tuple[np.ndarray, np.ndarray]:
    """Each member's candidate products, as (row in ``users``, product) pairs: everything they
    bought, the most popular products and their nearest products by ALS score."""
    sub = s.counts[users]
    rows = [np.repeat(np.arange(len(users)), np.diff(sub.indptr))]
    cols = [sub.indices.astype(np.int64)]
    n_pop = min(p.candidates_popular, s.n_products)
    top_pop = np.argsort(-s.buyers, kind="stable")[:n_pop]
    rows.append(np.repeat(np.arange(len(users)), n_pop))
    cols.append(np.tile(top_pop, len(users)))
    n_cf = min(p.candidates_cf, s.n_products - 1)
    if n_cf > 0:
        # one thread: FAISS brings its own OpenMP runtime, whose spinning threads would fight
        # LightGBM's (and a parallel next-basket run's) for the cores
        with threadpool_limits(1):
            top = s.cf_top(users, n_cf)
        found = top.ravel() >= 0  # an approximate search may find fewer than n_cf
        rows.append(np.repeat(np.arange(len(users)), n_cf)[found])
        cols.append(top.ravel()[found].astype(np.int64))
    key = unique_ints(np.concatenate(rows).astype(np.int64) * s.n_products + np.concatenate(cols))
    return key // s.n_products, key % s.n_products


class BoosterClassifier:
    """The one method of LGBMClassifier the model uses, over the fitted or loaded Booster.

    Scores on one thread. Every caller already runs it beside other work — pre-ranking beside the
    audience evaluation, the next-basket process beside the training run, requests in the server's
    event loop — and LightGBM's OpenMP threads on top of those oversubscribe the cores: on 2 cores,
    ``recsys train`` spent ~170 CPU-seconds with two prediction threads and ~140 with one, for the
    same predictions (a tree ensemble's output does not depend on the thread count).

    Inside :meth:`compiled` the trees are compiled to machine code (lleaves, on LLVM) and score
    4-6x faster (experiments/bench_ranker.py), the same probabilities to ~1e-15: worth its few seconds of compilation for a batch
    job of tens of millions of pairs (the pre-ranked lists of a million members), not for a request.
    """

    def __init__(self, booster: Any):
        self.booster_ = booster
        self._compiled: Any = None

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        compiled = self._compiled
        if compiled is not None:
            p = compiled.predict(np.asarray(X, dtype=np.float64), n_jobs=1)
        else:
            p = self.booster_.predict(X, num_threads=1)
        return np.column_stack([1 - p, p])

    @contextlib.contextmanager
    def compiled(self) -> Iterator[None]:
        """Score with the compiled trees until the context ends (the model file lleaves reads is
        written to a temporary folder, removed before the context is entered)."""
        import lleaves  # imported here: only batch jobs compile

        with tempfile.TemporaryDirectory(prefix="recsys-ranker-") as tmp:
            path = Path(tmp) / "ranker.txt"
            path.write_text(self.booster_.model_to_string(), encoding="utf-8")
            model = lleaves.Model(model_file=str(path))
            model.compile()  # in memory: no cache file
        self._compiled = model
        try:
            yield
        finally:
            self._compiled = None


# members whose candidates are built and featurised at a time in ranker_examples: ~110
# candidates each, so ~6M (member, product) pairs per block instead of all of them at once
# (66M pairs -- several GB of keys and features -- for 600k label-window buyers)
RANKER_BLOCK_MEMBERS = 50_000


def ranker_examples(
    s: FeatureState, labels: sp.csr_matrix, rng: np.random.Generator, p: HybridParams, keep_cols: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """The ranker's rows for one label window: the candidates of every member who bought in the
    window and has a history before it, the positives (bought in the window) and a
    ``negative_rate`` sample of the others, with their features on the window's history; at
    most ``ranker_max_members`` members, a random sample (drawn from ``rng`` first).

    Built a block of members at a time; the negatives' draws come from one stream in member
    order, so the rows are the same as for all members at once."""
    users = np.where(np.diff(labels.indptr) > 0)[0]
    users = users[np.diff(s.counts.indptr)[users] > 0]  # members with a history to learn from
    if p.ranker_max_members is not None and len(users) > p.ranker_max_members:
        users = np.sort(rng.choice(users, size=p.ranker_max_members, replace=False))
    X_parts, y_parts = [], []
    for lo in range(0, max(len(users), 1), RANKER_BLOCK_MEMBERS):
        block = users[lo : lo + RANKER_BLOCK_MEMBERS]
        r, c = candidates(s, block, p)
        y = gather(labels, block[r], c) > 0
        keep = y | (rng.random(len(y)) < p.negative_rate)
        X_parts.append(pair_features(s, block[r[keep]], c[keep])[:, keep_cols])
        y_parts.append(y[keep])
    return np.vstack(X_parts), np.concatenate(y_parts)


def fit_ranker(lightgbm: Any, X: np.ndarray, y: np.ndarray, p: HybridParams) -> BoosterClassifier:
    """The picks ranker: a LightGBM classifier over the pair features (``lightgbm``: the module,
    imported beside the first label window's work)."""
    classifier = lightgbm.LGBMClassifier(
        n_estimators=p.n_estimators, learning_rate=p.learning_rate, num_leaves=p.num_leaves,
        min_child_samples=p.min_child_samples, subsample=0.8, subsample_freq=1,
        random_state=p.seed, n_jobs=max(p.num_threads, 1), verbose=-1,
        deterministic=True, force_row_wise=True,
    )
    classifier.fit(X, y)
    return BoosterClassifier(classifier.booster_)


def score_candidates(s: FeatureState, ranker: BoosterClassifier, keep_cols: np.ndarray,
                     members: np.ndarray, p: HybridParams) -> sp.csr_matrix:
    """The ranker's probabilities for each member's candidates, as a sparse ``(len(members),
    n_products)`` matrix (absent: not a candidate)."""
    r, c = candidates(s, members, p)
    prob = ranker.predict_proba(pair_features(s, members[r], c)[:, keep_cols])[:, 1]
    return sp.csr_matrix((prob.astype(np.float32), (r, c)), shape=(len(members), s.n_products))
