"""FAISS indexes: exact answers equal brute force; IVF and HNSW recall >= 0.95; filters and changed
rows; an index saved with a bundle loads memory-mapped and answers the same; vector-model answers
through the API equal the model's own dense scoring."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest
from conftest import S_ACTIVE, S_MEMBERS, S_PRODUCTS, auth

from recsys.ann import (
    AnnIndex,
    build_index,
    exact_top,
    ivf_nprobe,
    load_index,
    mips_to_l2,
    recall_vs_exact,
    save_index,
)
from recsys.bundle import load_bundle
from serving.index import VectorIndex, brute_force, recall_at_k
from serving.settings import IndexSettings

HNSW = IndexSettings(approximate="hnsw")


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
    ix = VectorIndex(vectors, exact_max=1000, settings=HNSW)
    assert ix.kind == "hnsw"
    assert recall_at_k(ix, vectors[:100] + 0.1, 10) >= 0.95
    allowed = np.arange(len(vectors)) % 2 == 0
    idx, _ = ix.search(vectors[:10], 10, allowed)
    assert allowed[idx[idx >= 0]].all()
    # above hnsw_max_k the search is exact
    big_i, _ = ix.search(vectors[:2], 2500)
    np.testing.assert_array_equal(big_i, brute_force(vectors, vectors[:2], 2500)[0])


@pytest.mark.parametrize(("exact_max", "approximate"), [(10_000, "ivf"), (1000, "ivf"), (1000, "hnsw")])
def test_changed_and_added_rows_are_found_exactly(vectors: np.ndarray, exact_max: int, approximate: str) -> None:
    ix = VectorIndex(vectors, exact_max=exact_max, settings=IndexSettings(approximate=approximate))
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


def test_the_index_changes_its_own_copy_never_the_models_vectors(vectors: np.ndarray) -> None:
    # the model's vectors are memory-mapped read-only from the bundle: the index copies them
    model_vectors = vectors.copy()
    model_vectors.setflags(write=False)
    ix = VectorIndex(model_vectors, exact_max=10_000, settings=IndexSettings())
    before = ix.vectors.copy()
    ix.set(3, np.full(16, 5.0, dtype=np.float32))
    ix.set(len(ix), np.full(16, 2.0, dtype=np.float32))  # a new member: the copy grows
    np.testing.assert_array_equal(model_vectors, vectors)  # the model's vectors are as they were
    np.testing.assert_array_equal(before, vectors)
    assert ix.vectors[3].tolist() == [5.0] * 16 and len(ix) == len(vectors) + 1
    assert ix.search(np.full((1, 16), 1.0, np.float32), 1)[0][0, 0] == 3


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
    with serving_client("als", index={"exact_max_members": 3, "exact_max_products": 3, "approximate": "hnsw"}) as exact_c, \
            serving_client("als") as flat_c:
        info = exact_c.get("/v1/model", headers=auth("app")).json()["scorer"]
        assert info["members"]["kind"] == "hnsw" and info["products"]["kind"] == "hnsw"
        for member in S_MEMBERS:
            a = exact_c.get(f"/v1/members/{member}/picks?k=3", headers=auth("app")).json()["picks"]
            b = flat_c.get(f"/v1/members/{member}/picks?k=3", headers=auth("app")).json()["picks"]
            assert [p["product_id"] for p in a] == [p["product_id"] for p in b]


def test_hnsw_routes_large_k_and_restrictive_filters_to_exact_search(vectors: np.ndarray) -> None:
    settings = IndexSettings(approximate="hnsw", hnsw_max_k=50, hnsw_min_filter_share=0.9)
    ix = VectorIndex(vectors, exact_max=1000, settings=settings)
    q = vectors[:4] + 0.1
    ix.search(q, 10)  # small k, no filter: the graph
    assert ix.searches == {"flat": 0, "hnsw": 1, "ivf": 0, "exact": 0}
    big_i, big_s = ix.search(q, 51)  # above hnsw_max_k: exact, equal to brute force
    want_i, want_s = brute_force(vectors, q, 51)
    np.testing.assert_array_equal(big_i, want_i)
    np.testing.assert_allclose(big_s, want_s, rtol=1e-5)
    segment = np.arange(len(vectors)) % 10 == 0  # a 10 % tag filter: exact over those rows
    seg_i, _ = ix.search(q, 10, segment)
    np.testing.assert_array_equal(seg_i, brute_force(vectors, q, 10, segment)[0])
    assert ix.searches == {"flat": 0, "hnsw": 1, "ivf": 0, "exact": 2}
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


# ----------------------------------------------------------------------------- IVF
@pytest.fixture(scope="module")
def members() -> tuple[np.ndarray, np.ndarray]:
    """Vectors shaped like a factor model's: a few strong directions, norms that vary (active
    members are long), and queries (product vectors) from the same directions."""
    rng = np.random.default_rng(1)
    basis = rng.standard_normal((6, 16)).astype(np.float32)
    users = (rng.standard_normal((8000, 6)).astype(np.float32) ** 3) @ basis
    users += 0.05 * rng.standard_normal(users.shape).astype(np.float32)
    items = rng.standard_normal((400, 6)).astype(np.float32) @ basis
    return users.astype(np.float32), items.astype(np.float32)


def test_mips_to_l2_orders_by_inner_product() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((50, 4)).astype(np.float32) * rng.uniform(0.1, 3, (50, 1)).astype(np.float32)
    q = rng.standard_normal((1, 4)).astype(np.float32)
    m = float(np.linalg.norm(x, axis=1).max())
    xa, qa = mips_to_l2(x, m), mips_to_l2(q)
    np.testing.assert_allclose(np.linalg.norm(xa, axis=1), m, rtol=1e-5)
    dist = ((xa - qa) ** 2).sum(axis=1)
    assert np.argsort(dist, kind="stable")[:10].tolist() == np.argsort(-(x @ q[0]), kind="stable")[:10].tolist()


def test_ivf_nprobe_reads_the_calibration() -> None:
    meta = {"nlist": 1024, "nprobe": {"10": 60, "100": 90, "1000": 200, "10000": 600, "100000": None}}
    assert ivf_nprobe(meta, 10) == 60 and ivf_nprobe(meta, 5) == 60
    assert ivf_nprobe(meta, 1000) == 200
    # between calibrated k: interpolated on log scales (200 * 3 ** 0.5 for 10 ** 3.5)
    assert ivf_nprobe(meta, int(10 ** 3.5)) == int(np.ceil(200 * 3 ** 0.5))
    # a filter keeping a fifth of the rows: searched as 5x as many results
    assert ivf_nprobe(meta, 2000, share=0.2) == ivf_nprobe(meta, 10_000) == 600
    # where the calibration found no nprobe worth probing, and past its largest k: exact (None)
    assert ivf_nprobe(meta, 20_000) is None and ivf_nprobe(meta, 200_000) is None
    assert ivf_nprobe({"nlist": 8, "nprobe": {}}, 10) is None


def test_ivf_index_calibrated_recall_filters_and_exact_scores(members: tuple[np.ndarray, np.ndarray]) -> None:
    users, items = members
    settings = IndexSettings()
    ix = VectorIndex(users, exact_max=1000, settings=settings, queries=items[:300])
    assert ix.kind == "ivf" and ix.source == "built at load"
    meta = ix.ann.meta
    assert set(meta["nprobe"]) == {"10", "100", "1000", "3000", "8000"}  # k capped at the 8,000 rows
    done = [k for k, p in meta["nprobe"].items() if p is not None]
    assert "10" in done and all(meta["recall"][k] >= settings.calibration_recall for k in done)
    held_out = items[300:]  # queries the calibration never saw
    for k in (10, 100):
        assert recall_at_k(ix, held_out, k) >= 0.95
    # scores are the exact inner products of the rows found
    idx, sc = ix.search(held_out[:5], 20)
    np.testing.assert_allclose(sc, np.einsum("qkd,qd->qk", users[idx], held_out[:5]), rtol=1e-5, atol=1e-5)
    # a tag filter: only allowed rows, recall still held (more cells probed, or exact)
    segment = np.random.default_rng(0).random(len(users)) < 0.3
    f_idx, _ = ix.search(held_out[:20], 50, segment)
    assert segment[f_idx[f_idx >= 0]].all()
    assert recall_at_k(ix, held_out, 50, segment) >= 0.95
    # more results than any calibrated nprobe covers: exact, equal to brute force
    big = 5000
    assert ix.exact_for(big, None) == (ivf_nprobe(meta, big) is None or
                                      ivf_nprobe(meta, big) > settings.ivf_max_probe_share * meta["nlist"])
    few = np.zeros(len(users), dtype=bool)
    few[::400] = True  # 0.25 %: k / share is beyond every calibrated k
    assert ix.exact_for(10, few)
    np.testing.assert_array_equal(ix.search(held_out[:3], 10, few)[0], brute_force(users, held_out[:3], 10, few)[0])
    assert ix.searches["exact"] >= 1 and ix.searches["ivf"] >= 1


def test_an_index_saved_with_the_bundle_loads_memory_mapped(
    members: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    users, items = members
    settings = IndexSettings()
    built = build_index(users, "ivf", settings, queries=items)
    meta = save_index(built, tmp_path / "members.faiss")
    assert meta["bytes"] > users.nbytes  # the vectors are in the file (one more coordinate each)
    loaded = load_index(tmp_path / "members.faiss", meta)
    assert isinstance(faiss.downcast_InvertedLists(loaded.index.invlists), faiss.OnDiskInvertedLists)  # mapped, not read
    a = VectorIndex(users, exact_max=1000, settings=settings, prebuilt=loaded)
    b = VectorIndex(users, exact_max=1000, settings=settings, prebuilt=built)
    assert a.source == "bundle" and a.ann.meta["nprobe"] == built.meta["nprobe"]
    for q, k, allowed in ((items[:10], 10, None), (items[:10], 100, users[:, 0] > 0)):
        np.testing.assert_array_equal(a.search(q, k, allowed)[0], b.search(q, k, allowed)[0])
    # an index that does not fit the vectors (another kind, another size) is built at load
    other = VectorIndex(users[:5000], exact_max=1000, settings=settings, prebuilt=loaded)
    assert other.source == "built at load" and len(other) == 5000
    flat = VectorIndex(users, exact_max=10_000, settings=settings, prebuilt=loaded)
    assert flat.kind == "flat"
    # what the file holds is checked against what the bundle says
    with pytest.raises(ValueError, match="holds 8000 vectors"):
        load_index(tmp_path / "members.faiss", {**meta, "n": 9000})
    with pytest.raises(ValueError, match="expected a IndexHNSWFlat"):
        load_index(tmp_path / "members.faiss", {**meta, "kind": "hnsw"})
    (tmp_path / "broken.faiss").write_bytes(b"not an index")
    with pytest.raises(ValueError, match="not a readable FAISS index"):
        load_index(tmp_path / "broken.faiss", meta)
    assert isinstance(loaded, AnnIndex)


def test_recall_counts_a_member_tied_with_the_kth_as_found() -> None:
    # members 0-3 share one vector (they bought the same single product): exact search keeps two
    # of the tie; any two of them are as good an answer
    vectors = np.array([[1.0, 0], [1, 0], [1, 0], [1, 0], [0.5, 0], [0, 1]], dtype=np.float32)
    q = np.array([[1.0, 0.0]], np.float32)
    scores, ids = exact_top(vectors, q, 2)
    assert set(ids[0].tolist()) <= {0, 1, 2, 3}
    assert recall_vs_exact(np.array([[2, 3]]), scores, ids, vectors, q) == 1.0
    assert recall_vs_exact(np.array([[3, 4]]), scores, ids, vectors, q) == 0.5  # 4 scores below the 2nd
    assert recall_vs_exact(np.array([[5, -1]]), scores, ids, vectors, q) == 0.0


def test_a_server_uses_the_bundles_member_index_instead_of_building_one(
    serving_client: Callable[..., Any], serving_bundles: dict[str, Path], tmp_path: Path
) -> None:
    import shutil

    from recsys.ann import build_indexes
    from recsys.bundle import add_indexes

    src = serving_bundles["als"]
    path = tmp_path / "als-indexed"
    shutil.copytree(src, path)
    model = load_bundle(path).model
    settings = IndexSettings(exact_max_members=3)
    add_indexes(path, build_indexes(model.user_factors, model.item_factors, settings, names=("members",)))
    with serving_client(path, index={"exact_max_members": 3}) as c, \
            serving_client("als", index={"exact_max_members": 3}) as built_here:
        info = c.get("/v1/model", headers=auth("admin")).json()["scorer"]["members"]
        assert info["kind"] == "ivf" and info["index"] == "bundle"
        assert built_here.get("/v1/model", headers=auth("admin")).json()["scorer"]["members"]["index"] == "built at load"
        for product in S_PRODUCTS:
            a = c.post("/v1/audiences", json={"product_id": product, "size": 3}, headers=auth("admin")).json()
            b = built_here.post("/v1/audiences", json={"product_id": product, "size": 3}, headers=auth("admin")).json()
            assert [m["member_id"] for m in a["members"]] == [m["member_id"] for m in b["members"]]
