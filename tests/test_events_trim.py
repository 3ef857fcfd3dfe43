"""Trimming the live-events log (``recsys events trim``): one rule for the Redis stream (a real
redis-server on a free port) and the local events folder.

A bundle holds every purchase before its events watermark (00:00 UTC of its ``as_of``); a trim
removes the records at the head of the log before the lowest watermark of every bundle that is
served or could be loaded -- exactly those, never one at or after it, never past an entry it cannot
parse -- so a restart replays the same state, a running replica on an older bundle holds the trim
back, and a retry of a trimmed event is still acknowledged once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import TRAIN_AS_OF, auth, serving_bundle
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from redis_server import RedisServer
from typer.testing import CliRunner

from recsys.bundle import events_watermark, save_bundle
from recsys.cli import app as cli
from serving.app import create_app
from serving.events import (
    EventRecord,
    EventStore,
    FileEventLog,
    Incoming,
    check_round_trip,
    open_store,
    utc_iso,
)
from serving.events_trim import plan_trim, run_trim

WATERMARK = datetime.combine(TRAIN_AS_OF, datetime.min.time(), tzinfo=UTC)  # the test bundles' (2001-02-01)
STREAM = "{recsys:events}"


def ts(day: str) -> datetime:
    return datetime.fromisoformat(day).replace(tzinfo=UTC)


# before / after the watermark, in the order they reach the log: e4 is a late purchase
LOG = [("e1", "2001-01-20T10:00"), ("e2", "2001-01-25T10:00"), ("e3", "2001-02-03T10:00"),
       ("e4", "2001-01-28T10:00"), ("e5", "2001-02-05T10:00")]


def record(event_id: str, when: datetime, member: str = "m0", product: str = "p2") -> EventRecord:
    return EventRecord(member, product, when, received_at=when, event_id=event_id)


def append(store: EventStore, rec: EventRecord) -> bool:
    [written] = store.append([Incoming(rec, True, check_round_trip(rec))], lambda: {})
    return written


def read_all(store: EventStore, cursor: Any = None) -> list[EventRecord]:
    out: list[EventRecord] = []
    cursor = store.start if cursor is None else cursor
    while True:
        batch = store.read(cursor)
        out += batch.records
        if batch.cursor == cursor:
            return out
        cursor = batch.cursor


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(params=["file", "redis"])
def events_at(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where the log is, as `recsys serve --events` takes it: a folder, or a real Redis's URL."""
    if request.param == "redis":
        return str(request.getfixturevalue("redis_url"))
    return str(tmp_path / "events")


def store_of(events: str) -> EventStore:
    stream = events if "://" in events else None
    return open_store(stream=stream, stream_key="recsys:events", path=Path(events) / "events.jsonl")


def trim_cli(events: str, *args: str) -> dict[str, Any]:
    r = CliRunner().invoke(cli, ["events", "trim", "--events", events, "--json", *args])
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


# --------------------------------------------------------------------------- the rule, both stores
def test_a_trim_removes_exactly_the_records_before_the_watermark_at_the_head_of_the_log(events_at: str) -> None:
    store = store_of(events_at)
    for event_id, when in LOG:
        assert append(store, record(event_id, ts(when)))
    ids = [r.event_id for r in read_all(store)]
    assert ids == ["e1", "e2", "e3", "e4", "e5"]
    if isinstance(store, FileEventLog):  # the cursor after e1: the byte offset after its line
        stream_ids: list[bytes] = []
        after_e1: Any = len(store.path.read_bytes().split(b"\n", 1)[0]) + 1
    else:  # ... e1's entry id
        stream_ids = [e[0] for e in redis.Redis.from_url(events_at).xrange(STREAM)]
        after_e1 = stream_ids[0].decode()
    end = read_all_cursor(store)

    dry = store.trim(WATERMARK, dry_run=True)
    assert (dry.removed, dry.dry_run) == (2, True)
    assert [r.event_id for r in read_all(store)] == ids  # nothing removed by a dry run

    result = store.trim(WATERMARK)
    # e1 and e2 are in every bundle of this watermark; e3 is not, so neither it nor the late e4 behind it goes
    assert result.removed == 2 and result.removed_total == 2
    assert result.first_kept is not None and result.first_kept["event_id"] == "e3"
    assert [r.event_id for r in read_all(store)] == ["e3", "e4", "e5"]
    if store.kind == "redis":  # XTRIM MINID to e3's id: exactly the entries below it are gone
        assert [e[0] for e in redis.Redis.from_url(events_at).xrange(STREAM)] == stream_ids[2:]
        assert result.bound == stream_ids[2].decode()
    assert store.trim(WATERMARK).removed == 0  # nothing more until a later watermark

    # a reader part way through the trimmed records goes on from the log's start; one at the end stays there
    assert [r.event_id for r in read_all(store, after_e1)] == ["e3", "e4", "e5"]
    assert append(store, record("e6", ts("2001-02-06T10:00")))
    assert [r.event_id for r in read_all(store, end)] == ["e6"]

    later = store.trim(ts("2001-02-04T00:00"))  # e3 and e4 are before it now; e5 is not
    assert (later.removed, later.removed_total) == (2, 4)
    assert [r.event_id for r in read_all(store)] == ["e5", "e6"]
    assert store.trim_info() is not None and store.trim_info()["removed_total"] == 4

    # the ids of trimmed records are kept: a late retry of e1 is acknowledged, not recorded again
    assert append(store, record("e1", ts(LOG[0][1]))) is False
    assert [r.event_id for r in read_all(store)] == ["e5", "e6"]


