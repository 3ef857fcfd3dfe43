"""The Recommender contract, checked on every registered model.

Models are discovered from ``recsys.models.MODELS``: a new model is tested without editing this
file. ``PARAMS`` only makes the slow ones small (unknown models get their defaults).

Filters are checked against the model's own unfiltered ranking: with every product ranked, a
filtered list must be exactly the unfiltered one with the disallowed products taken out (compared
on scores, so that equal scores may come in either order). That holds for any model whose scores
do not depend on the filter, and says far more than "the results are inside the whitelist".
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from helpers_data import COLD_PRODUCT, N_MEMBERS, N_PRODUCTS, synthetic_data
from pydantic import ValidationError

import recsys.models  # noqa: F401  (registers every model)
from recsys.models import MODELS, Recommender, TrainData
from recsys.models.base import CAPABILITY_METHODS, Capability, CapabilityError, ProductDescription
from recsys.models.baselines import TopFrequency

PARAMS: dict[str, dict[str, Any]] = {
    "als": {"factors": 8, "iterations": 5, "num_threads": 1, "seed": 3},
    "bpr": {"factors": 8, "iterations": 20, "num_threads": 1, "seed": 3},
    "hybrid": {"factors": 8, "iterations": 5, "n_estimators": 30, "min_child_samples": 10,
               "knn_neighbours": 20, "audience_negatives": 5, "num_threads": 1},
    "spark_als": {"factors": 8, "iterations": 5, "seed": 3, "blocks": 2},
}
# models that give a never-sold product a vector from its attributes: finite scores for it
ATTRIBUTE_MODELS = {"als", "bpr", "hybrid", "spark_als"}
# known bugs, per model and check (see the reasons)
KNOWN_BUGS: dict[tuple[str, str], str] = {}

NAMES = sorted(MODELS)
SAMPLE = np.arange(0, N_MEMBERS, 9)  # 23 members spread over the data


def params_for(name: str) -> dict[str, Any]:
    return dict(PARAMS.get(name, {}))


def names_with(capability: Capability) -> list[str]:
    """The registered models that declare ``capability``."""
    return [n for n in NAMES if MODELS[n].has(capability)]


def names_for(check: str) -> list[Any]:
    return [
        pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[(n, check)]))
        if (n, check) in KNOWN_BUGS else n
        for n in NAMES
    ]


def test_the_registry_holds_every_model():
    # a floor, not a list: adding a model must not need this test edited
    assert {"popular", "segment_popular", "top_frequency", "simple_blend", "category_buyers",
            "als", "bpr", "item_knn", "hybrid"} <= set(MODELS)
    for name, cls in MODELS.items():
        assert cls.name == name and issubclass(cls, Recommender)


@pytest.fixture(scope="module")
def data() -> TrainData:
    return synthetic_data()


@pytest.fixture(scope="module")
def fitted(data: TrainData) -> dict[str, Recommender]:
    cache: dict[str, Recommender] = {}

    class Lazy(dict):
        def __missing__(self, name: str) -> Recommender:
            cache[name] = MODELS[name](params_for(name)).fit(data)
            self[name] = cache[name]
            return cache[name]

    return Lazy()


def score_table(model: Recommender, members: np.ndarray, mode: str = "replenish") -> np.ndarray:
    """Dense (members x products) scores read off the model's full ranking; -inf = never."""
    idx, sc = model.recommend(members, k=N_PRODUCTS, mode=mode)  # type: ignore[arg-type]
    return dense_scores(idx, sc, N_PRODUCTS)


def dense_scores(idx: np.ndarray, sc: np.ndarray, n: int) -> np.ndarray:
    table = np.full((len(idx), n), -np.inf, dtype=np.float32)
    rows = np.repeat(np.arange(len(idx)), idx.shape[1]).reshape(idx.shape)
    real = idx >= 0
    table[rows[real], idx[real]] = sc[real]
    return table


