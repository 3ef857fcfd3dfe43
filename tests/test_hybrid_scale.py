"""What keeps the hybrid's training linear in a large programme: the ALS candidates searched in an
inverted-file index above ``cf_exact_max_products`` (the same cells at training and after a save),
and the ranker learning from a sample of ``ranker_max_members`` members per label window."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pytest

from recsys.idmap import IdMap
from recsys.interactions import Interactions
from recsys.models import Tag, TrainData, get_model
from recsys.models.base import Recommender

N_MEMBERS, N_PRODUCTS, N_TASTES = 1500, 3000, 30
PARAMS = {"factors": 16, "iterations": 4, "n_estimators": 10, "min_child_samples": 10, "knn_neighbours": 20,
          "audience_negatives": 3, "num_threads": 1, "label_days": 14, "candidates_cf": 20, "audiences": False}


def shop(seed: int = 0) -> TrainData:
    """1,500 members of 30 tastes, each taste buying mostly from its own 100 products, over 90 days."""
    rng = np.random.default_rng(seed)
    taste = rng.integers(0, N_TASTES, N_MEMBERS)
    per = N_PRODUCTS // N_TASTES
    m = np.repeat(np.arange(N_MEMBERS), 30)
    own = taste[m] * per + rng.integers(0, per, len(m))
    anything = rng.integers(0, N_PRODUCTS, len(m))
    p = np.where(rng.random(len(m)) < 0.8, own, anything)
    age = rng.integers(0, 90, len(m))
    key = np.unique((m.astype(np.int64) * N_PRODUCTS + p) * 100 + age)
    m, p, age = key // 100 // N_PRODUCTS, key // 100 % N_PRODUCTS, key % 100
    x = Interactions(
        members=IdMap([f"m{i:05d}" for i in range(N_MEMBERS)]),
        products=IdMap([f"p{i:05d}" for i in range(N_PRODUCTS)]),
        member=m.astype(np.int32), product=p.astype(np.int32), age_days=age.astype(np.int32),
        quantity=np.ones(len(m), np.float32), amount=np.ones(len(m), np.float32), as_of=date(2024, 6, 1),
    )
    cats = [f"c{i // per}" for i in range(N_PRODUCTS)]
    return TrainData(x, member_tags={}, product_tags={"category": Tag.from_values(cats)})


@pytest.fixture(scope="module")
def data() -> TrainData:
    return shop()


def fit(data: TrainData, **params: object) -> Recommender:
    return get_model("hybrid")({**PARAMS, **params}).fit(data)


def exact_top(model: Recommender, members: np.ndarray, k: int) -> np.ndarray:
    s = model.state
    return np.argsort(-(s.user_factors[members] @ s.item_factors.T), axis=1, kind="stable")[:, :k]


def test_above_the_threshold_candidates_come_from_an_ivf_index_that_finds_the_exact_top(data: TrainData) -> None:
    model = fit(data, cf_exact_max_products=1000)
    s = model.state
    assert s.cf_ivf is not None and s.cf_index().kind == "ivf"
    nlist, nprobe = s.cf_ivf_meta["nlist"], s.cf_ivf_meta["nprobe"]["20"]
    assert nprobe is not None and nprobe < nlist  # probes a part of the cells, not all
    members = np.arange(0, N_MEMBERS, 7)
    found, exact = s.cf_top(members, 20), exact_top(model, members, 20)
    recall = np.mean([len(set(f[f >= 0]) & set(e)) / 20 for f, e in zip(found, exact, strict=True)])
    assert recall >= 0.9
    # below the threshold (the default for 3,000 products): the exact scan, exactly
    small = fit(data)
    assert small.state.cf_ivf is None and small.state.cf_index().kind == "flat"
    top = small.state.cf_top(members, 20)
    s2 = small.state
    got = np.take_along_axis(s2.user_factors[members] @ s2.item_factors.T, top, axis=1)
    want = -np.sort(-(s2.user_factors[members] @ s2.item_factors.T), axis=1)[:, :20]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_a_saved_model_searches_the_same_cells_and_gives_the_same_picks(data: TrainData, tmp_path: Path) -> None:
    model = fit(data, cf_exact_max_products=1000)
    again = fit(data, cf_exact_max_products=1000)  # the same data builds the same index
    members = np.arange(N_MEMBERS)
    np.testing.assert_array_equal(model.state.cf_top(members, 20), again.state.cf_top(members, 20))
    loaded = type(model).load(model.save(tmp_path / "m"))
    assert loaded.state.cf_index().kind == "ivf"
    np.testing.assert_array_equal(loaded.state.cf_top(members, 20), model.state.cf_top(members, 20))
    a, b = model.recommend(members[:300], k=10), loaded.recommend(members[:300], k=10)
    np.testing.assert_array_equal(a[0], b[0])


def test_the_ranker_learns_from_a_sample_of_members_above_the_cap(data: TrainData) -> None:
    full = fit(data, ranker_max_members=None)
    capped = fit(data, ranker_max_members=200)
    again = fit(data, ranker_max_members=200)
    rows_full, rows_capped = full.training_summary["ranker_rows"], capped.training_summary["ranker_rows"]
    # ~1,400 members buy in the window: 200 of them give about a seventh of the rows
    assert rows_capped < rows_full / 4
    assert capped.training_summary == again.training_summary
    assert capped.ranker.booster_.model_to_string() == again.ranker.booster_.model_to_string()
    # a cap above the window's buyers changes nothing
    roomy = fit(data, ranker_max_members=N_MEMBERS)
    assert roomy.ranker.booster_.model_to_string() == full.ranker.booster_.model_to_string()
