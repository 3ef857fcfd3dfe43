"""Evaluation: the temporal split leaks nothing, both evaluators on hand-computed rankings, and the
next-basket protocol on a hand-made transactions file."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
from helpers_data import literal_data

from features.build import build_features
from features.config import FeatureConfig
from recsys.interactions import WEIGHTINGS
from recsys.models import Recommender, TrainData, get_model
from recsys.models.base import Capability
from recsys.precompute import PreRanked, pre_rank
from training.data import DataPaths, load_split
from training.evaluate import evaluate_audiences, evaluate_picks
from training.next_basket import evaluate_next_basket, load_next_basket

D2 = 1 / np.log2(3)  # discount of rank 2

TX_SCHEMA = pa.schema([
    ("member_id", pa.string()), ("product_id", pa.string()), ("ts", pa.timestamp("us")),
    ("quantity", pa.float64()), ("amount", pa.float64()), ("unit_price", pa.float64()),
    ("cost", pa.float64()), ("channel", pa.string()), ("store_id", pa.string()),
    ("basket_id", pa.string()),
])
PRODUCT_SCHEMA = pa.schema([
    ("product_id", pa.string()), ("category", pa.string()), ("price", pa.float64()),
    ("brand", pa.string()), ("name", pa.string()), ("launched_at", pa.timestamp("us")),
])
MEMBER_SCHEMA = pa.schema([
    ("member_id", pa.string()), ("joined_at", pa.timestamp("us")), ("age_group", pa.string()),
    ("region", pa.string()),
])


def tx(member: str, product: str, ts: datetime, quantity: float = 1.0, amount: float = 10.0) -> dict[str, Any]:
    return {"member_id": member, "product_id": product, "ts": ts, "quantity": quantity, "amount": amount,
            "unit_price": amount / quantity, "cost": None, "channel": "store", "store_id": "s1",
            "basket_id": f"{member}-{ts:%Y%m%d}"}


# ------------------------------------------------------------------------------ temporal split
CUTOFF, END = date(2001, 2, 1), date(2001, 3, 1)
PRODUCTS = [("0100", "A"), ("0200", "A"), ("0300", "B"), ("0400", "B"), ("0500", "B")]  # 0400 never sold
MEMBERS = ["001", "002", "003", "004", "005", "006"]  # 005 never buys; 004, 006 only after the cutoff
BEFORE = [
    tx("001", "0100", datetime(2001, 1, 10, 12)),
    tx("001", "0100", datetime(2001, 1, 20, 12)),
    tx("001", "0200", datetime(2001, 1, 31, 23, 59, 59)),  # the last second before the cutoff: age 1
    tx("002", "0300", datetime(2001, 1, 5, 9)),
    tx("003", "0100", datetime(2000, 12, 20, 9)),
]
AFTER = [
    tx("001", "0200", datetime(2001, 2, 1, 0, 0)),  # exactly at the cutoff: test, not train
    tx("002", "0500", datetime(2001, 2, 10, 9)),    # a product first sold after the cutoff
    tx("004", "0100", datetime(2001, 2, 3, 9)),     # a member unknown at the cutoff
    tx("003", "0300", datetime(2001, 3, 1, 0, 0)),  # exactly at the end: outside the window
    tx("001", "0300", datetime(2001, 3, 5, 9)),
]
EXTRA_AFTER = [  # more future purchases: must change nothing in training
    tx("003", "0100", datetime(2001, 2, 15, 9)),
    tx("001", "0100", datetime(2001, 2, 1, 0, 0)),
    tx("006", "0400", datetime(2001, 2, 2, 9)),
]


def write_canonical(folder: Path, lines: list[dict[str, Any]]) -> DataPaths:
    canonical = folder / "canonical"
    canonical.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(lines, schema=TX_SCHEMA), canonical / "transactions.parquet")
    pq.write_table(pa.Table.from_pylist(
        [{"product_id": p, "category": c, "price": 10.0, "brand": None, "name": p, "launched_at": None}
         for p, c in PRODUCTS], schema=PRODUCT_SCHEMA), canonical / "products.parquet")
    pq.write_table(pa.Table.from_pylist(
        [{"member_id": m, "joined_at": datetime(2000, 1, 1), "age_group": "30-39", "region": "north"}
         for m in MEMBERS], schema=MEMBER_SCHEMA), canonical / "members.parquet")
    features = folder / "features"
    build_features(canonical, features, CUTOFF, FeatureConfig(), memory_limit="1GB", threads=1)
    return DataPaths(canonical, features)


@pytest.fixture(scope="module")
def split_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[DataPaths, DataPaths]:
    root = tmp_path_factory.mktemp("split")
    return write_canonical(root / "base", BEFORE + AFTER), write_canonical(root / "more", BEFORE + AFTER + EXTRA_AFTER)


def test_split_train_has_nothing_on_or_after_the_cutoff(split_dirs):
    data, split = load_split(split_dirs[0], CUTOFF, END)
    x = data.interactions
    assert x.as_of == CUTOFF and (x.age_days >= 1).all()
    assert x.members.external_ids.tolist() == ["001", "002", "003"]  # buyers before the cutoff
    # the whole catalogue, sold or not
    assert x.products.external_ids.tolist() == ["0100", "0200", "0300", "0400", "0500"]
    assert x.matrix("count").toarray().tolist() == [[2, 1, 0, 0, 0], [0, 0, 1, 0, 0], [1, 0, 0, 0, 0]]
    assert x.last_age().toarray().tolist() == [[12, 1, 0, 0, 0], [0, 0, 27, 0, 0], [43, 0, 0, 0, 0]]
    assert (split.seen() != x.matrix("binary")).nnz == 0
    # product tags from the snapshot, aligned with the catalogue
    assert data.product_tags["category"].values().tolist() == ["A", "A", "B", "B", "B"]
    assert set(data.member_tags) >= {"value_segment", "lifecycle"}
    assert all(len(t.codes) == 3 for t in data.member_tags.values())


def test_split_truth_is_the_test_window_of_members_known_at_the_cutoff(split_dirs):
    _, split = load_split(split_dirs[0], CUTOFF, END)
    assert (split.cutoff, split.end) == (CUTOFF, END)
    assert split.test.members == split.train.members and split.test.products == split.train.products
    # 001 bought 0200 at the cutoff's midnight; 002 bought the new 0500; 004 (unknown) is left out;
    # 003's purchase exactly at the end and 001's after it are outside the window
    assert split.truth().toarray().tolist() == [[0, 1, 0, 0, 0], [0, 0, 0, 0, 1], [0, 0, 0, 0, 0]]


def test_a_purchase_after_the_cutoff_changes_no_train_matrix(split_dirs):
    base, more = (load_split(p, CUTOFF, END)[0] for p in split_dirs)
    a, b = base.interactions, more.interactions
    assert a.members == b.members and a.products == b.products
    for w in WEIGHTINGS:
        assert (a.matrix(w) != b.matrix(w)).nnz == 0, w
    assert (a.last_age() != b.last_age()).nnz == 0
    for name in set(base.member_tags) | set(more.member_tags):
        np.testing.assert_array_equal(base.member_tags[name].values(), more.member_tags[name].values())
    for name in set(base.product_tags) | set(more.product_tags):
        np.testing.assert_array_equal(base.product_tags[name].values(), more.product_tags[name].values())
    # while the test truth does see the extra purchases
    _, s_more = load_split(split_dirs[1], CUTOFF, END)
    assert s_more.truth().toarray().tolist() == [[1, 1, 0, 0, 0], [0, 0, 0, 0, 1], [1, 0, 0, 0, 0]]


def test_load_split_needs_a_features_snapshot(tmp_path, split_dirs):
    from recsys.errors import InputError

    with pytest.raises(InputError, match="features"):
        load_split(DataPaths(split_dirs[0].canonical, tmp_path / "nothing"), CUTOFF, END)


def test_load_split_refuses_a_features_snapshot_from_another_date(tmp_path, split_dirs):
    from recsys.errors import InputError

    later = tmp_path / "features-later"
    build_features(split_dirs[0].canonical, later, END, FeatureConfig(), memory_limit="1GB", threads=1)
    with pytest.raises(InputError, match="as.of|as_of"):
        load_split(DataPaths(split_dirs[0].canonical, later), CUTOFF, END)


# ------------------------------------------------------------------------------ evaluators
class FixedScores(Recommender):
    """A model whose scores are a given members x products table (not registered: no name)."""

    def __init__(self, table: np.ndarray):
        super().__init__()
        self.table = np.asarray(table, dtype=np.float32)

    def _fit(self, data: TrainData) -> None:
        assert self.table.shape == (data.n_members, data.n_products)

    def _score_items(self, members: np.ndarray) -> np.ndarray:
        return self.table[members]

    def _score_members(self, products: np.ndarray) -> np.ndarray:
        return self.table.T[products]


def ranked(orders: list[list[int]], n: int) -> np.ndarray:
    """A score table in which row r ranks ``orders[r]`` first, in that order, then the rest by index."""
    table = np.zeros((len(orders), n), dtype=np.float32)
    for r, order in enumerate(orders):
        rest = [i for i in range(n) if i not in order]
        for pos, i in enumerate([*order, *rest]):
            table[r, i] = n - pos
    return table


# seen (train): m0 {p0, p1}, m1 {p2}, m2 {p3}, m3 {p0}
PICK_SEEN = [(0, 0, 5), (0, 1, 5), (1, 2, 5), (2, 3, 5), (3, 0, 5)]
# truth: m0 {p0 (repeat), p3 (new)}, m1 {p2 (repeat)}, m2 {p3 (repeat), p0, p1 (new)}, m3 {}
PICK_TRUTH = sp.csr_matrix(np.array([
    [1, 0, 0, 1, 0, 0],
    [0, 0, 1, 0, 0, 0],
    [1, 1, 0, 1, 0, 0],
    [0, 0, 0, 0, 0, 0],
], dtype=np.float32))
# top-2: m0 [p0, p2] m1 [p4, p2] m2 [p1, p4] m3 [p1, p2]
PICK_ORDERS = [[0, 2, 1, 3], [4, 2, 5], [1, 4, 3], [1, 2, 3]]


@pytest.fixture
def pick_model() -> tuple[FixedScores, sp.csr_matrix]:
    data = literal_data(PICK_SEEN, 4, 6)
    return FixedScores(ranked(PICK_ORDERS, 6)).fit(data), data.interactions.matrix("binary")


def test_evaluate_picks_hand_computed(pick_model):
    model, seen = pick_model
    out = evaluate_picks(model, PICK_TRUTH, seen, ks=(2,))
    # m3 has no truth: 3 queries. hits in the top 2: m0 {p0} of 2, m1 {p2} of 1, m2 {p1} of 3
    assert out["n_queries"] == 3
    assert out["recall@2"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)  # / min(2, |truth|)
    assert out["ndcg@2"] == pytest.approx((1 / (1 + D2) + D2 + 1 / (1 + D2)) / 3)
    assert out["precision@2"] == pytest.approx(1 / 2)
    assert out["hit_rate@2"] == 1.0
    assert out["map@2"] == pytest.approx((1 / 2 + 1 / 2 + 1 / 2) / 3)
    assert out["coverage@2"] == pytest.approx(4 / 6)  # {p0, p1, p2, p4}
    # repeat truth: m0 {p0} hit, m1 {p2} hit, m2 {p3} missed
    assert out["repeat_n_queries"] == 3
    assert out["repeat_recall@2"] == pytest.approx(2 / 3)
    assert out["repeat_ndcg@2"] == pytest.approx((1 + D2 + 0) / 3)
    # new truth: m0 {p3} missed, m1 none (dropped), m2 {p0, p1}: p1 at rank 1
    assert out["new_n_queries"] == 2
    assert out["new_recall@2"] == pytest.approx((0 + 1 / 2) / 2)
    assert out["new_hit_rate@2"] == pytest.approx(1 / 2)


def test_evaluate_picks_truth_normalisation_and_member_subset(pick_model):
    model, seen = pick_model
    out = evaluate_picks(model, PICK_TRUTH, seen, ks=(2,), normalization="truth", ideal="full")
    assert out["recall@2"] == pytest.approx((1 / 2 + 1 + 1 / 3) / 3)
    # m2: DCG 1 over the ideal of all 3 relevant positions
    assert out["ndcg@2"] == pytest.approx((1 / (1 + D2) + D2 + 1 / (1 + D2 + 0.5)) / 3)
    only = evaluate_picks(model, PICK_TRUTH, seen, ks=(2,), members=np.array([1]))
    assert only["n_queries"] == 1 and only["recall@2"] == 1.0 and only["coverage@2"] == pytest.approx(2 / 6)


def test_evaluate_picks_from_pre_ranked_lists(pick_model):
    # the lists' heads are the replenish rankings: the same metrics without ranking again; lists
    # too short for the largest k are not used
    model, seen = pick_model
    lists = pre_rank(model, n=3)
    direct = evaluate_picks(model, PICK_TRUTH, seen, ks=(1, 2))
    assert evaluate_picks(model, PICK_TRUTH, seen, ks=(1, 2), pre_ranked=lists) == direct
    wrong = PreRanked({m: np.zeros_like(v) for m, v in lists.indices.items()}, lists.scores)
    assert evaluate_picks(model, PICK_TRUTH, seen, ks=(1, 2), pre_ranked=wrong) != direct
    assert evaluate_picks(model, PICK_TRUTH, seen, ks=(1, 4), pre_ranked=wrong) == evaluate_picks(
        model, PICK_TRUTH, seen, ks=(1, 4))


def test_evaluate_picks_uses_replenish_mode(pick_model):
    # m0's best product p0 was bought before: buying it again is a hit
    model, seen = pick_model
    truth = sp.csr_matrix(np.array([[1, 0, 0, 0, 0, 0]] + [[0] * 6] * 3, dtype=np.float32))
    assert evaluate_picks(model, truth, seen, ks=(1,))["recall@1"] == 1.0


# 10 members x 3 products. Sold before the cutoff: p0 (m4), p2 (m5); p1 never.
AUD_SEEN = [(4, 0, 3), (5, 2, 3)]
# test buyers: p0 {m1, m3, m7}; p1 (new) {m2, m9}; p2 {m0}: too few buyers to be evaluated
AUD_TRUTH = sp.csc_matrix(
    (np.ones(6, np.float32), ([1, 3, 7, 2, 9, 0], [0, 0, 0, 1, 1, 2])), shape=(10, 3)).tocsr()


def test_evaluate_audiences_recall_and_lifts():
    data = literal_data(AUD_SEEN, 10, 3)
    # the model's audiences: p0 [1, 5, 3, 0, 2, ...], p1 [2, 9, ...]; the reference ranks by index
    model = FixedScores(ranked([[1, 5, 3, 0, 2], [2, 9], [0]], 10).T).fit(data)
    reference = FixedScores(ranked([[], [], []], 10).T).fit(data)
    seen = data.interactions.matrix("binary")
    out = evaluate_audiences(model, AUD_TRUTH, seen, sizes=(2, 5, 100), min_buyers_known=2,
                             min_buyers_new=2, reference=reference)
    assert out["audience_known_n_products"] == 1 and out["audience_new_n_products"] == 1
    # known p0: top 2 {1, 5} -> 1/3; top 5 {1, 5, 3, 0, 2} -> 2/3; reference {0, 1} 1/3, {0..4} 2/3
    assert out["audience_known_recall@2"] == pytest.approx(1 / 3)
    assert out["audience_known_lift_random@2"] == pytest.approx((1 / 3) / (2 / 10))
    assert out["audience_known_lift_most_active@2"] == pytest.approx(1.0)
    assert out["audience_known_recall@5"] == pytest.approx(2 / 3)
    assert out["audience_known_lift_random@5"] == pytest.approx((2 / 3) / (5 / 10))
    # new p1: top 2 {2, 9} -> 1; reference {0, 1} -> 0 (no lift defined), {0..4} -> 1/2
    assert out["audience_new_recall@2"] == 1.0
    assert out["audience_new_lift_random@2"] == pytest.approx(5.0)
    assert np.isnan(out["audience_new_lift_most_active@2"])
    assert out["audience_new_lift_most_active@5"] == pytest.approx(2.0)
    # N beyond the member count is every member: recall 1, no lift
    assert out["audience_known_recall@100"] == 1.0 and out["audience_known_lift_random@100"] == 1.0
    assert "audience_known_lift_most_active@2" not in evaluate_audiences(
        model, AUD_TRUTH, seen, sizes=(2,), min_buyers_known=2, min_buyers_new=2)


class AttributeScores(FixedScores):
    """Calibrated scores (each score is the purchase probability itself) and, for products asked
    by attributes alone, another table: what a model that reads less of the product would give."""

    capabilities = frozenset({Capability.PROBABILITIES})

    def __init__(self, table: np.ndarray, by_attributes: np.ndarray):
        super().__init__(table)
        self.by_attributes = np.asarray(by_attributes, dtype=np.float32)

    def attribute_audience(self, products, n=1000, *, member_mask=None):
        return self._top_members(lambda p: self.by_attributes.T[p], products, n, member_mask)

    def purchase_probability(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores, dtype=np.float64)


def test_evaluate_audiences_by_attributes_and_expected_buyers():
    data = literal_data(AUD_SEEN, 10, 3)
    # p0 (known; buyers 1, 3, 7): members 1 and 3 at probability 0.5 each, the rest 0.1;
    # p1 (never sold; buyers 2, 9): by id members 2 and 9 at 0.25; by attributes members 0 and 2 at 0.5
    table = np.full((10, 3), 0.1, np.float32)
    table[[1, 3], 0] = 0.5
    table[:, 1] = 0.0
    table[[2, 9], 1] = 0.25
    attrs = np.zeros((10, 3), np.float32)
    attrs[[0, 2], 1] = 0.5
    model = AttributeScores(table, attrs).fit(data)
    out = evaluate_audiences(model, AUD_TRUTH, data.interactions.matrix("binary"), sizes=(2, 3),
                             min_buyers_known=2, min_buyers_new=2, reference=np.arange(10))
    assert out["audience_attr_n_products"] == out["audience_new_n_products"] == 1
    assert out["audience_new_recall@2"] == 1.0  # {2, 9}
    assert out["audience_attr_recall@2"] == pytest.approx(0.5)  # {0, 2}: buyer 2 of {2, 9}
    # the most active (by index) {0, 1}: p1 has no buyer among them, {0, 1, 2}: one of two
    assert out["audience_attr_lift_most_active@3"] == pytest.approx(1.0)
    # expected buyers: p0 top 2 {1, 3} 0.5 + 0.5 = 1.0 for 2 actual buyers; p1 by id 0.5 for 2, by attributes 1.0 for 1
    assert out["audience_known_expected_buyers@2"] == pytest.approx(1.0)
    assert out["audience_known_actual_buyers@2"] == 2.0
    assert out["audience_known_expected_over_actual@2"] == pytest.approx(0.5)
    assert out["audience_new_expected_over_actual@2"] == pytest.approx(0.25)
    assert out["audience_attr_expected_over_actual@2"] == pytest.approx(1.0)
    # top 3 of p0: {1, 3} then member 0 (ties by index) at 0.1: 1.1 expected, still 2 buyers
    assert out["audience_known_expected_buyers@3"] == pytest.approx(1.1)
    assert "audience_known_expected_buyers@2" not in evaluate_audiences(  # uncalibrated: no expected buyers
        FixedScores(table).fit(data), AUD_TRUTH, data.interactions.matrix("binary"), sizes=(2,),
        min_buyers_known=2, min_buyers_new=2)


def test_evaluate_audiences_buyer_thresholds():
    data = literal_data(AUD_SEEN, 10, 3)
    model = FixedScores(ranked([[], [], []], 10).T).fit(data)
    out = evaluate_audiences(model, AUD_TRUTH, data.interactions.matrix("binary"), sizes=(2,),
                             min_buyers_known=1, min_buyers_new=3)
    # known: p0 (3 buyers) and p2 (1 buyer); new: p1 has 2 < 3 buyers
    assert out["audience_known_n_products"] == 2 and out["audience_new_n_products"] == 0
    assert "audience_new_recall@2" not in out
    # p0 top 2 {0, 1}: 1/3; p2 top 2 {0, 1}: m0 -> 1
    assert out["audience_known_recall@2"] == pytest.approx((1 / 3 + 1) / 2)


class ReversedBatches(FixedScores):
    """Asks for its products in reverse catalogue order, as a model batching by category may."""

    def audience_batch_order(self, products: np.ndarray) -> np.ndarray:
        return np.arange(len(products))[::-1]


def test_evaluate_audiences_pairs_each_product_with_its_own_buyers_in_the_models_batch_order():
    data = literal_data(AUD_SEEN, 10, 3)
    table = ranked([[1, 5, 3, 0, 2], [2, 9], [0]], 10).T
    reference = FixedScores(ranked([[7], [], [3]], 10).T).fit(data)
    seen = data.interactions.matrix("binary")
    kwargs = dict(sizes=(2, 5), min_buyers_known=1, min_buyers_new=2, reference=reference)
    out = evaluate_audiences(ReversedBatches(table).fit(data), AUD_TRUTH, seen, **kwargs)
    # known p0 (buyers 1, 3, 7) and p2 (buyer 0), asked p2 first: top 2 {1, 5} -> 1/3 and {0, 1} -> 1
    assert out["audience_known_recall@2"] == pytest.approx((1 / 3 + 1) / 2)
    # the reference's own audiences for the same products: p0 {7, 0} -> 1/3, p2 {3, 0} -> 1
    assert out["audience_known_lift_most_active@2"] == pytest.approx(1.0)
    assert out == pytest.approx(evaluate_audiences(FixedScores(table).fit(data), AUD_TRUTH, seen, **kwargs), nan_ok=True)
    # one product per batch, ranked on three threads: the batches come back in order
    threaded = evaluate_audiences(ReversedBatches(table).fit(data), AUD_TRUTH, seen, batch=1, workers=3, **kwargs)
    assert threaded == pytest.approx(out, nan_ok=True)


def test_evaluate_audiences_on_a_stated_sample_of_products():
    data = literal_data(AUD_SEEN, 10, 3)
    model = FixedScores(ranked([[], [], []], 10).T).fit(data)
    seen = data.interactions.matrix("binary")
    full = evaluate_audiences(model, AUD_TRUTH, seen, sizes=(2,), min_buyers_known=1, min_buyers_new=3)
    assert full["audience_known_n_scored"] == full["audience_known_n_products"] == 2
    # a cap at or above the eligible count changes nothing
    assert evaluate_audiences(model, AUD_TRUTH, seen, sizes=(2,), min_buyers_known=1, min_buyers_new=3,
                              max_products=2) == full
    # one of the two known products (p0: recall@2 1/3, p2: 1): the metric is that product's
    one = evaluate_audiences(model, AUD_TRUTH, seen, sizes=(2,), min_buyers_known=1, min_buyers_new=3,
                             max_products=1, seed=3)
    assert one["audience_known_n_products"] == 2 and one["audience_known_n_scored"] == 1
    assert one["audience_known_recall@2"] in (pytest.approx(1 / 3), pytest.approx(1.0))
    again = evaluate_audiences(model, AUD_TRUTH, seen, sizes=(2,), min_buyers_known=1, min_buyers_new=3,
                               max_products=1, seed=3)
    assert again == one  # the sample comes from the seed


# ------------------------------------------------------------------------------ next basket
def day(d: int) -> datetime:
    return datetime(2001, 1, 1, 10) + timedelta(days=d - 1)


def next_basket_lines() -> list[dict[str, Any]]:
    lines = [
        # A: 4 baskets; target (day 20) {x, y, z, r}. Two lines of x on day 1: one occasion, qty 3
        tx("A", "x", day(1), 1.0, 2.0), tx("A", "x", day(1) + timedelta(hours=5), 2.0, 4.0), tx("A", "y", day(1)),
        tx("A", "x", day(5)), tx("A", "r", day(5)),
        tx("A", "x", day(10)), tx("A", "y", day(10)),
        tx("A", "x", day(20)), tx("A", "y", day(20)), tx("A", "z", day(20)), tx("A", "r", day(20)),
        # E: exactly 3 baskets; target (day 15) {x, z}
        tx("E", "y", day(2)), tx("E", "z", day(2)), tx("E", "z", day(3)),
        tx("E", "x", day(15)), tx("E", "z", day(15)),
        # D: 3 baskets, but its target holds only the rare r: drops out (its history still counts)
        tx("D", "x", day(1)), tx("D", "x", day(2)), tx("D", "y", day(2)), tx("D", "r", day(4)),
        # B: 2 baskets of z -> dropped, and its z's must not make z frequent
        tx("B", "z", day(1)), tx("B", "z", day(2)),
    ]
    # C: 51 baskets of r -> dropped; F: exactly 50 baskets of x -> kept
    lines += [tx("C", "r", day(d)) for d in range(1, 52)]
    lines += [tx("F", "x", day(d)) for d in range(1, 51)]
    return lines


@pytest.fixture(scope="module")
def next_basket(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("nb") / "transactions.parquet"
    pq.write_table(pa.Table.from_pylist(next_basket_lines(), schema=TX_SCHEMA), path)
    return load_next_basket(path)


def test_next_basket_members_products_and_target(next_basket):
    nb = next_basket
    x = nb.train.interactions
    # history baskets per product among kept members (A, D, E, F): x 3 + 2 + 49 = 54, y 2 + 1 + 1 = 4,
    # z 2 (E only; B's 2 do not count) -> rare, r 1 (C's 51 do not count) -> rare
    assert x.members.external_ids.tolist() == ["A", "E", "F"]
    assert nb.n_members == 3
    assert x.products.external_ids.tolist() == ["x", "y"]
    # the last basket is the target, without the rare products
    assert nb.truth.toarray().tolist() == [[1, 1], [1, 0], [1, 0]]


def test_next_basket_history_is_aged_from_each_members_last_history_basket(next_basket):
    x = next_basket.train.interactions
    rows = sorted(zip(x.members.to_external(x.member).tolist(), x.products.to_external(x.product).tolist(),
                      x.age_days.tolist(), x.quantity.tolist(), strict=True))
    a_and_e = [r for r in rows if r[0] != "F"]
    # A's last history basket is day 10 (its target day 20 is never read), E's day 3 (its only
    # product that day, the rare z, is gone, but the visit still sets the member's clock)
    assert a_and_e == [
        ("A", "x", 1, 1.0), ("A", "x", 6, 1.0), ("A", "x", 10, 3.0),
        ("A", "y", 1, 1.0), ("A", "y", 10, 1.0),
        ("E", "y", 2, 1.0),
    ]
    f_ages = sorted(r[2] for r in rows if r[0] == "F")
    assert f_ages == list(range(1, 50))  # F's history is days 1..49: day 49 is age 1


def test_next_basket_recall_is_normalised_by_the_target(next_basket):
    model = get_model("top_frequency")().fit(next_basket.train)
    out = evaluate_next_basket(model, next_basket, ks=(1, 2))
    # top 1: A -> x (3 days vs y 2): 1 of |{x, y}| = 2; E -> y (its only history): miss; F -> x: hit
    assert out["n_queries"] == 3
    assert out["recall@1"] == pytest.approx((1 / 2 + 0 + 1) / 3)  # "min" would give (1 + 0 + 1) / 3
    assert out["recall@2"] == 1.0
    # NDCG's ideal runs over the whole target: A at k=1 is 1 / (1 + D2)
    assert out["ndcg@1"] == pytest.approx((1 / (1 + D2) + 0 + 1) / 3)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, r"config .*nope\.toml not found; see experiments/configs/"),
        ("[data\ncutoff = 1", r"not valid TOML"),
        ('[data]\ncutoff = "not a date"\n', r"data\.cutoff: "),
        ('[data]\ncutoff = 2001-02-01\n[model]\nnmae = "als"\n', r"model\.nmae: Extra inputs are not permitted"),
    ],
)
def test_a_bad_train_config_names_the_file_and_the_key(tmp_path, text, message):
    from recsys.errors import InputError
    from training.config import TrainConfig

    path = tmp_path / "nope.toml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(InputError, match=message):
        TrainConfig.from_toml(path)
