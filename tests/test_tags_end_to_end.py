"""A tag added to the registry -- and nothing else -- reaches every layer: the feature snapshot, the
bundle training writes, audience filters, the options, the tag list and member profiles."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from features.build import build_features
from features.config import FeatureConfig
from recsys.bundle import load_bundle
from recsys.models import get_model
from recsys.tags import TagDef, TagRegistry, values
from serving.app import create_app
from serving.keys import hash_key
from serving.settings import ApiKeySpec, ServingSettings
from training.config import TrainConfig
from training.data import DataPaths, load_train
from training.pipeline import TrainResult, build_bundle

AS_OF = date(2024, 3, 1)
# a retailer's own idea of a member, as a registry entry: spent 100 or more on one occasion
BIG_BASKET = TagDef(
    name="big_basket", entity="member", zh="大单客户", en="Big-basket shopper", kind="rule", source="test fixture",
    query="SELECT member_id, MAX(spent) >= 100 AS value FROM "
          "(SELECT member_id, occasion_id, SUM(amount) AS spent FROM lines GROUP BY member_id, occasion_id) AS o "
          "GROUP BY member_id",
    values=values(("true", "大单", "big basket"), ("false", "普通", "regular")), default="false",
)
# (member, product, days before the as-of date, amount)
LINES = [
    ("a", "x", 3, 60.0), ("a", "y", 3, 50.0),  # one occasion of 110: big
    ("b", "x", 5, 60.0), ("b", "y", 9, 50.0),  # two occasions under 100
    ("c", "x", 2, 150.0),  # big
    ("d", "y", 4, 20.0), ("d", "z", 6, 10.0),
    ("e", "x", 8, 5.0), ("e", "z", 8, 99.0),  # 104 on one day (no basket ids: the day is the occasion)
    ("f", "z", 1, 30.0),
]
BIG = {"a", "c", "e"}


def _canonical(folder: Path) -> Path:
    folder.mkdir(parents=True)
    midnight = datetime.combine(AS_OF, datetime.min.time())
    tx = [{"member_id": m, "product_id": p, "ts": midnight - timedelta(days=d) + timedelta(hours=10),
           "quantity": 1.0, "amount": a, "unit_price": a, "cost": None, "channel": "app" if m in "ab" else "store",
           "store_id": "S1", "basket_id": None} for m, p, d, a in LINES]
    pq.write_table(pa.Table.from_pylist(tx, schema=pa.schema([
        ("member_id", pa.string()), ("product_id", pa.string()), ("ts", pa.timestamp("us")),
        ("quantity", pa.float64()), ("amount", pa.float64()), ("unit_price", pa.float64()), ("cost", pa.float64()),
        ("channel", pa.string()), ("store_id", pa.string()), ("basket_id", pa.string())])), folder / "transactions.parquet")
    pq.write_table(pa.table({"product_id": ["x", "y", "z"], "category": ["c1", "c1", "c2"],
                             "price": [50.0, 50.0, 20.0], "brand": [None, None, None], "name": ["X", "Y", "Z"],
                             "launched_at": pa.array([None] * 3, pa.timestamp("us"))}), folder / "products.parquet")
    pq.write_table(pa.table({"member_id": list("abcdef"), "joined_at": pa.array([None] * 6, pa.timestamp("us")),
                             "age_group": ["25-29"] * 6, "region": ["east"] * 3 + ["west"] * 3}),
                   folder / "members.parquet")
    return folder


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("tag-e2e")
    cfg = TrainConfig.model_validate({"data": {"dataset": "shop", "data_dir": str(root), "cutoff": AS_OF.isoformat()},
                                      "model": {"name": "top_frequency"}})
    _canonical(cfg.data.canonical)
    registry = TagRegistry.builtin().extend([BIG_BASKET])
    snapshot = build_features(cfg.data.canonical, cfg.data.features, AS_OF, FeatureConfig(), tags=registry)
    data = load_train(DataPaths(cfg.data.canonical, cfg.data.features), AS_OF)
    model = get_model("top_frequency")({}).fit(data)
    result = TrainResult(model, {}, {}, members=data.interactions.members, products=data.interactions.products)
    bundle_dir = build_bundle(cfg, result, root / "bundle", run_id=None)
    settings = ServingSettings(
        bundle=bundle_dir, events_dir=root / "events", campaign_db=f"sqlite:///{root / 'campaigns.db'}", load_in_background=False,
        api_keys=[ApiKeySpec(id="m", role="merchandiser", sha256=hash_key("m-secret")),
                  ApiKeySpec(id="east", role="staff", sha256=hash_key("east-secret"), scope={"big_basket": ["true"]})],
    )
    with TestClient(create_app(settings)) as client:
        yield snapshot, bundle_dir, client


def test_the_snapshot_computes_and_records_it(served: Any) -> None:
    snapshot, _, _ = served
    rows = {r["member_id"]: r["big_basket"] for r in pq.read_table(snapshot.members_path).to_pylist()}
    assert {m for m, big in rows.items() if big} == BIG
    assert snapshot.tag_counts("big_basket") == ({"true": 3, "false": 3}, 0)
    assert snapshot.tags.get("big_basket").source == "test fixture"


def test_the_bundle_carries_it(served: Any) -> None:
    _, bundle_dir, _ = served
    doc = json.loads((bundle_dir / "bundle.json").read_text())
    entry = next(t for t in doc["tags"] if t["name"] == "big_basket")
    assert (entry["zh"], entry["kind"], entry["query"]) == ("大单客户", "rule", BIG_BASKET.query)
    bundle = load_bundle(bundle_dir)
    column = bundle.member_tags()["big_basket"]
    ids = bundle.members.external_ids.tolist()
    assert {ids[i] for i in range(len(ids)) if column.codes[i] == column.code("true")} == BIG


def test_audiences_filter_on_it_and_options_list_it(served: Any) -> None:
    _, _, client = served
    h = {"X-API-Key": "m-secret"}
    options = client.get("/v1/audiences/options", headers=h).json()
    tag = next(t for t in options["tags"] if t["name"] == "big_basket")
    assert (tag["zh"], tag["en"], tag["kind"]) == ("大单客户", "Big-basket shopper", "rule")
    assert tag["values"] == [{"value": "true", "zh": "大单", "en": "big basket", "members": 3},
                             {"value": "false", "zh": "普通", "en": "regular", "members": 3}]
    body = client.post("/v1/audiences", json={"product_id": "x", "size": 10, "filters": {"big_basket": ["true"]}},
                       headers=h).json()
    assert {m["member_id"] for m in body["members"]} == BIG
    assert body["profile"]["counts"]["big_basket"] == {"true": 3}
    r = client.post("/v1/audiences", json={"product_id": "x", "filters": {"big_basket": ["yes"]}}, headers=h)
    assert r.status_code == 422 and "allowed: true, false" in r.json()["detail"]


def test_profiles_show_it_and_a_key_may_be_scoped_by_it(served: Any) -> None:
    _, _, client = served
    h = {"X-API-Key": "m-secret"}
    assert client.get("/v1/members/a/profile", headers=h).json()["tags"]["big_basket"] == "true"
    assert client.get("/v1/members/b/profile", headers=h).json()["tags"]["big_basket"] == "false"
    assert "big_basket" in [t["name"] for t in client.get("/v1/tags", headers=h).json()["tags"]]
    staff = {"X-API-Key": "east-secret"}
    assert client.get("/v1/members/a/picks", headers=staff).status_code == 200
    assert client.get("/v1/members/b/picks", headers=staff).status_code == 404
