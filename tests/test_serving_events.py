"""Live purchase events: durable before the answer, reflected in the next picks, replayed after a
restart; and the ALS fold-in equals implicit's own user recalculation."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
from conftest import auth, serving_train_data

from recsys.models import get_model
from serving.events import EventLog, EventRecord
from serving.scorer import als_fold_in


def picks(c: Any, member: str, **params: Any) -> dict[str, Any]:
    r = c.get(f"/v1/members/{member}/picks", params=params, headers=auth("app"))
    assert r.status_code == 200, r.text
    return r.json()


def ids(body: dict[str, Any]) -> list[str]:
    return [p["product_id"] for p in body["picks"]]


def test_event_changes_picks_and_survives_a_restart(serving_client: Callable[..., Any], tmp_path: Path) -> None:
    with serving_client() as c:
        assert ids(picks(c, "m0", k=3, mode="discover")) == ["p2", "p3", "p4"]
        r = c.post("/v1/events", json=[{"member_id": "m0", "product_id": "p2", "quantity": 2, "amount": 18.0,
                                        "channel": "app"}], headers=auth("admin"))
        assert r.status_code == 200 and r.json()["accepted"] == 1 and r.json()["applied"] == 1
        # bought now: no longer a discovery, and replenish names it as bought
        assert ids(picks(c, "m0", k=3, mode="discover")) == ["p3", "p4", "p6"]
        rep = picks(c, "m0", k=3)
        assert rep["picks"][2]["product_id"] == "p2" and rep["picks"][2]["reason_code"] == "often_buys"

    lines = (tmp_path / "events" / "events.jsonl").read_text().splitlines()
    assert len(lines) == 1
    doc = json.loads(lines[0])
    assert {k: doc[k] for k in ("member_id", "product_id", "quantity", "amount", "channel")} == {
        "member_id": "m0", "product_id": "p2", "quantity": 2.0, "amount": 18.0, "channel": "app"}
    assert doc["ts"].endswith("Z") and doc["received_at"].endswith("Z")

    with serving_client() as c:  # a new app on the same events dir: the event is replayed
        assert ids(picks(c, "m0", k=3, mode="discover")) == ["p3", "p4", "p6"]
        assert c.get("/v1/model", headers=auth("admin")).json()["events_applied"] == 1


def test_new_member_gets_a_row_and_personal_picks_with_vectors(serving_client: Callable[..., Any]) -> None:
    with serving_client("als") as c:
        before = picks(c, "newbie", k=3)
        assert before["fallback"] is True and before["fallback_reason"] == "unknown_member"
        r = c.post("/v1/events", json=[{"member_id": "newbie", "product_id": "p4"},
                                       {"member_id": "newbie", "product_id": "p2"}], headers=auth("admin"))
        assert r.json()["new_members"] == ["newbie"]
        after = picks(c, "newbie", k=3, mode="discover")
        assert after["fallback"] is False
        assert not {"p2", "p4"} & set(ids(after))
        # the new member is in the member index too: an audience without filters can find them
        body = c.post("/v1/audiences", json={"product_id": "p4", "size": 7}, headers=auth("admin")).json()
        assert "newbie" in [m["member_id"] for m in body["members"]]
        assert body["profile"]["counts"]["value_segment"]["unknown"] >= 1
        info = c.get("/v1/model", headers=auth("admin")).json()
        assert info["live_members_added"] == 1 and info["scorer"]["members"]["changed_rows"] == 1


def test_new_member_without_vectors_is_a_flagged_fallback_without_what_they_bought(client: Any) -> None:
    client.post("/v1/events", json=[{"member_id": "walk-in", "product_id": "p0"}], headers=auth("admin"))
    body = picks(client, "walk-in", k=2, mode="discover")
    assert body["fallback"] is True and body["fallback_reason"] == "new_member"
    assert ids(body) == ["p1", "p2"]


def test_recent_live_buyers_are_excluded_from_audiences(client: Any) -> None:
    client.post("/v1/events", json=[{"member_id": "m3", "product_id": "p0"}], headers=auth("admin"))
    body = client.post("/v1/audiences", json={"product_id": "p0", "size": 6, "exclude_bought_within_days": 7},
                       headers=auth("merchandiser")).json()
    # every bundle buyer (undated) and m3, who just bought it live
    assert [m["member_id"] for m in body["members"]] == ["m1"]


def test_events_older_than_the_bundle_are_not_applied_twice(client: Any) -> None:
    r = client.post("/v1/events", json=[{"member_id": "m0", "product_id": "p4", "ts": "2001-01-15T10:00:00"}],
                    headers=auth("admin"))
    assert r.status_code == 200 and r.json() == {**r.json(), "accepted": 1, "applied": 0}
    assert "p4" in ids(picks(client, "m0", k=3, mode="discover"))


def test_unknown_product_is_a_404_and_nothing_is_written(client: Any, tmp_path: Path) -> None:
    r = client.post("/v1/events", json=[{"member_id": "m0", "product_id": "p1"},
                                        {"member_id": "m0", "product_id": "sku-x"}], headers=auth("admin"))
    assert r.status_code == 404 and "'sku-x'" in r.json()["detail"]
    assert not (tmp_path / "events" / "events.jsonl").exists()


@pytest.mark.parametrize(
    "payload",
    [[], {"member_id": "m0", "product_id": "p1"}, [{"member_id": "m0"}], [{"member_id": "m0", "product_id": "p1", "quantity": 0}],
     [{"member_id": "", "product_id": "p1"}], [{"member_id": "m0", "product_id": "p1", "ts": "yesterday"}]],
)
def test_bad_events_are_a_422(client: Any, payload: Any) -> None:
    assert client.post("/v1/events", json=payload, headers=auth("admin")).status_code == 422


def test_event_log_reads_only_complete_lines_and_skips_bad_ones(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "ev.jsonl")
    ts = datetime(2024, 5, 1, 9, 30, tzinfo=UTC)
    log.append([EventRecord("m1", "p1", ts), EventRecord("m2", "p2", ts, quantity=3.0, amount=9.5)])
    with open(log.path, "ab") as fh:
        fh.write(b"not json\n")
        fh.write(b'{"member_id": "m3", "product_id": "p3", "ts": "2024-05-0')  # a line being written
    records, offset, bad = log.read_from(0)
    assert [(r.member_id, r.quantity, r.amount, r.ts) for r in records] == [("m1", 1.0, None, ts), ("m2", 3.0, 9.5, ts)]
    assert bad == 1
    with open(log.path, "ab") as fh:
        fh.write(b'1T00:00:00Z"}\n')
    records, _, _ = log.read_from(offset)
    assert [r.member_id for r in records] == ["m3"]


def test_fold_in_equals_implicits_recalculate_user() -> None:
    data = serving_train_data()
    model = get_model("als")({"factors": 4, "iterations": 5, "num_threads": 1, "seed": 3, "weighting": "count",
                              "alpha": 2.0, "regularization": 0.3}).fit(data)
    imp = model.implicit_model
    items = np.asarray(imp.item_factors, dtype=np.float32)
    products, weights = np.array([0, 2, 4]), np.array([3.0, 1.0, 2.0], dtype=np.float32)
    row = sp.csr_matrix((weights, (np.zeros(3, int), products)), shape=(1, items.shape[0]))
    want = imp.recalculate_user(0, row)
    got = als_fold_in(items, items.T.astype(np.float64) @ items, products, 2.0 * weights, 0.3)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
