"""Live events through a Redis Stream shared by several replicas (issue 16, item 3; issue 12,
defect 5): a real redis-server on a free port, real server processes and in-process apps on it.

A purchase accepted by any replica is in the stream before the answer and every replica applies
it (picks agree within a second); a retried event is applied once whichever replica receives it; a
restart replays the stream; Redis down at start is a clear error, down while serving a 503 on event
posts while picks keep serving, and the replicas catch up when it is back; a stream entry that
cannot be parsed is counted and skipped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from conftest import KEYS, auth, serving_bundle
from fastapi.testclient import TestClient
from redis_server import RedisServer, free_port

from recsys.bundle import save_bundle
from recsys.errors import InputError
from recsys.precompute import pre_rank
from serving.app import create_app
from serving.events import EventRecord
from serving.keys import hash_key

DISCOVER_BEFORE = ["p2", "p3", "p4"]  # m0's discover picks on the top_frequency bundle
DISCOVER_AFTER = ["p3", "p4", "p6"]  # ... once m0 bought p2
EVENT = {"event_id": "till-1:0001", "member_id": "m0", "product_id": "p2"}
EVENT_TS = datetime(2001, 2, 3, 10, tzinfo=UTC)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def listed_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The top_frequency bundle with pre-ranked lists (answered at list speed, ranked again on events)."""
    b = serving_bundle("top_frequency")
    b.pre_ranked = pre_rank(b.model, n=100)
    return save_bundle(tmp_path_factory.mktemp("redis-bundle") / "top_frequency", b)


def discover(base_or_client: Any, member: str = "m0") -> list[str]:
    r = base_or_client.get(f"/v1/members/{member}/picks", params={"k": 3, "mode": "discover"}, headers=auth("app"))
    assert r.status_code == 200, r.text
    return [p["product_id"] for p in r.json()["picks"]]


def post(c: Any, events: list[dict[str, Any]], **headers: str) -> httpx.Response:
    return c.post("/v1/events", json=events, headers={**auth("admin"), **headers})


def events_info(c: Any) -> dict[str, Any]:
    return c.get("/v1/model", headers=auth("admin")).json()["events"]