def assert_filtered(idx: np.ndarray, sc: np.ndarray, table: np.ndarray, allowed: np.ndarray) -> None:
    """A filtered top-k is the unfiltered ranking with the disallowed candidates taken out.

    Compared on scores, not indices: equal scores may come in either order (see
    test_models_known.py::test_topk_rows_breaks_ties_at_the_cut_by_index).
    """
    allowed = np.broadcast_to(allowed, table.shape)
    k = idx.shape[1]
    for r in range(len(idx)):
        real = idx[r] >= 0
        assert allowed[r, idx[r, real]].all(), f"row {r}: a disallowed candidate came back"
        np.testing.assert_array_equal(sc[r, real], table[r, idx[r, real]])  # the model's own scores
        best = np.sort(table[r, allowed[r]])[::-1][:k]
        best = np.pad(best, (0, k - len(best)), constant_values=-np.inf)
        np.testing.assert_array_equal(sc[r], np.where(np.isfinite(best), best, -np.inf))


def check_topk(idx: np.ndarray, scores: np.ndarray, n_rows: int, k: int, n_candidates: int) -> None:
    assert idx.shape == (n_rows, k) and scores.shape == (n_rows, k)
    assert idx.dtype == np.int64 and scores.dtype == np.float32
    assert ((idx >= -1) & (idx < n_candidates)).all()
    # -1 exactly where the score is -inf; every real score is finite
    assert ((idx == -1) == np.isneginf(scores)).all()
    assert np.isfinite(scores[idx >= 0]).all()
    # best first, padding last
    assert (scores[:, :-1] >= scores[:, 1:]).all()
    for row in idx:
        real = row[row >= 0]
        assert len(np.unique(real)) == len(real)
        assert (row[len(real):] == -1).all()


# ------------------------------------------------------------------------------ picks
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("mode", ["discover", "replenish"])
def test_recommend_shapes_ranges_and_order(fitted, name, mode):
    idx, scores = fitted[name].recommend(np.arange(N_MEMBERS), k=10, mode=mode)
    check_topk(idx, scores, N_MEMBERS, 10, N_PRODUCTS)
    assert (idx[:, 0] >= 0).all()  # every member gets at least one product


@pytest.mark.parametrize("name", NAMES)
def test_discover_is_replenish_without_what_the_member_bought(fitted, data, name):
    model = fitted[name]
    bought = data.interactions.matrix("binary").toarray() > 0
    disc, _ = model.recommend(np.arange(N_MEMBERS), k=10, mode="discover")
    for u, row in enumerate(disc):
        assert not bought[u, row[row >= 0]].any()
    table = score_table(model, SAMPLE)
    assert_filtered(*model.recommend(SAMPLE, k=10, mode="discover"), table, ~bought[SAMPLE])


@pytest.mark.parametrize("name", NAMES)
def test_replenish_returns_products_already_bought(fitted, data, name):
    bought = data.interactions.matrix("binary").toarray() > 0
    idx, _ = fitted[name].recommend(np.arange(N_MEMBERS), k=10, mode="replenish")
    again = [bought[u, row[row >= 0]].any() for u, row in enumerate(idx)]
    assert np.mean(again) > 0.5


def test_unknown_mode_is_an_error(fitted):
    with pytest.raises(ValueError, match="mode"):
        fitted["popular"].recommend(np.arange(2), mode="rebuy")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", NAMES)
def test_include_whitelist(fitted, name):
    model = fitted[name]
    include = np.array([3, 7, 12, 20, 33, 41])
    allowed = np.isin(np.arange(N_PRODUCTS), include)
    table = score_table(model, SAMPLE)
    idx, scores = model.recommend(SAMPLE, k=8, mode="replenish", include=include)
    check_topk(idx, scores, len(SAMPLE), 8, N_PRODUCTS)
    assert_filtered(idx, scores, table, allowed)
    assert (idx >= 0).any()