def read_all_cursor(store: EventStore) -> Any:
    cursor = store.start
    while True:
        batch = store.read(cursor)
        if batch.cursor == cursor:
            return cursor
        cursor = batch.cursor


def test_a_trim_stops_at_an_entry_it_cannot_parse(events_at: str) -> None:
    store = store_of(events_at)
    append(store, record("e1", ts(LOG[0][1])))
    if store.kind == "redis":
        redis.Redis.from_url(events_at).xadd(STREAM, {"e": b"written by something else"})
    else:
        with open(Path(events_at) / "events.jsonl", "ab") as fh:
            fh.write(b"written by something else\n")
    append(store, record("e2", ts(LOG[1][1])))
    result = store.trim(WATERMARK)
    assert result.removed == 1 and result.unparsable_at is not None and result.first_kept is None
    assert [r.event_id for r in read_all(store)] == ["e2"]  # e2 waits behind the entry nobody could read
    assert store.read(store.start).bad == 1


# --------------------------------------------------------------------------- replay after a trim
def post(c: TestClient, events: list[dict[str, Any]]) -> dict[str, Any]:
    r = c.post("/v1/events", json=events, headers=auth("admin"))
    assert r.status_code == 200, r.text
    return r.json()


def served(c: TestClient) -> dict[str, Any]:
    """What a replica answers that live events change: every member's picks, and its event counts."""
    picks = {m: [p["product_id"] for p in c.get(f"/v1/members/{m}/picks", params={"k": 4, "mode": "discover"},
                                                headers=auth("app")).json()["picks"]]
             for m in ("m0", "m1", "m2", "m3", "new-member")}
    info = c.get("/v1/model", headers=auth("admin")).json()["events"]
    return {"picks": picks, **{k: info[k] for k in ("applied", "repeated_skipped", "other_products_skipped")}}


def app_on(serving_settings: Callable[..., Any], events: str, bundle: str | Path = "top_frequency",
           **overrides: Any) -> TestClient:
    where = {"events_stream": events} if "://" in events else {"events_dir": Path(events)}
    return TestClient(create_app(serving_settings(bundle, **where, **overrides)))


def test_a_restart_after_a_trim_replays_the_same_state(events_at: str, serving_settings: Callable[..., Any],
                                                        serving_bundles: dict[str, Path]) -> None:
    now = utc_iso(datetime.now(UTC))
    with app_on(serving_settings, events_at) as c:
        post(c, [{"event_id": "old-1", "member_id": "m0", "product_id": "p4", "ts": "2001-01-15T10:00:00Z"},
                 {"event_id": "old-2", "member_id": "m1", "product_id": "p3", "ts": "2001-01-20T10:00:00Z"}])
        post(c, [{"event_id": "new-1", "member_id": "m0", "product_id": "p2", "ts": now},
                 {"event_id": "new-2", "member_id": "new-member", "product_id": "p1", "ts": now},
                 {"event_id": "late-1", "member_id": "m2", "product_id": "p4", "ts": "2001-01-21T10:00:00Z"},
                 {"event_id": "new-3", "member_id": "m3", "product_id": "p0"}])
        before = served(c)
    assert before["applied"] == 3  # the two old purchases and the late one are in the bundle's data
    out = trim_cli(events_at, "--bundle", str(serving_bundles["top_frequency"]))
    assert out["removed"] == 2 and out["first_kept"]["event_id"] == "new-1"
    assert [h["watermark"] for h in out["holds"]] == [utc_iso(WATERMARK)]
    with app_on(serving_settings, events_at) as c:
        assert served(c) == before
        # a retry of a trimmed event: acknowledged as a duplicate, nothing recorded
        again = post(c, [{"event_id": "old-1", "member_id": "m0", "product_id": "p4", "ts": "2001-01-15T10:00:00Z"}])
        assert (again["recorded"], again["duplicates"]) == (0, 1)
        info = c.get("/v1/model", headers=auth("admin")).json()["events"]
        assert info["watermark"] == utc_iso(WATERMARK) and info["trimmed"]["removed_total"] == 2
        metrics = {m.name: m.samples[0].value for m in text_string_to_metric_families(c.get("/metrics").text)
                   if m.samples}
        assert metrics["recsys_events_log_trimmed"] == 2
        assert metrics["recsys_events_watermark_seconds"] == WATERMARK.timestamp()


