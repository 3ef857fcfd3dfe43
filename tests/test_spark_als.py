"""``spark_als`` (Spark MLlib's implicit ALS) against planted preferences and implicit's ALS.

The contract checks (shapes, filters, save / load, determinism, cold products) run on it with every
other model in test_models_contract.py; these check what it learns. One local[2] session (the
``spark`` fixture), data of a few hundred purchases.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers_data import literal_data

from recsys.models import get_model
from recsys.models.spark_als import solve_member


def checker_board(n: int):
    """Even members bought every even product, odd members every odd one, except member i never
    bought product i: the one same-parity product left for each member."""
    occ = [(i, j, 1) for i in range(n) for j in range(i % 2, n, 2) if j != i]
    return literal_data(occ, n, n)


def planted(seed: int = 0, groups: int = 3, members: int = 30, products: int = 8, noise: int = 2):
    """``groups`` tastes: a member of group g bought every product of group g but one (its
    held-out product, ``(member % products)`` of the group) plus ``noise`` random products of
    other groups. Returns the data and each member's held-out product."""
    rng = np.random.default_rng(seed)
    n_m, n_p = groups * members, groups * products
    occ, held = [], np.zeros(n_m, dtype=np.int64)
    for m in range(n_m):
        g = m // members
        own = np.arange(g * products, (g + 1) * products)
        held[m] = own[m % products]
        for p in own[own != held[m]]:
            for day in rng.choice(60, size=int(rng.integers(1, 4)), replace=False):
                occ.append((m, int(p), int(day) + 1))
        others = np.setdiff1d(np.arange(n_p), own)
        for p in rng.choice(others, size=noise, replace=False):
            occ.append((m, int(p), int(rng.integers(1, 61))))
    return literal_data(occ, n_m, n_p), held


PARAMS = {"factors": 4, "iterations": 10, "regularization": 0.01, "seed": 7, "weighting": "count"}
SPARK = {"blocks": 2}  # two factor blocks: small data, few tasks


@pytest.mark.parametrize("name", ["als", "spark_als"])
def test_checkerboard_ranks_each_members_held_out_product_first(spark, name):
    n = 30
    params = {"factors": 3, "regularization": 0.01, "iterations": 15, "seed": 23, "weighting": "binary",
              **({"num_threads": 1} if name == "als" else SPARK)}
    model = get_model(name)(params).fit(checker_board(n))
    idx, _ = model.recommend(np.arange(n), k=1, mode="discover")
    assert idx[:, 0].tolist() == list(range(n))


def test_planted_preferences_recovered_as_implicit_als_recovers_them(spark):
    data, held = planted()
    spark_model = get_model("spark_als")({**PARAMS, **SPARK}).fit(data)
    implicit_model = get_model("als")({**PARAMS, "num_threads": 1}).fit(data)
    members = np.arange(len(held))
    top = {}
    for label, model in (("spark", spark_model), ("implicit", implicit_model)):
        idx, _ = model.recommend(members, k=1, mode="discover")
        top[label] = idx[:, 0]
    hit = {label: float(np.mean(t == held)) for label, t in top.items()}
    # the one product of their own taste a member has not bought comes first, for both engines
    assert hit["implicit"] >= 0.95
    assert hit["spark"] >= 0.93
    assert float(np.mean(top["spark"] == top["implicit"])) >= 0.9
    # and each product's audience is its own group's members
    aud, _ = spark_model.audience(np.arange(data.n_products), n=30)
    group_of_member = members // 30
    assert (group_of_member[aud] == (np.arange(data.n_products) // 8)[:, None]).mean() >= 0.95


def test_member_vectors_are_the_solution_of_sparks_normal_equations(spark):
    """Spark solves members last, from the final product vectors: solving one member's equations
    again from what they bought gives Spark's vector -- the fold-in the server uses after a live
    purchase computes the same thing."""
    data, _ = planted(seed=1)
    model = get_model("spark_als")({**PARAMS, **SPARK, "alpha": 2.0, "regularization": 0.05}).fit(data)
    weights = model.weighted_matrix(data).tocsr()
    items = model.item_factors.astype(np.float64)
    yty = items.T @ items
    for m in (0, 31, 75):
        row = weights[m]
        again = solve_member(model.item_factors, yty, row.indices, row.data, 2.0, 0.05)
        np.testing.assert_allclose(again, model.user_factors[m], rtol=2e-3, atol=2e-4)
    folded = model.fold_in_member(weights[5].indices, weights[5].data)
    np.testing.assert_allclose(folded, model.user_factors[5], rtol=2e-3, atol=2e-4)


def test_training_summary_records_the_engine_and_spark_conf(spark):
    data, _ = planted(seed=2, members=5)
    model = get_model("spark_als")({**PARAMS, **SPARK, "iterations": 2}).fit(data)
    summary = model.training_summary
    assert summary["engine"] == "spark"
    assert summary["master"].startswith("local")
    assert summary["conf"]["spark.sql.session.timeZone"] == "UTC"
    assert summary["ratings"] == model.weighted_matrix(data).nnz
