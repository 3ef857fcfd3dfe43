"""A product described by attributes (category, price, brand) is scored by the hybrid's never-sold
audience model exactly as a never-sold catalogue row of those attributes is
(``Capability.ATTRIBUTE_AUDIENCE``): the figure the report measures is the one the server serves."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from conftest import auth
from helpers_data import N_PRODUCTS, synthetic_data

from recsys.bundle import Bundle, save_bundle
from recsys.errors import InputError
from recsys.idmap import IdMap
from recsys.models import Tag, TrainData, get_model
from recsys.models.base import Capability, ProductDescription, Recommender
from recsys.models.hybrid.audiences import audience_scores
from recsys.tags import TagDef, TagRegistry, price_band_of, values, with_seen_values

# never-sold catalogue products added to the synthetic shop: (category, list price, brand)
NEW = [("c0", 2.0, "b0"), ("c0", 9.0, None), ("c1", 4.0, "b1"), ("c2", 6.5, "b2"), ("c3", None, "b0"),
       ("c4", 3.0, "b-nobody-bought")]
THRESHOLDS = {f"c{c}": (2.5 + c * 0.1, 5.5) for c in range(5)}


def described_shop() -> TrainData:
    """The synthetic shop with barcode ids (so product lines exist), brands, six more never-sold
    products, and price bands given by the category thresholds as the features build gives them."""
    data = synthetic_data()
    n = N_PRODUCTS + len(NEW)
    ids = IdMap([f"471000{i // 5:03d}{i:04d}" for i in range(n)])
    x = dataclasses.replace(data.interactions, products=ids)
    cats = [f"c{i // 10}" for i in range(N_PRODUCTS)] + [c for c, _, _ in NEW]
    prices = [1.0 + i % 7 for i in range(N_PRODUCTS)] + [p for _, p, _ in NEW]
    brands = [["b0", "b1", "b2", None][i % 4] for i in range(N_PRODUCTS)] + [b for _, _, b in NEW]
    bands = [price_band_of(p, *THRESHOLDS[c]) for c, p in zip(cats, prices, strict=True)]
    return TrainData(
        x, data.member_tags,
        product_tags={"category": Tag.from_values(cats), "price_band": Tag.from_values(bands),
                      "brand": Tag.from_values(brands)},
        product_price=np.array([np.nan if p is None else p for p in prices], np.float64),
        category_price_bands=THRESHOLDS,
    )


@pytest.fixture(scope="module")
def fitted() -> tuple[Recommender, TrainData]:
    model = get_model("hybrid")({"factors": 8, "iterations": 3, "n_estimators": 10, "min_child_samples": 10,
                                 "knn_neighbours": 20, "audience_negatives": 5, "num_threads": 1,
                                 "label_days": 14, "line_from_id_prefix": 9})
    data = described_shop()
    return model.fit(data), data


def describe(data: TrainData, j: int) -> ProductDescription:
    price = float(data.product_price[j])
    brand = data.product_tags["brand"].values()[j]
    return ProductDescription(data.product_tags["category"].values()[j], None if np.isnan(price) else price, brand)


def never_sold(model: Recommender) -> np.ndarray:
    return np.flatnonzero(~model.warm_products())


def test_hybrid_declares_attribute_audience() -> None:
    assert get_model("hybrid").has(Capability.ATTRIBUTE_AUDIENCE)
    assert not get_model("popular").has(Capability.ATTRIBUTE_AUDIENCE)


def test_attribute_scores_equal_the_never_sold_rows_scores(fitted: tuple[Recommender, TrainData]) -> None:
    model, data = fitted
    cold = never_sold(model)
    assert len(cold) == 1 + len(NEW)  # the synthetic shop's own never-sold product and the six added
    s = model.state
    for j in cold:
        by_row = audience_scores(s, np.array([j]), model.audience_w, model.audience_g, model.audience_b,
                                 with_line=False)
        by_attributes = model.attribute_member_scores([describe(data, j)])
        assert by_attributes.shape == (1, model.n_members)
        np.testing.assert_array_equal(by_attributes, by_row)
    # all at once (batched by category, as the report ranks them): the same lists, ties included
    idx, sc = model.attribute_audience(cold, n=40)
    idx_d, sc_d = model.described_audience([describe(data, j) for j in cold], n=40)
    np.testing.assert_array_equal(idx_d, idx)
    np.testing.assert_array_equal(sc_d, sc)


def test_a_brand_from_the_id_prefix_is_named_by_that_prefix(fitted: tuple[Recommender, TrainData]) -> None:
    """A shop without a brand column whose brands come from the barcode prefix: a merchandiser
    names the brand by the prefix, and gets what the never-sold row of that prefix gets."""
    model, data = fitted
    no_brand = dataclasses.replace(data, product_tags={k: v for k, v in data.product_tags.items() if k != "brand"})
    params = {**model.params.model_dump(), "brand_from_id_prefix": 8}
    prefixed = get_model("hybrid")(params).fit(no_brand)
    ids = no_brand.interactions.products.external_ids
    s = prefixed.state
    for j in never_sold(prefixed):
        desc = dataclasses.replace(describe(data, j), brand=str(ids[j])[:8])
        by_row = audience_scores(s, np.array([j]), prefixed.audience_w, prefixed.audience_g, prefixed.audience_b,
                                 with_line=False)
        np.testing.assert_array_equal(prefixed.attribute_member_scores([desc]), by_row)
    j = never_sold(prefixed)[0]
    named = prefixed.read_attributes([dataclasses.replace(describe(data, j), brand=str(ids[j])[:8])])
    assert named[0]["brand"] == str(ids[j])[:8]


def test_the_price_places_the_product_in_a_band(fitted: tuple[Recommender, TrainData]) -> None:
    model, data = fitted
    cat, band, _ = model.attribute_codes([ProductDescription("c0", p) for p in (1.0, 2.5, 5.5, 9.0, None)])
    labels = data.product_tags["price_band"].labels
    assert [labels[b] for b in band] == ["low", "mid", "mid", "high", "unknown"]  # c0: 2.5 .. 5.5
    assert set(cat.tolist()) == {data.product_tags["category"].code("c0")}
    low, high = model.attribute_member_scores([ProductDescription("c0", 1.0), ProductDescription("c0", 9.0)])
    assert not np.array_equal(low, high)  # the band (and its cold vector) matter


def test_an_unknown_brand_is_a_brand_nobody_bought(fitted: tuple[Recommender, TrainData]) -> None:
    model, _ = fitted
    a = model.attribute_member_scores([ProductDescription("c1", 4.0, "never-heard-of-it")])
    b = model.attribute_member_scores([ProductDescription("c1", 4.0, None)])
    np.testing.assert_array_equal(a, b)


def test_an_unknown_category_names_the_known_ones(fitted: tuple[Recommender, TrainData]) -> None:
    model, _ = fitted
    with pytest.raises(InputError, match=r"unknown category 'tea'; categories: c0, c1, c2, c3, c4"):
        model.attribute_member_scores([ProductDescription("tea", 3.0)])


def test_saved_model_scores_described_products_the_same(fitted: tuple[Recommender, TrainData],
                                                        tmp_path: Path) -> None:
    model, _ = fitted
    loaded = Recommender.load(model.save(tmp_path / "m"))
    desc = [ProductDescription("c2", 6.5, "b2"), ProductDescription("c3", None, None)]
    np.testing.assert_array_equal(loaded.attribute_member_scores(desc), model.attribute_member_scores(desc))


# ------------------------------------------------------------------------------ served
SEGMENT = TagDef(name="value_segment", entity="member", zh="价值分层", en="Value segment", expr="'x'",
                 values=values(("a", "甲", "a"), ("b", "乙", "b"), ("c", "丙", "c")))


@pytest.fixture(scope="module")
def hybrid_bundle(fitted: tuple[Recommender, TrainData], tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, data = fitted
    x = data.interactions
    return save_bundle(tmp_path_factory.mktemp("hybrid-bundle") / "b", Bundle(
        model=model, members=x.members, products=x.products,
        member_table=pa.table({"member_id": x.members.external_ids.tolist(),
                               "value_segment": data.member_tags["value_segment"].values().tolist()}),
        product_table=pa.table({
            "product_id": x.products.external_ids.tolist(),
            "category": data.product_tags["category"].values().tolist(),
            "price": [None if p != p else float(p) for p in data.product_price],
            "price_band": data.product_tags["price_band"].values().tolist(),
            "brand": data.product_tags["brand"].values().tolist(),
        }),
        meta={"run_id": "run-hybrid", "metrics": {}, "as_of": x.as_of.isoformat()},
        tags=TagRegistry((SEGMENT, with_seen_values(TagRegistry.builtin().get("price_band"), ["low", "mid", "high"]))),
    ))


def test_served_audience_by_attributes_is_the_models_never_sold_audience(
    fitted: tuple[Recommender, TrainData], hybrid_bundle: Path, serving_client: Callable[..., Any]
) -> None:
    model, data = fitted
    segment_a = data.member_tags["value_segment"].mask(["a"])
    desc = ProductDescription("c1", 4.0, "b1")
    idx, sc = model.described_audience([desc], n=7, member_mask=segment_a)
    want = data.interactions.members.external_ids[idx[0]].tolist()
    body = {"attributes": {"category": "c1", "price": 4.0, "brand": "b1"}, "size": 7,
            "filters": {"value_segment": ["a"]}}
    with serving_client(hybrid_bundle) as c:
        r = c.post("/v1/audiences", json=body, headers=auth("merchandiser"))
        assert r.status_code == 200, r.text
        got = r.json()
        assert [m["member_id"] for m in got["members"]] == want
        assert [m["score"] for m in got["members"]] == pytest.approx(sc[0].tolist(), rel=1e-6)
        assert [m["probability"] for m in got["members"]] == pytest.approx(
            model.purchase_probability(sc[0]).tolist(), rel=1e-6)
        assert got["reference_products"] == []
        assert any("category 'c1', price band 'mid'" in n and "brand 'b1'" in n and "never-sold audience model" in n
                   for n in got["notes"]), got["notes"]
        prof = got["profile"]
        assert prof["eligible"] == int(segment_a.sum())
        assert prof["random"] is not None and prof["most_active"] is not None  # the baselines, as for a product id
        # the CSV export is the same audience
        csv_rows = c.post("/v1/audiences/export", json=body, headers=auth("merchandiser")).text.splitlines()[1:]
        assert [row.split(",")[0] for row in csv_rows] == want
        # an unknown category: 422 naming the known ones
        r = c.post("/v1/audiences", json={"attributes": {"category": "tea"}, "size": 3}, headers=auth("merchandiser"))
        assert r.status_code == 422
        assert "unknown category 'tea'; categories: c0, c1, c2, c3, c4" in r.text


def test_the_report_scores_by_attributes_through_the_capability_with_the_same_figures(
    fitted: tuple[Recommender, TrainData],
) -> None:
    import scipy.sparse as sp

    from training.evaluate import evaluate_audiences

    model, data = fitted
    cold = never_sold(model)
    rng = np.random.default_rng(3)
    rows = np.concatenate([rng.choice(model.n_members, 6, replace=False) for _ in cold])
    truth = sp.csr_matrix((np.ones(len(rows)), (rows, np.repeat(cold, 6))), shape=(model.n_members, model.n_products))
    seen = data.interactions.matrix("binary")
    calls: list[int] = []
    described = model.described_audience

    class Watch:  # counts the described products the evaluation asks for
        def __call__(self, products: Any, n: int = 1000, **kw: Any) -> Any:
            calls.append(len(products))
            return described(products, n, **kw)

    model.described_audience = Watch()  # type: ignore[method-assign]
    try:
        through = evaluate_audiences(model, truth, seen, sizes=(10, 50), min_buyers_new=3, catalogue=data)
    finally:
        del model.described_audience
    assert sum(calls) == len(cold)  # every never-sold product was scored from its attributes
    by_rows = evaluate_audiences(model, truth, seen, sizes=(10, 50), min_buyers_new=3)
    attr = {k: v for k, v in by_rows.items() if k.startswith("audience_attr_")}
    assert attr and {k: through[k] for k in attr} == attr