# --------------------------------------------------------------------------- who holds the log back
@pytest.fixture
def newer_bundle(tmp_path: Path) -> Path:
    """The same model with its data ending a month later (2001-03-01)."""
    return save_bundle(tmp_path / "newer", serving_bundle("top_frequency", as_of=date(2001, 3, 1)))


def test_a_replica_still_serving_an_older_bundle_holds_the_trim_back(
    events_at: str, serving_settings: Callable[..., Any], newer_bundle: Path,
) -> None:
    now = datetime.now(UTC)
    store = store_of(events_at)
    for event_id, when in (("jan", "2001-01-10T10:00"), ("feb", "2001-02-10T10:00")):
        append(store, record(event_id, ts(when)))
    # a replica that died an hour ago without withdrawing its record: ignored, and removed
    store.report_replica("gone:1", {"watermark": "2000-01-01T00:00:00Z", "at": utc_iso(now - timedelta(hours=1)),
                                    "bundles": []})
    with app_on(serving_settings, events_at) as old:  # a replica on the older bundle (watermark 2001-02-01)
        post(old, [{"event_id": "acked", "member_id": "m0", "product_id": "p2"}])  # acknowledged after both bundles
        replicas = store.replicas()
        assert len(replicas) == 2 and {r["watermark"] for r in replicas.values()} >= {utc_iso(WATERMARK)}
        # the job that made the newer bundle trims while the old replica has not reloaded yet
        out = trim_cli(events_at, "--bundle", str(newer_bundle))
        assert out["watermark"] == utc_iso(WATERMARK) and out["removed"] == 1  # only "jan"
        assert out["stale_replicas"] == ["gone:1"] and "gone:1" not in store.replicas()
        assert [r.event_id for r in read_all(store)] == ["feb", "acked"]
    assert store.replicas() == {}  # the replica withdrew its record as it stopped
    out = trim_cli(events_at, "--bundle", str(newer_bundle))  # now the newer bundle's watermark decides
    assert out["watermark"] == "2001-03-01T00:00:00Z" and out["removed"] == 1  # "feb"
    # an event acknowledged after the bundles' data ends is never trimmed while they can be loaded
    assert [r.event_id for r in read_all(store)] == ["acked"]
    assert trim_cli(events_at, "--bundle", str(newer_bundle))["removed"] == 0


def test_a_trim_needs_to_know_what_replicas_load(events_at: str, tmp_path: Path) -> None:
    if "://" not in events_at:
        r = CliRunner().invoke(cli, ["events", "trim", "--events", events_at, "--bundle", str(tmp_path)])
        assert r.exit_code == 2 and f"no events folder at {events_at}" in r.output
        Path(events_at).mkdir()
    r = CliRunner().invoke(cli, ["events", "trim", "--events", events_at])
    assert r.exit_code == 2 and "--registered-model" in r.output and "--bundle" in r.output
    undated = tmp_path / "undated"
    undated.mkdir()
    (undated / "bundle.json").write_text(json.dumps({"format_version": 1}))
    r = CliRunner().invoke(cli, ["events", "trim", "--events", events_at, "--bundle", str(undated)])
    assert r.exit_code == 2 and "as_of" in r.output and "nothing was trimmed" in r.output


@pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")
@pytest.mark.filterwarnings("ignore:Operation with range is deprecated")
def test_every_aliased_version_of_the_registered_model_holds_the_log_back(store: str, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from training.tracking import Tracker, log_bundle_model

    for as_of in (date(2001, 2, 1), date(2001, 3, 1)):
        path = save_bundle(tmp_path / f"bundle-{as_of}", serving_bundle("top_frequency", as_of=as_of))
        with Tracker("serving", f"trim-{as_of}", tracking_uri=store) as run:
            log_bundle_model(run, path, "recsys-trim-test", input_example=False)
    client = MlflowClient(tracking_uri=store)
    client.set_registered_model_alias("recsys-trim-test", "champion", "2")
    client.set_registered_model_alias("recsys-trim-test", "previous", "1")  # kept replayable for a rollback
    log = FileEventLog(tmp_path / "events" / "events.jsonl")
    plan = plan_trim(log, registered_model="recsys-trim-test", tracking_uri=store)
    assert [(h.what, h.watermark) for h in plan.holds] == [
        ("recsys-trim-test v1 (previous)", WATERMARK), ("recsys-trim-test v2 (champion)", ts("2001-03-01T00:00"))]
    assert plan.watermark == WATERMARK
    client.delete_registered_model_alias("recsys-trim-test", "previous")
    append(log, record("feb", ts("2001-02-10T10:00")))
    result = run_trim(log, plan_trim(log, registered_model="recsys-trim-test", tracking_uri=store))
    assert result.watermark == ts("2001-03-01T00:00") and result.removed == 1
    assert events_watermark({"as_of": "2001-03-01"}) == result.watermark
