"""Limits before parsing, over a real socket: a body's size is bounded before it is read (413),
the key is checked before the body (401 / 403 with the body never sent), a slow body is cut off
(408), and a client that trickles its request headers is disconnected (issue 12: items 2, 12)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from conftest import KEYS

from serving.app import create_app
from serving.protocol import server_config

LIMIT = 20_000


@contextmanager
def real_server(settings: Any) -> Iterator[tuple[str, int]]:
    """``create_app(settings)`` behind uvicorn with the server settings ``recsys serve`` uses."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    server = uvicorn.Server(server_config(create_app(settings), settings.server, host="127.0.0.1", port=port,
                                          log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline and thread.is_alive(), "the server never became ready"
        time.sleep(0.05)
    try:
        yield "127.0.0.1", port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def server(serving_settings: Callable[..., Any]) -> Iterator[tuple[str, int]]:
    settings = serving_settings(
        max_body_bytes=LIMIT, body_timeout_seconds=1.0,
        server={"header_timeout_seconds": 1.0, "keep_alive_seconds": 5, "max_header_bytes": 8_192},
    )
    with real_server(settings) as addr:
        yield addr


def head_only(addr: tuple[str, int], path: str, length: int, headers: dict[str, str] | None = None,
              body: bytes = b"", wait: float = 5.0) -> tuple[int, dict[str, Any] | None, float]:
    """Send a POST's headers (announcing ``length`` bytes) and ``body`` (usually less), then read
    the answer without sending the rest; returns (status, JSON body, seconds to the answer)."""
    lines = [f"POST {path} HTTP/1.1", f"Host: {addr[0]}", "Content-Type: application/json",
             f"Content-Length: {length}", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    with socket.create_connection(addr, timeout=wait) as sock:
        start = time.perf_counter()
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed without an answer after {data!r}"
            data += chunk
        seconds = time.perf_counter() - start
        head, _, rest = data.partition(b"\r\n\r\n")
        status = int(head.split()[1])
        size = next((int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")), 0)
        while len(rest) < size:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
    return status, orjson.loads(rest) if rest else None, seconds


def test_an_announced_oversized_body_is_refused_before_it_is_sent(server: tuple[str, int]) -> None:
    # a 50 MB POST was read and parsed in full (~650 MB, 0.5 s) before its 401
    status, body, _ = head_only(server, "/v1/events", 50_000_000, {"X-API-Key": KEYS["admin"]})
    assert status == 413
    assert body is not None and "limit is 20,000 bytes" in body["detail"]


def test_a_streamed_body_is_cut_off_at_the_limit(server: tuple[str, int]) -> None:
    sent = 0

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer
        nonlocal sent
        yield b"["
        for _ in range(10_000):
            piece = b'{"member_id": "m0", "product_id": "p1"},' * 10
            sent += len(piece)
            yield piece
        yield b'{"member_id": "m0", "product_id": "p1"}]'

    with httpx.Client(base_url=f"http://{server[0]}:{server[1]}", timeout=10) as http:
        try:
            r = http.post("/v1/events", content=chunks(), headers={"X-API-Key": KEYS["admin"],
                                                                   "Content-Type": "application/json"})
            assert r.status_code == 413 and "limit is 20,000 bytes" in r.json()["detail"]
        except httpx.TransportError:
            pass  # the server answered and closed while the client was still sending: also refused
        r = http.get("/v1/model", headers={"X-API-Key": KEYS["admin"]})
        assert r.status_code == 200 and r.json()["events_applied"] == 0  # nothing of it was applied
    assert sent < 4_000_000  # the client was stopped long before it sent its 4 MB


@pytest.mark.parametrize(("path", "key", "status"), [
    ("/v1/events", None, 401),
    ("/v1/events", "nope", 401),
    ("/v1/events", "app", 403),  # an app key may not post events
    ("/v1/admin/reload", "merchandiser", 403),
    ("/v1/audiences", "app", 403),
    ("/v1/audiences/export", None, 401),
    ("/v1/picks:batch", "nope", 401),
])
def test_the_key_is_checked_before_the_body_is_read(
    server: tuple[str, int], path: str, key: str | None, status: int
) -> None:
    # the body was read (and parsed) before the key was looked at; here it is never sent
    headers = {} if key is None else {"X-API-Key": KEYS.get(key, key)}
    got, body, _ = head_only(server, path, 5_000, headers)
    assert got == status, body
    assert body is not None and "key" in body["detail"]


def test_a_body_that_does_not_arrive_in_time_is_answered_408(server: tuple[str, int]) -> None:
    status, body, seconds = head_only(server, "/v1/events", 5_000, {"X-API-Key": KEYS["admin"]}, body=b"[{")
    assert status == 408 and "not received within 1 s" in body["detail"]  # type: ignore[index]
    assert seconds >= 0.9


def test_a_request_within_the_limits_is_answered(server: tuple[str, int]) -> None:
    with httpx.Client(base_url=f"http://{server[0]}:{server[1]}", timeout=10) as http:
        r = http.post("/v1/events", json=[{"member_id": "m0", "product_id": "p1"}],
                      headers={"X-API-Key": KEYS["admin"]})
        assert r.status_code == 200 and r.json()["accepted"] == 1
        # the same connection keeps serving (the limits closed nothing)
        assert http.get("/health/live").status_code == 200


def _closed_after(sock: socket.socket, trickle: bytes | None, every: float, give_up: float) -> float | None:
    """Seconds until the server closes ``sock`` while we send ``trickle`` every ``every`` s."""
    start = time.monotonic()
    sock.settimeout(every)
    while time.monotonic() - start < give_up:
        try:
            if trickle is not None:
                sock.sendall(trickle)
            if sock.recv(1024) == b"":
                return time.monotonic() - start
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic() - start
    return None


def test_a_client_trickling_its_headers_is_disconnected(server: tuple[str, int]) -> None:
    # 200 connections sending a header line every 2 s stayed open for 20 s
    with socket.create_connection(server) as sock:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")
        closed = _closed_after(sock, b"X-Slow: 1\r\n", 0.2, 6.0)
    assert closed is not None and closed < 3.0
    with socket.create_connection(server) as sock:  # a connection that never sends a byte
        assert (closed := _closed_after(sock, None, 0.2, 6.0)) is not None and closed < 3.0
    # between requests on a keep-alive connection, the next request's headers are due too
    with socket.create_connection(server) as sock:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /health/live HTTP/1.1\r\n")
        assert (closed := _closed_after(sock, b"X-Slow: 1\r\n", 0.2, 6.0)) is not None and closed < 3.0


def test_headers_growing_past_the_limit_are_refused(server: tuple[str, int]) -> None:
    # h11 buffers an incomplete request head up to max_header_bytes (8 KB here), then refuses it
    with socket.create_connection(server, timeout=5) as sock:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")
        answer = b""
        for _ in range(20):
            try:
                sock.sendall(b"X-Big: " + b"a" * 1_000 + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.02)
        answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 400"), answer


def test_server_settings_reach_uvicorn(serving_settings: Callable[..., Any]) -> None:
    settings = serving_settings(server={"keep_alive_seconds": 7, "header_timeout_seconds": 3,
                                        "limit_concurrency": 64, "max_header_bytes": 4096,
                                        "graceful_shutdown_seconds": 9})
    config = server_config(object(), settings.server)
    assert (config.timeout_keep_alive, config.header_timeout, config.limit_concurrency,
            config.h11_max_incomplete_event_size, config.timeout_graceful_shutdown) == (7, 3, 64, 4096, 9)


def test_member_list_uploads_have_their_own_limit(serving_settings: Callable[..., Any], tmp_path: Any) -> None:
    # a suppression list is a whole member list (a programme's opt-outs run to millions of ids): it
    # is bounded by RECSYS_MAX_UPLOAD_BYTES, every other body still by RECSYS_MAX_BODY_BYTES
    settings = serving_settings(max_body_bytes=LIMIT, max_upload_bytes=10 * LIMIT,
                                campaign_db=f"sqlite:///{tmp_path / 'campaigns.db'}")
    ids = "".join(f"m{i % 7}\n" for i in range(LIMIT // 2))  # 30,000 bytes: over the body limit
    with real_server(settings) as addr, httpx.Client(base_url=f"http://{addr[0]}:{addr[1]}", timeout=10) as http:
        r = http.post("/v1/suppressions", params={"name": "opt-out"}, content=ids.encode(),
                      headers={"X-API-Key": KEYS["admin"], "Content-Type": "text/csv"})
        assert r.status_code == 200, r.text
        status, body, _ = head_only(addr, "/v1/suppressions?name=big", 10 * LIMIT + 1, {"X-API-Key": KEYS["admin"]})
        assert status == 413 and body is not None and "RECSYS_MAX_UPLOAD_BYTES" in body["detail"]
        status, body, _ = head_only(addr, "/v1/events", len(ids), {"X-API-Key": KEYS["admin"]})
        assert status == 413 and body is not None and "RECSYS_MAX_BODY_BYTES" in body["detail"]
