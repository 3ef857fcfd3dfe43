"""The HTTP API over tiny bundles with hand-worked answers (see tests/conftest.py for the data).

TopFrequency scores a member's products by purchase days + 0.001 x popularity (buyers / 4):
buyers p0 4, p1 3, p2 3, p3 2, p4 1, p5 1 (delisted), p6 0. Audiences: purchase days of the
product + 1e-6 x activity (shopping days / 4: m0 1, m2 .5, every other member .75; ties go to the
lower member index).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import KEYS, S_PRODUCTS, audit_trail, auth

from recsys.bundle import load_bundle


# Expected lists never cut through a tie: recsys.models.base.topk_rows breaks ties by index only
# among the k it keeps, so which of two tied members makes the cut at position k is not defined.
def ids(items: list[dict[str, Any]], key: str = "product_id") -> list[str]:
    return [x[key] for x in items]


# --------------------------------------------------------------------------- picks
def test_replenish_picks_are_the_members_own_products_first(client: Any) -> None:
    r = client.get("/v1/members/m0/picks", params={"k": 3}, headers=auth("app"))
    assert r.status_code == 200
    body = r.json()
    # m0: p0 on 3 days (3.001), p1 on 1 (1.00075), then the most popular other: p2 (0.00075)
    assert ids(body["picks"]) == ["p0", "p1", "p2"]
    assert body["fallback"] is False and body["fallback_reason"] is None
    assert body["picks"][0]["score"] == pytest.approx(3.001, abs=1e-5)
    assert [p["reason_code"] for p in body["picks"]] == ["often_buys", "often_buys", "also_bought"]
    assert body["picks"][0]["reason"] == "您经常购买「鲜牛奶」"
    assert body["picks"][0]["name"] == "鲜牛奶" and body["picks"][0]["category"] == "dairy"
    # p2's buyers {m1, m3, m4} overlap p1's {m0, m1, m4} (cosine 2/3) more than p0's (0.29)
    assert body["picks"][2]["anchor_product_id"] == "p1"
    assert body["picks"][2]["reason"] == "购买「酸奶」的会员也常买这款"
    assert body["model_version"].startswith("top_frequency:run-top_freq:")


def test_discover_leaves_out_what_the_member_bought_and_delisted_products(client: Any) -> None:
    body = client.get("/v1/members/m0/picks?k=4&mode=discover", headers=auth("app")).json()
    # p5 (0.00025) is delisted; p6 (never sold) scores 0
    assert ids(body["picks"]) == ["p2", "p3", "p4", "p6"]


def test_category_filter_and_exclusions(client: Any) -> None:
    h = auth("app")
    body = client.get("/v1/members/m0/picks?k=5&mode=discover&category=bakery", headers=h).json()
    assert ids(body["picks"]) == ["p2", "p3"]
    body = client.get("/v1/members/m0/picks?k=5&mode=discover&category=bakery,snacks", headers=h).json()
    assert ids(body["picks"]) == ["p2", "p3", "p4", "p6"]
    body = client.get("/v1/members/m0/picks?k=3&mode=discover&exclude=p2,unknown-sku", headers=h).json()
    assert ids(body["picks"]) == ["p3", "p4", "p6"]
    body = client.get("/v1/members/m0/picks?k=2&exclude=p0&exclude=p1", headers=h).json()
    assert ids(body["picks"]) == ["p2", "p3"]


def test_unknown_member_gets_flagged_popular_fallback(client: Any) -> None:
    body = client.get("/v1/members/nobody/picks?k=3", headers=auth("app")).json()
    assert body["fallback"] is True and body["fallback_reason"] == "unknown_member"
    assert ids(body["picks"]) == ["p0", "p1", "p2"]  # buyers 4, 3, 3 (tie by index)
    assert {p["reason_code"] for p in body["picks"]} == {"popular"}
    # segment "mid" = {m1, m3}: p2 bought by both, then p1 and p4 by one (p1 more popular overall)
    body = client.get("/v1/members/nobody/picks?k=3&segment=mid", headers=auth("app")).json()
    assert ids(body["picks"]) == ["p2", "p1", "p4"]
    assert {p["reason_code"] for p in body["picks"]} == {"popular_in_segment"}


def test_batch_picks_answer_each_member_in_order(client: Any) -> None:
    r = client.post(
        "/v1/picks:batch", json={"member_ids": ["m3", "ghost", "m0"], "k": 2, "mode": "discover"},
        headers=auth("merchandiser"),
    )
    assert r.status_code == 200
    res = r.json()["results"]
    assert ids(res, "member_id") == ["m3", "ghost", "m0"]
    # m3 bought p2, p4 -> p0 (.001), p1 (.00075)
    assert ids(res[0]["picks"]) == ["p0", "p1"] and res[0]["fallback"] is False
    assert res[1]["fallback"] is True and ids(res[1]["picks"]) == ["p0", "p1"]
    assert ids(res[2]["picks"]) == ["p2", "p3"]


def test_batch_limit_is_a_422(client: Any) -> None:
    r = client.post("/v1/picks:batch", json={"member_ids": [f"m{i}" for i in range(6)]}, headers=auth("app"))
    assert r.status_code == 422 and "at most 5 member_ids" in r.json()["detail"]


# --------------------------------------------------------------------------- similar
def test_similar_products_by_co_purchase(client: Any) -> None:
    body = client.get("/v1/products/p0/similar?k=3", headers=auth("app")).json()
    # buyer-set cosine with p0 {m0,m2,m4,m5}: p3 .707, p1 .577, p5 .5 (delisted), p2 .289
    assert ids(body["similar"]) == ["p3", "p1", "p2"]
    assert [s["score"] for s in body["similar"]] == pytest.approx([2 / np.sqrt(8), 2 / np.sqrt(12), 1 / np.sqrt(12)], abs=1e-5)


def test_similar_unknown_product_is_a_404_naming_it(client: Any) -> None:
    r = client.get("/v1/products/nope/similar", headers=auth("app"))
    assert r.status_code == 404 and "'nope'" in r.json()["detail"]


# --------------------------------------------------------------------------- audiences
def test_audience_for_a_product(client: Any) -> None:
    r = client.post("/v1/audiences", json={"product_id": "p0", "size": 3}, headers=auth("merchandiser"))
    assert r.status_code == 200
    body = r.json()
    # p0 purchase days: m0 3, m2/m4/m5 1 -> m4 and m5 (activity .75, tie by index) before m2 (.5)
    assert ids(body["members"], "member_id") == ["m0", "m4", "m5"]
    assert body["members"][0]["score"] == pytest.approx(3.0)  # purchase count; activity only breaks ties
    assert body["profile"]["size"] == 3
    assert body["profile"]["counts"]["value_segment"] == {"high": 2, "unknown": 1}
    assert body["profile"]["counts"]["lifecycle"] == {"active": 2, "lost": 1}
    assert body["profile"]["counts"]["region"] == {"北京": 1, "上海": 2}
    assert body["profile"]["expected_buyers"] is None
    assert body["reference_products"] == ["p0"]
    assert set(body["members"][0]) == {"member_id", "score", "probability"}  # ids, scores, probabilities only


def test_audience_tag_filters(client: Any) -> None:
    h = auth("merchandiser")
    body = client.post("/v1/audiences", json={"product_id": "p0", "size": 3, "filters": {"value_segment": ["high"]}},
                       headers=h).json()
    assert ids(body["members"], "member_id") == ["m0", "m4"]
    body = client.post(
        "/v1/audiences",
        json={"product_id": "p4", "size": 10, "filters": {"value_segment": ["mid", "high"], "region": ["北京"]}},
        headers=h,
    ).json()
    # mid or high, in 北京: m1, m4; neither bought p4 -> activity .75e-6 each, tie by index
    assert ids(body["members"], "member_id") == ["m1", "m4"]
    assert body["profile"]["counts"]["region"] == {"北京": 2}


def test_audience_for_a_product_not_yet_sold(client: Any) -> None:
    r = client.post("/v1/audiences", json={"attributes": {"category": "dairy", "price": 11.0}, "size": 3},
                    headers=auth("merchandiser"))
    assert r.status_code == 200
    body = r.json()
    # nearest-priced dairy product is p0 (12.0, band high): the reference is p0 alone
    assert body["reference_products"] == ["p0"]
    assert ids(body["members"], "member_id") == ["m0", "m4", "m5"]
    # top_frequency scores no product from attributes: the notes say how it was scored instead
    assert any("does not declare Capability.ATTRIBUTE_AUDIENCE" in n and "1 reference products" in n
               for n in body["notes"]), body["notes"]
    body = client.post("/v1/audiences", json={"attributes": {"category": "dairy"}, "size": 1},
                       headers=auth("merchandiser")).json()
    # both dairy products, most bought first; score = mean purchase days: m0 (3 + 1) / 2
    assert body["reference_products"] == ["p0", "p1"]
    assert ids(body["members"], "member_id") == ["m0"]
    assert body["members"][0]["score"] == pytest.approx(2.0, abs=1e-5)


def test_exclude_bought_without_purchase_dates_excludes_every_buyer(client: Any) -> None:
    body = client.post("/v1/audiences", json={"product_id": "p0", "size": 3, "exclude_bought_within_days": 4},
                       headers=auth("merchandiser")).json()
    assert ids(body["members"], "member_id") == ["m1", "m3"]
    assert any("every past buyer" in n for n in body["notes"])


def test_exclude_bought_within_days_with_purchase_dates(serving_client: Callable[..., Any]) -> None:
    with serving_client("dated") as c:  # as_of = today: a purchase age is days before today
        body = c.post("/v1/audiences", json={"product_id": "p0", "size": 4, "exclude_bought_within_days": 4},
                      headers=auth("merchandiser")).json()
        # last p0 purchases: m0 1 day ago, m4 3, m2 5, m5 12 -> m0 and m4 are left out
        assert ids(body["members"], "member_id") == ["m5", "m2", "m1", "m3"]
        assert body["notes"] == []
        scores = np.array([m["score"] for m in body["members"]])
        assert body["profile"]["expected_buyers"] == pytest.approx(float(np.sum(scores / (1 + scores))), rel=1e-5)
        picks = c.get("/v1/members/m0/picks?k=1", headers=auth("app")).json()["picks"]
        assert picks[0]["reason"] == "您经常购买「鲜牛奶」（3次）"  # counts from the model's hook
        body = c.post("/v1/audiences", json={"product_id": "p0", "size": 3, "exclude_bought_within_days": 0},
                      headers=auth("merchandiser")).json()
        assert ids(body["members"], "member_id") == ["m0", "m4", "m5"]


def test_export_streams_csv_and_writes_the_audit_trail(client: Any, serving_settings: Callable[..., Any]) -> None:
    body = {"product_id": "p0", "size": 3, "filters": {"lifecycle": ["active", "lost"]}}
    r = client.post("/v1/audiences/export", json=body, headers=auth("merchandiser"))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(r.text)))
    # active or lost: m0, m1, m4, m5 -> p0: m0 3, then m4 and m5 1 (tie by index)
    assert rows == [["member_id", "score", "rank"], ["m0", "3", "1"], ["m4", "1", "2"], ["m5", "1", "3"]]
    entries = audit_trail(serving_settings())
    assert len(entries) == 1
    e = entries[0]
    assert e["key_id"] == "merchandiser-key" and e["product_id"] == "p0" and e["size"] == 3 and e["rows"] == 3
    assert e["filters"] == {"lifecycle": ["active", "lost"]} and (e["route"], e["format"]) == ("/v1/audiences/export", "csv")
    assert e["model_version"] == r.headers["x-model-version"] and "time" in e
    assert '"m0"' not in json.dumps(entries)  # the audit trail carries no member ids


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("method", "url", "payload", "fragment"),
    [
        ("get", "/v1/members/m0/picks?k=0", None, "k: Input should be greater than or equal to 1"),
        ("get", "/v1/members/m0/picks?k=101", None, "k must be between 1 and 100"),
        ("get", "/v1/members/m0/picks?k=ten", None, "k: Input should be a valid integer"),
        ("get", "/v1/members/m0/picks?mode=browse", None, "'discover' or 'replenish'"),
        ("get", "/v1/members/m0/picks?category=toys", None, "unknown category 'toys'; categories: bakery, dairy, snacks"),
        ("get", "/v1/members/x/picks?segment=vip", None, "unknown segment 'vip'; segments: high, mid, low"),
        ("get", "/v1/products/p0/similar?k=500", None, "k must be between 1 and 100"),
        ("post", "/v1/audiences", {"size": 3}, "exactly one of product_id"),
        ("post", "/v1/audiences", {"product_id": "p0", "attributes": {"category": "dairy"}}, "exactly one of"),
        ("post", "/v1/audiences", {"product_id": "p0", "size": 100_001}, "size must be between 1 and 100000"),
        ("post", "/v1/audiences", {"product_id": "p0", "size": 0}, "size: Input should be greater than or equal to 1"),
        ("post", "/v1/audiences", {"product_id": "p0", "filters": {"lifecycle": ["asleep"]}},
         "unknown lifecycle value(s) 'asleep'; allowed: new, active, sleeping, lost, prospect"),
        ("post", "/v1/audiences", {"product_id": "p0", "filters": {"age_group": ["18-24"]}},
         "unknown member tag 'age_group'; tags: value_segment, lifecycle, region, channel, store"),
        ("post", "/v1/audiences", {"product_id": "p0", "filters": {"channel": ["app", "fax"]}},
         "unknown channel value(s) 'fax'; allowed: app, mini_program, store"),
        ("post", "/v1/audiences", {"product_id": "p0", "filters": {"lifecycle": "active"}}, "filters.lifecycle"),
        ("post", "/v1/audiences", {"attributes": {"category": "toys"}}, "unknown category 'toys'"),
        ("post", "/v1/audiences", {"attributes": {"category": "dairy", "price": -1}}, "attributes.price"),
        ("post", "/v1/audiences", {"product_id": "p0", "exclude_bought_within_days": -3}, "exclude_bought_within_days"),
        ("post", "/v1/picks:batch", {"member_ids": []}, "member_ids"),
        ("post", "/v1/picks:batch", {"member_ids": ["m0"], "mode": "x"}, "mode"),
    ],
)
def test_bad_input_is_a_422_saying_what_is_allowed(
    client: Any, method: str, url: str, payload: Any, fragment: str
) -> None:
    r = getattr(client, method)(url, headers=auth("admin"), **({"json": payload} if payload is not None else {}))
    assert r.status_code == 422, r.text
    assert fragment in r.json()["detail"]


def test_malformed_json_is_a_422(client: Any) -> None:
    r = client.post("/v1/audiences", content=b"{not json", headers={**auth("admin"), "Content-Type": "application/json"})
    assert r.status_code == 422


def test_unknown_product_in_an_audience_is_a_404(client: Any) -> None:
    r = client.post("/v1/audiences", json={"product_id": "p99"}, headers=auth("merchandiser"))
    assert r.status_code == 404 and "'p99'" in r.json()["detail"]


# --------------------------------------------------------------------------- access
ROUTES = {
    "picks": ("get", "/v1/members/m0/picks", None),
    "batch": ("post", "/v1/picks:batch", {"member_ids": ["m0"]}),
    "similar": ("get", "/v1/products/p0/similar", None),
    "audiences": ("post", "/v1/audiences", {"product_id": "p0", "size": 2}),
    "export": ("post", "/v1/audiences/export", {"product_id": "p0", "size": 2}),
    "model": ("get", "/v1/model", None),
    "events": ("post", "/v1/events", [{"member_id": "m0", "product_id": "p1"}]),
}
ALLOWED = {
    "app": {"picks", "batch", "similar", "model"},
    "merchandiser": {"picks", "batch", "audiences", "export", "model"},
    "admin": set(ROUTES),
}


@pytest.mark.parametrize("role", sorted(ALLOWED))
def test_each_role_reaches_exactly_its_routes(client: Any, role: str) -> None:
    for name, (method, url, payload) in ROUTES.items():
        kwargs = {"json": payload} if payload is not None else {}
        r = getattr(client, method)(url, headers=auth(role), **kwargs)
        expected = 200 if name in ALLOWED[role] else 403
        assert r.status_code == expected, (role, name, r.text)
        if expected == 403:
            assert f"role {role}" in r.json()["detail"]


def test_missing_or_invalid_key_is_a_401_and_bearer_works(client: Any) -> None:
    r = client.get("/v1/members/m0/picks")
    assert r.status_code == 401 and "missing API key" in r.json()["detail"]
    assert client.get("/v1/members/m0/picks", headers={"X-API-Key": "wrong"}).status_code == 401
    assert client.get("/v1/members/m0/picks", headers={"Authorization": "Bearer wrong"}).status_code == 401
    r = client.get("/v1/members/m0/picks", headers={"Authorization": f"Bearer {KEYS['app']}"})
    assert r.status_code == 200
    # probes and scrapers need no key
    assert client.get("/health/live").status_code == 200
    assert client.get("/health/ready").status_code == 200
    assert client.get("/metrics").status_code == 200


def test_keys_file_in_toml(serving_client: Callable[..., Any], tmp_path: Path) -> None:
    from serving.keys import hash_key, main

    keys = tmp_path / "keys.toml"
    keys.write_text(f'[[keys]]\nid = "pos"\nrole = "app"\nsha256 = "{hash_key("pos-secret")}"\n')
    with serving_client(api_keys=None, api_keys_file=keys) as c:
        assert c.get("/v1/members/m0/picks", headers={"X-API-Key": "pos-secret"}).status_code == 200
        assert c.get("/v1/members/m0/picks", headers={"X-API-Key": KEYS["app"]}).status_code == 401
    assert main(["hash", "pos-secret"]) == 0


def test_no_keys_configured_refuses_to_build_the_app(serving_client: Callable[..., Any]) -> None:
    from recsys.errors import InputError

    with pytest.raises(InputError, match="no API keys configured"):
        serving_client(api_keys=None)


# --------------------------------------------------------------------------- operations
def test_model_info_comes_from_the_bundle(client: Any, serving_bundles: dict[str, Path]) -> None:
    body = client.get("/v1/model", headers=auth("app")).json()
    meta = load_bundle(serving_bundles["top_frequency"]).meta
    assert body["model"] == "top_frequency" and body["run_id"] == "run-top_frequency"
    assert body["trained_on"] == "2001-02-01" and body["metrics"] == {"recall@10": 0.25}
    assert body["saved_at"] == meta["saved_at"]
    assert body["n_members"] == 6 and body["n_products"] == len(S_PRODUCTS)
    assert body["scorer"] == {"kind": "model"}


def test_metrics_count_requests_fallbacks_and_the_model(client: Any) -> None:
    client.get("/v1/members/m0/picks", headers=auth("app"))
    client.get("/v1/members/ghost/picks", headers=auth("app"))
    client.get("/v1/members/ghost2/picks", headers=auth("app"))
    client.get("/v1/products/zzz/similar", headers=auth("app"))
    text = client.get("/metrics").text
    assert 'recsys_requests_total{method="GET",route="/v1/members/{member_id}/picks",status="200"} 3.0' in text
    assert 'recsys_requests_total{method="GET",route="/v1/products/{product_id}/similar",status="404"} 1.0' in text
    assert 'recsys_fallbacks_total{reason="unknown_member"} 2.0' in text
    assert 'recsys_request_seconds_bucket{le="0.1",route="/v1/members/{member_id}/picks"}' in text
    assert 'recsys_model_info{model="top_frequency",run_id="run-top_frequency"' in text
    assert "ghost" not in text  # route templates, never raw paths


def test_not_ready_until_loaded_then_ready(serving_client: Callable[..., Any], tmp_path: Path) -> None:
    with serving_client(tmp_path / "nowhere") as c:
        r = c.get("/health/ready")
        assert r.status_code == 503 and r.json()["status"] == "failed" and "no bundle.json" in r.json()["error"]
        assert c.get("/health/live").status_code == 200
        r = c.get("/v1/members/m0/picks", headers=auth("app"))
        assert r.status_code == 503 and "no model loaded yet" in r.json()["detail"]


def test_every_member_list_that_leaves_is_audited(client: Any, serving_settings: Callable[..., Any]) -> None:
    # POST /v1/audiences returned the whole audience as JSON (28,610 members in the outside test)
    # and wrote no audit line; batch picks are members' data in bulk too
    r = client.post("/v1/audiences", json={"product_id": "p0", "size": 100_000}, headers=auth("merchandiser"))
    assert r.status_code == 200 and len(r.json()["members"]) == 6
    r = client.post("/v1/picks:batch", json={"member_ids": ["m0", "m1", "nobody"], "k": 2}, headers=auth("app"))
    assert r.status_code == 200
    client.post("/v1/audiences/export", json={"product_id": "p1", "size": 2}, headers=auth("admin"))
    client.post("/v1/audiences", json={"product_id": "nope"}, headers=auth("merchandiser"))  # 404: nothing left
    entries = audit_trail(serving_settings())
    got = [(e["route"], e["format"], e["key_id"], e["rows"]) for e in entries]
    assert got == [
        ("/v1/audiences", "json", "merchandiser-key", 6),
        ("/v1/picks:batch", "json", "app-key", 3),
        ("/v1/audiences/export", "csv", "admin-key", 2),
    ]
    assert entries[0]["product_id"] == "p0" and entries[0]["size"] == 100_000
    assert entries[1]["k"] == 2 and entries[1]["mode"] == "replenish"
    assert not any(f'"{m}"' in json.dumps(entries) for m in ("m0", "m1", "nobody"))  # no member ids in the trail
    # the console's list of past audiences shows both audience answers, not the batch picks
    past = client.get("/v1/audiences/exports", headers=auth("merchandiser")).json()["exports"]
    assert [(e["route"], e["format"]) for e in past] == [("/v1/audiences/export", "csv"), ("/v1/audiences", "json")]


def test_audience_members_carry_their_purchase_probability(serving_client: Callable[..., Any]) -> None:
    # the console showed raw model scores (e.g. -1.39) to merchandisers
    with serving_client("dated") as c:
        members = c.post("/v1/audiences", json={"product_id": "p0", "size": 3}, headers=auth("merchandiser")).json()["members"]
        # DatedTopFrequency: probability = score / (1 + score); m0 bought p0 three times
        assert [(m["member_id"], m["score"], m["probability"]) for m in members][0] == ("m0", 3.0, 0.75)
        assert all(m["probability"] == pytest.approx(m["score"] / (1 + m["score"])) for m in members)
    with serving_client() as c:  # a model without calibrated probabilities says so: null
        members = c.post("/v1/audiences", json={"product_id": "p0", "size": 3}, headers=auth("merchandiser")).json()["members"]
        assert members and all(m["probability"] is None for m in members)
