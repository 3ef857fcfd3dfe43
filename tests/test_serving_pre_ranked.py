"""Pre-ranked pick lists (recsys.precompute + serving.picklists): offline lists equal the model's
own ranking, the bundle carries them, and picks answered from them are identical to live scoring
-- both modes, category filters, exclusions, delisted products -- with live scoring taking over
when a truncated list cannot answer, and a member's lists ranked again once after a live purchase
(answering as live scoring does)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from conftest import S_MEMBERS, DatedTopFrequency, auth, serving_bundle
from fastapi.testclient import TestClient
from helpers_data import N_MEMBERS, N_PRODUCTS, synthetic_data

from recsys.bundle import FORMAT_VERSION, Bundle, BundleError, load_bundle, save_bundle
from recsys.models import get_model
from recsys.precompute import SCORE_RTOL, ListWriter, PreRanked, PreRankError, pre_rank, same_list
from serving.app import create_app
from serving.schemas import AudienceResponse, BatchPicksResponse, PicksResponse, SimilarResponse
from serving.service import picks as pick_service

HYBRID = {"factors": 8, "iterations": 5, "n_estimators": 30, "min_child_samples": 10, "knn_neighbours": 20,
          "audience_negatives": 5, "num_threads": 1}


@functools.cache
def _hybrid_model() -> Any:
    return get_model("hybrid")(HYBRID).fit(synthetic_data())


def hybrid_bundle() -> Bundle:
    """The default model on the synthetic shop (200 members, 50 products, 5 categories); two
    products delisted."""
    data = synthetic_data()
    model = _hybrid_model()
    x = data.interactions
    active = np.ones(N_PRODUCTS, dtype=bool)
    active[[3, 17]] = False
    return Bundle(
        model=model, members=x.members, products=x.products,
        member_table=pa.table({"member_id": x.members.external_ids.tolist(),
                               "value_segment": data.member_tags["value_segment"].values().tolist()}),
        product_table=pa.table({"product_id": x.products.external_ids.tolist(),
                                "category": data.product_tags["category"].values().tolist(),
                                "active": active.tolist()}),
        meta={"run_id": "run-hybrid", "as_of": "2001-02-01"},
    )


def with_lists(bundle: Bundle, n: int) -> Bundle:
    bundle.pre_ranked = pre_rank(bundle.model, n=n)
    return bundle


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Saved bundles with lists: complete ones (n=100: every scorable product) and truncated ones
    (n=2 / n=4), for the hand-worked top_frequency data, ALS and the hybrid model."""
    root = tmp_path_factory.mktemp("pre-ranked")
    hybrid = hybrid_bundle()
    out: dict[str, Bundle] = {
        "top_frequency-100": with_lists(serving_bundle("top_frequency"), 100),
        "top_frequency-2": with_lists(serving_bundle("top_frequency"), 2),
        "als-2": with_lists(serving_bundle("als"), 2),
        "hybrid-100": with_lists(hybrid, 100),
    }
    hybrid_short = Bundle(hybrid.model, hybrid.members, hybrid.products, hybrid.member_table, hybrid.product_table,
                          hybrid.meta, pre_rank(hybrid.model, n=4))
    out["hybrid-4"] = hybrid_short
    return {name: save_bundle(root / name, b) for name, b in out.items()}


@pytest.fixture
def pair(serving_settings: Callable[..., Any], tmp_path: Path) -> Callable[..., Any]:
    """``with pair(bundle) as (lists, live):`` two clients on the same bundle, one answering from
    its pre-ranked lists, one scoring every member live (own events files)."""
    from contextlib import contextmanager

    @contextmanager
    def make(bundle: Path) -> Iterator[tuple[TestClient, TestClient]]:
        a = TestClient(create_app(serving_settings(bundle, events_dir=tmp_path / "ev-lists")))
        b = TestClient(create_app(serving_settings(bundle, events_dir=tmp_path / "ev-live", use_pre_ranked=False)))
        with a, b:
            yield a, b

    return make


def state_of(client: TestClient) -> Any:
    return client.app.state.holder.state  # type: ignore[attr-defined]


