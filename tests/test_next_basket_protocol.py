"""The next-basket protocol reads nothing of the target basket, and the published user split.

The planted data is the synthetic shop of ``helpers_data`` written as purchase lines: ~200 members
with 10-40 baskets each. Every model of the registry is fitted on it (small params), so a model
added later is checked without editing this file.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
from helpers_data import AS_OF, literal_interactions, synthetic_interactions
from test_models_contract import params_for

from recsys.models import MODELS, TrainData, get_model
from recsys.models.tifuknn import nearest_members, tifu_vectors
from training.next_basket import (
    basket_metrics,
    evaluate_user_split,
    fold_train_data,
    load_next_basket,
    user_split_folds,
)
from training.pipeline import protocol_params

SCHEMA = pa.schema([
    ("member_id", pa.string()), ("product_id", pa.string()), ("ts", pa.timestamp("us")),
    ("quantity", pa.float64()), ("amount", pa.float64()),
])


def planted_lines(move_target_days: int = 0, members: set[str] | None = None) -> list[dict[str, Any]]:
    """The synthetic shop's occasions as lines; ``move_target_days`` moves each member's last
    basket (of ``members``, default all) that many days later."""
    x = synthetic_interactions(seed=1)
    mid = x.members.to_external(x.member)
    pid = x.products.to_external(x.product)
    day0 = datetime(AS_OF.year, AS_OF.month, AS_OF.day, 10)
    last = {m: int(a) for m, a in zip(mid, x.age_days, strict=True)}
    for m, a in zip(mid, x.age_days, strict=True):
        last[m] = min(last[m], int(a))
    lines = []
    for m, p, a, q, amt in zip(mid, pid, x.age_days, x.quantity, x.amount, strict=True):
        ts = day0 - timedelta(days=int(a))
        if int(a) == last[m] and (members is None or m in members):
            ts += timedelta(days=move_target_days)
        lines.append({"member_id": m, "product_id": p, "ts": ts, "quantity": float(q), "amount": float(amt)})
    return lines


def load(tmp: Path, name: str, lines: list[dict[str, Any]]):
    path = tmp / f"{name}.parquet"
    pq.write_table(pa.Table.from_pylist(lines, schema=SCHEMA), path)
    return load_next_basket(path)


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("nbp")
    return load(tmp, "base", planted_lines()), load(tmp, "later", planted_lines(30))


def nbr_params(name: str) -> Any:
    """The model's small test params as the next-basket run sets them (last-basket labels)."""
    params = get_model(name).Params(**params_for(name))
    return protocol_params(params, last_basket=True, audiences=False)


def test_moving_every_target_30_days_later_changes_no_model_input(both):
    base, later = both
    a, b = base.train.interactions, later.train.interactions
    assert a.members.external_ids.tolist() == b.members.external_ids.tolist()
    assert a.products.external_ids.tolist() == b.products.external_ids.tolist()
    for f in ("member", "product", "age_days", "quantity", "amount"):
        assert np.array_equal(getattr(a, f), getattr(b, f)), f
    assert a.as_of == b.as_of
    assert (base.truth != later.truth).nnz == 0
    # the protocol itself knows the targets moved
    assert np.array_equal(later.gap_days, base.gap_days + 30)


# spark_als solves the same ALS problem as `als` on the same input (asserted identical above) in a
# JVM whose start costs more than the rest of this file; it is left to the contract tests
IN_PROCESS = sorted(set(MODELS) - {"spark_als"})


@pytest.mark.parametrize("name", IN_PROCESS)
def test_moving_every_target_30_days_later_gives_identical_recommendations(both, name):
    base, later = both
    members = np.arange(base.n_members)
    picks = [get_model(name)(nbr_params(name)).fit(d.train).recommend(members, k=10, mode="replenish")
             for d in (base, later)]
    assert np.array_equal(picks[0][0], picks[1][0])
    assert np.array_equal(picks[0][1], picks[1][1])


