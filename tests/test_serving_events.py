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

from recsys.errors import InputError
from recsys.models import get_model
from recsys.models.factorization import als_fold_in
from serving.events import EventRecord, FileEventLog, check_round_trip, parse_ts, utc_iso


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
    log = FileEventLog(tmp_path / "ev.jsonl")
    ts = datetime(2024, 5, 1, 9, 30, tzinfo=UTC)
    with open(log.path, "ab") as fh:
        for rec in (EventRecord("m1", "p1", ts, event_id="a"), EventRecord("m2", "p2", ts, quantity=3.0, amount=9.5)):
            fh.write(rec.to_json() + b"\n")
        fh.write(b"not json\n")
        fh.write(b'{"member_id": "m3", "product_id": "p3", "ts": "2024-05-0')  # a line being written
    batch = log.read(0)
    assert [(r.member_id, r.quantity, r.amount, r.ts, r.event_id) for r in batch.records] == [
        ("m1", 1.0, None, ts, "a"), ("m2", 3.0, 9.5, ts, None)]
    assert batch.bad == 1
    with open(log.path, "ab") as fh:
        fh.write(b'1T00:00:00Z"}\n')
    assert [r.member_id for r in log.read(batch.cursor).records] == ["m3"]


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
    # what the server calls after a live purchase: the model's fold-in, with alpha and lambda from
    # its params, over its served product vectors (never-sold products get attribute vectors there)
    served = np.asarray(model.item_factors, dtype=np.float32)
    assert not np.array_equal(served, items)  # p6 was never sold
    np.testing.assert_array_equal(model.fold_in_member(products, weights),
                                  als_fold_in(served, served.T.astype(np.float64) @ served, products, 2.0 * weights, 0.3))


# --------------------------------------------------------------------------- what cannot be a purchase (issue 12, defect 4)
@pytest.mark.parametrize(
    "event",
    [
        {"ts": "0001-01-01T00:00:00Z"},  # was acknowledged, written as "1-01-01T00:00:00Z", then unreadable
        {"ts": "0001-01-01T00:00:00+01:00"},  # before year 1 in UTC
        {"ts": "9999-12-31T00:00:00Z"},  # was acknowledged: a profile then showed days_ago -2,912,108
        {"ts": "1999-06-01T00:00:00Z"},  # more than 366 days before the model's data ends (2001-02-01)
        {"member_id": "m0\nforged"},
        {"member_id": "m0\x00"},
        {"member_id": "m\u202e0"},  # right-to-left override: displays as another id
        {"member_id": " m0"},
        {"product_id": "p2\n"},
        {"channel": "app\r\nX-Injected: 1"},
        {"event_id": "has space"},
        {"event_id": "x" * 129},
        {"member_id": "m" * 201},
    ],
)
def test_what_cannot_be_a_purchase_is_a_422_and_nothing_is_written(
    client: Any, tmp_path: Path, event: dict[str, Any],
) -> None:
    r = client.post("/v1/events", json=[{"member_id": "m0", "product_id": "p2", **event}], headers=auth("admin"))
    assert r.status_code == 422, r.text
    field = next(iter(event))
    assert field in r.json()["detail"]
    assert not (tmp_path / "events" / "events.jsonl").exists()


def test_the_window_names_its_bounds_and_is_configurable(serving_client: Callable[..., Any]) -> None:
    old = [{"member_id": "m0", "product_id": "p2", "ts": "1999-06-01T00:00:00Z"}]
    with serving_client() as c:
        detail = c.post("/v1/events", json=old, headers=auth("admin")).json()["detail"]
        assert "2000-02-01T00:00:00Z" in detail and "RECSYS_EVENTS_MAX_DAYS_BEFORE_AS_OF" in detail
    with serving_client(events_max_days_before_as_of=1000) as c:
        assert c.post("/v1/events", json=old, headers=auth("admin")).json()["accepted"] == 1


