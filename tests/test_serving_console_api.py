"""The API the web console needs: whoami, audience options, lift baselines, past exports, product
search and the member profile (data: tests/conftest.py).

The ``dated`` bundle's model gives purchase probabilities p = s / (1 + s). Audience scores for p0
are purchase days + 1e-6 x activity: m0 3 (p .75); m2, m4, m5 1 (p .5); m1, m3 ~0 (p ~0).
Activity (purchase days): m0 4, m1 3, m2 2, m3 3, m4 3, m5 3 (ties go to the lower member index).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import auth


@pytest.fixture
def dated(serving_client: Callable[..., Any]) -> Any:
    with serving_client("dated") as c:
        yield c


@pytest.mark.parametrize("role", ["app", "merchandiser", "admin"])
def test_whoami_names_the_key_its_role_and_permissions(client: Any, role: str) -> None:
    body = client.get("/v1/whoami", headers=auth(role)).json()
    assert body["key_id"] == f"{role}-key" and body["role"] == role
    assert ("audiences" in body["permissions"]) == (role != "app")
    assert client.get("/v1/whoami").status_code == 401


def test_audience_lift_over_random_and_most_active_members(dated: Any) -> None:
    r = dated.post("/v1/audiences", json={"product_id": "p0", "size": 3}, headers=auth("merchandiser"))
    p = r.json()["profile"]
    # audience m0, m4, m5: .75 + .5 + .5; pool = all 6, mean p = 2.25 / 6
    assert p["expected_buyers"] == pytest.approx(1.75, rel=1e-4)
    assert p["eligible"] == 6
    assert p["random"] == {"size": 3, "expected_buyers": pytest.approx(3 * 2.25 / 6, rel=1e-4)}
    # most active three: m0 (4), then m1 and m3 (3; tie by index) -> .75 + ~0 + ~0
    assert p["most_active"]["size"] == 3
    assert p["most_active"]["expected_buyers"] == pytest.approx(0.75, rel=1e-4)
    assert p["lift_vs_random"] == pytest.approx(1.75 / 1.125, rel=1e-4)
    assert p["lift_vs_most_active"] == pytest.approx(1.75 / 0.75, rel=1e-4)


def test_baselines_come_from_the_members_the_filters_keep(dated: Any) -> None:
    body = {"product_id": "p0", "size": 2, "filters": {"lifecycle": ["active"]}}  # m0, m1, m4
    p = dated.post("/v1/audiences", json=body, headers=auth("merchandiser")).json()["profile"]
    assert p["eligible"] == 3
    assert p["expected_buyers"] == pytest.approx(1.25, rel=1e-4)  # m0, m4
    assert p["random"]["expected_buyers"] == pytest.approx(2 * 1.25 / 3, rel=1e-4)
    assert p["most_active"]["expected_buyers"] == pytest.approx(0.75, rel=1e-4)  # m0, m1 (tie m1/m4 by index)


def test_no_baselines_without_purchase_probabilities(client: Any) -> None:
    p = client.post("/v1/audiences", json={"product_id": "p0", "size": 2, "filters": {"region": ["上海"]}},
                    headers=auth("merchandiser")).json()["profile"]
    assert p["eligible"] == 3 and p["expected_buyers"] is None
    assert p["random"] is None and p["most_active"] is None
    assert p["lift_vs_random"] is None and p["lift_vs_most_active"] is None


def test_audience_options_list_the_bundles_tags_with_labels(client: Any) -> None:
    r = client.get("/v1/audiences/options", headers=auth("merchandiser"))
    assert r.status_code == 200
    body = r.json()
    # every member tag of the bundle's registry, in its order, with labels and members per value
    assert [t["name"] for t in body["tags"]] == ["value_segment", "lifecycle", "region", "channel", "store"]
    tags = {t["name"]: t for t in body["tags"]}
    assert tags["value_segment"]["values"] == [
        {"value": "high", "zh": "高价值", "en": "high", "members": 2},
        {"value": "mid", "zh": "中价值", "en": "mid", "members": 2},
        {"value": "low", "zh": "低价值", "en": "low", "members": 1},
    ]
    lifecycle = {v["value"]: (v["zh"], v["members"]) for v in tags["lifecycle"]["values"]}
    # a declared stage nobody is in is still a value (and filtering on it keeps nobody)
    assert lifecycle == {"new": ("新客", 1), "active": ("活跃", 3), "sleeping": ("沉睡", 1), "lost": ("流失", 1),
                         "prospect": ("潜客", 0)}
    assert (tags["lifecycle"]["zh"], tags["lifecycle"]["en"], tags["lifecycle"]["multi"]) == ("生命周期", "Lifecycle", False)
    # channel is multi-valued: a member counts once per channel bought through
    assert tags["channel"]["multi"] is True
    assert {v["value"]: (v["zh"], v["members"]) for v in tags["channel"]["values"]} == {
        "app": ("App", 2), "mini_program": ("小程序", 1), "store": ("门店", 4)}
    assert [v["value"] for v in tags["region"]["values"]] == ["上海", "北京", "广州"]
    assert body["scope"] is None
    assert body["categories"] == ["bakery", "dairy", "snacks"]
    assert body["brands"] == sorted({"光明", "桃李", "好利来", "乐事", "三只松鼠"})
    assert body["max_audience"] == 100_000
    assert client.get("/v1/audiences/options", headers=auth("app")).status_code == 403


def test_tags_route_lists_member_and_product_tags_for_any_key(client: Any) -> None:
    for role in ("app", "staff-s01", "merchandiser"):
        body = client.get("/v1/tags", headers=auth(role)).json()
        assert [(t["name"], t["entity"]) for t in body["tags"]] == [
            ("value_segment", "member"), ("lifecycle", "member"), ("region", "member"), ("channel", "member"),
            ("store", "member"), ("price_band", "product")]
        assert all(v["members"] is None for t in body["tags"] for v in t["values"])
        assert "expr" not in body["tags"][0] and "query" not in body["tags"][3]  # no SQL leaves the server
    assert client.get("/v1/tags").status_code == 401


def test_audience_filtered_by_a_multi_valued_tag(client: Any) -> None:
    h = auth("merchandiser")
    body = client.post("/v1/audiences", json={"product_id": "p4", "size": 10, "filters": {"channel": ["app"]}},
                       headers=h).json()
    assert sorted(m["member_id"] for m in body["members"]) == ["m0", "m1"]  # app only, app + store
    assert body["profile"]["counts"]["channel"] == {"app": 2, "store": 1}
    body = client.post("/v1/audiences", json={"product_id": "p4", "size": 10,
                                              "filters": {"channel": ["app", "mini_program"], "store": ["S02"]}},
                       headers=h).json()
    assert sorted(m["member_id"] for m in body["members"]) == ["m1", "m4"]
    body = client.post("/v1/audiences", json={"product_id": "p4", "size": 10, "filters": {"lifecycle": ["prospect"]}},
                       headers=h).json()
    assert body["members"] == [] and body["profile"]["eligible"] == 0


def test_past_exports_come_from_the_audit_trail_newest_first(
    client: Any, serving_settings: Callable[..., Any]
) -> None:
    h = auth("merchandiser")
    assert client.get("/v1/audiences/exports", headers=h).json() == {"exports": []}
    client.post("/v1/audiences/export", json={"product_id": "p0", "size": 2}, headers=h)
    client.post("/v1/audiences/export", json={"attributes": {"category": "dairy", "price": 9.5}, "size": 4,
                                              "filters": {"lifecycle": ["active"]}}, headers=auth("admin"))
    # an entry edited by hand in the database, that is no export record, is skipped (never a 500)
    engine = sa.create_engine(serving_settings().campaign_db)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO audit_entries (time, key_id, route, format, rows, request) VALUES "
                             "('2999-01-01 00:00:00', 'x', '/v1/audiences/export', 'csv', 1, '{\"size\": \"many\"}')"))
    engine.dispose()
    body = client.get("/v1/audiences/exports", headers=h).json()["exports"]
    assert [e["key_id"] for e in body] == ["admin-key", "merchandiser-key"]
    assert body[0]["attributes"] == {"category": "dairy", "price": 9.5, "brand": None}
    assert body[0]["filters"] == {"lifecycle": ["active"]} and body[0]["rows"] == 3
    assert body[1]["product_id"] == "p0" and body[1]["size"] == 2 and body[1]["rows"] == 2
    mine = client.get("/v1/audiences/exports?mine=true&limit=5", headers=h).json()["exports"]
    assert [e["key_id"] for e in mine] == ["merchandiser-key"]
    assert len(client.get("/v1/audiences/exports?limit=1", headers=h).json()["exports"]) == 1
    assert client.get("/v1/audiences/exports", headers=auth("app")).status_code == 403


def test_product_search_by_id_name_and_category(client: Any) -> None:
    h = auth("app")
    body = client.get("/v1/products", params={"q": "牛"}, headers=h).json()
    assert [p["product_id"] for p in body["products"]] == ["p0"]
    assert body["products"][0] == {
        "product_id": "p0", "name": "鲜牛奶", "category": "dairy", "brand": "光明", "price": 12.0,
        "active": True, "buyers": 4,
    }
    body = client.get("/v1/products", params={"q": "P", "limit": 3}, headers=h).json()
    assert body["total"] == 7 and [p["product_id"] for p in body["products"]] == ["p0", "p1", "p2"]
    body = client.get("/v1/products", params={"q": "p3"}, headers=h).json()
    assert [p["product_id"] for p in body["products"]] == ["p3"]
    body = client.get("/v1/products", params={"category": "snacks"}, headers=h).json()
    assert [(p["product_id"], p["active"]) for p in body["products"]] == [("p4", True), ("p5", False), ("p6", True)]
    r = client.get("/v1/products", params={"category": "toys"}, headers=h)
    assert r.status_code == 422 and "unknown category 'toys'" in r.json()["detail"]
    assert client.get("/v1/products").status_code == 401


def test_member_profile_tags_categories_and_last_purchase(dated: Any) -> None:
    today = datetime.now(UTC).date()
    body = dated.get("/v1/members/m0/profile", headers=auth("app")).json()
    assert body["known"] is True
    assert body["tags"] == {"value_segment": "high", "lifecycle": "active", "region": "上海",
                            "channel": ["app", "store"], "store": "S01"}
    assert body["purchases"] == 4 and body["products_bought"] == 2
    assert body["top_categories"] == [{"category": "dairy", "purchases": 4}]
    assert body["last_purchase"] == {
        "product_id": "p0", "name": "鲜牛奶", "category": "dairy",
        "date": (today - timedelta(days=1)).isoformat(), "days_ago": 1, "counted_from": today.isoformat(),
    }
    body = dated.get("/v1/members/m5/profile", headers=auth("merchandiser")).json()
    assert body["tags"]["value_segment"] is None
    assert [c["category"] for c in body["top_categories"]] == ["bakery", "dairy", "snacks"]
    assert body["last_purchase"]["product_id"] == "p5" and body["last_purchase"]["days_ago"] == 2
    body = dated.get("/v1/members/ghost/profile", headers=auth("app")).json()
    assert body["known"] is False and body["purchases"] == 0 and body["last_purchase"] is None
    assert body["tags"] == {"value_segment": None, "lifecycle": None, "region": None, "channel": [], "store": None}


def test_member_profile_reflects_live_purchases(dated: Any) -> None:
    r = dated.post("/v1/events", json=[{"member_id": "m2", "product_id": "p4"}], headers=auth("admin"))
    assert r.status_code == 200
    body = dated.get("/v1/members/m2/profile", headers=auth("app")).json()
    assert body["last_purchase"]["product_id"] == "p4" and body["last_purchase"]["days_ago"] == 0
    assert body["purchases"] == 3 and {"category": "snacks", "purchases": 1} in body["top_categories"]


def test_member_profile_without_purchase_dates_has_no_last_purchase(client: Any) -> None:
    body = client.get("/v1/members/m0/profile", headers=auth("app")).json()
    # without the model's counts hook the history is what is known: one per product bought
    assert body["purchases"] == 2 and body["products_bought"] == 2 and body["last_purchase"] is None


def test_days_since_the_last_purchase_count_from_the_data_as_of_date(
    tmp_path: Path, serving_client: Callable[..., Any]
) -> None:
    # the member page said "最近购买 2001-01-25, 9441 天前": counted from today, not the data's end
    from conftest import TRAIN_AS_OF, DatedTopFrequency, serving_bundle

    from recsys.bundle import save_bundle

    path = save_bundle(tmp_path / "dated-2001", serving_bundle(DatedTopFrequency.name, as_of=TRAIN_AS_OF))
    with serving_client(path) as c:
        body = c.get("/v1/members/m0/profile", headers=auth("app")).json()
        # m0 last bought p0 one day before as_of (2001-02-01)
        assert body["as_of"] == "2001-02-01"
        assert body["last_purchase"]["date"] == "2001-01-31"
        assert body["last_purchase"]["days_ago"] == 1 and body["last_purchase"]["counted_from"] == "2001-02-01"
        # a purchase received live since counts from today
        c.post("/v1/events", json=[{"member_id": "m0", "product_id": "p4"}], headers=auth("admin"))
        last = c.get("/v1/members/m0/profile", headers=auth("app")).json()["last_purchase"]
        assert last["product_id"] == "p4" and last["days_ago"] == 0
        assert last["counted_from"] == datetime.now(UTC).date().isoformat()