def test_history_is_aged_from_the_last_history_basket(both):
    base, _ = both
    x = base.train.interactions
    # every member's newest history basket is age 1, whatever the gap to their target
    newest = np.full(base.n_members, 10**6)
    np.minimum.at(newest, x.member, x.age_days)
    assert (newest == 1).all()
    assert (base.gap_days >= 1).all()


# ------------------------------------------------------------------------------ the user split
def test_user_split_folds_are_fixed_disjoint_and_72_8_20():
    folds = user_split_folds(1000, folds=5, seed=0)
    again = user_split_folds(1000, folds=5, seed=0)
    assert len(folds) == 5
    for f, g in zip(folds, again, strict=True):
        assert np.array_equal(f.test, g.test) and np.array_equal(f.train, g.train)
        assert (len(f.train), len(f.validation), len(f.test)) == (720, 80, 200)
        parts = np.concatenate([f.train, f.validation, f.test])
        assert np.array_equal(np.sort(parts), np.arange(1000))
    # five different shuffles, not one
    assert len({tuple(f.test[:10]) for f in folds}) == 5
    assert not np.array_equal(user_split_folds(1000, seed=1)[0].test, folds[0].test)


def test_fold_train_data_holds_train_members_full_sequences_only(both):
    base, _ = both
    fold = user_split_folds(base.n_members, folds=1)[0]
    data = fold_train_data(base, fold)
    x = data.interactions
    seen = sp.csr_matrix((np.ones(len(x.member)), (x.member, x.product)), shape=x.shape).tocsr()
    seen.data[:] = 1
    hist = base.train.interactions.matrix("binary")
    for m in fold.train[:20]:
        # a train member's target basket is in, as the newest basket (age 1), history aged behind it
        t = base.truth[m].indices
        rows = x.member == m
        newest = x.age_days[rows].min()
        assert newest == 1
        assert set(x.product[rows & (x.age_days == 1)]) == set(t)
        h = base.train.interactions
        h_rows = h.member == m
        assert sorted(x.age_days[rows & (x.age_days > 1)]) == sorted(h.age_days[h_rows] + base.gap_days[m])
    for m in np.concatenate([fold.validation, fold.test]):
        # validation and test members: their history, unchanged
        assert (seen[m] != hist[m]).nnz == 0
    h = base.train.interactions
    other = ~np.isin(h.member, fold.train)
    assert np.array_equal(np.sort(x.age_days[~np.isin(x.member, fold.train)]), np.sort(h.age_days[other]))


def test_moving_the_test_members_targets_changes_nothing_on_their_fold(tmp_path):
    base = load(tmp_path, "b", planted_lines())
    fold = user_split_folds(base.n_members, folds=1)[0]
    test_ids = set(base.train.interactions.members.external_ids[fold.test].tolist())
    moved = load(tmp_path, "m", planted_lines(30, members=test_ids))
    a, b = fold_train_data(base, fold).interactions, fold_train_data(moved, fold).interactions
    for f in ("member", "product", "age_days", "quantity", "amount"):
        assert np.array_equal(getattr(a, f), getattr(b, f)), f


def test_basket_metrics_both_ndcg_normalisers_hand_computed():
    # member 0: target {0, 1, 2}, ranked [0, 3, ...]: 1 hit at rank 1
    x = literal_interactions([(0, 0, 5), (0, 3, 4), (0, 3, 6), (1, 2, 3)], 2, 4)
    model = get_model("top_frequency")({"pad_with_popular": False}).fit(TrainData(x))
    truth = sp.csr_matrix(np.array([[1, 1, 1, 0], [0, 0, 1, 0]], np.float32))
    out = basket_metrics(model, truth, np.array([0, 1]), ks=(1, 2))
    d2 = 1 / np.log2(3)
    # member 0 at k=2: ranked [3, 0] (3 bought twice): hit at rank 2; member 1: [2]: hit at rank 1
    assert out["recall@2"] == pytest.approx((1 / 3 + 1) / 2)
    assert out["ndcg@2"] == pytest.approx((d2 / (1 + d2 + 0.5) + 1) / 2)  # ideal over all 3
    assert out["ndcg_capped@2"] == pytest.approx((d2 / (1 + d2) + 1) / 2)  # ideal over min(2, 3)
    assert out["hit_rate@1"] == pytest.approx(0.5)