# --------------------------------------------------------------------------- real server processes
@contextmanager
def server_process(bundle: Path, stream: str, folder: Path, name: str) -> Iterator[httpx.Client]:
    """``uvicorn --factory serving.app:create_app_from_env`` in its own process on a free port."""
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    keys = [{"id": f"{role}-key", "role": role, "sha256": hash_key(secret)} for role, secret in KEYS.items()]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")} | {
        "RECSYS_BUNDLE": str(bundle), "RECSYS_EVENTS_STREAM": stream, "RECSYS_API_KEYS": json.dumps(keys),
        "RECSYS_EVENTS_DIR": str(folder / f"events-{name}"), "RECSYS_CAMPAIGN_DB": f"sqlite:///{folder / 'campaigns.db'}",
        "RECSYS_EVENTS_POLL_SECONDS": "0.5", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
    }
    log = open(folder / f"server-{name}.log", "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "serving.app:create_app_from_env", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning"],
        env=env, cwd=folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if client.get("/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, (folder / f"server-{name}.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the server never became ready"
            time.sleep(0.1)
        yield client
    finally:
        client.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        log.close()


def test_two_server_processes_agree_apply_a_retry_once_and_replay_after_a_restart(
    redis_server: RedisServer, listed_bundle: Path, tmp_path: Path,
) -> None:
    with server_process(listed_bundle, redis_server.url, tmp_path, "a") as a, \
            server_process(listed_bundle, redis_server.url, tmp_path, "b") as b:
        assert discover(a) == discover(b) == DISCOVER_BEFORE
        r = post(a, [EVENT])
        assert r.status_code == 200 and r.json()["recorded"] == 1
        # in the stream before the answer: the entry is there as the answer arrives
        entries = redis.Redis.from_url(redis_server.url).xrange("{recsys:events}")
        assert [EventRecord.from_json(e[1][b"e"]).event_id for e in entries] == ["till-1:0001"]
        assert discover(a) == DISCOVER_AFTER
        start = time.perf_counter()
        while discover(b) != DISCOVER_AFTER:  # the other replica follows the stream
            assert time.perf_counter() - start < 1.0, "replica b did not apply the event within 1 s"
            time.sleep(0.01)
        # the client's retry reaches the other replica: acknowledged, not recorded or applied again
        retry = post(b, [EVENT]).json()
        assert (retry["accepted"], retry["recorded"], retry["duplicates"]) == (1, 0, 1)
        time.sleep(0.6)  # a poll of both replicas
        assert events_info(a)["applied"] == events_info(b)["applied"] == 1
        assert events_info(b)["kind"] == "redis" and events_info(b)["error"] is None
    with server_process(listed_bundle, redis_server.url, tmp_path, "b2") as b2:  # a restart replays the stream
        assert discover(b2) == DISCOVER_AFTER
        assert events_info(b2)["applied"] == 1
        assert post(b2, [EVENT]).json()["duplicates"] == 1


# --------------------------------------------------------------------------- in-process replicas
@pytest.fixture
def replica(serving_settings: Callable[..., Any], listed_bundle: Path, redis_server: RedisServer,
            tmp_path: Path) -> Callable[..., TestClient]:
    """``with replica() as c:`` an app on the shared stream, following it every 0.2 s at most."""

    def make(name: str = "r", **overrides: Any) -> TestClient:
        values = {"events_stream": redis_server.url, "events_poll_seconds": 0.2, "events_dir": tmp_path / name,
                  **overrides}
        return TestClient(create_app(serving_settings(listed_bundle, **values)))

    return make


def wait_for(check: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_concurrent_retries_on_two_replicas_are_recorded_once(replica: Callable[..., TestClient],
                                                              redis_server: RedisServer) -> None:
    batches = [[{"event_id": f"e{i}-{j}", "member_id": f"m{j % 6}", "product_id": f"p{(i + j) % 5}"}
                for j in range(20)] for i in range(10)]
    recorded: list[int] = []
    with replica("a") as a, replica("b") as b:
        def send(c: TestClient) -> None:
            for batch in batches:
                r = post(c, batch)
                assert r.status_code == 200, r.text
                recorded.append(r.json()["recorded"])

        threads = [threading.Thread(target=send, args=(c,)) for c in (a, b, a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sum(recorded) == 200  # each of the 200 ids recorded by exactly one of the 40 posts
        assert redis.Redis.from_url(redis_server.url).xlen("{recsys:events}") == 200
        wait_for(lambda: events_info(a)["applied"] == events_info(b)["applied"] == 200)
        # the same member's picks on both replicas
        for member in ("m0", "m3"):
            assert discover(a, member) == discover(b, member)


def test_an_event_id_reused_for_another_purchase_is_a_409_on_any_replica(replica: Callable[..., TestClient]) -> None:
    with replica("a") as a, replica("b") as b:
        assert post(a, [EVENT]).json()["recorded"] == 1
        r = post(b, [{"event_id": "new-1", "member_id": "m1", "product_id": "p3"}, {**EVENT, "product_id": "p3"}])
        assert r.status_code == 409 and "'till-1:0001'" in r.json()["detail"]
        assert post(b, [{"event_id": "new-1", "member_id": "m1", "product_id": "p3"}]).json()["recorded"] == 1


def test_redis_down_while_serving_refuses_events_keeps_picks_and_catches_up(
    replica: Callable[..., TestClient], redis_server: RedisServer,
) -> None:
    with replica("a") as a, replica("b") as b:
        assert post(a, [EVENT]).status_code == 200
        wait_for(lambda: discover(b) == DISCOVER_AFTER)
        redis_server.stop()
        r = post(a, [{"event_id": "while-down", "member_id": "m1", "product_id": "p3"}])
        assert r.status_code == 503 and r.headers.get("retry-after")
        detail = r.json()["detail"]
        assert redis_server.url in detail and "not acknowledged" in detail and "retry" in detail
        # picks keep serving from the last state
        assert discover(a) == discover(b) == DISCOVER_AFTER
        assert a.get("/health/ready").status_code == 200
        wait_for(lambda: events_info(b)["error"] is not None)  # b's follower noticed, and says so
        redis_server.start()  # same folder: the append-only file brings the stream back
        r = post(a, [{"event_id": "while-down", "member_id": "m1", "product_id": "p3"}])  # the client's retry
        assert r.status_code == 200 and r.json()["recorded"] == 1
        wait_for(lambda: events_info(b)["applied"] == 2 and events_info(b)["error"] is None)
        assert discover(a, "m1") == discover(b, "m1")


def test_redis_down_at_start_is_a_clear_error_naming_the_url(serving_settings: Callable[..., Any],
                                                             listed_bundle: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    from serving.cli import check_events

    with pytest.raises(InputError, match=f"cannot serve: the events stream at {url} cannot be reached"):
        check_events(serving_settings(listed_bundle, events_stream=url))
    # a worker that loads anyway is not ready, and says why
    with TestClient(create_app(serving_settings(listed_bundle, events_stream=url))) as c:
        r = c.get("/health/ready")
        assert r.status_code == 503 and url in r.json()["error"]


def test_the_cli_serves_two_workers_by_default_on_a_stream(monkeypatch: pytest.MonkeyPatch,
                                                            listed_bundle: Path) -> None:
    import serving.cli as cli

    # serve() hands its settings to the workers in RECSYS_* variables: undone after the test
    for var in ("BUNDLE", "REGISTERED_MODEL", "ALIAS", "API_KEYS_FILE", "EVENTS_DIR", "EVENTS_STREAM", "AUDIT_LOG",
                "MLFLOW_TRACKING_URI", "AUTH_DISABLED"):
        monkeypatch.setenv(f"RECSYS_{var}", "")
        monkeypatch.delenv(f"RECSYS_{var}")
    seen: dict[str, Any] = {}
    monkeypatch.setattr(cli, "check_events", lambda settings: seen.update(stream=settings.events_stream))
    monkeypatch.setattr(cli, "run_workers", lambda app, **kw: seen.update(workers=kw["workers"]))
    monkeypatch.setenv("RECSYS_CAMPAIGN_DB", f"sqlite:///{listed_bundle.parent / 'campaigns.db'}")  # not the cwd's
    cli.serve(listed_bundle, events="redis://127.0.0.1:1/0", auth_disabled=True)
    assert seen == {"stream": "redis://127.0.0.1:1/0", "workers": 2}
    with pytest.raises(InputError, match="give a folder, or a Redis URL"):
        cli.serve(listed_bundle, events="http://127.0.0.1:6379", auth_disabled=True)
    cli.serve(listed_bundle, events=str(listed_bundle.parent / "events"), auth_disabled=True, workers=2)
    assert seen == {"stream": None, "workers": 2}


def test_unparsable_stream_entries_are_counted_and_skipped(replica: Callable[..., TestClient],
                                                           redis_server: RedisServer) -> None:
    r = redis.Redis.from_url(redis_server.url)
    good = EventRecord("m0", "p2", EVENT_TS, received_at=EVENT_TS, event_id="good-1").to_json()
    r.xadd("{recsys:events}", {"e": b"not json"})
    r.xadd("{recsys:events}", {"other": good})  # no record field
    r.xadd("{recsys:events}", {"e": good.replace(b'"ts":"2001-02-03T10:00:00Z"', b'"ts":"1-01-01T00:00:00Z"')})
    r.xadd("{recsys:events}", {"e": good})
    with replica("a") as a:  # at start-up replay
        info = events_info(a)
        assert (info["applied"], info["unparsable_skipped"]) == (1, 3)
        assert discover(a) == DISCOVER_AFTER
        r.xadd("{recsys:events}", {"e": b"\xff\xfe"})  # while following
        r.xadd("{recsys:events}", {"e": good.replace(b"good-1", b"good-2").replace(b'"p2"', b'"p3"')})
        wait_for(lambda: events_info(a)["applied"] == 2)
        assert events_info(a)["unparsable_skipped"] == 4
        assert a.get("/health/ready").status_code == 200