def test_utc_iso_writes_four_digit_years_that_read_back() -> None:
    for ts in (datetime(1, 1, 1, tzinfo=UTC), datetime(999, 12, 31, 23, 59, 59, 5, tzinfo=UTC),
               datetime(2024, 5, 1, 9, 30, tzinfo=UTC)):
        assert parse_ts(utc_iso(ts)) == ts
    assert utc_iso(datetime(1, 1, 1, tzinfo=UTC)) == "0001-01-01T00:00:00Z"


def test_a_record_that_would_not_read_back_is_never_stored() -> None:
    # received_at is filled in at write time when missing: what is read back differs from what was checked
    with pytest.raises(InputError, match="received_at would not read back"):
        check_round_trip(EventRecord("m0", "p2", datetime(2024, 5, 1, tzinfo=UTC), event_id="e1"))


def test_every_acknowledged_event_reads_back_as_sent(serving_client: Callable[..., Any], tmp_path: Path) -> None:
    sent = [
        {"event_id": "a", "member_id": "会员-001", "product_id": "p2", "ts": "2001-02-03T10:00:00.123456+08:00",
         "quantity": 0.25, "amount": 1e-7, "channel": "小程序"},
        {"event_id": "b", "member_id": "m0", "product_id": "p3", "ts": "2001-02-03T10:00:00"},  # naive: UTC
    ]
    with serving_client() as c:
        assert c.post("/v1/events", json=sent, headers=auth("admin")).json()["accepted"] == 2
    records = FileEventLog(tmp_path / "events" / "events.jsonl").read(0).records
    assert [(r.event_id, r.member_id, r.product_id, r.ts, r.quantity, r.amount, r.channel) for r in records] == [
        ("a", "会员-001", "p2", datetime(2001, 2, 3, 2, 0, 0, 123456, tzinfo=UTC), 0.25, 1e-7, "小程序"),
        ("b", "m0", "p3", datetime(2001, 2, 3, 10, tzinfo=UTC), 1.0, None, None),
    ]
    with serving_client() as c:  # and a restart applies both
        assert c.get("/v1/model", headers=auth("admin")).json()["events"]["applied"] == 2


