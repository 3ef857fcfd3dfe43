"""The next-basket protocol of the literature, so our numbers line up with published ones.

Basket = member + day. Members with 3-50 baskets; each member's last basket is the target and the
earlier ones are the history. Products occurring in fewer than ``min_product_baskets`` history
baskets are removed from history and target alike; members whose target is then empty drop out.
Recall@k = hits / |target|; NDCG's ideal gain runs over the whole target; PHR = hit rate.
Each member's history is aged relative to their own target day.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

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
    train: TrainData
    truth: sp.csr_matrix  # members x products, the target basket
    n_members: int


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
        SELECT m, p, date_diff('day', d, target_day)::INTEGER AS age, q, a, is_target
        FROM final JOIN evaluable USING (m)
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
        as_of=date.today(),  # each member is aged relative to their own target day
    )
    truth = sp.csr_matrix(
        (np.ones(int(target.sum()), np.float32), (mi[target], pi[target])),
        shape=(len(members), len(products)),
    )
    truth.data[:] = 1.0
    product_tags = {}
    if products_table is not None and products_table.exists():
        from training.data import PRODUCT_ATTRIBUTES, _tags

        product_tags, _ = _tags(products_table, Col.PRODUCT, products, PRODUCT_ATTRIBUTES)
    return NextBasketData(TrainData(interactions, {}, product_tags), truth, len(members))


def evaluate_next_basket(model: Recommender, data: NextBasketData, ks: tuple[int, ...] = (10, 20)) -> dict[str, float]:
    seen = data.train.interactions.matrix("binary")
    return evaluate_picks(model, data.truth, seen, ks=ks, normalization="truth", ideal="full")
