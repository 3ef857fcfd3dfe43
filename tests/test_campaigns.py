"""Campaigns over HTTP on the ``dated`` test bundle (tests/conftest.py: 6 members, purchase
probabilities s / (1 + s) of TopFrequency's scores), against SQLite and a real PostgreSQL.

Known answers: the audience scores of p0 are m0 3, m2 / m4 / m5 1, m1 / m3 0 (probabilities 0.75,
0.5, 0); of p1 m1 2, m0 / m4 1, the rest 0 (0.667, 0.5, 0)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conftest import audit_trail, auth
from sqlalchemy import select

from serving.db import CampaignMember, Database

P0 = {"m0": 0.75, "m1": 0.0, "m2": 0.5, "m3": 0.0, "m4": 0.5, "m5": 0.5}
P1 = {"m0": 0.5, "m1": 2 / 3, "m2": 0.0, "m3": 0.0, "m4": 0.5, "m5": 0.0}
M = auth("merchandiser")


@pytest.fixture
def api(serving_client: Any, campaign_db_url: str) -> Iterator[Any]:
    with serving_client("dated", campaign_db=campaign_db_url, contact_max_campaigns=2, contact_days=30) as c:
        yield c


def groups(url: str, campaign_id: int) -> dict[str, set[str]]:
    db = Database(url)
    try:
        with db.sessions() as s:
            rows = s.execute(select(CampaignMember.member_id, CampaignMember.grp)
                             .where(CampaignMember.campaign_id == campaign_id)).all()
    finally:
        db.dispose()
    out: dict[str, set[str]] = {"treated": set(), "holdout": set()}
    for m, g in rows:
        out[g].add(m)
    return out


def create(api: Any, **body: Any) -> dict[str, Any]:
    r = api.post("/v1/campaigns", json={"name": "c", **body}, headers=M)
    assert r.status_code == 200, r.text
    return r.json()


def export(api: Any, cid: int) -> tuple[list[list[str]], Any]:
    r = api.get(f"/v1/campaigns/{cid}/export", headers=M)
    assert r.status_code == 200, r.text
    return list(csv.reader(io.StringIO(r.text))), r


def test_an_audience_campaign_holds_out_at_random_and_exports_only_the_treated(api: Any, campaign_db_url: str) -> None:
    c = create(api, product_id="p0", holdout_share=0.5, seed=11, send_date="2024-05-01", window_days=14)
    assert (c["eligible"], c["treated"], c["holdout"]) == (6, 3, 3)
    assert c["status"] == "closed" and c["window_end"] == "2024-05-15" and c["seed"] == 11
    lineage = c["lineage"]
    assert lineage["model_version"] == c["model_version"] and lineage["seed"] == 11 and lineage["pool"] == 6
    assert lineage["params"]["holdout_share"] == 0.5 and lineage["data_as_of"] == c["data_as_of"]
    g = groups(campaign_db_url, c["id"])
    assert g["treated"] | g["holdout"] == set(P0) and not g["treated"] & g["holdout"]
    # the same seed draws the same holdout
    again = create(api, product_id="p0", holdout_share=0.5, seed=11, send_date="2025-05-01", window_days=14)
    assert groups(campaign_db_url, again["id"])["holdout"] == g["holdout"]
    rows, resp = export(api, c["id"])
    assert rows[0] == ["member_id", "rank", "score"]
    exported = [r[0] for r in rows[1:]]
    assert set(exported) == g["treated"] and not set(exported) & g["holdout"]
    # best first: the model's order for p0 among the treated
    assert exported == sorted(exported, key=lambda m: (-P0[m], ["m0", "m4", "m5", "m2", "m1", "m3"].index(m)))
    assert resp.headers["x-suppressed"] == "0"
    assert api.get(f"/v1/campaigns/{c['id']}", headers=M).json()["exports"] == 1


def test_every_export_is_audited(serving_client: Any, campaign_db_url: str) -> None:
    with serving_client("dated", campaign_db=campaign_db_url) as api:
        c = create(api, product_id="p1", holdout_share=0.2, seed=1, size=5)
        rows, _ = export(api, c["id"])
    lines = audit_trail(campaign_db_url)
    assert len(lines) == 1
    line = lines[0]
    assert line["campaign_id"] == c["id"] and line["key_id"] == "merchandiser-key" and line["rows"] == len(rows) - 1
    assert line["route"] == "/v1/campaigns/{id}/export" and line["model_version"] == c["model_version"]


def test_a_picks_campaign_exports_each_members_picks_with_reasons(api: Any, campaign_db_url: str) -> None:
    c = create(api, picks={"k": 2, "mode": "discover"}, holdout_share=0.2, seed=5)
    assert c["kind"] == "picks" and c["treated"] + c["holdout"] == c["eligible"] == 6 and c["holdout"] == 1
    rows, _ = export(api, c["id"])
    assert rows[0] == ["member_id", "rank", "product_id", "reason", "reason_code"]
    treated = groups(campaign_db_url, c["id"])["treated"]
    by_member: dict[str, list[list[str]]] = {}
    for r in rows[1:]:
        by_member.setdefault(r[0], []).append(r)
    assert set(by_member) == treated
    for m, lines in by_member.items():
        picks = api.get(f"/v1/members/{m}/picks", params={"k": 2, "mode": "discover"}, headers=M).json()["picks"]
        assert [(r[1], r[2], r[3], r[4]) for r in lines] == [
            (str(i), p["product_id"], p["reason"], p["reason_code"]) for i, p in enumerate(picks, start=1)]


@pytest.mark.parametrize(("body", "message"), [
    ({"product_id": "nope"}, "unknown product 'nope'"),
    ({"product_id": "p0", "filters": {"lapsed_60d": ["true"]}}, "unknown member tag 'lapsed_60d'; tags: value_segment, lifecycle"),
    ({"product_id": "p0", "filters": {"lifecycle": ["asleep"]}}, "unknown lifecycle value(s) 'asleep'; allowed: new, active"),
    ({"product_id": "p0", "holdout_share": 0}, "holdout_share: Input should be greater than 0"),
    ({"product_id": "p0", "holdout_share": 0.6}, "holdout_share: Input should be less than or equal to 0.5"),
    ({"picks": {"k": 2}, "product_id": "p0"}, "give exactly one target"),
    ({"product_id": "p0", "arms": {"challenger": "2"}}, "arms (an A/B test of two models) are for picks campaigns"),
    ({"picks": {"k": 2}, "arms": {"challenger": "2"}}, "arms need the server to serve a registered model"),
])
def test_bad_requests_are_422_saying_what_exists(api: Any, body: dict[str, Any], message: str) -> None:
    r = api.post("/v1/campaigns", json={"name": "bad", **body}, headers=M)
    assert r.status_code == 422 and message in r.json()["detail"], r.text


def test_roles_unknown_campaigns_and_the_holdout_never_listed(api: Any) -> None:
    assert api.post("/v1/campaigns", json={"name": "x", "product_id": "p0"}, headers=auth("app")).status_code == 403
    assert api.get("/v1/campaigns/99", headers=M).status_code == 404
    assert api.get("/v1/campaigns/99/export", headers=M).status_code == 404
    c = create(api, product_id="p0", holdout_share=0.5, seed=3)
    listed = api.get("/v1/campaigns", headers=M).json()["campaigns"]
    assert [x["id"] for x in listed] == [c["id"]] and "members" not in listed[0]


def test_suppression_lists_count_unknown_ids_and_apply_to_every_export(api: Any, campaign_db_url: str) -> None:
    first = create(api, product_id="p0", holdout_share=0.2, seed=2, send_date="2024-01-01", window_days=7)
    body = "member_id\nm0\nm1\nm1\nghost\n \n"
    r = api.post("/v1/suppressions", params={"name": "opt-out sms", "channel": "sms"}, content=body,
                 headers={**M, "Content-Type": "text/csv"})
    assert r.status_code == 200, r.text
    assert {k: r.json()[k] for k in ("rows", "members", "unknown", "duplicates", "invalid")} == {
        "rows": 4, "members": 2, "unknown": 1, "duplicates": 1, "invalid": 0}
    assert api.get("/v1/suppressions", headers=M).json()["suppressed_members"] == 2
    # a list created before the upload leaves without them
    treated = groups(campaign_db_url, first["id"])["treated"]
    rows, resp = export(api, first["id"])
    assert {r[0] for r in rows[1:]} == treated - {"m0", "m1"}
    assert resp.headers["x-suppressed"] == str(len(treated & {"m0", "m1"}))
    # a new campaign never draws them
    later = create(api, product_id="p2", holdout_share=0.2, seed=2, send_date="2024-03-01", window_days=7)
    assert later["policy"]["suppressed"] == 2 and later["eligible"] == 4
    g = groups(campaign_db_url, later["id"])
    assert not (g["treated"] | g["holdout"]) & {"m0", "m1"}
    bad = api.post("/v1/suppressions", params={"name": "empty"}, content=b"\xff\xfe", headers={**M, "Content-Type": "text/csv"})
    assert bad.status_code == 422 and "UTF-8" in bad.json()["detail"]


def test_concurrent_campaigns_keep_each_member_where_the_probability_is_higher(api: Any, campaign_db_url: str) -> None:
    a = create(api, product_id="p0", holdout_share=0.5, seed=4, send_date="2024-06-01", window_days=30)
    ga = groups(campaign_db_url, a["id"])
    b = create(api, product_id="p1", holdout_share=0.01, seed=4, send_date="2024-06-10", window_days=30)
    gb = groups(campaign_db_url, b["id"])
    stays = {m for m in ga["treated"] if P0[m] >= P1[m]}
    moves = ga["treated"] - stays
    assert b["policy"]["held_out_elsewhere"] == 3 and not (gb["treated"] | gb["holdout"]) & ga["holdout"]
    assert b["policy"]["deduplicated"] == len(stays) and b["policy"]["taken_from_concurrent"] == len(moves)
    assert gb["treated"] == moves and b["eligible"] == len(moves)
    after = groups(campaign_db_url, a["id"])
    assert after["treated"] == stays and after["holdout"] == ga["holdout"]
    assert api.get(f"/v1/campaigns/{a['id']}", headers=M).json()["policy"]["moved_to_later_campaigns"] == len(moves)
    # once a campaign has gone out it keeps its members: the later one gives way
    export(api, b["id"])
    c = create(api, product_id="p0", holdout_share=0.01, seed=4, send_date="2024-06-20", window_days=5)
    assert c["policy"]["taken_from_concurrent"] == 0
    assert not groups(campaign_db_url, c["id"])["treated"] & gb["treated"]


def test_the_frequency_cap_counts_campaigns_sent_within_d_days(api: Any, campaign_db_url: str) -> None:
    # windows of one day never overlap, so only the cap (2 campaigns within 30 days) removes members
    day0 = datetime(2024, 1, 1).date()

    def at(days: int) -> dict[str, Any]:
        return create(api, product_id="p0", holdout_share=0.01, seed=1, window_days=1,
                      send_date=(day0 + timedelta(days=days)).isoformat())

    assert at(0)["treated"] == 6 and at(5)["treated"] == 6
    third = at(10)
    assert third["policy"]["frequency_capped"] == 6 and third["treated"] == 0
    assert at(40)["treated"] == 6  # 40 and 35 days after the first two
    fifth = at(34)  # 29 days after day 5 and 6 before day 40: two campaigns within 30 days
    assert fifth["policy"]["frequency_capped"] == 6


def test_results_from_live_events_are_partial_until_the_window_closes(api: Any, campaign_db_url: str) -> None:
    today = datetime.now(UTC).date()
    c = create(api, product_id="p0", holdout_share=0.5, seed=9, send_date=today.isoformat(), window_days=10)
    g = groups(campaign_db_url, c["id"])
    buyer = sorted(g["treated"])[0]
    now = datetime.now(UTC).replace(microsecond=0)
    ev = api.post("/v1/events", json=[{"event_id": "e1", "member_id": buyer, "product_id": "p0",
                                       "ts": now.isoformat(), "amount": 12.0}], headers=auth("admin"))
    assert ev.status_code == 200, ev.text
    r = api.get(f"/v1/campaigns/{c['id']}/results", params={"cost_per_contact": 0.5, "margin": 0.3}, headers=M)
    assert r.status_code == 200, r.text
    res = r.json()
    assert res["partial"] and any(n.startswith("partial:") for n in res["notes"])
    t, h = res["groups"]["treated"], res["groups"]["holdout"]
    assert (t["members"], t["buyers"], t["revenue"]) == (3, 1, 12.0) and (h["members"], h["buyers"]) == (3, 0)
    assert t["expected_buyers"] == pytest.approx(sum(P0[m] for m in g["treated"]))
    comp = res["comparisons"][0]
    assert comp["uplift"]["estimate"] == pytest.approx(1 / 3) and comp["uplift"]["low"] < 1 / 3 < comp["uplift"]["high"]
    assert comp["incremental_revenue"]["estimate"] == pytest.approx(12.0)
    assert comp["roi"]["cost"] == pytest.approx(1.5) and comp["roi"]["roi"] == pytest.approx((12 * 0.3 - 1.5) / 1.5)
    assert t["cumulative"][-1] == pytest.approx(1 / 3)


def test_an_imported_campaign_with_and_without_a_holdout(api: Any, campaign_db_url: str) -> None:
    r = api.post("/v1/campaigns:import", json={"name": "sms blast", "recipients_csv": "member_id\nm0\nm1\n",
                                                "holdout_csv": "m2\n", "product_ids": ["p0"],
                                                "send_date": "2024-02-01"}, headers=M)
    assert r.status_code == 200, r.text
    assert (r.json()["treated"], r.json()["holdout"], r.json()["observational"]) == (2, 1, False)
    # matched on value segment x lifecycle: m0 (high, active) by m4, the only other; m1 (mid, active) by nobody
    r = api.post("/v1/campaigns:import", json={"name": "no holdout", "recipients_csv": "m0\nm1\n", "category": "dairy",
                                                "send_date": "2024-02-01", "seed": 1}, headers=M)
    body = r.json()
    assert body["observational"] and body["treated"] == 2
    assert groups(campaign_db_url, body["id"])["holdout"] == {"m4"}
    assert any("1 recipient(s) in strata with too few" in n for n in body["notes"])
    bad = api.post("/v1/campaigns:import", json={"name": "x", "recipients_csv": "m0\n", "product_ids": ["zz"],
                                                  "send_date": "2024-02-01"}, headers=M)
    assert bad.status_code == 422 and "unknown product(s) 'zz'" in bad.json()["detail"]
