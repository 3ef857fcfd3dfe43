"""FAISS indexes: exact answers equal brute force; HNSW recall >= 0.95; filters and changed rows;
vector-model answers through the API equal the model's own dense scoring."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import S_ACTIVE, S_MEMBERS, S_PRODUCTS, auth

from recsys.bundle import load_bundle
from serving.index import VectorIndex, brute_force, recall_at_k
from serving.settings import IndexSettings


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((3000, 16)).astype(np.float32)


def test_flat_index_equals_brute_force_with_filters(vectors: np.ndarray) -> None:
    ix = VectorIndex(vectors, exact_max=10_000, settings=IndexSettings())
    assert ix.kind == "flat"
    q = vectors[:5]
    allowed = np.arange(len(vectors)) % 3 == 0
    got_i, got_s = ix.search(q, 20, allowed)
    want_i, want_s = brute_force(vectors, q, 20, allowed)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_allclose(got_s, want_s, rtol=1e-5)
    assert allowed[got_i].all()


def test_hnsw_recall_at_defaults(vectors: np.ndarray) -> None:
    ix = VectorIndex(vectors, exact_max=1000, settings=IndexSettings())
    assert ix.kind == "hnsw"
    assert recall_at_k(ix, vectors[:100] + 0.1, 10) >= 0.95
    allowed = np.arange(len(vectors)) % 2 == 0
    idx, _ = ix.search(vectors[:10], 10, allowed)
    assert allowed[idx[idx >= 0]].all()
    # above hnsw_max_k the search is exact
    big_i, _ = ix.search(vectors[:2], 2500)
    np.testing.assert_array_equal(big_i, brute_force(vectors, vectors[:2], 2500)[0])


@pytest.mark.parametrize("exact_max", [10_000, 1000])
def test_changed_and_added_rows_are_found_exactly(vectors: np.ndarray, exact_max: int) -> None:
    ix = VectorIndex(vectors, exact_max=exact_max, settings=IndexSettings())
    target = np.full(16, 10.0, dtype=np.float32)
    ix.set(7, target)  # an existing row changes
    new_row = ix.set(len(ix), -target)  # a new row
    assert new_row == 3000 and len(ix) == 3001 and ix.n_dirty == 2
    idx, sc = ix.search(target[None, :], 1)
    assert idx[0, 0] == 7 and sc[0, 0] == pytest.approx(1600.0)
    idx, _ = ix.search(-target[None, :], 1)
    assert idx[0, 0] == 3000
    allowed = np.ones(3001, dtype=bool)
    allowed[7] = False
    idx, _ = ix.search(target[None, :], 3, allowed)
    assert 7 not in idx[0].tolist()


def test_vector_answers_equal_the_models_dense_scoring(
    serving_client: Callable[..., Any], serving_bundles: dict[str, Path]
) -> None:
    model = load_bundle(serving_bundles["als"]).model
    active = np.flatnonzero(S_ACTIVE)
    with serving_client("als") as c:
        h = auth("admin")
        for m, member in enumerate(S_MEMBERS):
            for mode in ("discover", "replenish"):
                want_i, want_s = model.recommend(np.array([m]), 4, mode=mode, include=active)
                body = c.get(f"/v1/members/{member}/picks", params={"k": 4, "mode": mode}, headers=h).json()
                want = [S_PRODUCTS[i] for i in want_i[0] if i >= 0]
                assert [p["product_id"] for p in body["picks"]] == want
                np.testing.assert_allclose([p["score"] for p in body["picks"]], want_s[0][: len(want)], rtol=1e-4, atol=1e-5)
        for p, product in enumerate(S_PRODUCTS):
            want_i, want_s = model.audience(np.array([p]), 4)
            body = c.post("/v1/audiences", json={"product_id": product, "size": 4}, headers=h).json()
            assert [x["member_id"] for x in body["members"]] == [S_MEMBERS[i] for i in want_i[0]]
            np.testing.assert_allclose([x["score"] for x in body["members"]], want_s[0], rtol=1e-4, atol=1e-5)
            sim_i, _ = model.similar_items(np.array([p]), len(S_PRODUCTS) - 1)
            want = [S_PRODUCTS[i] for i in sim_i[0] if i >= 0 and S_ACTIVE[i]][:3]
            body = c.get(f"/v1/products/{product}/similar?k=3", headers=h).json()
            assert [x["product_id"] for x in body["similar"]] == want


def test_hnsw_is_used_above_the_threshold_and_agrees_on_tiny_data(serving_client: Callable[..., Any]) -> None:
    with serving_client("als", index={"exact_max_members": 3, "exact_max_products": 3}) as exact_c, \
            serving_client("als") as flat_c:
        info = exact_c.get("/v1/model", headers=auth("app")).json()["scorer"]
        assert info["members"]["kind"] == "hnsw" and info["products"]["kind"] == "hnsw"
        for member in S_MEMBERS:
            a = exact_c.get(f"/v1/members/{member}/picks?k=3", headers=auth("app")).json()["picks"]
            b = flat_c.get(f"/v1/members/{member}/picks?k=3", headers=auth("app")).json()["picks"]
            assert [p["product_id"] for p in a] == [p["product_id"] for p in b]


def test_hnsw_routes_large_k_and_restrictive_filters_to_exact_search(vectors: np.ndarray) -> None:
    settings = IndexSettings(hnsw_max_k=50, hnsw_min_filter_share=0.9)
    ix = VectorIndex(vectors, exact_max=1000, settings=settings)
    q = vectors[:4] + 0.1
    ix.search(q, 10)  # small k, no filter: the graph
    assert ix.searches == {"flat": 0, "hnsw": 1, "exact": 0}
    big_i, big_s = ix.search(q, 51)  # above hnsw_max_k: exact, equal to brute force
    want_i, want_s = brute_force(vectors, q, 51)
    np.testing.assert_array_equal(big_i, want_i)
    np.testing.assert_allclose(big_s, want_s, rtol=1e-5)
    segment = np.arange(len(vectors)) % 10 == 0  # a 10 % tag filter: exact over those rows
    seg_i, _ = ix.search(q, 10, segment)
    np.testing.assert_array_equal(seg_i, brute_force(vectors, q, 10, segment)[0])
    assert ix.searches == {"flat": 0, "hnsw": 1, "exact": 2}
    almost_all = np.ones(len(vectors), dtype=bool)
    almost_all[:5] = False  # e.g. a few delisted rows: the graph still answers
    ix.search(q, 10, almost_all)
    assert ix.searches["hnsw"] == 2
    assert ix.describe()["searches"] == {"hnsw": 2, "exact": 2}
    # recall as served, every route
    assert recall_at_k(ix, q, 10) >= 0.95
    assert recall_at_k(ix, q, 200) == 1.0
    assert recall_at_k(ix, q, 20, segment) == 1.0


def test_brute_force_gathers_the_rows_of_a_restrictive_filter(vectors: np.ndarray) -> None:
    q = vectors[:3]
    few = np.zeros(len(vectors), dtype=bool)
    few[::50] = True  # 2 %: gathered; 50 %: masked -- the same answers
    half = np.arange(len(vectors)) % 2 == 0
    for allowed in (few, half):
        got_i, got_s = brute_force(vectors, q, 7, allowed)
        scores = q @ vectors.T
        scores[:, ~allowed] = -np.inf
        want = np.argsort(-scores, axis=1, kind="stable")[:, :7]
        np.testing.assert_array_equal(got_i, want)
        np.testing.assert_allclose(got_s, np.take_along_axis(scores, want, axis=1), rtol=1e-6)