@pytest.mark.parametrize("name", NAMES)
def test_exclude_blacklist(fitted, name):
    model = fitted[name]
    top, _ = model.recommend(SAMPLE, k=3, mode="replenish")
    exclude = np.unique(top[top >= 0])  # the sample's favourites
    allowed = ~np.isin(np.arange(N_PRODUCTS), exclude)
    idx, scores = model.recommend(SAMPLE, k=10, mode="replenish", exclude=exclude)
    assert not np.isin(idx, exclude).any()
    assert_filtered(idx, scores, score_table(model, SAMPLE), allowed)


@pytest.mark.parametrize("name", NAMES)
def test_categories_filter_and_combination(fitted, data, name):
    model = fitted[name]
    cat = data.product_tags["category"].codes
    table = score_table(model, SAMPLE)
    idx, scores = model.recommend(SAMPLE, k=10, mode="replenish", categories=np.array([1, 3]))
    assert np.isin(cat[idx[idx >= 0]], [1, 3]).all()
    assert_filtered(idx, scores, table, np.isin(cat, [1, 3]))
    # all three together: include & not exclude & category
    include, exclude = np.arange(0, 40, 2), np.array([10, 12])
    allowed = np.isin(np.arange(N_PRODUCTS), include) & ~np.isin(np.arange(N_PRODUCTS), exclude) & (cat == 1)
    idx, scores = model.recommend(SAMPLE, k=10, mode="replenish", include=include, exclude=exclude,
                                  categories=np.array([1]))
    assert_filtered(idx, scores, table, allowed)
    assert set(idx[idx >= 0].tolist()) <= {14, 16, 18}


@pytest.mark.parametrize("name", NAMES)
def test_recommend_does_not_depend_on_the_batch(fitted, name):
    model = fitted[name]
    members = np.arange(0, N_MEMBERS, 3)
    a = model.recommend(members, k=10, mode="replenish")
    b = model.recommend(members, k=10, mode="replenish", batch_size=7)
    single = model.recommend(members[5:6], k=10, mode="replenish")
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_allclose(a[1], b[1], rtol=1e-6)
    np.testing.assert_array_equal(a[0][5:6], single[0])


# ------------------------------------------------------------------------------ audiences
@pytest.mark.parametrize("name", NAMES)
def test_audience_shapes_and_member_mask(fitted, name):
    model = fitted[name]
    products = np.arange(N_PRODUCTS)
    idx, scores = model.audience(products, n=30)
    check_topk(idx, scores, N_PRODUCTS, 30, N_MEMBERS)
    assert (idx[:, 0] >= 0).all()
    mask = (np.arange(N_MEMBERS) % 3) == 0
    table = dense_scores(*model.audience(products, n=N_MEMBERS), N_MEMBERS)
    m_idx, m_scores = model.audience(products, n=30, member_mask=mask)
    check_topk(m_idx, m_scores, N_PRODUCTS, 30, N_MEMBERS)
    assert_filtered(m_idx, m_scores, table, mask)
    # a mask smaller than n pads with -1
    tiny = np.zeros(N_MEMBERS, dtype=bool)
    tiny[[4, 8]] = True
    t_idx, _ = model.audience(products[:3], n=5, member_mask=tiny)
    assert (t_idx[:, 2:] == -1).all() and np.isin(t_idx[:, :2], [4, 8]).all()


