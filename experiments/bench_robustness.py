"""Robustness of a running server (issue 12's targets), measured against ``recsys serve`` started
as ``make demo`` starts it: the registered Ta-Feng champion, a keys file, an events folder and a
campaign database (which holds the audit trail), with its temporary folder pointed at a folder of this run (so what it leaves behind is
measured, not guessed).

Checks, each a function printing its figures:

* :func:`check_fuzz` -- schemathesis over ``/openapi.json``, positive and negative data, every
  response checked for status code, content type, headers and body against the schema;
  target: >= 25,000 requests, 0 server errors, 0 schema violations.
* :func:`check_big_body` -- a 50 MB POST (announced, and chunked), with and without a key:
  target: 413 / 401 in under 50 ms, the server's resident memory not growing.
* :func:`check_slow_headers` -- 200 connections sending one header line every 2 s: how many are
  still open after 20 s (target: none past the header timeout).
* :func:`check_reloads` -- 100 registry reloads then SIGTERM: bytes left in the temporary folder
  (target 0) and resident memory after the 100th reload against after the first (within 10 %).
* :func:`check_events_durability` -- the live-events section: ``bench_events_durability.py``'s
  measurement (its own ``recsys serve`` on a small synthetic bundle, on the events file and on a
  Redis stream, killed with SIGKILL five times under client threads that retry each batch until
  acknowledged; target: 0 acknowledged events lost or unreadable, 0 duplicates, the replay applying
  every stored event). It kills its own server, never the Ta-Feng one the other checks use; by
  default test-sized (2,000 synthetic members, 1-2 s between kills: 1.5 min per store on a loaded
  2-core machine, most of it the restarts),
  ``--events-members`` / ``--events-gap`` to push harder.

Run after ``make demo`` (it needs ``mlflow.db`` with ``recsys-tafeng`` and ``data/demo-keys.*``)::

    .venv/bin/python experiments/bench_robustness.py
    .venv/bin/python experiments/bench_robustness.py --reloads 10 --fuzz-requests 2000   # quicker
    .venv/bin/python experiments/bench_robustness.py --skip fuzz,body,slow,reloads       # events only (no demo needed)

Figures go to ``experiments/results/robustness.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results" / "robustness.json"
MODEL = "recsys-tafeng"
MB = 1024 * 1024


# --------------------------------------------------------------------------- the server
class Server:
    """``recsys serve`` in a subprocess with a private temporary folder."""

    def __init__(self, workdir: Path, keys_file: Path, tracking_uri: str, registered_model: str,
                 env: dict[str, str] | None = None):
        self.workdir = workdir
        self.tmp = workdir / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = open(workdir / "server.log", "w")  # noqa: SIM115 - closed in stop()
        cmd = [str(ROOT / ".venv" / "bin" / "recsys"), "serve", "--registered-model", registered_model,
               "--api-keys-file", str(keys_file), "--events-dir", str(workdir / "events"),
               "--campaign-db", f"sqlite:///{workdir / 'campaigns.db'}", "--tracking-uri", tracking_uri,
               "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "TMPDIR": str(self.tmp), **(env or {})})

    def wait_ready(self, timeout: float = 600) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited ({self.proc.returncode}); see {self.workdir / 'server.log'}")
            try:
                if httpx.get(f"{self.base}/health/ready", timeout=2).status_code == 200:
                    return time.monotonic() - start
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError("the server did not become ready")

    def rss_mb(self) -> float:
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def tmp_bytes(self) -> tuple[int, int]:
        files = [p for p in self.tmp.rglob("*") if p.is_file()]
        return sum(p.stat().st_size for p in files), len(list(self.tmp.iterdir()))

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


def read_keys(secrets: Path) -> dict[str, str]:
    """role -> secret from ``data/demo-keys.secrets`` (``role  secret`` per line)."""
    out = {}
    for line in secrets.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and not line.startswith("#"):
            out[parts[0]] = parts[1]
    return out


# --------------------------------------------------------------------------- fuzzing
def check_fuzz(server: Server, keys: dict[str, str], requests: int) -> dict[str, Any]:
    """schemathesis against the live schema, positive then negative data, all response checks."""
    import hypothesis
    import hypothesis.errors
    import schemathesis
    from schemathesis import GenerationMode
    from schemathesis.checks import (
        content_type_conformance,
        not_a_server_error,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [not_a_server_error, status_code_conformance, content_type_conformance,
              response_headers_conformance, response_schema_conformance]
    schema = schemathesis.openapi.from_url(f"{server.base}/openapi.json")
    # a reload takes seconds (load, index, smoke test): it is exercised by check_reloads, not here
    operations = [op for op in (r.ok() for r in schema.get_all_operations()) if op.path != "/v1/admin/reload"]
    examples_per_op = max(1, requests // (2 * len(operations)))
    sent = 0
    statuses: Counter[int] = Counter()
    per_op: Counter[str] = Counter()
    per_op_seconds: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    examples: list[str] = []
    session = __import__("requests").Session()
    start = time.perf_counter()
    round_no = 0
    unsatisfiable: set[str] = set()
    while sent < requests and round_no < 50:  # rounds with new seeds until enough were sent
        round_no += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            for op in operations:
                label = f"{mode.value} {op.method.upper()} {op.path}"
                if label in unsatisfiable:
                    continue

                @hypothesis.seed(round_no)
                @hypothesis.given(case=op.as_strategy(generation_mode=mode))
                @hypothesis.settings(max_examples=examples_per_op, deadline=None, database=None,
                                     suppress_health_check=list(hypothesis.HealthCheck),
                                     phases=[hypothesis.Phase.generate])
                def fuzz(case: schemathesis.Case) -> None:
                    nonlocal sent
                    sent += 1
                    per_op[f"{case.method} {case.operation.path}"] += 1
                    t0 = time.perf_counter()
                    try:
                        response = case.call_and_validate(base_url=server.base, session=session,
                                                          headers={"X-API-Key": keys["admin"]}, checks=checks,
                                                          timeout=30)
                        statuses[response.status_code] += 1
                    except Exception as exc:  # noqa: BLE001 - a check failed: count it by check, keep going
                        for failure in getattr(exc, "exceptions", [exc]):
                            name = type(failure).__name__
                            failures[name] += 1
                            if len(examples) < 10:
                                examples.append(f"{case.method} {case.path}: {name}: {str(failure)[:300]}")
                    finally:
                        per_op_seconds[f"{case.method} {case.operation.path}"] += time.perf_counter() - t0

                try:
                    fuzz()
                except hypothesis.errors.Unsatisfiable:  # e.g. negative data for a route without inputs
                    unsatisfiable.add(label)
    seconds = time.perf_counter() - start
    server_errors = sum(n for code, n in statuses.items() if code >= 500) + failures.get("ServerError", 0)
    out = {
        "requests": sent, "operations": len(operations), "seconds": round(seconds, 1),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "failures_by_check": dict(failures), "server_errors": server_errors,
        "schema_violations": sum(n for name, n in failures.items() if name != "ServerError"),
        "rounds": round_no, "without_negative_data": sorted(unsatisfiable),
        "requests_per_operation": dict(per_op),
        "ms_per_request_by_operation": {k: round(1000 * per_op_seconds[k] / n, 1) for k, n in per_op.items()},
        "examples": examples,
    }
    print(f"fuzz: {sent:,} requests over {len(operations)} operations in {seconds:.0f} s; "
          f"server errors {out['server_errors']}, schema violations {out['schema_violations']}; statuses {out['statuses']}")
    for line in examples:
        print("   ", line)
    return out


# --------------------------------------------------------------------------- a 50 MB body
def _post_big(server: Server, key: str | None, size: int, chunked: bool) -> dict[str, Any]:
    """Send a POST announcing (or streaming) ``size`` bytes from a thread; time the answer."""
    head = ["POST /v1/events HTTP/1.1", f"Host: 127.0.0.1:{server.port}", "Content-Type: application/json"]
    head += ["Transfer-Encoding: chunked"] if chunked else [f"Content-Length: {size}"]
    if key:
        head.append(f"X-API-Key: {key}")
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sent = 0
    stop = threading.Event()

    def sender() -> None:
        nonlocal sent
        piece = b"[" + b'{"member_id": "m", "product_id": "p"},' * 1600
        try:
            while sent < size and not stop.is_set():
                data = (f"{len(piece):x}\r\n".encode() + piece + b"\r\n") if chunked else piece
                sock.sendall(data)
                sent += len(piece)
        except OSError:
            pass

    start = time.perf_counter()
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
    thread = threading.Thread(target=sender, daemon=True)
    thread.start()
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    seconds = time.perf_counter() - start
    stop.set()
    thread.join(5)
    sock.close()
    status = int(data.split()[1]) if data.startswith(b"HTTP/1.1") else None
    return {"status": status, "ms": round(seconds * 1000, 1), "client_sent_mb": round(sent / MB, 1)}


def check_big_body(server: Server, keys: dict[str, str]) -> dict[str, Any]:
    size = 50 * MB
    for _ in range(3):  # warm the route
        httpx.get(f"{server.base}/health/live")
    rss_before = server.rss_mb()
    cases = {}
    for name, key, chunked in (("announced, admin key", keys["admin"], False), ("announced, no key", None, False),
                               ("chunked, admin key", keys["admin"], True), ("chunked, no key", None, True)):
        runs = [_post_big(server, key, size, chunked) for _ in range(5)]
        cases[name] = {"status": sorted({r["status"] for r in runs}, key=str),
                       "ms_median": sorted(r["ms"] for r in runs)[2], "ms_max": max(r["ms"] for r in runs),
                       "client_sent_mb_max": max(r["client_sent_mb"] for r in runs)}
    time.sleep(0.5)
    rss_after = server.rss_mb()
    t = time.perf_counter()
    live = httpx.get(f"{server.base}/health/live").status_code
    live_ms = (time.perf_counter() - t) * 1000
    out = {"body_mb": 50, "cases": cases, "rss_before_mb": round(rss_before, 1), "rss_after_mb": round(rss_after, 1),
           "rss_growth_mb": round(rss_after - rss_before, 1), "health_live_after": live,
           "health_live_ms": round(live_ms, 1)}
    for name, c in cases.items():
        print(f"50 MB body, {name}: status {c['status']} in {c['ms_median']} ms (median of 5, max {c['ms_max']} ms); "
              f"client got to send {c['client_sent_mb_max']} MB")
    print(f"   server RSS {rss_before:.0f} -> {rss_after:.0f} MB; /health/live {live} in {live_ms:.1f} ms")
    return out


# --------------------------------------------------------------------------- slowloris
def check_slow_headers(server: Server, connections: int = 200, every: float = 2.0, watch: float = 20.0) -> dict[str, Any]:
    socks = []
    for _ in range(connections):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        s.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")
        s.setblocking(False)
        socks.append(s)
    open_ = set(range(connections))
    start = time.monotonic()
    timeline = []
    while time.monotonic() - start < watch and open_:
        time.sleep(every)
        for i in list(open_):
            try:
                socks[i].sendall(b"X-Slow: 1\r\n")
                if socks[i].recv(1024) == b"":
                    open_.discard(i)
            except BlockingIOError:
                continue
            except OSError:
                open_.discard(i)
        timeline.append((round(time.monotonic() - start, 1), len(open_)))
    for s in socks:
        s.close()
    t = time.perf_counter()
    ok = httpx.get(f"{server.base}/health/live").status_code
    out = {"connections": connections, "header_line_every_s": every, "watched_s": watch,
           "still_open_at_end": len(open_), "open_over_time": timeline, "health_live_after": ok,
           "health_live_ms": round((time.perf_counter() - t) * 1000, 1)}
    print(f"slow headers: {connections} connections, a header line every {every:g} s: open over time {timeline}; "
          f"{len(open_)} still open after {watch:g} s")
    return out


# --------------------------------------------------------------------------- reloads
def check_reloads(server: Server, keys: dict[str, str], n: int) -> dict[str, Any]:
    rss = []
    seconds = []
    tmp_during = []
    for i in range(n):
        t = time.perf_counter()
        r = httpx.post(f"{server.base}/v1/admin/reload", json={"alias": "champion"},
                       headers={"X-API-Key": keys["admin"]}, timeout=600)
        if r.status_code != 200:
            raise RuntimeError(f"reload {i + 1} answered {r.status_code}: {r.text}")
        seconds.append(time.perf_counter() - t)
        rss.append(server.rss_mb())
        tmp_during.append(server.tmp_bytes()[0])
        if (i + 1) % 10 == 0 or i == 0:
            print(f"   reload {i + 1}: {seconds[-1]:.1f} s, RSS {rss[-1]:.0f} MB, temporary folder {tmp_during[-1]:,} bytes",
                  flush=True)
    rc = server.stop(signal.SIGTERM)
    left, entries = server.tmp_bytes()
    out = {"reloads": n, "rss_after_first_mb": round(rss[0], 1), "rss_after_last_mb": round(rss[-1], 1),
           "rss_max_mb": round(max(rss), 1), "rss_change_pct": round(100 * (rss[-1] / rss[0] - 1), 1),
           "reload_seconds_median": round(sorted(seconds)[len(seconds) // 2], 2),
           "tmp_bytes_max_between_reloads": max(tmp_during), "sigterm_exit_code": rc,
           "tmp_bytes_after_sigterm": left, "tmp_entries_after_sigterm": entries}
    print(f"reloads: {n}; RSS after the first {rss[0]:.0f} MB, after the last {rss[-1]:.0f} MB "
          f"({out['rss_change_pct']:+.1f} %), max {max(rss):.0f} MB; temporary folder after SIGTERM: {left} bytes "
          f"in {entries} entries (exit code {rc})")
    return out


# --------------------------------------------------------------------------- live events
def check_events_durability(workdir: Path, stores: list[str], kills: int = 5, members: int = 2_000,
                            gap: tuple[float, float] = (1.0, 2.0)) -> dict[str, Any]:
    """Acknowledged events across ``kills`` kill -9 restarts with client retries, per store: 0 lost
    or unreadable, 0 duplicates (issue 12's live-events target), measured by
    :func:`experiments.bench_events_durability.measure` in ``workdir``."""
    sys.path.insert(0, str(ROOT))
    from experiments.bench_events_durability import Durability, measure, table

    cfg = Durability(kills=kills, min_gap=gap[0], max_gap=gap[1], members=members, products=max(members // 10, 30))
    results = measure(workdir, stores, cfg)
    print(table(results))
    keep = ("kills", "acknowledged", "lost_or_unreadable", "duplicates", "replay_applied", "stored_ids",
            "torn_fragments", "retries", "retried_events_already_stored", "ready_seconds", "met")
    return {"members": members, "gap_seconds": list(gap),
            "stores": {r["store"]: {k: r[k] for k in keep} for r in results}}


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tracking-uri", default=f"sqlite:///{ROOT / 'mlflow.db'}")
    ap.add_argument("--registered-model", default=MODEL)
    ap.add_argument("--keys", type=Path, default=ROOT / "data" / "demo-keys.toml",
                    help="keys file; its secrets are read from the .secrets file beside it")
    ap.add_argument("--fuzz-requests", type=int, default=26_000)
    ap.add_argument("--reloads", type=int, default=100)
    ap.add_argument("--skip", default="", help="comma-separated checks to skip: fuzz,body,slow,reloads,events")
    ap.add_argument("--events-stores", default="file,redis", help="events stores the events check kills: file, redis")
    ap.add_argument("--events-kills", type=int, default=5)
    ap.add_argument("--events-members", type=int, default=2_000, help="synthetic members of the events check's bundle")
    ap.add_argument("--events-gap", type=float, nargs=2, default=(1.0, 2.0), metavar=("MIN", "MAX"),
                    help="seconds between the events check's kills")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    needs_server = bool({"fuzz", "body", "slow", "reloads"} - skip)  # the events check starts its own
    secrets = args.keys.with_suffix(".secrets")
    if needs_server and (not args.keys.exists() or not secrets.exists()):
        print(f"no demo keys at {args.keys} / {secrets}: run `make demo` first (or pass --keys)", file=sys.stderr)
        return 2
    keys = read_keys(secrets) if needs_server else {}
    workdir = Path(tempfile.mkdtemp(prefix="bench-robustness-"))
    results: dict[str, Any] = {"model": args.registered_model if needs_server else None, "host_cpus": os.cpu_count()}
    try:
        if needs_server:
            server = Server(workdir, args.keys, args.tracking_uri, args.registered_model)
            results["start_seconds"] = round(server.wait_ready(), 1)
            results["rss_after_start_mb"] = round(server.rss_mb(), 1)
            print(f"server ready in {results['start_seconds']} s, RSS {results['rss_after_start_mb']} MB, "
                  f"temporary folder {server.tmp_bytes()[0]:,} bytes")
        if "fuzz" not in skip:
            results["fuzz"] = check_fuzz(server, keys, args.fuzz_requests)
        if "body" not in skip:
            results["big_body"] = check_big_body(server, keys)
        if "slow" not in skip:
            results["slow_headers"] = check_slow_headers(server)
        if "events" not in skip:
            stores = [s.strip() for s in args.events_stores.split(",") if s.strip()]
            results["events"] = check_events_durability(workdir / "events", stores, args.events_kills,
                                                        args.events_members, tuple(args.events_gap))
        if "reloads" not in skip:
            results["reloads"] = check_reloads(server, keys, args.reloads)  # ends with SIGTERM
        elif needs_server:
            server.stop()
            results["tmp_bytes_after_sigterm"] = server.tmp_bytes()[0]
    finally:
        if "server" in locals() and server.proc.poll() is None:
            server.stop(signal.SIGKILL)
        shutil.rmtree(workdir, ignore_errors=True)
    targets = {}
    if "fuzz" in results:
        f = results["fuzz"]
        targets["fuzz: >= 25,000 requests, 0 server errors, 0 schema violations"] = (
            f["requests"] >= 25_000 and f["server_errors"] == 0 and f["schema_violations"] == 0)
    if "big_body" in results:
        b = results["big_body"]
        targets["50 MB body answered 413 in < 50 ms, RSS not growing"] = (
            all(c["ms_max"] < 50 for c in b["cases"].values())
            and b["cases"]["announced, admin key"]["status"] == [413] and b["rss_growth_mb"] < 10)
    if "slow_headers" in results:
        targets["slow headers: no connection open after 20 s"] = results["slow_headers"]["still_open_at_end"] == 0
    if "events" in results:
        for store, e in results["events"]["stores"].items():
            targets[f"events ({store}): 0 acknowledged lost or unreadable, 0 duplicates across "
                    f"{args.events_kills} kill -9 restarts"] = e["met"]
    if "reloads" in results:
        r = results["reloads"]
        targets["0 bytes left in the temporary folder after the reloads and a SIGTERM"] = r["tmp_bytes_after_sigterm"] == 0
        targets["RSS after the last reload within 10 % of after the first"] = abs(r["rss_change_pct"]) <= 10
    results["targets"] = targets
    for name, ok in targets.items():
        print(f"{'met    ' if ok else 'MISSED '} {name}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