# --------------------------------------------------------------------------- idempotent events (issue 12, defect 5)
def lines(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "events" / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_repeated_event_id_is_acknowledged_and_applied_once(
    serving_client: Callable[..., Any], tmp_path: Path,
) -> None:
    event = [{"event_id": "till-3:0042", "member_id": "m0", "product_id": "p2"}]
    with serving_client() as c:
        first = c.post("/v1/events", json=event, headers=auth("admin")).json()
        assert first | {"model_version": None} == {
            "accepted": 1, "recorded": 1, "duplicates": 0, "applied": 1, "new_members": [],
            "event_ids": ["till-3:0042"], "model_version": None}
        again = c.post("/v1/events", json=event, headers=auth("admin")).json()
        assert (again["accepted"], again["recorded"], again["duplicates"], again["applied"]) == (1, 0, 1, 0)
        assert picks(c, "m0", k=3)["picks"][2] == {**picks(c, "m0", k=3)["picks"][2], "product_id": "p2",
                                                  "reason": "您经常购买「吐司」"}  # bought once, not twice
    with serving_client() as c:  # across a restart: the replayed id is known
        again = c.post("/v1/events", json=event, headers=auth("admin")).json()
        assert (again["recorded"], again["duplicates"]) == (0, 1)
        assert c.get("/v1/model", headers=auth("admin")).json()["events_applied"] == 1
        metrics = c.get("/metrics").text
        assert "recsys_events_total 0.0" in metrics and "recsys_event_duplicates_total 1.0" in metrics
    assert [doc["event_id"] for doc in lines(tmp_path)] == ["till-3:0042"]


def test_a_retried_batch_with_an_idempotency_key_is_recorded_once(client: Any, tmp_path: Path) -> None:
    batch = [{"member_id": "m0", "product_id": "p2"}, {"member_id": "m1", "product_id": "p3"},
             {"member_id": "m1", "product_id": "p3"}]  # the same product twice in one basket: two lines
    headers = {**auth("admin"), "Idempotency-Key": "pos-7-20010203-0001"}
    first = client.post("/v1/events", json=batch, headers=headers).json()
    assert first["event_ids"] == [f"pos-7-20010203-0001/{i}" for i in range(3)] and first["recorded"] == 3
    retry = client.post("/v1/events", json=batch, headers=headers).json()  # the answer was lost: sent again
    assert (retry["accepted"], retry["recorded"], retry["duplicates"]) == (3, 0, 3)
    assert [d["batch_id"] for d in lines(tmp_path)] == ["pos-7-20010203-0001"] * 3
    assert client.post("/v1/events", json=batch, headers={**auth("admin"), "Idempotency-Key": "bad key"}
                       ).status_code == 422


def test_an_event_id_reused_for_another_purchase_is_a_409(client: Any, tmp_path: Path) -> None:
    h = auth("admin")
    assert client.post("/v1/events", json=[{"event_id": "e1", "member_id": "m0", "product_id": "p2"}],
                       headers=h).status_code == 200
    r = client.post("/v1/events", json=[{"event_id": "e2", "member_id": "m0", "product_id": "p3"},
                                        {"event_id": "e1", "member_id": "m0", "product_id": "p3"}], headers=h)
    assert r.status_code == 409 and "'e1'" in r.json()["detail"]
    assert [d["event_id"] for d in lines(tmp_path)] == ["e1"]  # e2 was not written either
    # a retry that leaves ts to the server again is the same purchase; one that names another ts is not
    dated = [{"event_id": "e3", "member_id": "m0", "product_id": "p3", "ts": "2001-02-03T10:00:00Z"}]
    assert client.post("/v1/events", json=dated, headers=h).json()["recorded"] == 1
    assert client.post("/v1/events", json=[{"event_id": "e1", "member_id": "m0", "product_id": "p2"}],
                       headers=h).json()["duplicates"] == 1
    assert client.post("/v1/events", json=[{**dated[0], "ts": "2001-02-04T10:00:00Z"}], headers=h).status_code == 409
    mixed = [{"event_id": "e4", "member_id": "m0", "product_id": "p3"}, {"event_id": "e4", "member_id": "m1",
                                                                        "product_id": "p3"}]
    assert client.post("/v1/events", json=mixed, headers=h).status_code == 422


def test_an_event_written_but_not_acknowledged_at_a_crash_is_not_duplicated_by_the_retry(
    serving_client: Callable[..., Any], tmp_path: Path,
) -> None:
    # what a kill -9 after the fsync and before the answer leaves: the line, and a client that retries
    path = tmp_path / "events" / "events.jsonl"
    path.parent.mkdir(parents=True)
    now = datetime.now(UTC)
    rec = EventRecord("m0", "p2", now, received_at=now, event_id="e9")
    # ... and a second writer killed in the middle of its line (never acknowledged)
    path.write_bytes(rec.to_json() + b"\n" + rec.to_json()[:25])
    with serving_client() as c:
        retry = c.post("/v1/events", json=[{"event_id": "e9", "member_id": "m0", "product_id": "p2"}],
                       headers=auth("admin")).json()
        assert (retry["recorded"], retry["duplicates"]) == (0, 1)
        later = c.post("/v1/events", json=[{"event_id": "e10", "member_id": "m1", "product_id": "p3"}],
                       headers=auth("admin"))
        assert later.json()["recorded"] == 1
    with serving_client() as c:  # the torn fragment is skipped and counted; the acknowledged event reads back
        info = c.get("/v1/model", headers=auth("admin")).json()["events"]
        assert (info["applied"], info["event_ids"], info["unparsable_skipped"]) == (2, 2, 1)


def test_two_workers_on_one_events_file_record_a_retry_once(serving_client: Callable[..., Any]) -> None:
    event = [{"event_id": "e1", "member_id": "m0", "product_id": "p2"}]
    with serving_client() as a, serving_client() as b:  # two processes' states on the same file
        assert a.post("/v1/events", json=event, headers=auth("admin")).json()["recorded"] == 1
        retry = b.post("/v1/events", json=event, headers=auth("admin")).json()
        assert (retry["recorded"], retry["duplicates"], retry["applied"]) == (0, 1, 1)  # b applied a's line
        assert ids(picks(b, "m0", k=3, mode="discover")) == ["p3", "p4", "p6"]
