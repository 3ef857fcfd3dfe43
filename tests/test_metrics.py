"""Every ranking metric against values worked out by hand in the comments.

The shared case (5 candidates):

    query 0  truth {0, 1, 2}   top-3 [0, 4, 2]   hits at ranks 1 and 3
    query 1  truth {3}         top-3 [1, 3, -1]  hit at rank 2, padded
    query 2  truth {4}         top-3 [0, 1, 2]   no hit
    query 3  truth {}          top-3 [4, 3, 0]   excluded by ranking_report
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from recsys import metrics as M

TOPK = np.array([[0, 4, 2], [1, 3, -1], [0, 1, 2], [4, 3, 0]])
TRUTH = sp.csr_matrix(np.array([
    [1, 1, 1, 0, 0],
    [0, 0, 0, 1, 0],
    [0, 0, 0, 0, 1],
    [0, 0, 0, 0, 0],
], dtype=np.float32))

D2, D3 = 1 / np.log2(3), 1 / np.log2(4)  # discounts of ranks 2 and 3 (rank 1: 1.0)


def test_hit_matrix_marks_each_relevant_position():
    assert M.hit_matrix(TOPK, TRUTH).tolist() == [
        [True, False, True],
        [False, True, False],
        [False, False, False],
        [False, False, False],
    ]


def test_hit_matrix_counts_each_position_of_a_duplicated_candidate():
    # the hit matrix answers "is topk[q, j] relevant" position by position, so a candidate
    # listed twice is a hit twice; duplicate entries in the truth itself collapse to one
    truth = sp.coo_matrix((np.ones(3), ([0, 0, 1], [2, 2, 0])), shape=(2, 3))
    assert M.hit_matrix(np.array([[2, 2, 1], [0, 0, -1]]), truth).tolist() == [
        [True, True, False],
        [True, True, False],
    ]
    assert M.truth_sizes(truth).tolist() == [1, 1]


def test_padding_never_counts_as_a_hit_even_where_its_key_collides():
    # -1 in row 1 has the flat key 1 * 3 - 1 = 2, which is (row 0, col 2): relevant for row 0
    truth = sp.csr_matrix(np.array([[0, 0, 1], [0, 0, 1]]))
    assert M.hit_matrix(np.array([[-1, -1], [-1, 2]]), truth).tolist() == [[False, False], [False, True]]
    assert M.recall_at_k(np.array([[-1, -1], [-1, -1]]), truth, 2).tolist() == [0.0, 0.0]


def test_hit_matrix_rejects_misaligned_truth():
    with pytest.raises(ValueError, match="rows"):
        M.hit_matrix(TOPK[:2], TRUTH)


def test_recall_min_vs_truth_normalisation():
    # q0: 2 hits; min: 2 / min(3, 3) = 2/3; truth: 2 / 3. At k=2 q0 has 1 hit: min 1/2, truth 1/3.
    # q1: 1 hit of 1. q2: 0. q3: empty truth -> 0.
    assert M.recall_at_k(TOPK, TRUTH, 3, "min") == pytest.approx([2 / 3, 1.0, 0.0, 0.0])
    assert M.recall_at_k(TOPK, TRUTH, 2, "min") == pytest.approx([1 / 2, 1.0, 0.0, 0.0])
    assert M.recall_at_k(TOPK, TRUTH, 2, "truth") == pytest.approx([1 / 3, 1.0, 0.0, 0.0])


def test_recall_only_looks_at_the_first_k():
    # q0's second hit is at rank 3
    assert M.recall_at_k(TOPK, TRUTH, 1, "truth") == pytest.approx([1 / 3, 0.0, 0.0, 0.0])


def test_precision():
    assert M.precision_at_k(TOPK, TRUTH, 3) == pytest.approx([2 / 3, 1 / 3, 0.0, 0.0])
    assert M.precision_at_k(TOPK, TRUTH, 1) == pytest.approx([1.0, 0.0, 0.0, 0.0])


def test_ndcg_ideal_min_vs_full():
    # k=2, q0: DCG = 1 (rank 1 only). ideal "min" sums min(2, 3) = 2 positions: 1 + D2;
    # ideal "full" sums all 3: 1 + D2 + D3.  q1: DCG = D2, IDCG = 1 either way.
    assert M.ndcg_at_k(TOPK, TRUTH, 2, "min") == pytest.approx([1 / (1 + D2), D2, 0.0, 0.0])
    assert M.ndcg_at_k(TOPK, TRUTH, 2, "full") == pytest.approx([1 / (1 + D2 + D3), D2, 0.0, 0.0])
    # k=3: q0 DCG = 1 + D3 over IDCG 1 + D2 + D3 (both ideals agree once k >= |truth|)
    expect = (1 + D3) / (1 + D2 + D3)
    assert M.ndcg_at_k(TOPK, TRUTH, 3, "min")[0] == pytest.approx(expect)
    assert M.ndcg_at_k(TOPK, TRUTH, 3, "full")[0] == pytest.approx(expect)


def test_ndcg_is_one_for_a_perfect_list():
    assert M.ndcg_at_k(np.array([[2, 0, 1]]), TRUTH[:1], 3).tolist() == pytest.approx([1.0])


def test_average_precision():
    # q0: precisions at hits 1/1 and 2/3 -> (1 + 2/3) / min(3, 3) = 5/9
    # q1: precision at the hit 1/2 -> 0.5 / 1.  At k=2, q0: 1 / min(2, 3) = 1/2.
    assert M.average_precision_at_k(TOPK, TRUTH, 3) == pytest.approx([5 / 9, 1 / 2, 0.0, 0.0])
    assert M.average_precision_at_k(TOPK, TRUTH, 2) == pytest.approx([1 / 2, 1 / 2, 0.0, 0.0])


def test_hit_rate():
    assert M.hit_rate_at_k(TOPK, TRUTH, 3).tolist() == [1.0, 1.0, 0.0, 0.0]
    assert M.hit_rate_at_k(TOPK, TRUTH, 1).tolist() == [1.0, 0.0, 0.0, 0.0]


def test_coverage_ignores_padding():
    # top-3 lists use {0, 1, 2, 3, 4} = all 5; top-1 uses {0, 1, 4}; padding is not a candidate
    assert M.coverage_at_k(TOPK, 5, 3) == 1.0
    assert M.coverage_at_k(TOPK, 5, 1) == pytest.approx(3 / 5)
    assert M.coverage_at_k(np.array([[-1, 2]]), 4, 2) == pytest.approx(1 / 4)
    assert M.coverage_at_k(TOPK, 0, 3) == 0.0


def test_ranking_report_drops_queries_with_empty_truth():
    rep = M.ranking_report(TOPK, TRUTH, ks=(2,), normalization="truth", ideal="full", prefix="x_")
    # 3 non-empty queries (q3 excluded; were it included every mean would be 3/4 of these)
    assert rep["x_n_queries"] == 3.0
    assert rep["x_recall@2"] == pytest.approx((1 / 3 + 1 + 0) / 3)
    assert rep["x_ndcg@2"] == pytest.approx((1 / (1 + D2 + D3) + D2 + 0) / 3)
    assert rep["x_map@2"] == pytest.approx((1 / 2 + 1 / 2 + 0) / 3)
    assert rep["x_hit_rate@2"] == pytest.approx(2 / 3)
    assert rep["x_precision@2"] == pytest.approx((1 / 2 + 1 / 2 + 0) / 3)
    assert set(rep) == {f"x_{m}" for m in ("n_queries", "recall@2", "ndcg@2", "map@2", "hit_rate@2",
                                           "precision@2")}


def test_ranking_report_min_normalisation_and_two_ks():
    rep = M.ranking_report(TOPK, TRUTH, ks=(2, 3))
    assert rep["recall@2"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert rep["recall@3"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert rep["ndcg@2"] == pytest.approx((1 / (1 + D2) + D2) / 3)


def test_ranking_report_with_no_nonempty_query_reports_only_the_count():
    assert M.ranking_report(TOPK[3:], TRUTH[3:], ks=(2,)) == {"n_queries": 0.0}


def test_explicit_zero_in_truth_is_not_relevant():
    # the module contract: "truth ... whose non-zeros are the relevant candidates"
    truth = sp.csr_matrix((np.array([1.0, 0.0]), np.array([0, 1]), np.array([0, 2])), shape=(1, 3))
    assert M.hit_matrix(np.array([[1, 0]]), truth).tolist() == [[False, True]]
    assert M.recall_at_k(np.array([[1, 0]]), truth, 2, "truth").tolist() == [1.0]