def sources(client: TestClient, member: str, k: int, mode: str, **filters: Any) -> list[str]:
    """Where the answer comes from, once every member scheduled for new lists has them."""
    state = state_of(client)
    if state.pick_lists is not None:
        assert state.pick_lists.settle(timeout=30)
    out = pick_service.picks(state, [member], k, mode, filters.get("category"), filters.get("exclude"))
    assert out is not None
    return [pl.source for pl in out]


# --------------------------------------------------------------------------- offline lists
@pytest.mark.parametrize("n", [3, 100])
@pytest.mark.parametrize("name", ["top_frequency", "als", "hybrid"])
def test_lists_are_the_head_of_the_models_own_ranking(name: str, n: int) -> None:
    bundle = hybrid_bundle() if name == "hybrid" else serving_bundle(name)
    model = bundle.model
    lists = pre_rank(model, n=n, batch_size=4)  # several batches
    members = np.arange(model.n_members)
    for mode in ("replenish", "discover"):
        want_i, want_s = model.recommend(members, n, mode=mode)
        np.testing.assert_array_equal(lists.indices[mode], want_i)
        np.testing.assert_array_equal(lists.scores[mode], want_s)
    assert lists.meta["verified_members"] > 0 and lists.meta["n"] == n


def test_a_compiled_ranker_ranks_the_same_lists_and_leaves_nothing_behind(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Past COMPILE_MIN_PAIRS candidate pairs a batch job scores with the ranker's trees compiled
    (lleaves): the same probabilities, so the same lists; the model file it compiles from is gone."""
    import tempfile

    import recsys.models.hybrid.model as hybrid_model

    model = hybrid_bundle().model
    plain = pre_rank(model, n=20, batch_size=4)
    members = np.arange(model.n_members)
    X = np.random.default_rng(0).random((500, len(model.keep_cols)))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with model.bulk_scoring(model.n_members):  # below the threshold: LightGBM itself
        assert model.ranker._compiled is None
    monkeypatch.setattr(hybrid_model, "COMPILE_MIN_PAIRS", 0)
    with model.bulk_scoring(model.n_members):
        assert model.ranker._compiled is not None
        np.testing.assert_allclose(model.ranker.predict_proba(X), model.ranker.booster_.predict(X)[:, None] * [-1, 1] + [1, 0],
                                   rtol=0, atol=1e-12)
    assert model.ranker._compiled is None and list(tmp_path.iterdir()) == []
    compiles = []
    compile_trees = type(model.ranker).compiled
    monkeypatch.setattr(type(model.ranker), "compiled", lambda self: (compiles.append(1), compile_trees(self))[1])
    compiled = pre_rank(model, n=20, batch_size=4)
    assert compiles == [1]
    for mode in ("replenish", "discover"):
        for member in members:
            assert same_list(plain.indices[mode][member], plain.scores[mode][member],
                             compiled.indices[mode][member], compiled.scores[mode][member])


@pytest.mark.parametrize("name", ["top_frequency", "hybrid"])
def test_lists_written_as_they_are_ranked_equal_the_lists_in_memory(name: str, tmp_path: Path) -> None:
    model = (hybrid_bundle() if name == "hybrid" else serving_bundle(name)).model
    in_memory = pre_rank(model, n=5, batch_size=3)
    on_disk = pre_rank(model, n=5, batch_size=3, out=tmp_path / "lists")
    for mode in ("replenish", "discover"):
        assert isinstance(on_disk.indices[mode], np.memmap)  # read back from the files, not held
        np.testing.assert_array_equal(on_disk.indices[mode], in_memory.indices[mode])
        np.testing.assert_array_equal(on_disk.scores[mode], in_memory.scores[mode])
    assert sorted(p.name for p in (tmp_path / "lists").iterdir()) == [
        "discover.indices.npy", "discover.scores.npy", "replenish.indices.npy", "replenish.scores.npy"]
    # saved into a bundle like lists held in memory
    on_disk.save(tmp_path / "saved.npz")
    again = PreRanked.load(tmp_path / "saved.npz")
    np.testing.assert_array_equal(again.indices["discover"], in_memory.indices["discover"])


def test_a_list_writer_refuses_rows_it_cannot_place_and_lists_left_unwritten(tmp_path: Path) -> None:
    w = ListWriter(tmp_path / "w", n_members=4, n=2, modes=("replenish",))
    with pytest.raises(ValueError, match="outside 0..3"):
        w.write(3, "replenish", np.zeros((2, 2), np.int32), np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="must be 1 x 2"):
        w.write(0, "replenish", np.zeros((1, 3), np.int32), np.zeros((1, 3), np.float32))
    w.write(0, "replenish", np.zeros((3, 2), np.int32), np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match="1 member rows were never written"):
        w.finish()


def test_lists_that_disagree_with_recommend_are_refused() -> None:
    model = serving_bundle("top_frequency").model
    rng = np.random.default_rng(0)
    score = model._score_items
    model._score_items = lambda members: score(members) + rng.random((len(members), model.n_products))  # type: ignore[method-assign]
    with pytest.raises(PreRankError, match="differs from model.recommend"):
        pre_rank(model, n=3)


def test_scores_match_to_a_tolerance_of_the_lists_largest_score() -> None:
    """The same dot products summed in another block shape differ in the last bits of the terms,
    so a score near zero may differ by far more than its own size, and near ties may swap: still
    the same list. Anything more is a different list."""
    items = np.array([4, 2, 7, 9, -1], dtype=np.int32)
    want = np.array([0.78, 0.51, 2e-7, 1.9e-7, -np.inf], dtype=np.float32)
    near = want + np.array([3e-8, -2e-8, 1.5e-8, 0.0, 0.0], dtype=np.float32)  # 8 % of the small ones
    assert same_list(items, want, items, near)
    assert same_list(items, want, items[[0, 1, 3, 2, 4]], want[[0, 1, 3, 2, 4]])  # a near tie swapped
    assert same_list(items, want, np.array([4, 2, 7, 5, -1], np.int32), want)  # a near tie at the end
    assert not same_list(items, want, items, want + np.float32(10 * SCORE_RTOL * 0.78))
    assert not same_list(items, want, items[[1, 0, 2, 3, 4]], want)  # 0.78 and 0.51 are no tie
    assert not same_list(items, want, items[[1, 0, 2, 3, 4]], want[[1, 0, 2, 3, 4]])
    assert not same_list(items, want, np.array([4, 5, 7, 9, -1], np.int32), want)  # 5 is not 2
    assert not same_list(items, want, items, np.array([0.78, 0.51, 2e-7, 1.9e-7, 0.0], np.float32))
    assert same_list(items[4:], want[4:], items[4:], want[4:])  # an empty list


# --------------------------------------------------------------------------- the bundle
def test_bundle_carries_the_lists_and_older_bundles_load_without(tmp_path: Path, bundles: dict[str, Path]) -> None:
    loaded = load_bundle(bundles["top_frequency-2"])
    assert isinstance(loaded.pre_ranked, PreRanked) and loaded.pre_ranked.n == 2
    assert loaded.meta["pre_ranked"]["modes"] == ["replenish", "discover"]
    assert loaded.meta["format_version"] == FORMAT_VERSION
    plain = load_bundle(save_bundle(tmp_path / "plain", serving_bundle("top_frequency")))
    assert plain.pre_ranked is None and "pre_ranked" not in plain.meta
    # re-saved without lists: the metadata no longer claims them
    loaded.pre_ranked = None
    again = load_bundle(save_bundle(tmp_path / "again", loaded))
    assert again.pre_ranked is None and "pre_ranked" not in again.meta


def test_missing_or_mismatched_lists_are_refused(tmp_path: Path) -> None:
    b = with_lists(serving_bundle("top_frequency"), 3)
    path = save_bundle(tmp_path / "b", b)
    (path / "pre_ranked.npz").unlink()
    with pytest.raises(BundleError, match="incomplete or corrupt"):
        load_bundle(path)
    b.pre_ranked = PreRanked({"replenish": np.zeros((2, 3), np.int32)}, {"replenish": np.zeros((2, 3), np.float32)})
    with pytest.raises(ValueError, match="the model has 6 members"):
        save_bundle(tmp_path / "c", b)


# --------------------------------------------------------------------------- serving
FILTERS = [
    {},
    {"category": "bakery"},
    {"category": "bakery,snacks"},
    {"exclude": "p0,p2"},
    {"category": "dairy", "exclude": "p1"},
]


def same_body(a: Any, b: Any) -> bool:
    """Equal JSON bodies, scores equal up to float32 rounding: the lists hold scores computed by the
    model's own matrix product, live vector models score with FAISS, and the two kernels may sum
    in another order (the last bit differs on some CPUs). Everything else must be identical."""
    if isinstance(a, float) and isinstance(b, float):
        return a == pytest.approx(b, rel=1e-6, abs=1e-7)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_body(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_body(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def bodies_equal(a: TestClient, b: TestClient, url: str, params: dict[str, Any]) -> dict[str, Any]:
    ra = a.get(url, params=params, headers=auth("app"))
    rb = b.get(url, params=params, headers=auth("app"))
    assert ra.status_code == rb.status_code == 200, (ra.text, rb.text)
    assert same_body(ra.json(), rb.json()), (url, params, ra.json(), rb.json())
    PicksResponse.model_validate_json(ra.content)  # the body is what the schema documents
    return ra.json()


@pytest.mark.parametrize("bundle", ["top_frequency-100", "top_frequency-2", "als-2"])
def test_list_answers_equal_live_scoring(pair: Callable[..., Any], bundles: dict[str, Path], bundle: str) -> None:
    with pair(bundles[bundle]) as (lists, live):
        used = []
        for member in S_MEMBERS:
            for mode in ("replenish", "discover"):
                for filters in FILTERS:
                    for k in (1, 2, 3, 7):
                        bodies_equal(lists, live, f"/v1/members/{member}/picks", {"k": k, "mode": mode, **filters})
                        used += sources(lists, member, k, mode, **{f: v.split(",") for f, v in filters.items()})
        assert "pre_ranked" in used  # the lists did answer ...
        if bundle.endswith("-2"):
            assert "live" in used  # ... and the truncated ones handed some requests to live scoring
        else:
            assert set(used) == {"pre_ranked"}  # complete lists answer everything


@pytest.mark.parametrize("bundle", ["hybrid-100", "hybrid-4"])
def test_hybrid_list_answers_equal_live_scoring(pair: Callable[..., Any], bundles: dict[str, Path], bundle: str) -> None:
    members = [f"m{i:04d}" for i in range(0, N_MEMBERS, 7)]
    with pair(bundles[bundle]) as (lists, live):
        used = []
        for member in members:
            for mode in ("replenish", "discover"):
                for filters in ({}, {"category": "c1"}, {"category": "c0,c4"}, {"exclude": "p000,p011,p020"}):
                    for k in (3, 10):
                        bodies_equal(lists, live, f"/v1/members/{member}/picks", {"k": k, "mode": mode, **filters})
                        used += sources(lists, member, k, mode, **{f: v.split(",") for f, v in filters.items()})
        r = lists.post("/v1/picks:batch", json={"member_ids": members[:5], "k": 4, "mode": "discover"},
                       headers=auth("app"))
        assert r.json() == live.post("/v1/picks:batch", json={"member_ids": members[:5], "k": 4, "mode": "discover"},
                                     headers=auth("app")).json()
        BatchPicksResponse.model_validate_json(r.content)
        if bundle == "hybrid-100":  # 50 products: every list holds all the member's candidates
            assert set(used) == {"pre_ranked"}
        else:
            assert {"pre_ranked", "live"} <= set(used)


def test_a_filter_that_empties_a_truncated_list_is_scored_live(pair: Callable[..., Any], bundles: dict[str, Path]) -> None:
    with pair(bundles["top_frequency-2"]) as (lists, live):
        # m0's stored replenish list is [p0, p1] (dairy): no bakery product in it, and it is cut
        assert sources(lists, "m0", 2, "replenish") == ["pre_ranked"]
        assert sources(lists, "m0", 2, "replenish", category=["bakery"]) == ["live"]
        body = bodies_equal(lists, live, "/v1/members/m0/picks", {"k": 2, "category": "bakery"})
        assert [p["product_id"] for p in body["picks"]] == ["p2", "p3"]
        # k above the list length: live too
        assert sources(lists, "m0", 3, "replenish") == ["live"]


def test_a_live_purchase_ranks_the_members_lists_again(
    pair: Callable[..., Any], bundles: dict[str, Path], serving_settings: Callable[..., Any], tmp_path: Path,
) -> None:
    event = [{"member_id": "m0", "product_id": "p2"}]
    with pair(bundles["top_frequency-100"]) as (lists, live):
        assert sources(lists, "m0", 3, "discover") == ["pre_ranked"]
        before = bodies_equal(lists, live, "/v1/members/m0/picks", {"k": 3, "mode": "discover"})
        assert [p["product_id"] for p in before["picks"]] == ["p2", "p3", "p4"]
        for c in (lists, live):
            assert c.post("/v1/events", json=event, headers=auth("admin")).status_code == 200
        # ranked again once, when the purchase was applied: answered from the new list from now on
        assert sources(lists, "m0", 3, "discover") == ["re_ranked"]
        assert sources(lists, "m1", 3, "discover") == ["pre_ranked"]  # only that member
        after = bodies_equal(lists, live, "/v1/members/m0/picks", {"k": 3, "mode": "discover"})
        assert [p["product_id"] for p in after["picks"]] == ["p3", "p4", "p6"]
        rep = bodies_equal(lists, live, "/v1/members/m0/picks", {"k": 3})
        assert rep["picks"][2] == {**rep["picks"][2], "product_id": "p2", "reason_code": "often_buys"}
        described = lists.get("/v1/model", headers=auth("admin")).json()["pre_ranked"]
        assert described["invalidated"] == 1 and described["re_ranked"] == 1 and described["reranks"] == 1
    # a restart replays the event: the member's lists are ranked again at load
    settings = serving_settings(bundles["top_frequency-100"], events_dir=tmp_path / "ev-lists")
    with TestClient(create_app(settings)) as again:
        assert sources(again, "m0", 3, "discover") == ["re_ranked"]
        assert [p["product_id"] for p in again.get("/v1/members/m0/picks", params={"k": 3, "mode": "discover"},
                                                   headers=auth("app")).json()["picks"]] == ["p3", "p4", "p6"]


@pytest.mark.parametrize("bundle", ["als-2", "hybrid-100", "hybrid-4"])
def test_lists_ranked_again_after_live_purchases_equal_live_scoring(
    pair: Callable[..., Any], bundles: dict[str, Path], bundle: str,
) -> None:
    if bundle.startswith("hybrid"):
        members, products, new = [f"m{i:04d}" for i in (0, 5, 77)], ["p001", "p017", "p030", "p001"], []
        filters: list[dict[str, str]] = [{}, {"category": "c1"}, {"exclude": "p000,p011,p020"}]
    else:
        members, products, new = ["m0", "m3"], ["p4", "p6", "p2", "p4"], ["walk-in"]
        filters = list(FILTERS)
    events = [{"member_id": m, "product_id": p} for m in members + new for p in products]
    with pair(bundles[bundle]) as (lists, live):
        for c in (lists, live):
            assert c.post("/v1/events", json=events, headers=auth("admin")).status_code == 200
        # answered at once, before the lists are ranked again (scored live: the same picks) ...
        assert bodies_equal(lists, live, f"/v1/members/{members[0]}/picks", {"k": 5, "mode": "discover"})
        assert state_of(lists).pick_lists.settle(timeout=30)  # ... and from the new lists after
        used = []
        for member in members + new:
            for mode in ("replenish", "discover"):
                for f in filters:
                    for k in (2, 5):
                        bodies_equal(lists, live, f"/v1/members/{member}/picks", {"k": k, "mode": mode, **f})
                        used += sources(lists, member, k, mode, **{n: v.split(",") for n, v in f.items()})
        assert "re_ranked" in used and "pre_ranked" not in used
        if bundle == "als-2":  # a new member with a folded-in vector gets lists too
            state = state_of(lists)
            assert state.members.get("walk-in") in state.pick_lists.re_ranked
            assert sources(lists, "walk-in", 1, "replenish") == ["re_ranked"]


def test_a_bundle_without_lists_is_scored_live(client: TestClient) -> None:
    assert client.get("/v1/model", headers=auth("app")).json()["pre_ranked"] is None
    assert sources(client, "m0", 3, "replenish") == ["live"]
    body = client.get("/v1/members/m0/picks", params={"k": 3}, headers=auth("app")).json()
    assert [p["product_id"] for p in body["picks"]] == ["p0", "p1", "p2"]


def test_discover_lists_are_dropped_when_bought_means_something_else(
    serving_client: Callable[..., Any], tmp_path: Path,
) -> None:
    b = serving_bundle(DatedTopFrequency.name)  # purchase counts from its own `counts` hook
    history = b.model.history.tolil()
    history[0, 6] = 1.0  # the model's history says m0 bought p6; its purchase counts say not
    b.model.history = history.tocsr()
    b = with_lists(b, 100)
    with serving_client(save_bundle(tmp_path / "odd", b)) as c:
        assert c.get("/v1/model", headers=auth("app")).json()["pre_ranked"]["modes"] == ["replenish"]
        assert sources(c, "m0", 3, "discover") == ["live"]
        assert sources(c, "m0", 3, "replenish") == ["pre_ranked"]


# --------------------------------------------------------------------------- the documented schema
def test_openapi_documents_the_picks_route(client: TestClient) -> None:
    op = client.get("/openapi.json").json()["paths"]["/v1/members/{member_id}/picks"]["get"]
    params = {p["name"]: p for p in op["parameters"]}
    assert list(params) == ["member_id", "k", "mode", "category", "exclude", "segment"]
    assert params["member_id"]["in"] == "path" and params["member_id"]["required"] is True
    assert params["k"]["in"] == "query" and params["k"]["schema"]["minimum"] == 1
    assert params["k"]["schema"]["maximum"] == 10_000 and params["k"]["schema"]["default"] == 10
    assert params["mode"]["schema"]["enum"] == ["discover", "replenish"]
    assert params["category"]["schema"]["anyOf"][0] == {"type": "array", "items": {"type": "string"}}
    assert params["segment"]["schema"]["anyOf"][0]["maxLength"] == 100
    assert op["security"] == [{"APIKeyHeader": []}, {"HTTPBearer": []}]
    ok = op["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/PicksResponse"}
    assert set(op["responses"]) >= {"200", "401", "403", "422"}


def test_bodies_validate_against_their_documented_models(client: TestClient) -> None:
    h = auth("admin")
    for url in ("/v1/members/m0/picks?k=5", "/v1/members/ghost/picks?segment=mid", "/v1/members/m3/picks?mode=discover"):
        PicksResponse.model_validate_json(client.get(url, headers=h).content)
    SimilarResponse.model_validate_json(client.get("/v1/products/p0/similar?k=3", headers=h).content)
    r = client.post("/v1/audiences", json={"product_id": "p0", "size": 4, "filters": {"lifecycle": ["active"]}},
                    headers=h)
    assert r.headers["content-type"] == "application/json"
    body = AudienceResponse.model_validate_json(r.content)
    assert [m.member_id for m in body.members] == ["m0", "m4", "m1"]


def test_query_parsing_matches_fastapis(client: TestClient) -> None:
    h = auth("app")
    # repeated and comma-separated lists, unknown parameters ignored, the last value of a scalar wins
    a = client.get("/v1/members/m0/picks?k=5&mode=discover&category=bakery&category=snacks&utm=x", headers=h).json()
    b = client.get("/v1/members/m0/picks?k=1&k=5&mode=discover&category=bakery,snacks", headers=h).json()
    assert a == b and [p["product_id"] for p in a["picks"]] == ["p2", "p3", "p4", "p6"]
    r = client.get("/v1/members/m0/picks?k=0&mode=x", headers=h)
    assert r.status_code == 422
    assert "query.k: Input should be greater than or equal to 1" in r.json()["detail"]
    assert "query.mode: Input should be 'discover' or 'replenish'" in r.json()["detail"]
    assert client.get("/v1/members/m0/picks").status_code == 401
    assert client.get("/v1/members/" + "x" * 201 + "/picks", headers=h).status_code == 422