def test_evaluate_user_split_mean_and_sd_over_folds(both):
    base, _ = both
    folds = user_split_folds(base.n_members, folds=3)
    res = evaluate_user_split(lambda: get_model("top_frequency")(), base, folds, ks=(10,))
    per = [f["recall@10"] for f in res["folds"]]
    assert len(per) == 3 and res["mean"]["recall@10"] == pytest.approx(np.mean(per))
    assert res["sd"]["recall@10"] == pytest.approx(np.std(per, ddof=1))
    # each fold's figure is the model's on that fold's test members alone
    model = get_model("top_frequency")().fit(fold_train_data(base, folds[1]))
    assert per[1] == pytest.approx(basket_metrics(model, base.truth, folds[1].test, (10,))["recall@10"])
    assert "val_recall@10" in res["mean"]


# ------------------------------------------------------------------------------ TIFUKNN
def reference_vector(baskets: list[list[int]], n_items: int, rb: float, rg: float, groups: int) -> np.ndarray:
    """The released code's member vector, written as loops (oldest basket first)."""
    vecs = []
    n = len(baskets)
    for i, items in enumerate(baskets):
        v = np.zeros(n_items)
        v[items] = rb ** (n - 1 - i)
        vecs.append(v)
    if n < groups:
        grouped = vecs
    else:
        base = n // groups
        extra = n - base * groups
        grouped, pos = [], 0
        for g in range(groups):
            size = base + (1 if g >= groups - extra else 0)
            grouped.append(sum(vecs[pos : pos + size]) / size)
            pos += size
    out = sum(grouped[g] * rg ** (groups - 1 - g) for g in range(len(grouped)))
    return out / len(grouped)


@pytest.mark.parametrize("n_baskets", [2, 7, 10, 16])
def test_tifu_vectors_equal_the_released_codes_definition(n_baskets):
    rng = np.random.default_rng(n_baskets)
    baskets = [sorted(rng.choice(6, size=int(rng.integers(1, 4)), replace=False).tolist()) for _ in range(n_baskets)]
    occ = [(0, p, 3 * (n_baskets - i)) for i, b in enumerate(baskets) for p in b]
    occ += [(1, 0, 1)]  # a second member, so that member 0 is not alone
    x = literal_interactions(occ, 2, 6)
    got = tifu_vectors(x, 0.9, 0.7, 7).toarray()[0]
    assert got == pytest.approx(reference_vector(baskets, 6, 0.9, 0.7, 7), rel=1e-5)


def test_nearest_members_are_the_euclidean_nearest_others_ties_to_the_lower_index():
    v = sp.csr_matrix(np.array([[0, 0], [1, 0], [1, 0], [0, 3], [5, 5]], np.float32))
    near = nearest_members(v, 2)
    assert near[0].tolist() == [1, 2]  # 1 and 2 tie at distance 1
    assert near[1].tolist() == [2, 0]  # itself excluded
    assert near[3].tolist() == [0, 1]  # 3 vs sqrt(10): 0 first
    assert nearest_members(v, 6)[0].tolist() == [1, 2, 3, 4, -1, -1]  # only 4 others


def test_tifuknn_scores_mix_own_vector_and_neighbours_mean(both):
    base, _ = both
    model = get_model("tifuknn")({"neighbours": 5}).fit(base.train)
    vec = tifu_vectors(base.train.interactions, 0.9, 0.7, 7).toarray()
    near = nearest_members(sp.csr_matrix(vec), 5)
    members = np.array([0, 7, 42])
    want = 0.7 * vec[members] + 0.3 * vec[near[members]].mean(axis=1)
    assert model._score_items(members) == pytest.approx(want, rel=1e-5, abs=1e-7)
    cols = np.array([1, 3])
    assert model._score_members(cols) == pytest.approx((0.7 * vec + 0.3 * vec[near].mean(axis=1))[:, cols].T,
                                                       rel=1e-5, abs=1e-7)
