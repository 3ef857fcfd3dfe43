"""Tiny matrices whose exact rankings are worked out by hand, and parity with raw implicit."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
from helpers_data import COLD_PRODUCT, literal_data, synthetic_data

from recsys.idmap import IdMap
from recsys.models import Tag, TrainData, get_model
from recsys.models.base import TieOrder, topk_rows
from recsys.models.factorization import attribute_vectors

ALL4 = np.arange(4)

# ------------------------------------------------------------------------------ popularity
# (member, product, age). buyers: p0 3, p1 2, p2 1, p3 1; occasions: p0 4, p1 5, p2 1, p3 1
# member occasions (activity): m0 3, m1 2, m2 5, m3 1
POP_OCC = [
    (0, 0, 25), (0, 0, 30), (0, 1, 1),
    (1, 0, 2), (1, 2, 3),
    (2, 0, 1), (2, 1, 2), (2, 1, 9), (2, 1, 20), (2, 1, 30),
    (3, 3, 4),
]


def pop_data() -> TrainData:
    return literal_data(POP_OCC, 4, 4)


def test_popularity_by_buyers():
    model = get_model("popular")().fit(pop_data())
    idx, sc = model.recommend(ALL4, k=4, mode="replenish")
    # scaled buyers [3, 2, 1, 1] / 3; p2 and p3 tie -> lower index first
    assert idx.tolist() == [[0, 1, 2, 3]] * 4
    assert sc[0] == pytest.approx([1, 2 / 3, 1 / 3, 1 / 3])
    # discover: m0 bought p0, p1; m2 bought p0, p1
    idx, _ = model.recommend(ALL4, k=4, mode="discover")
    assert idx.tolist() == [[2, 3, -1, -1], [1, 3, -1, -1], [2, 3, -1, -1], [0, 1, 2, -1]]


def test_popularity_by_occasions():
    model = get_model("popular")({"by": "occasions"}).fit(pop_data())
    idx, sc = model.recommend(np.array([3]), k=4, mode="replenish")
    assert idx.tolist() == [[1, 0, 2, 3]]
    assert sc[0] == pytest.approx([1, 4 / 5, 1 / 5, 1 / 5])


def test_popularity_audience_is_the_most_active_members():
    model = get_model("popular")().fit(pop_data())
    idx, sc = model.audience(np.array([3, 0]), n=4)
    assert idx.tolist() == [[2, 0, 1, 3]] * 2  # occasions 5, 3, 2, 1
    assert sc[0] == pytest.approx([1, 3 / 5, 2 / 5, 1 / 5])


# ------------------------------------------------------------------------------ top frequency
def test_p_topfreq_returns_only_what_the_member_bought():
    model = get_model("top_frequency")({"pad_with_popular": False}).fit(pop_data())
    idx, sc = model.recommend(ALL4, k=4, mode="replenish")
    # counts: m0 p0 2, p1 1; m1 p0 1, p2 1 (tie -> index); m2 p1 4, p0 1; m3 p3 1
    assert idx.tolist() == [[0, 1, -1, -1], [0, 2, -1, -1], [1, 0, -1, -1], [3, -1, -1, -1]]
    assert sc[2].tolist() == [4.0, 1.0, -np.inf, -np.inf]
    # nothing left to discover
    assert (model.recommend(ALL4, k=4, mode="discover")[0] == -1).all()


def test_gp_topfreq_pads_with_popular_products():
    model = get_model("top_frequency")().fit(pop_data())
    idx, sc = model.recommend(ALL4, k=4, mode="replenish")
    # own counts first, then the rest by buyers (p1 2 > p2 1 = p3 1)
    assert idx.tolist() == [[0, 1, 2, 3], [0, 2, 1, 3], [1, 0, 2, 3], [3, 0, 1, 2]]
    # popularity is scaled far below one purchase: counts + buyers / 3 * 1e-3
    assert sc[1] == pytest.approx([1 + 1e-3, 1 + 1e-3 / 3, 2e-3 / 3, 1e-3 / 3], rel=1e-6)
    assert model.recommend(ALL4, k=4, mode="discover")[0].tolist() == [
        [2, 3, -1, -1], [1, 3, -1, -1], [2, 3, -1, -1], [0, 1, 2, -1]]


def test_topfreq_recency_weighting_prefers_the_recent_product():
    # m0 bought p0 twice long ago (ages 25, 30) and p1 once yesterday: counts say p0, recency p1
    # (half-life 10: 0.5**2.5 + 0.5**3 = 0.302 vs 0.5**0.1 = 0.933)
    plain = get_model("top_frequency")().fit(pop_data())
    recent = get_model("top_frequency")({"recency_half_life_days": 10.0}).fit(pop_data())
    assert plain.recommend(np.array([0]), k=2, mode="replenish")[0].tolist() == [[0, 1]]
    idx, sc = recent.recommend(np.array([0]), k=2, mode="replenish")
    assert idx.tolist() == [[1, 0]]
    assert sc[0] == pytest.approx([0.5 ** 0.1 + 2e-3 / 3, 0.5 ** 2.5 + 0.5 ** 3 + 1e-3], rel=1e-5)


def test_topfreq_audience_is_the_most_frequent_buyers_then_the_most_active():
    model = get_model("top_frequency")().fit(pop_data())
    idx, _ = model.audience(np.array([1]), n=4)
    assert idx.tolist() == [[2, 0, 1, 3]]  # p1 counts: m2 4, m0 1; then activity m1 2 > m3 1


# ------------------------------------------------------------------------------ simple blend
# counts  m0 [3, 1, 0, 0]   m1 [0, 2, 2, 0]   m2 [1, 0, 0, 1]   buyers [2, 2, 1, 1]
BLEND_OCC = [
    (0, 0, 1), (0, 0, 2), (0, 0, 3), (0, 1, 1),
    (1, 1, 1), (1, 1, 5), (1, 2, 2), (1, 2, 4),
    (2, 0, 6), (2, 3, 7),
]


def test_simple_blend_formula():
    model = get_model("simple_blend")().fit(literal_data(BLEND_OCC, 3, 4))
    idx, sc = model.recommend(np.arange(3), k=4, mode="replenish")
    # count / row max + 0.05 * buyers / max buyers
    expected = np.array([
        [3 / 3 + 0.05, 1 / 3 + 0.05, 0 + 0.025, 0 + 0.025],
        [0 + 0.05, 2 / 2 + 0.05, 2 / 2 + 0.025, 0 + 0.025],
        [1 / 1 + 0.05, 0 + 0.05, 0 + 0.025, 1 / 1 + 0.025],
    ])
    assert idx.tolist() == [[0, 1, 2, 3], [1, 2, 0, 3], [0, 3, 1, 2]]
    assert sc == pytest.approx(np.take_along_axis(expected, idx, axis=1), rel=1e-6)
    heavy = get_model("simple_blend")({"popularity_weight": 0.5}).fit(literal_data(BLEND_OCC, 3, 4))
    _, sc = heavy.recommend(np.array([1]), k=4, mode="replenish")
    assert sc[0] == pytest.approx([1.5, 1.25, 0.5, 0.25])
    idx, _ = heavy.audience(np.array([1]), n=3)
    assert idx.tolist() == [[1, 0, 2]]  # rel 1, 1/3, 0


# ------------------------------------------------------------------------------ segment popularity
# buyers: m0 {p0, p1}, m1 {p0}, m2 {p2}, m3 {p2, p3}, m4 {p3}; segments a a b b unknown
SEG_OCC = [(0, 0, 1), (0, 1, 1), (1, 0, 1), (2, 2, 1), (3, 2, 1), (3, 3, 1), (4, 3, 1)]
SEGMENTS = ["a", "a", "b", "b", None]


def test_segment_popular_uses_the_segment_counts():
    model = get_model("segment_popular")({"smoothing": 0.0}).fit(
        literal_data(SEG_OCC, 5, 4, segments=SEGMENTS))
    idx, sc = model.recommend(np.arange(5), k=4, mode="replenish")
    # a: [2, 1, 0, 0] / 2;  b: [0, 0, 2, 1] / 2;  unknown (its own bucket): [0, 0, 0, 1] / 1
    assert idx.tolist() == [[0, 1, 2, 3], [0, 1, 2, 3], [2, 3, 0, 1], [2, 3, 0, 1], [3, 0, 1, 2]]
    assert sc[0].tolist() == [1.0, 0.5, 0.0, 0.0]
    assert sc[2].tolist() == [1.0, 0.5, 0.0, 0.0]


def test_segment_popular_shrinks_to_the_global_popularity():
    model = get_model("segment_popular")().fit(literal_data(SEG_OCC, 5, 4, segments=SEGMENTS))
    # global buyer share = [2, 1, 2, 2] / 5; with smoothing 10:
    # a: ([2, 1, 0, 0] + [4, 2, 4, 4]) / 12 ; b: ([0, 0, 2, 1] + [4, 2, 4, 4]) / 12
    # unknown: ([0, 0, 0, 1] + [4, 2, 4, 4]) / 11
    idx, sc = model.recommend(np.array([0, 2, 4]), k=4, mode="replenish")
    assert idx.tolist() == [[0, 2, 3, 1], [2, 3, 0, 1], [3, 0, 2, 1]]
    assert sc[0] == pytest.approx([6 / 12, 4 / 12, 4 / 12, 3 / 12])
    assert sc[1] == pytest.approx([6 / 12, 5 / 12, 4 / 12, 2 / 12])
    assert sc[2] == pytest.approx([5 / 11, 4 / 11, 4 / 11, 2 / 11])


def test_segment_popular_audience_is_the_best_segment_first():
    model = get_model("segment_popular")().fit(literal_data(SEG_OCC, 5, 4, segments=SEGMENTS))
    idx, _ = model.audience(np.array([2]), n=5)
    # p2's share: b 6/12 > unknown 4/11 > a 4/12; within a segment the more active member first
    # (occasions m0 2, m1 1, m2 1, m3 2)
    assert idx.tolist() == [[3, 2, 4, 0, 1]]


def test_segment_popular_without_segments_is_global_popularity():
    model = get_model("segment_popular")({"smoothing": 0.0}).fit(literal_data(SEG_OCC, 5, 4))
    idx, sc = model.recommend(np.array([0]), k=4, mode="replenish")
    assert idx.tolist() == [[0, 2, 3, 1]]
    assert sc[0] == pytest.approx([2 / 5, 2 / 5, 2 / 5, 1 / 5])


# ------------------------------------------------------------------------------ category buyers
# categories x x y y y (p4 never sold)
# counts m0 p0 3; m1 p1 1, p2 1; m2 p2 2, p3 2; m3 p0 2, p3 1; m4 nothing
# per category: x m0 3, m3 2, m1 1;  y m2 4, m1 1, m3 1.  activity: m0 3, m1 2, m2 4, m3 3, m4 0
CAT_OCC = [(0, 0, 1), (0, 0, 2), (0, 0, 3), (1, 1, 1), (1, 2, 2), (2, 2, 1), (2, 2, 2), (2, 3, 1),
           (2, 3, 3), (3, 0, 4), (3, 0, 6), (3, 3, 5)]
CATS = ["x", "x", "y", "y", "y"]


def test_category_buyers_audience_order():
    model = get_model("category_buyers")().fit(literal_data(CAT_OCC, 5, 5, categories=CATS))
    idx, _ = model.audience(np.array([0, 3, 4]), n=5)
    # x: m0 3, m3 2, m1 1, then by activity m2 (4) > m4 (0)
    # y: m2 4, then m1 and m3 tie at 1 -> the more active m3 (3) before m1 (2); then m0, m4
    # the never-sold p4 is in y: the same audience as p3
    assert idx.tolist() == [[0, 3, 1, 2, 4], [2, 3, 1, 0, 4], [2, 3, 1, 0, 4]]


def test_category_buyers_picks_favour_the_favourite_category():
    model = get_model("category_buyers")().fit(literal_data(CAT_OCC, 5, 5, categories=CATS))
    idx, sc = model.recommend(np.array([0, 2]), k=5, mode="replenish")
    # buyers p0 2, p1 1, p2 2, p3 2, p4 0 -> scaled popularity [1, 1/2, 1, 1, 0]
    # m0 (x 3): p0 3 x (1 + 1) = 6, p1 3 x 1.5 = 4.5; y products score EPS * popularity only
    assert idx[0, :2].tolist() == [0, 1]
    assert sc[0, :2] == pytest.approx([6, 4.5], rel=1e-5)
    # m2 (y 4): p2 8, p3 8, p4 4; x products EPS * popularity: p0 before p1
    assert idx[1].tolist() == [2, 3, 4, 0, 1]
    assert sc[1, :3] == pytest.approx([8, 8, 4], rel=1e-5)


# ------------------------------------------------------------------------------ top-k mechanics
def test_topk_rows_pads_and_orders():
    idx, sc = topk_rows(np.array([[0.5, -np.inf, 2.0]], np.float32), 4)
    assert idx.tolist() == [[2, 0, -1, -1]]
    assert sc.tolist() == [[2.0, 0.5, -np.inf, -np.inf]]


def test_topk_rows_breaks_ties_at_the_cut_by_index():
    scores = np.array([[0.0, 0.0, 1.0, 1.0]], np.float32)
    assert topk_rows(scores, 2)[0].tolist() == [[2, 3]]
    assert topk_rows(scores, 1)[0].tolist() == [[2]]  # lowest index among the tied best


def _topk_by_hand(scores: np.ndarray, k: int, tiebreak: np.ndarray | None) -> list[list[int]]:
    # the definition: finite scores only, higher score first, then higher tiebreak, then lower index
    tb = np.zeros(scores.shape[1]) if tiebreak is None else tiebreak
    out = []
    for row in scores:
        order = sorted((j for j in range(len(row)) if row[j] > -np.inf), key=lambda j: (-row[j], -tb[j], j))
        out.append((order + [-1] * k)[:k])
    return out


@pytest.mark.parametrize("seed", range(6))
def test_topk_rows_matches_the_definition_on_ties_infinities_and_signed_zeros(seed: int) -> None:
    rng = np.random.default_rng(seed)
    values = np.array([-0.0, 0.0, 1.5, -1.5, 2.0, np.inf, -np.inf, np.nan, 3e38, -3e38, 1e-40], np.float32)
    for _ in range(200):
        n, m = int(rng.integers(1, 5)), int(rng.integers(1, 25))
        scores = rng.choice(values, (n, m))
        k = int(rng.integers(1, m + 3))
        tiebreak = rng.integers(0, 3, m).astype(float) if rng.random() < 0.5 else None
        idx, sc = topk_rows(scores, k, tiebreak)
        want = _topk_by_hand(np.where(np.isnan(scores), -np.inf, scores), k, tiebreak)
        assert idx.tolist() == want
        got = np.where(idx >= 0, scores[np.arange(n)[:, None], np.maximum(idx, 0)], -np.inf)
        assert np.array_equal(sc, got.astype(np.float32))


@pytest.mark.parametrize("seed", range(4))
def test_topk_rows_far_inside_long_rows_matches_the_definition(seed: int) -> None:
    # k at most an eighth of the row: the k-th score by a float partition, the exact keyed path
    # only for rows with a tie at the cut (here most rows have ties, some do not)
    rng = np.random.default_rng(seed)
    for _ in range(60):
        n, m = int(rng.integers(1, 6)), int(rng.integers(40, 300))
        levels = int(rng.choice([3, 20, 10_000]))
        scores = (rng.integers(0, levels, (n, m)) - levels // 2).astype(np.float32)
        scores[rng.random((n, m)) < 0.1] = -np.inf
        if rng.random() < 0.2:
            scores[0] = -np.inf  # a row with nothing to rank
        k = int(rng.integers(1, m // 8 + 1))
        tiebreak = rng.integers(0, 4, m).astype(float) if rng.random() < 0.6 else None
        want = _topk_by_hand(scores, k, tiebreak)
        assert topk_rows(scores, k, tiebreak)[0].tolist() == want
        if tiebreak is not None:  # the tie order worked out once gives the same lists
            assert topk_rows(scores, k, TieOrder(tiebreak))[0].tolist() == want


# ------------------------------------------------------------------------------ ALS vs implicit
ALS_PARAMS = {"factors": 6, "iterations": 8, "regularization": 0.05, "alpha": 2.0, "seed": 11,
              "num_threads": 1, "weighting": "bm25", "bm25_k1": 1.2, "bm25_b": 0.75}


def parity_data() -> TrainData:
    rng = np.random.default_rng(5)
    occ = set()
    for u in range(60):
        for i in rng.choice(25, size=int(rng.integers(3, 9)), replace=False):
            for _ in range(int(rng.integers(1, 4))):
                occ.add((u, int(i), int(rng.integers(1, 60))))
    return literal_data(sorted(occ), 60, 25)


@pytest.mark.parametrize("mode,filter_liked", [("replenish", False), ("discover", True)])
def test_als_top_k_equals_raw_implicit(mode, filter_liked):
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    data = parity_data()
    model = get_model("als")(ALS_PARAMS).fit(data)
    matrix = model.weighted_matrix(data)
    assert (np.diff(matrix.tocsc().indptr) > 0).all()  # every product warm: no attribute vectors
    p = model.params
    raw = AlternatingLeastSquares(factors=p.factors, iterations=p.iterations, regularization=p.regularization,
                                  alpha=p.alpha, random_state=p.seed, num_threads=1,
                                  calculate_training_loss=True)
    with threadpool_limits(1, "blas"):
        raw.fit(matrix, show_progress=False)
    users = np.arange(60)
    ids, scores = raw.recommend(users, matrix[users], N=5, filter_already_liked_items=filter_liked)
    got, got_scores = model.recommend(users, k=5, mode=mode)
    np.testing.assert_array_equal(got, ids)
    np.testing.assert_allclose(got_scores, scores, rtol=1e-5)
    np.testing.assert_array_equal(model.item_factors, raw.item_factors)


def checker_board(n: int) -> TrainData:
    """Even members bought every even product, odd members every odd one, except member i never
    bought product i: the one same-parity product left for each member."""
    occ = [(i, j, 1) for i in range(n) for j in range(i % 2, n, 2) if j != i]
    return literal_data(occ, n, n)


def test_als_checkerboard_ranks_the_held_out_item_first():
    n = 30
    model = get_model("als")({"factors": 3, "regularization": 0.0, "iterations": 15, "seed": 23,
                              "num_threads": 1, "weighting": "binary"}).fit(checker_board(n))
    idx, _ = model.recommend(np.arange(n), k=1, mode="discover")
    assert idx[:, 0].tolist() == list(range(n))
    # and similar products stay within their parity
    sim, _ = model.similar_items(np.arange(n), k=5)
    assert ((sim % 2) == (np.arange(n) % 2)[:, None]).all()


# ------------------------------------------------------------------------------ cold products
def test_attribute_vectors_levels():
    v = np.array([[1, 0], [3, 0], [0, 4], [0, 8], [9, 9], [9, 9], [9, 9], [5, 5]], np.float32)
    warm = np.array([True, True, True, True, False, False, False, True])
    tags = {
        "category": Tag(np.array([0, 0, 1, 1, 0, 1, -1, -1], np.int32), ("c0", "c1")),
        "price_band": Tag(np.array([0, 1, 0, 0, 1, 1, 0, 0], np.int32), ("hi", "lo")),
    }
    out = attribute_vectors(v, warm, tags)
    # p4: category c0 + band lo -> only p1 shares both -> [3, 0]
    # p5: c1 + lo has no warm product -> falls back to c1: mean of p2, p3 -> [0, 6]
    # p6: unknown category is no group (not even with the warm p7, also unknown) -> mean of every
    #     warm product: ([1, 0] + [3, 0] + [0, 4] + [0, 8] + [5, 5]) / 5
    np.testing.assert_allclose(out[4:7], [[3, 0], [0, 6], [9 / 5, 17 / 5]], rtol=1e-6)
    assert out[[0, 1, 2, 3, 7]].tolist() == v[[0, 1, 2, 3, 7]].tolist()  # warm vectors untouched
    # without the price band: category means
    assert attribute_vectors(v, warm, {"category": tags["category"]})[4].tolist() == [2, 0]


def test_als_cold_product_gets_the_mean_of_its_category():
    data = synthetic_data()
    p = {"factors": 4, "iterations": 3, "num_threads": 1, "seed": 1}
    # category only: the cold product 49 is in category 4 (products 40..49)
    cat_only = TrainData(data.interactions, data.member_tags, {"category": data.product_tags["category"]})
    model = get_model("als")(p).fit(cat_only)
    raw = np.asarray(model.implicit_model.item_factors)
    assert model.warm_items.tolist() == [True] * COLD_PRODUCT + [False]
    np.testing.assert_allclose(model.item_factors[COLD_PRODUCT], raw[40:49].mean(axis=0), rtol=1e-5)
    # with price bands the most specific group wins: band of 49 is 49 % 3 = 1, shared by 40, 43, 46
    model = get_model("als")(p).fit(data)
    raw = np.asarray(model.implicit_model.item_factors)
    np.testing.assert_allclose(model.item_factors[COLD_PRODUCT], raw[[40, 43, 46]].mean(axis=0), rtol=1e-5)
    # the cold product's audience is the category's: its scores are the mean of those products'
    a_cold = model.audience(np.array([COLD_PRODUCT]), n=10)[1]
    assert np.isfinite(a_cold).all()


def test_history_is_the_binary_purchase_matrix():
    model = get_model("popular")().fit(pop_data())
    assert isinstance(model.history, sp.csr_matrix)
    assert model.history.toarray().tolist() == [
        [1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 0, 0], [0, 0, 0, 1]]


def test_topfreq_audience_ties_go_to_the_more_active_member_at_high_counts():
    # m0 and m1 bought p0 on 10 days each; m1 also bought p1 on 5 days: m1 is the more active
    occ = [(0, 0, d) for d in range(1, 11)] + [(1, 0, d) for d in range(1, 11)] + [(1, 1, d) for d in range(1, 6)]
    model = get_model("top_frequency")().fit(literal_data(occ, 2, 2))
    assert model.audience(np.array([0]), n=2)[0].tolist() == [[1, 0]]


@pytest.mark.parametrize("n_members", [1, 3, 400])
def test_hybrid_gather_equals_dense_indexing_for_few_and_many_members(n_members: int) -> None:
    # a few members (serving) and many (training), pairs stored and not
    import scipy.sparse as sp

    from recsys.models.hybrid.state import gather

    rng = np.random.default_rng(n_members)
    m = sp.random(500, 300, density=0.02, format="csr", random_state=n_members, dtype=np.float32)
    members = rng.choice(500, n_members, replace=False)
    rows = np.repeat(members, 40)
    cols = rng.integers(0, 300, len(rows))
    coo = m.tocoo()  # add pairs that are surely stored
    rows, cols = np.r_[rows, coo.row[:20]], np.r_[cols, coo.col[:20]]
    assert np.array_equal(gather(m, rows, cols), m.toarray()[rows, cols])


@pytest.mark.parametrize("n_members", [3, 60, 500])
def test_hybrid_knn_affinity_is_the_same_bits_from_every_members_product_or_their_own_rows(
    n_members: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # sum over the member's purchases h of count(u, h) x similarity(h, i): from counts_csc @ sim
    # (many members) or their own rows of counts (a few), in blocks of columns
    import types

    import scipy.sparse as sp

    from recsys.models.hybrid import state

    counts = sp.random(500, 300, density=0.05, format="csr", random_state=1, dtype=np.float32)
    counts.data = np.ceil(counts.data * 5)
    sim = sp.random(300, 300, density=0.1, format="csc", random_state=2, dtype=np.float32)
    s = types.SimpleNamespace(counts=counts, counts_csc=counts.tocsc(), n_members=500, csc=lambda name: sim)
    rng = np.random.default_rng(n_members)
    u = np.repeat(rng.choice(500, n_members, replace=False), 30)
    i = rng.integers(0, 300, len(u))
    monkeypatch.setattr(state, "_KNN_BLOCK_ENTRIES", 2000)  # several blocks of columns
    got = {}
    for path in ("every member", "own rows", "cheaper"):
        got[path] = state.knn_affinity(s, u, i, product=path)
    assert np.array_equal(got["every member"], got["own rows"]) and np.array_equal(got["cheaper"], got["own rows"])
    np.testing.assert_allclose(got["own rows"], (counts.toarray() @ sim.toarray())[u, i], rtol=1e-5)
    assert (got["own rows"] > 0).mean() > 0.3


@pytest.mark.parametrize("zeroed", [(), ("cf", "log_count", "log_knn", "log_category_count", "band_share")])
def test_hybrid_block_audience_logits_equal_weights_times_pair_features(zeroed: tuple[str, ...]) -> None:
    # training learns from (member, product) pairs; audiences are scored a block at a time from
    # group columns and sparse terms: both must give w @ features, whichever weights are zero
    from recsys.models.hybrid.audiences import (
        AUDIENCE_FEATURES,
        ProductSide,
        audience_logits,
        audience_pair_features,
    )

    model = get_model("hybrid")({"factors": 8, "iterations": 3, "n_estimators": 10, "min_child_samples": 10,
                                 "knn_neighbours": 20, "audience_negatives": 5, "num_threads": 1,
                                 "label_days": 14, "line_from_id_prefix": 9})
    data = synthetic_data()
    # barcode-like product ids, five products to a product line (the first 9 digits)
    ids = IdMap([f"471000{i // 5:03d}{i:04d}" for i in range(data.n_products)])
    data = dataclasses.replace(data, interactions=dataclasses.replace(data.interactions, products=ids))
    brands = np.array(["b0", "b1", "b2", None], dtype=object)[np.arange(data.n_products) % 4]
    data.product_tags["brand"] = Tag.from_values(brands)  # some products without a brand
    s = model.fit(data).state
    assert s.member_brand is not None and s.member_line is not None
    rng = np.random.default_rng(0)
    w = rng.standard_normal(len(AUDIENCE_FEATURES)).astype(np.float32)
    w[[AUDIENCE_FEATURES.index(f) for f in zeroed]] = 0.0
    products = np.arange(0, s.n_products, 7)
    block = audience_logits(s, ProductSide.of_rows(s, products), w)  # (products, members)
    assert block.shape == (len(products), s.n_members)
    mem = rng.integers(0, s.n_members, 2000)
    col = rng.integers(0, len(products), 2000)
    bought = s.counts[mem, products[col]].A1 > 0
    assert 0 < bought.sum() < len(mem)  # both kinds of pairs are checked
    pairs = audience_pair_features(s, mem, products[col])
    assert pairs.shape == (2000, len(AUDIENCE_FEATURES))
    np.testing.assert_allclose(block[col, mem], pairs @ w, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("l2", [0.1, 1.0, 30.0])
def test_hybrid_within_product_logistic_is_scikit_learns_optimum(l2: float) -> None:
    # the Newton solver minimises LogisticRegression(C=1/l2, fit_intercept=False) over the
    # standardised features plus one-hot product columns: the same weights, found in far fewer passes
    from sklearn.linear_model import LogisticRegression

    from recsys.models.hybrid.audiences import _logistic_within

    rng = np.random.default_rng(7)
    n, d, groups = 3000, 4, 40
    A = rng.standard_normal((n, d)) * [1.0, 3.0, 0.5, 2.0] + [0.0, 5.0, -1.0, 0.0]
    group = rng.integers(0, groups, n) * 10  # group labels need not be 0..G-1
    level = rng.standard_normal(groups)[group // 10] * 2.0  # products differ a lot in their rate
    b = (rng.random(n) < 1 / (1 + np.exp(-(A @ [0.8, -0.3, 1.5, 0.0] + level)))).astype(float)
    mean, std = A.mean(axis=0), A.std(axis=0) + 1e-6
    onehot = sp.csr_matrix((np.ones(n), (np.arange(n), np.unique(group, return_inverse=True)[1])))
    X = sp.hstack([sp.csr_matrix((A - mean) / std), onehot], format="csr")
    ref = LogisticRegression(C=1.0 / l2, fit_intercept=False, tol=1e-10, max_iter=10_000).fit(X, b)
    want = ref.coef_.ravel()[:d] / std
    np.testing.assert_allclose(_logistic_within(A, b, group, l2), want, rtol=1e-4, atol=1e-5)


def test_within_product_logistic_reads_rows_and_columns_a_block_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    # the fit on a selection of A's rows and columns, read in blocks of 257 rows, is the fit on
    # the selection copied whole (the blocks only change the order of the sums)
    from recsys.models.hybrid import audiences

    rng = np.random.default_rng(3)
    n, d = 4000, 6
    A = (rng.standard_normal((n, d)) * [1.0, 3.0, 0.5, 2.0, 1.0, 4.0]).astype(np.float32)
    group = rng.integers(0, 30, n)
    b = (rng.random(n) < 1 / (1 + np.exp(-(A[:, :4] @ [0.8, -0.3, 1.5, 0.0])))).astype(float)
    rows, cols = np.flatnonzero(rng.random(n) < 0.7), np.array([0, 1, 3, 5])
    weight = rng.random(len(rows)) + 0.5
    whole = audiences._logistic_within(A[rows][:, cols].astype(np.float64), b[rows], group[rows], 1.0, weight=weight)
    monkeypatch.setattr(audiences, "LOGISTIC_BLOCK_ROWS", 257)
    blocked = audiences._logistic_within(A, b[rows], group[rows], 1.0, weight=weight, rows=rows, cols=cols)
    np.testing.assert_allclose(blocked, whole, rtol=1e-6, atol=1e-7)
    assert np.abs(whole).max() > 0.1  # a fit that learnt something


def test_pair_dots_are_the_als_scores_block_by_block(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from recsys.models.hybrid import state

    rng = np.random.default_rng(4)
    s = SimpleNamespace(user_factors=rng.standard_normal((50, 8)).astype(np.float32),
                        item_factors=rng.standard_normal((30, 8)).astype(np.float32))
    u, i = rng.integers(0, 50, 1000), rng.integers(0, 30, 1000)
    monkeypatch.setattr(state, "DOT_BLOCK_PAIRS", 64)
    got = state.pair_dots(s, u, i)  # type: ignore[arg-type]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, (s.user_factors[u] * s.item_factors[i]).sum(axis=1), rtol=1e-5, atol=1e-6)


def test_hybrid_never_sold_fit_within_ranks_members_of_a_product_by_what_holds_within_it() -> None:
    # a feature whose relation across products is the reverse of its relation within one (members
    # of the best-selling products score high on it, yet within any product the lower-scoring
    # members are the buyers): pooled over every never-sold product's examples the regression
    # follows the products; with one intercept per product ("within") it follows the members,
    # which is what ranking the members of one product needs
    from recsys.models.hybrid.audiences import AUDIENCE_FEATURES, AudienceExamples, fit_audience
    from recsys.models.hybrid.params import HybridParams

    rng = np.random.default_rng(3)
    n, groups = 20_000, 200
    group = rng.integers(0, groups, n)
    level = rng.standard_normal(groups) * 2.0  # how much each product sells
    deviation = rng.standard_normal(n) * 0.5
    feature = level[group] + deviation
    b = (rng.random(n) < 1 / (1 + np.exp(-(1.5 * level[group] - 2.0 * deviation - 2.0)))).astype(float)
    A = np.zeros((n, len(AUDIENCE_FEATURES)), np.float32)
    col = AUDIENCE_FEATURES.index("log_category_knn")
    A[:, col] = feature
    ex = AudienceExamples(A=A, b=b, cold=np.ones(n, bool), group=group, level=np.zeros((n, 2), np.float32),
                          rate=np.full(n, 0.1))
    # every example weighted alike: weighted per product, the big sellers' intercepts (under the L2
    # penalty like every coefficient) shrink more and the feature takes part of their level
    weights = {fit: fit_audience(ex, HybridParams(cold_audience_fit=fit, cold_audience_features=["log_category_knn"],
                                                  audience_product_weight_power=0.0))[0]
               for fit in ("pooled", "within")}
    assert weights["pooled"][1, col] > 0  # follows the products
    assert weights["within"][1, col] < 0  # follows the members


def test_hybrid_product_line_codes_come_only_from_barcode_ids() -> None:
    # a line is a longer id prefix of a barcode (12+ characters); other ids get no line (-1), so a
    # retailer whose ids are not barcodes gets a zero line feature rather than a wrong one
    from recsys.models.hybrid.state import id_prefix_codes

    ids = np.array(["4710088620156", "4710088620999", "4710088710000", "A12", "4710088"])
    codes = id_prefix_codes(ids, 9)
    assert codes[0] == codes[1] != codes[2]
    assert codes[0] >= 0 and codes[2] >= 0 and codes[3] == -1 and codes[4] == -1


def test_hybrid_without_audiences_gives_the_same_picks_and_refuses_audiences() -> None:
    # the next-basket protocol fits picks only; its picks must be the full model's picks
    from recsys.errors import RecsysError

    params = {"factors": 8, "iterations": 3, "n_estimators": 10, "min_child_samples": 10,
              "knn_neighbours": 20, "audience_negatives": 5, "num_threads": 1, "label_days": 14}
    data = synthetic_data()
    full = get_model("hybrid")(params).fit(data)
    picks_only = get_model("hybrid")({**params, "audiences": False}).fit(data)
    members = np.arange(data.n_members)
    for mode in ("replenish", "discover"):
        a, b = full.recommend(members, 10, mode=mode), picks_only.recommend(members, 10, mode=mode)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert "audience_rows_sold" in full.training_summary
    assert "audience_rows_sold" not in picks_only.training_summary
    with pytest.raises(RecsysError, match="audiences = true"):
        picks_only.audience(np.array([0]), n=5)


def test_hybrid_ranker_rows_built_a_block_of_members_at_a_time_are_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    # the ranker's examples are built a block of members at a time (bounded memory at millions of
    # members); the negatives' draws continue one stream, so the fitted ranker is the same
    import recsys.models.hybrid.ranker as ranker

    params = {"factors": 8, "iterations": 3, "n_estimators": 10, "min_child_samples": 10, "knn_neighbours": 20,
              "audience_negatives": 5, "num_threads": 1, "label_days": 14}
    data = synthetic_data()
    whole = get_model("hybrid")(params).fit(data)
    monkeypatch.setattr(ranker, "RANKER_BLOCK_MEMBERS", 7)
    blocks = get_model("hybrid")(params).fit(data)
    assert whole.training_summary["ranker_rows"] > 7 * 3  # several blocks
    assert blocks.ranker.booster_.model_to_string() == whole.ranker.booster_.model_to_string()
    assert blocks.training_summary == whole.training_summary


def test_hybrid_audiences_learn_from_their_own_label_windows_and_picks_from_the_rankers() -> None:
    # picks and audiences are chosen on validation separately: with audience_label_days set, the
    # ranker is the one learnt from label_days' windows and the audience models the ones learnt
    # from audience_label_days' windows, each exactly as a model with that one setting
    params = {"factors": 8, "iterations": 3, "n_estimators": 10, "min_child_samples": 10, "knn_neighbours": 20,
              "audience_negatives": 5, "num_threads": 1}
    data = synthetic_data()
    split = get_model("hybrid")({**params, "label_days": 7, "label_windows": 2, "audience_label_days": 14,
                                         "audience_label_windows": 1}).fit(data)
    picks_like = get_model("hybrid")({**params, "label_days": 7, "label_windows": 2}).fit(data)
    audience_like = get_model("hybrid")({**params, "label_days": 14}).fit(data)
    assert split.training_summary["label_windows"] == 2 and split.training_summary["audience_label_windows"] == 1
    assert split.ranker.booster_.model_to_string() == picks_like.ranker.booster_.model_to_string()
    assert audience_like.ranker.booster_.model_to_string() != picks_like.ranker.booster_.model_to_string()
    for a, b, other in zip((split.audience_w, split.audience_b), (audience_like.audience_w, audience_like.audience_b),
                           (picks_like.audience_w, picks_like.audience_b), strict=True):
        assert np.array_equal(a, b) and not np.array_equal(a, other)
    products = np.arange(data.n_products)
    got, want = split.audience(products, n=10), audience_like.audience(products, n=10)
    assert np.array_equal(got[0], want[0])


def _barcode_hybrid() -> tuple[Any, TrainData]:
    """The hybrid fitted on the synthetic data with barcode-like ids (five products to a line)."""
    model = get_model("hybrid")({"factors": 8, "iterations": 3, "n_estimators": 10, "min_child_samples": 10,
                                 "knn_neighbours": 20, "audience_negatives": 5, "num_threads": 1,
                                 "label_days": 14, "line_from_id_prefix": 9})
    data = synthetic_data()
    ids = IdMap([f"471000{i // 5:03d}{i:04d}" for i in range(data.n_products)])
    data = dataclasses.replace(data, interactions=dataclasses.replace(data.interactions, products=ids))
    return model.fit(data), data


def test_hybrid_attribute_audience_leaves_out_the_product_line() -> None:
    # a never-sold product described by its attributes has no catalogue id, so no product line:
    # with only the line term weighted, its audience by id is the line's buyers, by attributes no one
    from recsys.models.hybrid.audiences import AUDIENCE_FEATURES

    model, _ = _barcode_hybrid()
    s = model.state
    cold = np.flatnonzero(np.diff(s.counts_csc.indptr) == 0)
    line_buyers = s.member_line_csc[:, s.item_line[cold]]
    j = int(cold[np.argmax(np.diff(line_buyers.indptr))])  # the cold product whose line has most buyers
    buyers = set(s.member_line_csc[:, s.item_line[j]].indices.tolist())
    assert 0 < len(buyers) < s.n_members
    model.audience_w = np.zeros((2, len(AUDIENCE_FEATURES)), np.float32)
    model.audience_w[1, AUDIENCE_FEATURES.index("log_line_count")] = 1.0
    model.audience_g = np.zeros_like(model.audience_g)
    model.audience_b = np.zeros_like(model.audience_b)
    idx, sc = model.audience(np.array([j]), n=s.n_members)
    assert set(idx[0, sc[0] > 0].tolist()) == buyers
    _, sc_attr = model.attribute_audience(np.array([j]), n=s.n_members)
    assert np.all(sc_attr[0] == 0.0)


def test_hybrid_category_price_band_share_is_the_members_share_within_the_category() -> None:
    # cat_band_share: of a member's purchase occasions in the product's category, the share in its price band
    from recsys.models.hybrid.audiences import AUDIENCE_FEATURES, audience_pair_features

    model, data = _barcode_hybrid()
    s = model.state
    counts = data.interactions.matrix("count").toarray()
    cat, band = data.product_tags["category"].codes, data.product_tags["price_band"].codes
    rng = np.random.default_rng(3)
    members, products = rng.integers(0, s.n_members, 500), rng.integers(0, s.n_products, 500)
    want = np.array([counts[u, (cat == cat[i]) & (band == band[i])].sum() / max(counts[u, cat == cat[i]].sum(), 1)
                     for u, i in zip(members, products, strict=True)])
    assert (want > 0).sum() > 20 and (want < 1).sum() > 20
    got = audience_pair_features(s, members, products)[:, AUDIENCE_FEATURES.index("cat_band_share")]
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_hybrid_member_recent_activity_is_their_recency_weighted_purchases_and_the_sold_model_reads_it() -> None:
    # log_member_recent: how much a member buys lately (purchases weighted 0.5 ** (age / 14 days));
    # the sold-product audience model reads it by default (chosen on the validation windows), the
    # never-sold one does not
    from recsys.models.hybrid.audiences import (
        AUDIENCE_FEATURES,
        AudienceExamples,
        audience_pair_features,
        fit_audience,
    )
    from recsys.models.hybrid.params import HybridParams
    from recsys.models.hybrid.state import build_state

    # m0: ages 0 and 14 -> 1 + 0.5; m1: age 28 twice -> 0.25 + 0.25; m2: nothing
    x = literal_data([(0, 0, 0), (0, 1, 14), (1, 0, 28), (1, 1, 28)], 3, 2).interactions
    s = build_state(x, HybridParams(factors=2, iterations=1, knn_neighbours=2, num_threads=1),
                    np.zeros(2, np.int32), None, {})
    np.testing.assert_allclose(s.member_recent, [1.5, 0.5, 0.0], rtol=1e-5)
    col = AUDIENCE_FEATURES.index("log_member_recent")
    feats = audience_pair_features(s, np.array([0, 1, 2]), np.array([1, 1, 1]))
    np.testing.assert_allclose(feats[:, col], np.log1p([1.5, 0.5, 0.0]), rtol=1e-5)

    rng = np.random.default_rng(5)
    n, groups = 20_000, 100
    group = rng.integers(0, groups, n)
    recent = rng.standard_normal(n)
    b = (rng.random(n) < 1 / (1 + np.exp(-(1.2 * recent - 3.0)))).astype(float)
    A = np.zeros((n, len(AUDIENCE_FEATURES)), np.float32)
    A[:, col] = recent
    A[:, AUDIENCE_FEATURES.index("log_member_occ")] = rng.standard_normal(n)  # noise
    for cold in (False, True):
        ex = AudienceExamples(A=A, b=b, cold=np.full(n, cold), group=group, level=np.zeros((n, 2), np.float32),
                              rate=np.full(n, 0.1))
        w = fit_audience(ex, HybridParams())[0]
        if cold:
            assert w[1, col] == 0.0  # not one of cold_audience_features
        else:
            assert w[0, col] > 0.5  # the buyers are the recently active


def test_hybrid_within_product_logistic_with_row_weights_is_scikit_learns_weighted_optimum() -> None:
    from sklearn.linear_model import LogisticRegression

    from recsys.models.hybrid.audiences import _logistic_within

    rng = np.random.default_rng(11)
    n, d, groups = 2000, 3, 30
    A = rng.standard_normal((n, d)) * [1.0, 2.0, 0.5]
    group = rng.integers(0, groups, n)
    b = (rng.random(n) < 1 / (1 + np.exp(-(A @ [0.8, -0.3, 1.5] - 1.0)))).astype(float)
    weight = rng.uniform(0.1, 3.0, n)
    mean, std = A.mean(axis=0), A.std(axis=0) + 1e-6
    onehot = sp.csr_matrix((np.ones(n), (np.arange(n), group)))
    X = sp.hstack([sp.csr_matrix((A - mean) / std), onehot], format="csr")
    ref = LogisticRegression(C=1.0, fit_intercept=False, tol=1e-10, max_iter=10_000).fit(X, b, sample_weight=weight)
    got = _logistic_within(A, b, group, 1.0, weight=weight)
    np.testing.assert_allclose(got, ref.coef_.ravel()[:d] / std, rtol=1e-4, atol=1e-5)
    assert not np.allclose(got, _logistic_within(A, b, group, 1.0), rtol=1e-3)


def test_hybrid_audience_product_weighting_lets_every_product_count_alike() -> None:
    # one product with many buyers whose buyers score high on a feature, and many small products
    # whose buyers score low on it: weighted by buyer (power 0) the big product sets the sign, with
    # every product alike (power 1, as the evaluation averages recall over products) the small ones do
    from recsys.models.hybrid.audiences import AUDIENCE_FEATURES, AudienceExamples, fit_audience
    from recsys.models.hybrid.params import HybridParams

    rng = np.random.default_rng(2)
    col = AUDIENCE_FEATURES.index("log_category_count")
    parts = []
    for g, (n_pos, sign) in enumerate([(3000, 1.0)] + [(3, -1.0)] * 300):
        x_pos = rng.standard_normal(n_pos) + sign
        x_neg = rng.standard_normal(n_pos * 10)
        parts.append((np.r_[x_pos, x_neg], np.r_[np.ones(n_pos), np.zeros(n_pos * 10)], g))
    x = np.concatenate([p[0] for p in parts])
    b = np.concatenate([p[1] for p in parts])
    group = np.concatenate([np.full(len(p[0]), p[2]) for p in parts])
    A = np.zeros((len(x), len(AUDIENCE_FEATURES)), np.float32)
    A[:, col] = x
    # (the never-sold model: the sold one's second, unweighted fit of its scale across products
    # follows the big product again)
    ex = AudienceExamples(A=A, b=b, cold=np.ones(len(x), bool), group=group,
                          level=np.zeros((len(x), 2), np.float32), rate=np.full(len(x), 0.1))
    params = {"cold_audience_features": ["log_category_count"]}
    by_buyer = fit_audience(ex, HybridParams(**params, audience_product_weight_power=0.0))[0]
    by_product = fit_audience(ex, HybridParams(**params))[0]  # the default: 1
    assert by_buyer[1, col] > 0 > by_product[1, col]