@pytest.mark.parametrize("name", names_for("audience_batch"))
def test_audience_does_not_depend_on_the_batch(fitted, name):
    model = fitted[name]
    # out of category order, in batches of two: audience() groups a category's products into a
    # batch and must hand each answer back to its own row
    products = np.array([44, 5, 30, 0, 17, 6])
    together = model.audience(products, n=40, batch_size=2)
    alone = [model.audience(products[j : j + 1], n=40) for j in range(len(products))]
    np.testing.assert_array_equal(together[0], np.vstack([a[0] for a in alone]))
    # float32 sums in another BLAS blocking: equal to rounding (ulp ~1e-6 at |score| ~10)
    np.testing.assert_allclose(together[1], np.vstack([a[1] for a in alone]), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------ similar items
@pytest.mark.parametrize("name", NAMES)
def test_similar_items_never_returns_the_product_itself(fitted, name):
    products = np.arange(N_PRODUCTS)
    idx, scores = fitted[name].similar_items(products, k=N_PRODUCTS)
    check_topk(idx, scores, N_PRODUCTS, N_PRODUCTS, N_PRODUCTS)
    assert not (idx == products[:, None]).any()
    assert (idx[:, -1] == -1).all()  # only the product itself is left out
    assert (idx[:, :-1] >= 0).all()


# ------------------------------------------------------------------------------ persistence
def outputs(model: Recommender) -> list[np.ndarray]:
    members, products = np.arange(N_MEMBERS), np.arange(N_PRODUCTS)
    out: list[np.ndarray] = []
    out += model.recommend(members, k=10, mode="discover")
    out += model.recommend(members, k=10, mode="replenish", categories=np.array([0, 2]))
    out += model.audience(products, n=25)
    out += model.audience(products[:5], n=25, member_mask=np.arange(N_MEMBERS) % 2 == 0)
    out += model.similar_items(products, k=5)
    return out


@pytest.mark.parametrize("name", NAMES)
def test_save_load_gives_identical_outputs(fitted, name, tmp_path):
    model = fitted[name]
    model.save(tmp_path / name)
    loaded = Recommender.load(tmp_path / name)
    assert type(loaded) is type(model) and loaded.name == name
    assert loaded.params == model.params
    assert (loaded.n_members, loaded.n_products) == (N_MEMBERS, N_PRODUCTS)
    for a, b in zip(outputs(model), outputs(loaded), strict=True):
        np.testing.assert_array_equal(a, b)


def test_loading_an_unknown_model_is_an_error(fitted, tmp_path):
    path = fitted["popular"].save(tmp_path / "m")
    doc = (path / "model.json").read_text().replace('"model": "popular"', '"model": "no_such_model"')
    (path / "model.json").write_text(doc)
    with pytest.raises(ValueError, match="unknown model"):
        Recommender.load(path)


@pytest.mark.parametrize("name", NAMES)
def test_same_params_data_and_seed_give_identical_outputs(fitted, data, name):
    again = MODELS[name](params_for(name)).fit(data)
    for a, b in zip(outputs(fitted[name]), outputs(again), strict=True):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------ cold products
@pytest.mark.parametrize("name", NAMES)
def test_a_never_sold_product_can_be_recommended_and_get_an_audience(fitted, data, name):
    assert data.interactions.matrix("binary")[:, COLD_PRODUCT].nnz == 0
    model = fitted[name]
    idx, scores = model.recommend(SAMPLE, k=3, mode="replenish", include=np.array([COLD_PRODUCT]))
    check_topk(idx, scores, len(SAMPLE), 3, N_PRODUCTS)
    assert np.isin(idx, [COLD_PRODUCT, -1]).all() and (idx[:, 1:] == -1).all()
    a_idx, a_scores = model.audience(np.array([COLD_PRODUCT]), n=N_MEMBERS)
    check_topk(a_idx, a_scores, 1, N_MEMBERS, N_MEMBERS)
    if name in ATTRIBUTE_MODELS:
        assert (idx[:, 0] == COLD_PRODUCT).all() and np.isfinite(scores[:, 0]).all()
        assert (a_idx >= 0).all() and np.isfinite(a_scores).all()
        # and the scores say something: not one constant for everybody
        assert a_scores.max() > a_scores.min()


# ------------------------------------------------------------------------------ guard rails
@pytest.mark.parametrize("name", NAMES)
def test_unfitted_model_refuses_to_answer(name):
    model = MODELS[name](params_for(name))
    with pytest.raises(RuntimeError, match="not fitted"):
        model.recommend(np.arange(2))
    with pytest.raises(RuntimeError, match="not fitted"):
        model.audience(np.arange(2))


@pytest.mark.parametrize("name", NAMES)
def test_unknown_parameter_is_an_error(name):
    with pytest.raises(ValidationError):
        MODELS[name]({"no_such_parameter": 1})


# ------------------------------------------------------------------------------ the public API every model has
@pytest.mark.parametrize("name", NAMES)
def test_recommend_modes_is_recommend_in_each_mode(fitted, name):
    model = fitted[name]
    members = np.arange(0, N_MEMBERS, 4)
    both = model.recommend_modes(members, 12)
    assert list(both) == ["replenish", "discover"]
    for mode, (idx, sc) in both.items():
        want_i, want_s = model.recommend(members, 12, mode=mode)
        np.testing.assert_array_equal(idx, want_i)
        np.testing.assert_array_equal(sc, want_s)
    only = model.recommend_modes(members, 5, ("discover",))
    assert list(only) == ["discover"]
    np.testing.assert_array_equal(only["discover"][0], model.recommend(members, 5, mode="discover")[0])


@pytest.mark.parametrize("name", NAMES)
def test_member_scores_are_what_audiences_rank(fitted, name):
    model = fitted[name]
    products = np.array([0, 7, COLD_PRODUCT])
    scores = np.asarray(model.member_scores(products), dtype=np.float32)
    assert scores.shape == (len(products), N_MEMBERS)
    idx, sc = model.audience(products, n=N_MEMBERS)
    for j in range(len(products)):
        real = idx[j] >= 0
        np.testing.assert_array_equal(sc[j, real], scores[j, idx[j, real]])
        finite = np.isfinite(scores[j])
        assert real.sum() == finite.sum()  # every member with a score, and no other, comes back


@pytest.mark.parametrize("name", NAMES)
def test_warm_products_are_the_products_with_purchases(fitted, data, name):
    warm = fitted[name].warm_products()
    assert warm.dtype == bool and warm.shape == (N_PRODUCTS,)
    sold = np.diff(data.interactions.matrix("binary").tocsc().indptr) > 0
    np.testing.assert_array_equal(warm, sold)
    assert not warm[COLD_PRODUCT]


@pytest.mark.parametrize("name", NAMES)
def test_training_summary_and_activity_are_declared(fitted, name):
    model = fitted[name]
    assert isinstance(model.training_summary, dict)
    json.dumps(model.training_summary)  # logged with the run as JSON
    if model.activity is not None:  # the audiences' tie-breaker, one per member
        assert model.activity.shape == (N_MEMBERS,) and np.isfinite(model.activity).all()


# ------------------------------------------------------------------------------ capabilities
def test_every_capability_is_declared_by_a_registered_model():
    # a capability nobody declares is a hook nobody implements: remove it or implement it
    for cap in Capability:
        assert names_with(cap), f"no registered model declares Capability.{cap.name}"


@pytest.mark.parametrize("name", NAMES)
def test_undeclared_capabilities_refuse_by_name(fitted, name):
    model = fitted[name]
    calls = {
        "purchase_probability": (np.zeros(3, np.float32),), "factor_vectors": (), "item_vectors": (),
        "fold_in_member": (np.array([0]), np.array([1.0], np.float32)), "purchase_ages": (),
        "purchase_counts": (), "watch_iterations": (None,), "planned_iterations": (), "snapshot": (),
        "attribute_member_scores": ([ProductDescription("c0")],), "read_attributes": ([ProductDescription("c0")],),
    }
    assert set(calls) == {m for methods in CAPABILITY_METHODS.values() for m in methods}
    for cap, methods in CAPABILITY_METHODS.items():
        if model.has(cap):
            continue
        for method in methods:
            with pytest.raises(CapabilityError, match=cap.name):
                getattr(model, method)(*calls[method])


def test_a_capability_is_implemented_exactly_when_it_is_declared():
    with pytest.raises(TypeError, match="does not declare Capability.PROBABILITIES"):
        class Probing(TopFrequency):  # implements a capability's method without declaring it
            def purchase_probability(self, scores: np.ndarray) -> np.ndarray:
                return scores

    with pytest.raises(TypeError, match="does not implement purchase_ages"):
        class Boasting(TopFrequency):  # declares one without implementing it
            capabilities = frozenset({Capability.PURCHASE_AGES})

    with pytest.raises(TypeError, match="without Capability.VECTORS"):
        class Folding(TopFrequency):  # fold-in means nothing without member vectors
            capabilities = frozenset({Capability.FOLD_IN})

            def fold_in_member(self, products: np.ndarray, weights: np.ndarray) -> np.ndarray:
                return np.zeros(2, np.float32)


@pytest.mark.parametrize("name", names_with(Capability.PROBABILITIES))
def test_purchase_probabilities_are_probabilities_in_the_scores_order(fitted, name):
    model = fitted[name]
    scores = np.asarray(model.member_scores(np.arange(N_PRODUCTS)), dtype=np.float32)
    p = np.asarray(model.purchase_probability(scores), dtype=np.float64)
    assert p.shape == scores.shape and ((p >= 0) & (p <= 1)).all()
    order = np.argsort(scores.ravel(), kind="stable")
    assert (np.diff(p.ravel()[order]) >= 0).all()  # a higher score is never a lower probability
    np.testing.assert_array_equal(model.purchase_probability(scores[3]), p[3])  # elementwise


def test_the_hybrids_probabilities_are_calibrated(fitted, data):
    # the expected buyers of every (member, product) pair over a period as long as the hybrid's
    # label window are close to the pairs that bought in the last such period
    model = fitted["hybrid"]
    p = model.purchase_probability(model.member_scores(np.arange(N_PRODUCTS)))
    x = data.interactions
    last = x.age_days <= model.params.label_days
    bought = len(np.unique(x.member[last].astype(np.int64) * N_PRODUCTS + x.product[last]))
    assert 0.67 < p.sum() / bought < 1.5, (p.sum(), bought)


@pytest.mark.parametrize("name", names_with(Capability.VECTORS))
def test_factor_vectors_give_the_models_scores(fitted, name):
    model = fitted[name]
    users, items = model.factor_vectors()
    assert users.shape[0] == N_MEMBERS and items.shape[0] == N_PRODUCTS and users.shape[1] == items.shape[1]
    idx, sc = model.recommend(SAMPLE, k=10, mode="replenish")
    want = np.einsum("ij,ikj->ik", users[SAMPLE], items[idx])
    np.testing.assert_allclose(sc, want, rtol=1e-5, atol=1e-6)
    a_idx, a_sc = model.audience(np.array([2, COLD_PRODUCT]), n=20)
    np.testing.assert_allclose(a_sc, np.einsum("ij,ikj->ik", items[[2, COLD_PRODUCT]], users[a_idx]),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", names_with(Capability.FOLD_IN))
def test_fold_in_gives_a_member_vector_that_ranks_their_purchases_first(fitted, data, name):
    model = fitted[name]
    users, items = model.factor_vectors()
    before = model.recommend(SAMPLE, k=10)
    none = model.fold_in_member(np.array([], np.int64), np.array([], np.float32))
    assert none.shape == (users.shape[1],)
    np.testing.assert_allclose(none, 0.0, atol=1e-6)  # nothing bought: no preference at all
    counts = data.interactions.matrix("count").tocsr()
    ranks = []
    for member in range(0, N_MEMBERS, 5):
        row = counts[member]
        if row.nnz == 0:
            continue
        v = model.fold_in_member(row.indices.astype(np.int64), row.data.astype(np.float32))
        assert v.shape == (users.shape[1],) and np.isfinite(v).all()
        np.testing.assert_array_equal(v, model.fold_in_member(row.indices.astype(np.int64), row.data.astype(np.float32)))
        rank = np.argsort(np.argsort(-(items @ v), kind="stable"), kind="stable")
        ranks.append(rank[row.indices].mean() / N_PRODUCTS)
    assert np.mean(ranks) < 0.4, np.mean(ranks)  # random vectors would place them at 0.5
    for a, b in zip(before, model.recommend(SAMPLE, k=10), strict=True):  # folding in changes nothing
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", names_with(Capability.ITEM_VECTORS))
def test_similar_products_are_the_nearest_item_vectors(fitted, name):
    model = fitted[name]
    vecs = np.asarray(model.item_vectors(), dtype=np.float64)
    assert vecs.shape[0] == N_PRODUCTS and np.isfinite(vecs).all()
    unit = vecs / (np.linalg.norm(vecs, axis=1, keepdims=True) + 1e-9)
    cos = unit @ unit.T
    idx, sc = model.similar_items(np.arange(N_PRODUCTS), k=5)
    for j in range(N_PRODUCTS):
        np.testing.assert_allclose(sc[j], cos[j, idx[j]], rtol=1e-4, atol=1e-5)
        others = np.delete(cos[j], j)
        np.testing.assert_allclose(sc[j], np.sort(others)[::-1][:5], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", names_with(Capability.PURCHASE_AGES))
def test_purchase_ages_are_the_days_since_each_last_purchase(fitted, data, name, tmp_path):
    model = fitted[name]
    want = data.interactions.last_age().tocsr()
    for m in (model, Recommender.load(model.save(tmp_path / name))):
        got = m.purchase_ages().tocsr()
        assert got.shape == (N_MEMBERS, N_PRODUCTS)
        assert (got != want).nnz == 0


@pytest.mark.parametrize("name", names_with(Capability.PURCHASE_COUNTS))
def test_purchase_counts_are_the_purchase_days(fitted, data, name, tmp_path):
    model = fitted[name]
    want = data.interactions.matrix("count").tocsr()
    for m in (model, Recommender.load(model.save(tmp_path / name))):
        got = m.purchase_counts().tocsr()
        assert got.shape == (N_MEMBERS, N_PRODUCTS)
        assert (got != want).nnz == 0


@pytest.mark.parametrize("name", names_with(Capability.ITERATIONS))
def test_iterations_are_reported_and_can_be_scored_while_training(fitted, data, name):
    model = MODELS[name](params_for(name))
    seen: list[tuple[int, float]] = []
    views: list[tuple[np.ndarray, np.ndarray]] = []

    def on_iteration(iteration: int, seconds: float, loss: float) -> None:
        seen.append((iteration, seconds))
        view = model.snapshot()
        assert view.is_fitted and (view.n_members, view.n_products) == (N_MEMBERS, N_PRODUCTS)
        views.append(view.recommend(SAMPLE, k=5, exclude=np.array([COLD_PRODUCT])))

    model.watch_iterations(on_iteration)
    model.fit(data)
    n = model.planned_iterations()
    assert [i for i, _ in seen] == list(range(n))
    assert all(b >= a for (_, a), (_, b) in zip(seen, seen[1:], strict=False))
    # the last snapshot is the fitted model (never-sold products aside: their vectors come after)
    final = model.recommend(SAMPLE, k=5, exclude=np.array([COLD_PRODUCT]))
    np.testing.assert_array_equal(views[-1][0], final[0])
    np.testing.assert_allclose(views[-1][1], final[1], rtol=1e-5, atol=1e-6)
    assert n == 1 or not np.array_equal(views[0][1], final[1])  # the first one was still learning
    with pytest.raises(RuntimeError, match="during fit"):
        model.snapshot()
    model.watch_iterations(None)
    seen.clear()
    MODELS[name](params_for(name)).fit(data)
    assert not seen
