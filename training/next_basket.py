"""The next-basket protocol of the literature, so our numbers line up with published ones.

Basket = member + day. Members with 3-50 baskets; each member's last basket is the target and the
earlier ones are the history. Products occurring in fewer than ``min_product_baskets`` history
baskets are removed from history and target alike; members whose target is then empty drop out.
Recall@k = hits / |target|; NDCG's ideal gain runs over the whole target; PHR = hit rate.

Nothing a model sees depends on the target basket: not its items (the product filter counts
history baskets only), not its date. Each member's history is aged as of the day after the
member's own last *history* basket (age 1 = that basket), the moment a recommendation would be
asked for; the target's day, i.e. how long after that visit the next one comes, is what a model
must not know. Moving every target basket later changes no model input
(``tests/test_next_basket_protocol.py``).

Two ways to score it: every qualifying member's target (:func:`evaluate_next_basket`), and the
published *user split* (:func:`evaluate_user_split`): members shuffled into 72 / 8 / 20 % train /
validation / test in each of 5 folds with fixed seeds; models learn from every member's history
and from the train members' full sequences (their target baskets included); metrics are over the
test members, mean and standard deviation over the folds, NDCG with both normalisers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import scipy.sparse as sp

from recsys.columns import Col
from recsys.idmap import IdMap
from recsys.interactions import Interactions
from recsys.models.base import Recommender, TrainData
from training.evaluate import evaluate_picks


@dataclass(frozen=True)
class NextBasketData:
    """The protocol's data: every member's history (what models learn from) and target basket.

    ``target`` and ``gap_days`` belong to the protocol, never to a model's input on their own:
    the user split (:func:`fold_train_data`) gives the *train* members' target baskets to the
    models as part of their full sequences, aged as of the day after that basket."""

    train: TrainData
    truth: sp.csr_matrix  # members x products, the target basket
    n_members: int
    target: Interactions | None = None  # the target baskets' occasions, age 1 = the target day
    gap_days: np.ndarray | None = None  # per member: days from the last history basket to the target


def load_next_basket(
    transactions: Path,
    products_table: Path | None = None,
    min_baskets: int = 3,
    max_baskets: int = 50,
    min_product_baskets: int = 3,
) -> NextBasketData:
    con = duckdb.connect()
    con.execute(
        f"""
        CREATE TEMP TABLE lines AS
        SELECT {Col.MEMBER} AS m, {Col.PRODUCT} AS p, CAST({Col.TS} AS DATE) AS d,
               sum({Col.QUANTITY})::FLOAT AS q, sum({Col.AMOUNT})::FLOAT AS a
        FROM read_parquet(?) GROUP BY ALL
        """,
        [str(transactions)],
    )
    rows = con.execute(
        f"""
        WITH baskets AS (
            SELECT m, d, count(*) OVER (PARTITION BY m) AS n_b,
                   max(d) OVER (PARTITION BY m) AS target_day
            FROM (SELECT DISTINCT m, d FROM lines)
        ),
        kept AS (
            SELECT l.*, b.target_day, l.d = b.target_day AS is_target
            FROM lines l JOIN baskets b USING (m, d)
            WHERE b.n_b BETWEEN {int(min_baskets)} AND {int(max_baskets)}
        ),
        frequent AS (
            SELECT p FROM kept WHERE NOT is_target GROUP BY p HAVING count(*) >= {int(min_product_baskets)}
        ),
        final AS (
            SELECT k.* FROM kept k JOIN frequent USING (p)
        ),
        evaluable AS (SELECT DISTINCT m FROM final WHERE is_target)
        SELECT m, p, date_diff('day', d, last_history_day)::INTEGER + 1 AS age, q, a, is_target
        FROM final JOIN evaluable USING (m)
        JOIN (SELECT m, max(d) AS last_history_day FROM kept WHERE NOT is_target GROUP BY m) USING (m)
        """
    ).fetchnumpy()
    members = IdMap.from_values(rows["m"])
    products = IdMap.from_values(rows["p"])
    mi = members.to_index(rows["m"])
    pi = products.to_index(rows["p"])
    target = np.asarray(rows["is_target"], dtype=bool)
    hist = ~target
    interactions = Interactions.from_occasions(
        members, products, mi[hist], pi[hist], np.asarray(rows["age"])[hist],
        np.asarray(rows["q"])[hist], np.asarray(rows["a"])[hist],
        # nominal: each member has their own clock (the day after their last history basket)
        as_of=_nominal_as_of(con),
    )
    truth = sp.csr_matrix(
        (np.ones(int(target.sum()), np.float32), (mi[target], pi[target])),
        shape=(len(members), len(products)),
    )
    truth.data[:] = 1.0
    # a target occasion's age is 1 - gap (the day after the last history basket is age 0)
    gap = np.zeros(len(members), dtype=np.int64)
    gap[mi[target]] = 1 - np.asarray(rows["age"])[target]
    target_occ = Interactions.from_occasions(
        members, products, mi[target], pi[target], np.ones(int(target.sum()), np.int32),
        np.asarray(rows["q"])[target], np.asarray(rows["a"])[target], interactions.as_of,
    )
    product_tags = {}
    if products_table is not None and products_table.exists():
        from training.data import PRODUCT_ATTRIBUTES, _tags

        product_tags, _ = _tags(products_table, Col.PRODUCT, products, PRODUCT_ATTRIBUTES)
    return NextBasketData(TrainData(interactions, {}, product_tags), truth, len(members), target_occ, gap)


def _nominal_as_of(con: duckdb.DuckDBPyConnection) -> date:
    """A fixed date for :attr:`Interactions.as_of` that reads no target: the protocol ages each
    member on their own clock, so no single date is every member's; this one does not move with
    the targets (it is read from baskets before each member's last)."""
    day = con.execute(
        "SELECT max(d) FROM (SELECT m, d, max(d) OVER (PARTITION BY m) AS last FROM (SELECT DISTINCT m, d FROM lines)) "
        "WHERE d < last"
    ).fetchone()[0]
    return (day or date(1970, 1, 1)) + timedelta(days=1)


def evaluate_next_basket(model: Recommender, data: NextBasketData, ks: tuple[int, ...] = (10, 20)) -> dict[str, float]:
    seen = data.train.interactions.matrix("binary")
    return evaluate_picks(model, data.truth, seen, ks=ks, normalization="truth", ideal="full")


# ----------------------------------------------------------------------------- the user split
USER_SPLIT_SHARES = (0.72, 0.08, 0.20)  # train / validation / test members


@dataclass(frozen=True)
class UserFold:
    """One fold of the published user split: member indices of each part."""

    fold: int
    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray


def user_split_folds(
    n_members: int, folds: int = 5, seed: int = 0, shares: tuple[float, float, float] = USER_SPLIT_SHARES
) -> list[UserFold]:
    """``folds`` independent shuffles of the members into train / validation / test (72 / 8 / 20 %
    by default), fold ``f`` drawn from the fixed seed ``(seed, f)``: the same folds on every run."""
    if abs(sum(shares) - 1.0) > 1e-9 or min(shares) < 0:
        raise ValueError(f"shares must be non-negative and sum to 1; got {shares}")
    out = []
    for f in range(folds):
        perm = np.random.default_rng([seed, f]).permutation(n_members)
        n_train = int(round(shares[0] * n_members))
        n_val = int(round(shares[1] * n_members))
        out.append(UserFold(f, np.sort(perm[:n_train]), np.sort(perm[n_train : n_train + n_val]),
                            np.sort(perm[n_train + n_val :])))
    return out


def fold_train_data(data: NextBasketData, fold: UserFold) -> TrainData:
    """What models learn from on a fold: every member's history plus the train members' target
    baskets, each train member aged as of the day after their target (their full sequence).
    Validation and test members' targets stay out."""
    if data.target is None or data.gap_days is None:
        raise ValueError("this next-basket data has no target occasions; load it with load_next_basket")
    h, t = data.train.interactions, data.target
    is_train = np.zeros(data.n_members, dtype=bool)
    is_train[fold.train] = True
    shift = np.where(is_train, data.gap_days, 0)
    keep_t = is_train[t.member]
    x = Interactions.from_occasions(
        h.members, h.products,
        np.concatenate([h.member, t.member[keep_t]]), np.concatenate([h.product, t.product[keep_t]]),
        np.concatenate([h.age_days + shift[h.member], t.age_days[keep_t]]),
        np.concatenate([h.quantity, t.quantity[keep_t]]), np.concatenate([h.amount, t.amount[keep_t]]),
        h.as_of,
    )
    return TrainData(x, data.train.member_tags, data.train.product_tags, data.train.product_price,
                     data.train.category_price_bands)


def basket_metrics(
    model: Recommender, truth: sp.csr_matrix, members: np.ndarray, ks: tuple[int, ...] = (10, 20)
) -> dict[str, float]:
    """Next-basket metrics over ``members`` (replenish mode): recall@k = hits / |target|,
    ``ndcg@k`` with the ideal over the whole target (the paper's), ``ndcg_capped@k`` with the ideal
    over min(k, |target|), ``hit_rate@k`` (PHR)."""
    from recsys import metrics as M

    rows = np.asarray(members, dtype=np.int64)
    rows = rows[M.mask_nonempty(sp.csr_matrix(truth)[rows])]
    topk, _ = model.recommend(rows, k=max(ks), mode="replenish")
    t = sp.csr_matrix(truth)[rows]
    out = M.ranking_report(topk, t, ks, "truth", "full")
    capped = M.ranking_report(topk, t, ks, "truth", "min")
    out.update({f"ndcg_capped@{k}": capped[f"ndcg@{k}"] for k in ks})
    return out


def evaluate_user_split(
    make_model: Any, data: NextBasketData, folds: list[UserFold], ks: tuple[int, ...] = (10, 20),
    on_fold: Any = None,
) -> dict[str, Any]:
    """Fit ``make_model()`` on each fold (:func:`fold_train_data`) and score its test members.

    Returns ``{"folds": [per-fold metrics (validation members' under ``val_``)], "mean": {...},
    "sd": {...}}``; the sd is over folds (ddof 1)."""
    per_fold: list[dict[str, float]] = []
    for fold in folds:
        model = make_model().fit(fold_train_data(data, fold))
        m = basket_metrics(model, data.truth, fold.test, ks)
        if len(fold.validation):
            m.update({f"val_{k}": v for k, v in basket_metrics(model, data.truth, fold.validation, ks).items()})
        m["fold"] = float(fold.fold)
        per_fold.append(m)
        if on_fold is not None:
            on_fold(fold, m)
    keys = [k for k in per_fold[0] if k != "fold"]
    mean = {k: float(np.mean([f[k] for f in per_fold])) for k in keys}
    sd = {k: float(np.std([f[k] for f in per_fold], ddof=1)) if len(per_fold) > 1 else 0.0 for k in keys}
    return {"folds": per_fold, "mean": mean, "sd": sd}
