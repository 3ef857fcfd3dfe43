"""Benchmark the recommendation server over HTTP: throughput and latency against a bare endpoint.

Every figure comes from the real server: uvicorn in a subprocess on 127.0.0.1 (a free port),
started as ``uvicorn --factory experiments.bench_serving_app:create_app`` -- the production app of
``serving.app.create_app_from_env`` plus a bare ``GET /bench/bare`` (``{"ok": true}``) and a few
benchmark-only twins of the picks route (see ``experiments/bench_serving_app.py``), so the
baseline is served by the same process with the same settings. Load comes from ``wrk`` (installed
with apt-get when missing) with a Lua script that varies member / product ids and sends the
X-API-Key header: closed loop, 16 connections, 2 threads, a bounded duration per scenario. The
bare endpoint is measured before and after the real routes; the baseline is their mean.

Workloads
---------
1. Ta-Feng: the registered champion (``recsys-tafeng@champion`` from a *copy* of mlflow.db). A
   bundle registered before pick lists existed is re-bundled here once, the way ``recsys train``
   now bundles (``recsys.precompute.pre_rank`` on the champion's own model, no retraining; the
   time it takes is reported), unless ``--tafeng-bundle`` names a bundle or ``--no-pre-rank``.
   Served the way ``recsys serve`` starts it (BLAS / OpenMP pinned to one thread, 1 worker, no
   access log): bare, picks for random known members (replenish, and discover), the same picks
   scored live (the lists ignored), picks for unknown members (fallback), similar products, an
   audience of 1,000.
   Inside that server, ``/bench/agreement`` compares list answers with live scoring. Then live
   purchases: one event for each of 1,000 other members (``POST /v1/events``, batches of 500, each
   batch's time reported, and how long until their lists are ranked again in the background), and
   picks for those members under load (``picks-live-members``, target: >= 50 % of bare, p99 <=
   20 ms), their list answers compared with live scoring too.
   With a Redis stream (``redis-server`` on a free port in the workdir, installed with apt-get
   when missing; skip with ``--skip-replicas``): two replicas (two server processes, one worker
   each) on the stream -- how long after a purchase is acknowledged by one replica the other
   answers that member's picks the same way (target: within 1 s) -- and one server with two
   workers (the default with a stream): bare, picks, and picks for members with live purchases.
2. Configurations (shorter runs, same scenarios each): BLAS/OpenMP threads (pinned like
   ``recsys serve``; env unset as with a bare ``uvicorn --factory``; default threads), 1 vs 2
   workers, async vs sync handler, the route's own query parsing + orjson vs FastAPI's
   dependencies, declared parameters and response-model encoder, access log on / off.
3. 10,000,000 members x 20,000 products, synthetic (``--members``): an ALS model over purchases
   drawn by the project's synthetic retailer generator (5 lines per member), fitted by implicit
   on the first 200,000 members and every member then solved exactly on their own purchases
   (``--vectors random``: the clustered Gaussian factors of earlier runs, a structureless worst
   case). Member tags (value_segment, lifecycle, ...) make filters work. The bundle's indexes are
   built once by ``recsys bundle index`` (timed, peak memory) and memory-mapped by the server:
   time to ready after start and for a reload (``--legacy-start``: also a start that builds the
   index at load, as bundles without indexes do). Audiences of 1,000 and 10,000 with and without
   tag filters (server time from the ``Server-Timing`` header the benchmark app adds, client time
   from httpx, sequential), recall of the member index as served (IVF at its calibrated nprobe, or
   exact where it routes) against exact search at several k and filters (measured inside the
   server on its own index), and picks / bare on the same server.

Usage (from the repository root)::

    .venv/bin/python experiments/bench_serving.py --json /tmp/bench_serving.json
    .venv/bin/python experiments/bench_serving.py --quick            # 4 s runs, 250k members
    .venv/bin/python experiments/bench_serving.py --skip-tafeng --skip-configs  # 10M
    .venv/bin/python experiments/bench_serving.py --skip-configs --skip-synth
    .venv/bin/python experiments/bench_serving.py --skip-configs --skip-synth --skip-replicas  # no Redis

Exit code 0 when every target was met, 1 otherwise (2 on a setup failure).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
TRACKING_DB = REPO / "mlflow.db"
MODEL_NAME, MODEL_ALIAS = "recsys-tafeng", "champion"
APP = "experiments.bench_serving_app:create_app"
THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")

PICKS_RATIO_TARGET = 0.80
PICKS_P99_TARGET_MS = 15.0
LIVE_PICKS_RATIO_TARGET = 0.50  # picks for members with live purchases (issue 16, item 4)
LIVE_PICKS_P99_TARGET_MS = 20.0
REPLICA_AGREEMENT_TARGET_S = 1.0  # a purchase on one replica visible in another's picks (item 3)
LIVE_MEMBERS = 1000
AUDIENCE_10K_TARGET_MS = 150.0  # issue 16: an audience of 10,000 out of 10M members, with tag filters
RECALL_TARGET = 0.95
READY_TARGET_S = 30.0  # issue 16: a replica ready (and a reload done) within 30 s at 10M members


# --------------------------------------------------------------------------- results
@dataclass
class Run:
    """One load run of one scenario."""

    workload: str
    config: str
    scenario: str
    path: str
    rps: float = float("nan")
    p50_ms: float = float("nan")
    p90_ms: float = float("nan")
    p99_ms: float = float("nan")
    max_ms: float = float("nan")
    requests: int = 0
    errors: int = 0  # socket errors + non-2xx
    server_mean_ms: float | None = None  # from the /metrics histogram (1 worker only)
    note: str = ""


@dataclass
class Report:
    started: str
    command: list[str]
    machine: dict[str, Any]
    settings: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)
    sequential: list[dict[str, Any]] = field(default_factory=list)
    recall: list[dict[str, Any]] = field(default_factory=list)
    configs: list[dict[str, Any]] = field(default_factory=list)
    targets: list[dict[str, Any]] = field(default_factory=list)
    agreement: dict[str, Any] = field(default_factory=dict)
    agreement_re_ranked: dict[str, Any] = field(default_factory=dict)
    live_events: list[dict[str, Any]] = field(default_factory=list)  # posting events: per server
    replicas: dict[str, Any] = field(default_factory=dict)
    index_build: dict[str, Any] = field(default_factory=dict)  # recsys bundle index on the synthetic bundle
    ready: list[dict[str, Any]] = field(default_factory=list)  # start / reload to ready, seconds
    errors: list[str] = field(default_factory=list)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- tools
def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    log("wrk not found: apt-get install -y wrk")
    for cmd in (["apt-get", "install", "-y", "wrk"], ["apt-get", "update"], ["apt-get", "install", "-y", "wrk"]):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(cmd, check=False, timeout=300, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if shutil.which("wrk"):
            return str(shutil.which("wrk"))
    raise SystemExit("wrk is not installed and apt-get could not install it")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_keys(workdir: Path) -> str:
    """An admin key (picks, similar, audiences) for the benchmark; only its digest is on disk."""
    from serving.keys import hash_key

    secret = secrets.token_urlsafe(24)
    (workdir / "keys.toml").write_text(f'[[keys]]\nid = "bench"\nrole = "admin"\nsha256 = "{hash_key(secret)}"\n')
    return secret


# --------------------------------------------------------------------------- server
@dataclass
class ServerConfig:
    name: str
    workers: int = 1
    threads: str = "pinned"  # pinned (recsys serve) | unset (bare uvicorn --factory) | default
    access_log: bool = False  # what `recsys serve` runs (uvicorn's default is on)
    # several workers: serving.cli.run_workers (what `recsys serve --workers N` runs) or the plain
    # `uvicorn --workers N` command line
    launcher: str = "serving-cli"
    events_stream: str | None = None  # a Redis URL: live events through the shared stream


class Server:
    """uvicorn in a subprocess on 127.0.0.1; stopped (process group) on exit."""

    def __init__(self, cfg: ServerConfig, bundle: Path, workdir: Path, pythonpath: list[Path]):
        self.cfg, self.port = cfg, free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_") and k not in THREAD_VARS}
        env |= {
            "PYTHONPATH": os.pathsep.join(str(p) for p in [*pythonpath, REPO]),
            "RECSYS_BUNDLE": str(bundle),
            "RECSYS_API_KEYS_FILE": str(workdir / "keys.toml"),
            "RECSYS_EVENTS_DIR": str(workdir / f"events-{cfg.name}"),
            "RECSYS_CAMPAIGN_DB": f"sqlite:///{workdir / f'campaigns-{cfg.name}.db'}",  # + the audit trail
            "RECSYS_BENCH_BARE": "1",
            "RECSYS_BENCH_VARIANTS": "1",
        }
        if cfg.events_stream:
            env["RECSYS_EVENTS_STREAM"] = cfg.events_stream
        if cfg.threads == "pinned":  # what serving.cli.serve does before anything imports numpy
            env |= dict.fromkeys(THREAD_VARS, "1")
        elif cfg.threads == "default":  # no pinning at all: BLAS / OpenMP use every core
            env["RECSYS_BLAS_THREADS"] = str(os.cpu_count() or 2)
        if cfg.workers > 1 and cfg.launcher == "serving-cli":
            cmd = [PY, "-m", "experiments.bench_serving_launch", str(self.port), str(cfg.workers)]
        else:
            cmd = [PY, "-m", "uvicorn", "--factory", APP, "--host", "127.0.0.1", "--port", str(self.port),
                   "--workers", str(cfg.workers), "--log-level", "info"]
        if not cfg.access_log:
            cmd.append("--no-access-log")
        self.log_path = workdir / "logs" / f"server-{cfg.name}-{self.port}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        # cwd outside the repository: `python -m` puts the cwd first on sys.path, and PYTHONPATH
        # must decide which recsys is imported (see resolve_code)
        self.proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.cmd = cmd

    def wait_ready(self, timeout: float, settle: int = 1) -> float:
        """Seconds until /health/ready answered 200 ``settle`` times in a row (every worker)."""
        import httpx

        start = time.perf_counter()
        ok = 0
        with httpx.Client(timeout=5.0) as client:
            while time.perf_counter() - start < timeout:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited ({self.proc.returncode}); log tail:\n{self.tail()}")
                try:
                    r = client.get(self.base + "/health/ready", headers={"Connection": "close"})
                    if r.status_code == 200:
                        ok += 1
                        if ok >= settle:
                            return time.perf_counter() - start
                        continue
                    ok = 0
                    body = r.json()
                    if body.get("status") == "failed":
                        raise RuntimeError(f"model load failed: {body.get('error')}")
                except httpx.TransportError:
                    ok = 0
                time.sleep(0.5)
        raise RuntimeError(f"server not ready after {timeout:.0f} s; log tail:\n{self.tail()}")

    def tail(self, n: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- load (wrk)
_LUA = r"""
local items = {ITEMS}
local method, prefix, suffix = "{METHOD}", "{PREFIX}", "{SUFFIX}"
local body_head, body_tail = {BODY_HEAD}, {BODY_TAIL}
wrk.headers["X-API-Key"] = "{KEY}"
if method == "POST" then wrk.headers["Content-Type"] = "application/json" end
local n_threads = 0
function setup(thread)
  n_threads = n_threads + 1
  thread:set("tid", n_threads)
end
function init(args)
  math.randomseed(7919 * (tid or 1) + os.time())
end
function request()
  local item = items[math.random(#items)]
  if method == "POST" then
    return wrk.format("POST", prefix, nil, body_head .. item .. body_tail)
  end
  return wrk.format("GET", prefix .. item .. suffix)
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def _lua_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass
class Scenario:
    name: str
    method: str  # GET: prefix + item + suffix; POST: prefix is the path, body_head + item + body_tail
    prefix: str
    items: list[str]
    suffix: str = ""
    body_head: str = ""
    body_tail: str = ""
    route: str = ""  # route template in /metrics

    @property
    def example(self) -> tuple[str, str, str | None]:
        item = self.items[0]
        if self.method == "POST":
            return "POST", self.prefix, self.body_head + item + self.body_tail
        return "GET", self.prefix + item + self.suffix, None


def _metrics(base: str) -> dict[str, tuple[float, float]]:
    """route -> (seconds sum, count) from the server's latency histogram."""
    import httpx

    out: dict[str, tuple[float, float]] = {}
    try:
        text = httpx.get(base + "/metrics", timeout=10).text
    except httpx.HTTPError:
        return out
    for kind, route, value in re.findall(r'^recsys_request_seconds_(sum|count)\{route="([^"]*)"\} (\S+)$', text, re.M):
        s, c = out.get(route, (0.0, 0.0))
        out[route] = (float(value), c) if kind == "sum" else (s, float(value))
    return out


def check_once(server: Server, sc: Scenario, key: str) -> str | None:
    """One request before the load: None when it answers 2xx, else what went wrong."""
    import httpx

    method, path, body = sc.example
    try:
        r = httpx.request(method, server.base + path, content=body, timeout=30,
                          headers={"X-API-Key": key, "Content-Type": "application/json"})
    except httpx.HTTPError as exc:
        return f"{sc.name}: {type(exc).__name__}: {exc}"
    if r.status_code // 100 != 2:
        return f"{sc.name}: HTTP {r.status_code}: {r.text[:300]}"
    return None


def run_wrk(wrk: str, server: Server, sc: Scenario, key: str, seconds: float, workdir: Path, *,
            connections: int, threads: int, workload: str, config: str) -> Run:
    items = "{" + ",".join(_lua_str(i) for i in sc.items) + "}"
    script = (_LUA.replace("{ITEMS}", items).replace("{METHOD}", sc.method).replace("{PREFIX}", sc.prefix)
              .replace("{SUFFIX}", sc.suffix).replace("{BODY_HEAD}", _lua_str(sc.body_head))
              .replace("{BODY_TAIL}", _lua_str(sc.body_tail)).replace("{KEY}", key))
    lua = workdir / "wrk" / f"{sc.name}.lua"
    lua.parent.mkdir(parents=True, exist_ok=True)
    lua.write_text(script)
    run = Run(workload, config, sc.name, sc.prefix + ("{id}" + sc.suffix if sc.method == "GET" else ""))
    before = _metrics(server.base) if server.cfg.workers == 1 else {}
    cmd = [wrk, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "5s",
           "-s", str(lua), server.base]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
    except subprocess.TimeoutExpired:
        run.note = "wrk did not finish in time"
        return run
    m = re.search(r"^WRKJSON (\{.*\})$", out.stdout, re.M)
    if not m:
        run.note = f"wrk failed: {out.stdout[-300:]} {out.stderr[-300:]}"
        return run
    d = json.loads(m.group(1))
    run.requests = int(d["requests"])
    run.rps = d["requests"] / (d["duration_us"] / 1e6)
    run.p50_ms, run.p90_ms, run.p99_ms = d["p50_us"] / 1e3, d["p90_us"] / 1e3, d["p99_us"] / 1e3
    run.max_ms = d["max_us"] / 1e3
    run.errors = sum(int(d[k]) for k in ("connect", "read", "write", "status", "timeout"))
    if before:
        after = _metrics(server.base)
        s0, c0 = before.get(sc.route, (0.0, 0.0))
        s1, c1 = after.get(sc.route, (0.0, 0.0))
        if c1 > c0:
            run.server_mean_ms = (s1 - s0) / (c1 - c0) * 1e3
    return run


def sequential(server: Server, sc: Scenario, key: str, n: int, max_seconds: float, workload: str,
               label: str) -> dict[str, Any]:
    """``n`` requests one at a time (bounded by ``max_seconds``): client and server time."""
    import httpx

    client_ms: list[float] = []
    server_ms: list[float] = []
    sizes: list[int] = []
    errors = 0
    rng = np.random.default_rng(1)
    deadline = time.perf_counter() + max_seconds
    with httpx.Client(timeout=30, headers={"X-API-Key": key, "Content-Type": "application/json"}) as client:
        for i in range(n):
            if time.perf_counter() > deadline:
                break
            item = sc.items[int(rng.integers(len(sc.items)))]
            body = sc.body_head + item + sc.body_tail if sc.method == "POST" else None
            path = sc.prefix if sc.method == "POST" else sc.prefix + item + sc.suffix
            t0 = time.perf_counter()
            r = client.request(sc.method, server.base + path, content=body)
            dt = (time.perf_counter() - t0) * 1e3
            if r.status_code // 100 != 2:
                errors += 1
                continue
            if i == 0 and n > 3:
                continue  # the first call warms caches: not counted
            client_ms.append(dt)
            sizes.append(len(r.content))
            m = re.search(r"app;dur=([0-9.]+)", r.headers.get("server-timing", ""))
            if m:
                server_ms.append(float(m.group(1)))

    def pct(v: list[float], q: float) -> float:
        return float(np.percentile(v, q)) if v else float("nan")

    return {
        "workload": workload, "scenario": label, "requests": len(client_ms), "errors": errors,
        "client_p50_ms": pct(client_ms, 50), "client_p99_ms": pct(client_ms, 99),
        "server_p50_ms": pct(server_ms, 50), "server_p99_ms": pct(server_ms, 99),
        "server_max_ms": max(server_ms) if server_ms else float("nan"),
        "response_kb": float(np.mean(sizes)) / 1024 if sizes else float("nan"),
    }


# --------------------------------------------------------------------------- bundles
def tafeng_bundle(workdir: Path) -> Path:
    """The champion bundle, downloaded from a copy of mlflow.db (the real store is never opened
    for writing); cached per registry version, so a new champion is downloaded again."""
    db = workdir / "mlflow-copy.db"
    shutil.copy2(TRACKING_DB, db)
    code = (
        "import sys; from pathlib import Path; "
        "from recsys.pyfunc import download_bundle, mlflow_client, resolve_version; "
        f"uri = 'sqlite:///{db}'; v = resolve_version(mlflow_client(uri), {MODEL_NAME!r}, {MODEL_ALIAS!r}); "
        f"dst = Path({str(workdir / 'tafeng')!r}) / f'v{{v}}'; "
        "print(dst / 'bundle' if (dst / 'bundle' / 'bundle.json').exists() else "
        f"download_bundle({MODEL_NAME!r}, v, tracking_uri=uri, dst=str(dst)))"
    )
    # artifact locations in the store may be relative to the repository: run from there
    out = subprocess.run([PY, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"download of {MODEL_NAME}@{MODEL_ALIAS} failed:\n{out.stderr[-2000:]}")
    path = Path(out.stdout.strip().splitlines()[-1])
    return path


def pre_ranked_bundle(src: Path, workdir: Path, report: Report, pythonpath: list[Path]) -> Path:
    """``src`` with pre-ranked pick lists: as is when it has them, else re-bundled once next to it
    (the champion's own model, ``recsys.precompute.pre_rank``: what ``recsys train`` does when it
    bundles; nothing is retrained). Runs in a subprocess on the code that reads ``src``
    (:func:`resolve_code`)."""
    meta = json.loads((src / "bundle.json").read_text())
    if meta.get("pre_ranked"):
        report.settings["pre_ranked"] = meta["pre_ranked"]
        return src
    dst = src.parent / "bundle-pre-ranked"
    if (dst / "bundle.json").exists():
        done = json.loads((dst / "bundle.json").read_text())
        if done.get("run_id") == meta.get("run_id") and done.get("source_saved_at") == meta.get("saved_at") \
                and done.get("pre_ranked"):
            report.settings["pre_ranked"] = done["pre_ranked"]
            log(f"pre-ranked bundle (cached): {dst}")
            return dst
    log(f"pre-ranking every member of {src} (recsys.precompute.pre_rank; once per bundle) ...")
    code = (
        "import json, sys, time; from recsys.bundle import load_bundle, save_bundle; "
        "from recsys.precompute import pre_rank; "
        f"b = load_bundle({str(src)!r}); t = time.perf_counter(); b.pre_ranked = pre_rank(b.model); "
        "s = time.perf_counter() - t; b.meta['source_saved_at'] = b.meta.get('saved_at'); "
        f"save_bundle({str(dst)!r}, b); print(json.dumps({{'seconds': s, 'members': b.model.n_members}}))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in [*pythonpath, REPO])}
    out = subprocess.run([PY, "-c", code], cwd=workdir, env=env, capture_output=True, text=True, timeout=3600,
                         check=False)
    if out.returncode != 0:
        raise RuntimeError(f"pre-ranking {src} failed:\n{out.stderr[-2000:]}")
    done = json.loads(out.stdout.strip().splitlines()[-1])
    report.settings["pre_ranked"] = json.loads((dst / "bundle.json").read_text()).get("pre_ranked")
    report.notes.append(f"the champion bundle had no pre-ranked lists: re-bundled with them ({done['members']:,} "
                        f"members, both modes, top-100) in {done['seconds']:.0f} s -> {dst}")
    log(report.notes[-1])
    return dst


def _loads_with(bundle: Path, pythonpath: list[Path], workdir: Path) -> str | None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in [*pythonpath, REPO])}
    code = f"from recsys.bundle import load_bundle; load_bundle({str(bundle)!r})"
    out = subprocess.run([PY, "-c", code], cwd=workdir, env=env, capture_output=True, text=True, timeout=600,
                         check=False)
    return None if out.returncode == 0 else (out.stderr.strip().splitlines() or ["?"])[-1]


# the serving layer of recsys/ -- the bundle format and the pick lists -- always comes from the
# working tree, also over an older commit's models (below)
SERVING_LAYER = ("recsys/bundle.py", "recsys/precompute.py", "recsys/ann.py")


def resolve_code(bundle: Path, workdir: Path, report: Report) -> list[Path]:
    """Extra PYTHONPATH entries the server needs to read ``bundle``: none when the working tree
    reads it; otherwise ``recsys/`` as committed in the newest recent commit that reads it
    (``git archive``, read-only) -- for a bundle written before a later model change -- with the
    working tree's bundle format and pick lists (``SERVING_LAYER``) copied over it.
    ``serving/`` is always the working tree's."""
    err = _loads_with(bundle, [], workdir)
    if err is None:
        return []
    commits = subprocess.run(["git", "-C", str(REPO), "log", "-n", "12", "--format=%h"], capture_output=True,
                             text=True, check=False).stdout.split()
    for commit in commits:
        code = workdir / f"code-{commit}-serving-layer"
        if not (code / "recsys").exists():
            code.mkdir(parents=True, exist_ok=True)
            subprocess.run(f"git -C {REPO} archive {commit} recsys | tar -x -C {code}", shell=True, check=True,
                           timeout=120)
        for name in SERVING_LAYER:
            shutil.copy2(REPO / name, code / name)
        if _loads_with(bundle, [code], workdir) is None:
            report.notes.append(
                f"the working tree's recsys cannot read the champion bundle ({err}); the Ta-Feng servers ran "
                f"with recsys/ from commit {commit} (git archive, read-only) plus the working tree's "
                f"{' and '.join(SERVING_LAYER)}; serving/ from the working tree"
            )
            log(report.notes[-1])
            return [code]
    raise RuntimeError(f"the champion bundle loads neither with the working tree ({err}) nor the last "
                       f"{len(commits)} commits' recsys/")


def _synth_purchases(n_members: int, n_products: int, lines: int, seed: int) -> tuple[Any, np.ndarray]:
    """(members x products purchase-line counts, product categories) drawn by the project's
    synthetic retailer (``recsys.data.synth``: staples, favourite categories, Zipf popularity,
    price tiers), straight from its generator: no files, no text ids."""
    import scipy.sparse as sp

    from recsys.data.synth import generator as gen

    spec = gen.SynthSpec(members=n_members, products=n_products, lines=lines, seed=seed)
    _, cat, mem = gen.prepare(spec, Path(tempfile.gettempdir()))  # the catalogue and members, as every layout
    rows, cols = [], []
    for chunk in gen.generate_chunks(spec, cat, mem):
        rows.append(chunk["member"].astype(np.int32))
        cols.append(chunk["product"].astype(np.int32))
    r, c = np.concatenate(rows), np.concatenate(cols)
    del rows, cols
    counts = sp.csr_matrix((np.ones(len(r), np.float32), (r, c)), shape=(n_members, n_products))
    counts.sum_duplicates()
    return counts, np.asarray(cat.category, dtype=np.int32)


def synthetic_bundle(path: Path, n_members: int, n_products: int, factors: int, seed: int = 0,
                     vectors: str = "als", lines_per_member: int = 5) -> Path:
    """A servable bundle of an ALS model over ``n_members`` synthetic members (cached in ``path``).

    ``vectors="als"``: purchases drawn by the synthetic retailer generator (``lines_per_member``
    lines each on average); implicit's ALS fitted on the first 200,000 members' purchases (BM25
    weights, 15 iterations), then every member's vector solved exactly from their own purchases
    with the products' vectors fixed -- the user half of an ALS iteration, what a full fit would
    end on. Trained factors have the shape audience search meets in production: a few strong
    directions, norms that grow with activity.
    ``vectors="random"``: clustered Gaussian factors with log-normal norms, not trained, and a
    Zipf history (the benchmark before); nearly structureless in 64 dimensions, so an IVF index
    must probe most cells to reach recall 0.95 -- a worst case, not a model."""
    import pyarrow as pa
    import scipy.sparse as sp

    from recsys.bundle import FORMAT_VERSION, Bundle, load_bundle, save_bundle
    from recsys.idmap import IdMap
    from recsys.models.base import get_model

    meta_path = path / "bundle.json"
    # a bundle of an older format version is made again: it would load, but not as this release writes it
    key = {"n_members": n_members, "n_products": n_products, "bench_seed": seed, "bench_factors": factors,
           "bench_vectors": vectors, "bench_lines_per_member": lines_per_member if vectors == "als" else None,
           "format_version": FORMAT_VERSION}
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if all(meta.get(k) == v for k, v in key.items()):
            with contextlib.suppress(Exception):
                load_bundle(path)  # still readable by this code
                return path
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    if vectors == "als":
        from implicit.cpu.als import AlternatingLeastSquares
        from implicit.nearest_neighbours import bm25_weight
        from threadpoolctl import threadpool_limits

        counts, category = _synth_purchases(n_members, n_products, lines_per_member * n_members, seed)
        log(f"  purchases: {counts.nnz:,} (member, product) pairs in {time.perf_counter() - t0:.0f} s")
        weighted = bm25_weight(counts, K1=100.0, B=0.8).tocsr().astype(np.float32)
        with threadpool_limits(1, "blas"):
            als = AlternatingLeastSquares(factors=factors, iterations=15, regularization=0.05, random_state=seed,
                                          use_cg=False)
            als.fit(weighted[: min(200_000, n_members)], show_progress=False)
            items = np.ascontiguousarray(als.item_factors, dtype=np.float32)
            users = np.zeros((n_members, factors), dtype=np.float32)
            als.solver(weighted, users, items, als.regularization, num_threads=0)  # exact per-member solve
        del weighted
        hist = counts
        hist.data[:] = 1.0
        log(f"  ALS vectors in {time.perf_counter() - t0:.0f} s")
    elif vectors == "random":
        n_clusters, d = 256, factors
        centres = rng.standard_normal((n_clusters, d), dtype=np.float32)

        def random_vectors(n: int, sigma: float) -> np.ndarray:
            out = np.empty((n, d), dtype=np.float32)
            for start in range(0, n, 200_000):
                m = min(200_000, n - start)
                g = rng.integers(n_clusters, size=m)
                v = 0.6 * centres[g] + 0.8 * rng.standard_normal((m, d), dtype=np.float32)
                v *= rng.lognormal(0.0, sigma, size=(m, 1)).astype(np.float32) / np.sqrt(d)
                out[start : start + m] = v
            return out

        users, items = random_vectors(n_members, 0.4), random_vectors(n_products, 0.3)
        # a purchase history of the right shape (popularity, fallbacks, "bought" sets): long-tailed
        # activity, Zipf products; ~7 distinct products per member
        lines = np.minimum(1 + rng.geometric(0.15, size=n_members), 60)
        pop = 1.0 / np.arange(1, n_products + 1) ** 0.9
        perm = rng.permutation(n_products)
        cols = perm[np.searchsorted(np.cumsum(pop / pop.sum()), rng.random(int(lines.sum())), side="right")
                    .clip(0, n_products - 1)]
        rows = np.repeat(np.arange(n_members, dtype=np.int64), lines)
        hist = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_members, n_products))
        hist.sum_duplicates()
        hist.data[:] = 1.0
        category = rng.integers(200, size=n_products).astype(np.int32)
    else:
        raise ValueError(f"vectors must be 'als' or 'random', not {vectors!r}")

    model = get_model("als")({"factors": factors, "iterations": 3})
    model.n_members, model.n_products = n_members, n_products
    model.history, model.category = hist, category
    model.user_factors, model.item_factors = users, items
    model.warm_items = np.ones(n_products, dtype=bool)
    model.is_fitted = True

    member_ids = np.array([f"M{i:07d}" for i in range(n_members)], dtype=object)
    product_ids = np.array([f"P{i:06d}" for i in range(n_products)], dtype=object)

    def pick(labels: tuple[str, ...], shares: tuple[float, ...], n: int) -> pa.Array:
        codes = rng.choice(len(labels), size=n, p=np.asarray(shares) / sum(shares))
        return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)), pa.array(labels)).cast(pa.string())

    member_table = pa.table({
        "member_id": pa.array(member_ids, pa.string()),
        "value_segment": pick(("high", "mid", "low", "new"), (0.1, 0.3, 0.45, 0.15), n_members),
        "lifecycle": pick(("active", "lapsing", "churned", "new"), (0.5, 0.2, 0.15, 0.15), n_members),
        "price_sensitivity": pick(("budget", "mid", "premium"), (0.35, 0.45, 0.2), n_members),
        "age_group": pick(("<25", "25-34", "35-44", "45-54", "55-64", "65+"), (12, 24, 24, 19, 13, 8), n_members),
        "region": pick(("north", "south", "east", "west", "central"), (2, 2, 2, 2, 2), n_members),
    })
    prices = np.round(rng.lognormal(3.0, 0.8, size=n_products), 2)
    product_table = pa.table({
        "product_id": pa.array(product_ids, pa.string()),
        "category": pa.array([f"cat{c:03d}" for c in category], pa.string()),
        "price": pa.array(prices),
        "price_band": pa.array(np.where(prices < 10, "low", np.where(prices < 40, "mid", "high")).tolist()),
        "brand": pa.array([f"brand{b:04d}" for b in rng.integers(2000, size=n_products)], pa.string()),
        "name": pa.array([f"product {i}" for i in range(n_products)], pa.string()),
        "active": pa.array(np.ones(n_products, dtype=bool)),
    })
    note = ("ALS fitted on synthetic retailer purchases (recsys.data.synth), every member solved on their own: "
            "benchmark only" if vectors == "als" else
            "random clustered factors wrapped into a fitted ALS (not trained): latency benchmark only")
    bundle = Bundle(model, IdMap(member_ids), IdMap(product_ids), member_table, product_table, {
        "dataset": f"synthetic-{vectors}-factors", "as_of": "2024-06-01", **key, "note": note,
    })
    save_bundle(path, bundle)
    log(f"synthetic bundle: {n_members:,} members x {n_products:,} products, {hist.nnz:,} history entries, "
        f"written in {time.perf_counter() - t0:.0f} s -> {path}")
    return path


def _size_label(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k" if n % 1000 == 0 else str(n)


def _tree_rss(pid: int) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_foundation import _tree_rss_bytes

    return _tree_rss_bytes(pid)


def index_bundle(bundle: Path, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """``recsys bundle index`` on the synthetic bundle, timed with the peak memory of its process
    (what a batch job pays once per bundle); skipped when the bundle already has its indexes
    (the figures of the run that built them are kept beside it)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_foundation import StepResult, run_step

    record = bundle / "index-build.json"
    meta = json.loads((bundle / "bundle.json").read_text())
    if meta.get("indexes") and record.exists():
        out = json.loads(record.read_text())
        log(f"  bundle indexes built earlier: {out['wall_s']:.0f} s, peak {out['peak_rss_bytes'] / 2**30:.1f} GB")
        return {**out, "cached": True}
    recsys = str(Path(PY).parent / "recsys")
    (workdir / "logs").mkdir(parents=True, exist_ok=True)  # before any server has made it
    step = run_step(StepResult("serving", "bundle-index", [recsys, "bundle", "index", str(bundle)]),
                    workdir / "logs", {**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    if not step.ok:
        raise RuntimeError(f"recsys bundle index failed; log: {step.log}")
    meta = json.loads((bundle / "bundle.json").read_text())
    out = {"wall_s": step.wall_s, "peak_rss_bytes": step.peak_rss_bytes, "command": step.command,
           "indexes": meta.get("indexes", {})}
    record.write_text(json.dumps(out, indent=1))
    return out


def _without_indexes(bundle: Path, workdir: Path) -> Path:
    """The same bundle with no ``indexes`` part (as an older bundle): links to its files and a
    ``bundle.json`` without the part, so a server builds its index at load."""
    dst = workdir / f"{bundle.name}-no-indexes"
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    for item in bundle.iterdir():
        if item.name not in ("bundle.json", "indexes", "index-build.json"):
            (dst / item.name).symlink_to(item)
    meta = json.loads((bundle / "bundle.json").read_text())
    meta.pop("indexes", None)
    (dst / "bundle.json").write_text(json.dumps(meta, indent=1))
    return dst


# --------------------------------------------------------------------------- scenarios
def tafeng_scenarios(bundle: Path, n: int = 4000) -> dict[str, Scenario]:
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    members = pq.read_table(bundle / "members.parquet", columns=["member_id"]).column(0).to_pylist()
    products = pq.read_table(bundle / "products.parquet", columns=["product_id"]).column(0).to_pylist()
    order = rng.permutation(len(members))
    known = [members[i] for i in order[: min(n, len(members))]]
    # other members, who get a live purchase before their picks are measured
    live = [members[i] for i in order[min(n, len(members)) : min(n, len(members)) + LIVE_MEMBERS]]
    prods = [products[i] for i in rng.choice(len(products), size=min(n, len(products)), replace=False)]
    unknown = [f"bench-unknown-{i}" for i in range(n)]
    picks_route = "/v1/members/{member_id}/picks"
    return {
        "bare": Scenario("bare", "GET", "/bench/bare", [""], route="/bench/bare"),
        "bare-sync": Scenario("bare-sync", "GET", "/bench/bare-sync", [""], route="/bench/bare-sync"),
        "picks": Scenario("picks", "GET", "/v1/members/", known, "/picks", route=picks_route),
        "picks-sync": Scenario("picks-sync", "GET", "/bench/picks-sync/", known, route="/bench/picks-sync/{member_id}"),
        "picks-fastapi": Scenario("picks-fastapi", "GET", "/bench/picks-fastapi/", known,
                                  route="/bench/picks-fastapi/{member_id}"),
        "picks-discover": Scenario("picks-discover", "GET", "/v1/members/", known, "/picks?mode=discover",
                                   route=picks_route),
        "picks-live": Scenario("picks-live", "GET", "/bench/picks-live/", known, route="/bench/picks-live/{member_id}"),
        "picks-unknown": Scenario("picks-unknown", "GET", "/v1/members/", unknown, "/picks", route=picks_route),
        "picks-live-members": Scenario("picks-live-members", "GET", "/v1/members/", live, "/picks", route=picks_route),
        "similar": Scenario("similar", "GET", "/v1/products/", prods, "/similar",
                            route="/v1/products/{product_id}/similar"),
        "audience-1000": Scenario("audience-1000", "POST", "/v1/audiences", prods[:500], body_head='{"product_id":"',
                                  body_tail='","size":1000}', route="/v1/audiences"),
    }


def run_set(wrk: str, server: Server, names: list[str], scen: dict[str, Scenario], key: str, seconds: float,
            warmup: float, workdir: Path, args: argparse.Namespace, report: Report, workload: str) -> list[Run]:
    runs = []
    for name in names:
        sc = scen[name]
        err = check_once(server, sc, key)
        if err:
            report.errors.append(f"{workload}/{server.cfg.name}: {err}")
            log(f"  {name}: SKIPPED ({err})")
            continue
        if warmup > 0:
            run_wrk(wrk, server, sc, key, warmup, workdir, connections=args.connections, threads=args.threads,
                    workload=workload, config=server.cfg.name)
        r = run_wrk(wrk, server, sc, key, seconds, workdir, connections=args.connections, threads=args.threads,
                    workload=workload, config=server.cfg.name)
        runs.append(r)
        report.runs.append(r)
        srv = f", server mean {r.server_mean_ms:.2f} ms" if r.server_mean_ms is not None else ""
        log(f"  {server.cfg.name:>18} {name:<14} {r.rps:8.0f} req/s  p50 {r.p50_ms:7.2f}  p99 {r.p99_ms:7.2f} ms"
            f"  errors {r.errors}{srv} {r.note}")
    return runs


def _baseline(runs: list[Run], name: str = "bare") -> float:
    vals = [r.rps for r in runs if r.scenario == name and np.isfinite(r.rps)]
    return float(np.mean(vals)) if vals else float("nan")


# --------------------------------------------------------------------------- live events
def post_live_events(server: Server, key: str, members: list[str], products: list[str], tag: str,
                     batch: int = 500) -> dict[str, Any]:
    """One purchase (a random product, now) for each of ``members``, in batches; the time of each
    batch's answer, how long after the last one every member's lists were ranked again (in the
    background), and what the server says."""
    import httpx

    rng = np.random.default_rng(5)
    seconds: list[float] = []
    recorded = 0
    with httpx.Client(base_url=server.base, timeout=600, headers={"X-API-Key": key}) as client:
        for start in range(0, len(members), batch):
            events = [{"event_id": f"{tag}-{start + i}", "member_id": m,
                       "product_id": products[int(rng.integers(len(products)))], "channel": "bench"}
                      for i, m in enumerate(members[start : start + batch])]
            t0 = time.perf_counter()
            r = client.post("/v1/events", json=events)
            seconds.append(time.perf_counter() - t0)
            r.raise_for_status()
            recorded += r.json()["recorded"]
        # the lists are ranked again in the background: until /v1/model says none is pending (on
        # several reads in a row: each may reach another worker)
        t0, settled = time.perf_counter(), 0
        while settled < 3 * server.cfg.workers and time.perf_counter() - t0 < 600:
            info = client.get("/v1/model").json()
            pending = (info.get("pre_ranked") or {}).get("pending_rerank", 0)
            settled = settled + 1 if pending == 0 else 0
            time.sleep(0.05)
        ranked_s = time.perf_counter() - t0
    return {"server": server.cfg.name, "members": len(members), "batch": batch, "recorded": recorded,
            "batch_seconds": [round(x, 3) for x in seconds], "rerank_wait_seconds": round(ranked_s, 2),
            "pre_ranked": info.get("pre_ranked"), "events": info.get("events")}


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Debian's redis-server (apt-get install when missing) on a free port, durable as a
    deployment runs it (append-only file, fsync on every write), in a fresh folder."""
    binary = shutil.which("redis-server")
    if binary is None:
        log("redis-server not found: apt-get install -y redis-server")
        for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "redis-server"]):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(cmd, check=False, timeout=600, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed and apt-get could not install it")
    folder = workdir / "redis"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
                             "--appendonly", "yes", "--appendfsync", "always", "--save", "",
                             "--logfile", str(folder / "redis.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 20
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2) as conn:
            conn.sendall(b"PING\r\n")
            if conn.recv(16).startswith(b"+PONG"):
                return proc, f"redis://127.0.0.1:{port}/0"
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("redis-server did not start")
        time.sleep(0.05)


def replica_agreement(a: Server, b: Server, key: str, members: list[str], n: int) -> dict[str, Any]:
    """For ``n`` members: buy the first product of their discover picks on replica ``a`` (so the
    answer must change), then poll ``b`` until its picks for the member equal ``a``'s; the time
    from ``a``'s acknowledgement to ``b`` agreeing."""
    import httpx

    seconds: list[float] = []
    timeouts = 0
    with httpx.Client(timeout=30, headers={"X-API-Key": key}) as client:
        for i, member in enumerate(members[:n]):
            path = f"/v1/members/{member}/picks?mode=discover"
            before = client.get(b.base + path).json()
            if not before.get("picks"):
                continue
            event = [{"event_id": f"bench-agree-{i}", "member_id": member,
                      "product_id": before["picks"][0]["product_id"]}]
            client.post(a.base + "/v1/events", json=event).raise_for_status()
            acked = time.perf_counter()
            want = client.get(a.base + path).json()
            while True:
                got = client.get(b.base + path).json()
                waited = time.perf_counter() - acked
                if got == want:
                    seconds.append(waited)
                    break
                if waited > 10:
                    timeouts += 1
                    break
                time.sleep(0.002)

    def pct(q: float) -> float:
        return float(np.percentile(seconds, q)) if seconds else float("nan")

    return {"members": len(seconds), "timeouts": timeouts, "p50_ms": pct(50) * 1e3, "p99_ms": pct(99) * 1e3,
            "max_ms": max(seconds, default=float("nan")) * 1e3,
            "note": "time from replica a acknowledging a purchase to replica b answering that member's picks as a "
                    "does (b polled every ~2 ms)"}


def replicas(wrk: str, bundle: Path, extra: list[Path], workdir: Path, key: str, scen: dict[str, Scenario],
             products: list[str], args: argparse.Namespace, report: Report) -> None:
    """Live events through a Redis stream: two replicas agreeing, and one server with two workers."""
    proc, url = start_redis(workdir)
    report.replicas["stream"] = url
    try:
        members = scen["picks-live-members"].items
        log(f"replicas: two servers (one worker each) on the Redis stream {url}")
        with Server(ServerConfig("replica-a", events_stream=url), bundle, workdir, extra) as a, \
                Server(ServerConfig("replica-b", events_stream=url), bundle, workdir, extra) as b:
            a.wait_ready(args.ready_timeout)
            b.wait_ready(args.ready_timeout)
            res = replica_agreement(a, b, key, scen["picks"].items[::-1], args.agreement_events)
            report.replicas["agreement"] = res
            log(f"  replica b agrees with a {res['p50_ms']:.1f} ms (p50) / {res['p99_ms']:.1f} ms (p99) / "
                f"{res['max_ms']:.1f} ms (max) after a acknowledged the purchase; {res['timeouts']} timeouts")
        cfg = ServerConfig("stream-2w", workers=2, events_stream=url)
        log("one server, two workers (the default with a stream)")
        with Server(cfg, bundle, workdir, extra) as srv:
            srv.wait_ready(args.ready_timeout, settle=6)
            time.sleep(2.0)
            run_set(wrk, srv, ["bare", "picks", "bare"], scen, key, args.config_seconds, args.warmup / 2, workdir,
                    args, report, "tafeng-stream")
            ev = post_live_events(srv, key, members, products, "bench-2w")  # both workers follow the stream
            report.live_events.append(ev)
            run_set(wrk, srv, ["picks-live-members", "bare"], scen, key, args.config_seconds, args.warmup / 2,
                    workdir, args, report, "tafeng-stream")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, help="write every figure to this JSON file")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "recsys-bench-serving")
    ap.add_argument("--seconds", type=float, default=12.0, help="duration of each main scenario")
    ap.add_argument("--config-seconds", type=float, default=8.0, help="duration of each configuration run")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2, help="wrk threads")
    ap.add_argument("--members", type=int, default=10_000_000, help="synthetic members (cached bundle per size)")
    ap.add_argument("--products", type=int, default=20_000)
    ap.add_argument("--factors", type=int, default=64)
    ap.add_argument("--vectors", choices=("als", "random"), default="als",
                    help="synthetic member vectors: ALS fitted on generated purchases, or random clustered factors")
    ap.add_argument("--recall-queries", type=int, default=200, help="product vectors per recall figure")
    ap.add_argument("--legacy-start", action="store_true",
                    help="also time a start on the synthetic bundle without its indexes (built at load, as before)")
    ap.add_argument("--audience-requests", type=int, default=40, help="sequential requests per audience figure")
    ap.add_argument("--tafeng-bundle", type=Path, help="serve this bundle instead of the registered champion")
    ap.add_argument("--no-pre-rank", action="store_true",
                    help="serve the champion bundle as registered (no pre-ranked lists added: picks scored live)")
    ap.add_argument("--agreement-members", type=int, default=300,
                    help="members whose list answers are compared with live scoring")
    ap.add_argument("--pythonpath", type=Path, action="append", default=[],
                    help="prepend to every server's PYTHONPATH (e.g. a copy of serving/ to A/B a change)")
    ap.add_argument("--skip-tafeng", action="store_true")
    ap.add_argument("--skip-configs", action="store_true")
    ap.add_argument("--skip-synth", action="store_true")
    ap.add_argument("--skip-replicas", action="store_true", help="no Redis stream: no replicas / two-worker runs")
    ap.add_argument("--agreement-events", type=int, default=50,
                    help="purchases whose picks are compared across two replicas")
    ap.add_argument("--ready-timeout", type=float, default=1800.0, help="seconds to wait for a server to load")
    ap.add_argument("--quick", action="store_true", help="4 s runs, 250k members: a smoke test")
    args = ap.parse_args(argv)
    if args.quick:
        args.seconds, args.config_seconds, args.warmup = 4.0, 3.0, 1.0
        args.members, args.audience_requests = min(args.members, 250_000), 15

    # SIGTERM unwinds like Ctrl-C, so every server subprocess (its own session) is stopped too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    wrk = ensure_wrk()
    key = write_keys(workdir)
    import faiss

    report = Report(
        started=time.strftime("%Y-%m-%dT%H:%M:%S"), command=[sys.executable, *sys.argv],
        machine={"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                 "faiss": faiss.__version__, "numpy": np.__version__,
                 "load_average_at_start": os.getloadavg(),
                 "wrk": subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False).stdout.splitlines()[:1]},
        settings={k: v for k, v in vars(args).items() if k != "json"} | {"workdir": str(workdir)},
    )
    log(f"workdir {workdir}; wrk {args.connections} connections / {args.threads} threads; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus (shared machine: compare within the run)")

    # ---------------------------------------------------------------- Ta-Feng
    tafeng_runs: list[Run] = []
    if not args.skip_tafeng:
        try:
            bundle = args.tafeng_bundle.resolve() if args.tafeng_bundle else tafeng_bundle(workdir)
            extra = [p.resolve() for p in args.pythonpath] + resolve_code(bundle, workdir, report)
            if not args.tafeng_bundle and not args.no_pre_rank:
                try:
                    bundle = pre_ranked_bundle(bundle, workdir, report, extra)
                except RuntimeError as exc:
                    report.errors.append(f"pre-ranking the champion: {exc}")
                    log(f"pre-ranking failed; serving the champion as registered (picks scored live): {exc}")
            report.settings["tafeng_bundle"] = str(bundle)
            scen = tafeng_scenarios(bundle)
        except Exception as exc:  # noqa: BLE001 - report and go on with the synthetic workload
            report.errors.append(f"tafeng setup: {exc}")
            log(f"Ta-Feng workload skipped: {exc}")
            bundle = None
        if bundle is not None:
            main_names = ["bare", "picks", "picks-discover", "picks-live", "picks-unknown", "similar",
                          "audience-1000", "bare"]
            prod = ServerConfig("prod")
            log("Ta-Feng, production configuration (recsys serve: 1 worker, BLAS/OpenMP pinned to 1, no access log)")
            try:
                with Server(prod, bundle, workdir, extra) as srv:
                    log(f"  ready in {srv.wait_ready(args.ready_timeout):.1f} s")
                    tafeng_runs = run_set(wrk, srv, main_names, scen, key, args.seconds, args.warmup, workdir, args,
                                          report, "tafeng")
                    # live purchases for other members: their lists are ranked again, then served
                    products = scen["similar"].items
                    ev = post_live_events(srv, key, scen["picks-live-members"].items, products, "bench-1w")
                    report.live_events.append(ev)
                    log(f"  {ev['recorded']} live purchases posted in batches of {ev['batch']}: "
                        f"{ev['batch_seconds']} s, lists ranked again {ev['rerank_wait_seconds']} s after the last; "
                        f"pre-ranked lists {ev['pre_ranked']}")
                    tafeng_runs += run_set(wrk, srv, ["picks-live-members", "bare"], scen, key, args.seconds,
                                           args.warmup, workdir, args, report, "tafeng")
                    report.sequential.append(sequential(srv, scen["picks"], key, 200, 60, "tafeng", "picks (sequential)"))
                    report.sequential.append(sequential(srv, scen["audience-1000"], key, args.audience_requests, 120,
                                                        "tafeng", "audience 1,000 (sequential)"))
                    import httpx

                    r = httpx.get(srv.base + "/bench/agreement", params={"members": args.agreement_members},
                                  headers={"X-API-Key": key}, timeout=1800)
                    report.agreement = r.json() if r.status_code == 200 else {"error": r.text[:300]}
                    log(f"  pre-ranked vs live: {report.agreement}")
                    r = httpx.get(srv.base + "/bench/agreement", params={"members": args.agreement_members,
                                                                         "re_ranked": True},
                                  headers={"X-API-Key": key}, timeout=1800)
                    report.agreement_re_ranked = r.json() if r.status_code == 200 else {"error": r.text[:300]}
                    log(f"  ranked again after live purchases vs live: {report.agreement_re_ranked}")
            except Exception as exc:  # noqa: BLE001
                report.errors.append(f"tafeng prod server: {exc}")
                log(f"  FAILED: {exc}")

            if not args.skip_replicas:
                try:
                    replicas(wrk, bundle, extra, workdir, key, scen, scen["similar"].items, args, report)
                except Exception as exc:  # noqa: BLE001
                    report.errors.append(f"replicas: {exc}")
                    log(f"  replicas FAILED: {exc}")

            if not args.skip_configs:
                cfg_names = ["bare", "picks", "picks-sync", "picks-fastapi", "bare-sync", "bare"]
                configs = [
                    ServerConfig("pinned-1w"),
                    ServerConfig("threads-env-unset", threads="unset"),
                    ServerConfig("threads-default", threads="default"),
                    ServerConfig("pinned-2w", workers=2),
                    ServerConfig("pinned-2w-uvicorn-cli", workers=2, launcher="uvicorn-cli"),
                    ServerConfig("access-log", access_log=True),
                    ServerConfig("pinned-2w-access-log", workers=2, access_log=True),
                ]
                log("Ta-Feng, configurations")
                for cfg in configs:
                    try:
                        with Server(cfg, bundle, workdir, extra) as srv:
                            srv.wait_ready(args.ready_timeout, settle=6 if cfg.workers > 1 else 1)
                            time.sleep(2.0 if cfg.workers > 1 else 0.0)
                            runs = run_set(wrk, srv, cfg_names, scen, key, args.config_seconds, args.warmup / 2,
                                           workdir, args, report, "tafeng-config")
                    except Exception as exc:  # noqa: BLE001
                        report.errors.append(f"config {cfg.name}: {exc}")
                        log(f"  {cfg.name} FAILED: {exc}")
                        continue
                    by = {r.scenario: r for r in runs}
                    base = _baseline(runs)
                    entry = {"config": cfg.name, **asdict(cfg), "bare_rps": base,
                             "bare_sync_rps": by["bare-sync"].rps if "bare-sync" in by else None}
                    for name in ("picks", "picks-sync", "picks-fastapi"):
                        if name in by:
                            entry[f"{name}_rps"] = by[name].rps
                            entry[f"{name}_p99_ms"] = by[name].p99_ms
                            entry[f"{name}_ratio"] = by[name].rps / base if base else None
                    report.configs.append(entry)

    # ---------------------------------------------------------------- synthetic (10M members)
    if not args.skip_synth:
        try:
            size = _size_label(args.members)
            wl = f"synthetic-{size}"
            log(f"synthetic bundle: {args.members:,} members x {args.products:,} products ({args.vectors} vectors)")
            spath = synthetic_bundle(workdir / f"synth-{args.vectors}-{args.members}x{args.products}", args.members,
                                     args.products, args.factors, vectors=args.vectors)
            report.settings["synthetic_bundle"] = str(spath)
            report.index_build = index_bundle(spath, workdir, args)
            rng = np.random.default_rng(2)
            members = [f"M{i:07d}" for i in rng.choice(args.members, size=4000, replace=False)]
            prods = [f"P{i:06d}" for i in rng.choice(args.products, size=500, replace=False)]
            sscen = {
                "bare": Scenario("bare", "GET", "/bench/bare", [""], route="/bench/bare"),
                "picks": Scenario("picks", "GET", "/v1/members/", members, "/picks",
                                  route="/v1/members/{member_id}/picks"),
                "audience-10000": Scenario("audience-10000", "POST", "/v1/audiences", prods,
                                           body_head='{"product_id":"', body_tail='","size":10000}',
                                           route="/v1/audiences"),
                "audience-10000-filtered": Scenario(
                    "audience-10000-filtered", "POST", "/v1/audiences", prods, body_head='{"product_id":"',
                    body_tail='","size":10000,"filters":{"value_segment":["high","mid"],"lifecycle":["active"]}}',
                    route="/v1/audiences"),
                "audience-1000": Scenario("audience-1000", "POST", "/v1/audiences", prods,
                                          body_head='{"product_id":"', body_tail='","size":1000}',
                                          route="/v1/audiences"),
                "audience-1000-filtered": Scenario(
                    "audience-1000-filtered", "POST", "/v1/audiences", prods, body_head='{"product_id":"',
                    body_tail='","size":1000,"filters":{"value_segment":["high"]}}', route="/v1/audiences"),
                "audience-50": Scenario("audience-50", "POST", "/v1/audiences", prods,
                                        body_head='{"product_id":"', body_tail='","size":50}', route="/v1/audiences"),
            }
            cfg = ServerConfig(f"prod-{size}")
            log(f"{size} synthetic, production configuration (the bundle's member index memory-mapped at load)")
            with Server(cfg, spath, workdir, [p.resolve() for p in args.pythonpath]) as srv:
                ready_s = srv.wait_ready(args.ready_timeout)
                report.ready.append({"what": f"start, {size} members, indexes from the bundle", "seconds": ready_s,
                                     "rss_bytes": _tree_rss(srv.proc.pid)})
                log(f"  ready in {ready_s:.1f} s (resident {_tree_rss(srv.proc.pid) / 2**30:.1f} GB)")
                import httpx

                info = httpx.get(srv.base + "/v1/model", headers={"X-API-Key": key}, timeout=30)
                if info.status_code == 200:
                    report.settings["synthetic_model"] = info.json()
                for label, name in ((f"audience 10,000 of {size}", "audience-10000"),
                                    (f"audience 10,000 of {size}, tag filter", "audience-10000-filtered"),
                                    (f"audience 1,000 of {size}", "audience-1000"),
                                    (f"audience 1,000 of {size}, tag filter", "audience-1000-filtered"),
                                    (f"audience 50 of {size}", "audience-50")):
                    err = check_once(srv, sscen[name], key)
                    if err:
                        report.errors.append(f"synthetic: {err}")
                        continue
                    res = sequential(srv, sscen[name], key, args.audience_requests, 300, wl, label)
                    report.sequential.append(res)
                    log(f"  {label:<40} server p50 {res['server_p50_ms']:6.1f} p99 {res['server_p99_ms']:6.1f} ms;"
                        f" client p50 {res['client_p50_ms']:6.1f} p99 {res['client_p99_ms']:6.1f} ms;"
                        f" {res['response_kb']:.0f} KB")
                for k, seg in ((10, None), (100, None), (1000, None), (10000, None), (10, "high"), (100, "mid"),
                               (1000, "high"), (1000, "high+mid,active"), (10000, "high+mid,active")):
                    params: dict[str, Any] = {"k": k, "queries": args.recall_queries}
                    if seg:
                        params["filter"] = seg
                    r = httpx.get(srv.base + "/bench/recall", params=params, headers={"X-API-Key": key}, timeout=1800)
                    rec = r.json() if r.status_code == 200 else {"error": r.text[:300]}
                    rec["filter"] = seg
                    report.recall.append(rec)
                    log(f"  member index recall@{k}{' (' + seg + ')' if seg else ''}: {rec.get('recall')} "
                        f"({rec.get('route')}, nprobe {rec.get('nprobe')})")
                run_set(wrk, srv, ["bare", "picks", "audience-10000", "bare"], sscen, key, args.seconds,
                        args.warmup, workdir, args, report, wl)
                t0 = time.perf_counter()
                r = httpx.post(srv.base + "/v1/admin/reload", json={"bundle": str(spath)}, headers={"X-API-Key": key},
                               timeout=args.ready_timeout)
                wall = time.perf_counter() - t0
                body = r.json() if r.status_code == 200 else {"error": r.text[:300]}
                report.ready.append({"what": f"reload, {size} members, indexes from the bundle", "seconds": wall,
                                     "server_seconds": body.get("seconds"), "rss_bytes": _tree_rss(srv.proc.pid),
                                     **({"error": body["error"]} if "error" in body else {})})
                log(f"  reload in {wall:.1f} s ({body})")
            if args.legacy_start:
                legacy = _without_indexes(spath, workdir)
                with Server(ServerConfig(f"legacy-{size}"), legacy, workdir, [p.resolve() for p in args.pythonpath]) as srv:
                    ready_s = srv.wait_ready(args.ready_timeout)
                    report.ready.append({"what": f"start, {size} members, bundle without indexes (built at load)",
                                         "seconds": ready_s, "rss_bytes": _tree_rss(srv.proc.pid)})
                    log(f"  without the bundle's indexes: ready in {ready_s:.1f} s")
        except Exception as exc:  # noqa: BLE001
            report.errors.append(f"synthetic: {exc}")
            log(f"synthetic workload FAILED: {exc}")

    # ---------------------------------------------------------------- targets
    targets = report.targets
    if tafeng_runs:
        base = _baseline(tafeng_runs)
        picks = next((r for r in tafeng_runs if r.scenario == "picks"), None)
        if picks is not None:
            ratio = picks.rps / base if base else float("nan")
            targets.append({"target": f"picks req/s >= {PICKS_RATIO_TARGET:.0%} of bare (16 conn)",
                            "value": f"{ratio:.1%} ({picks.rps:.0f} / {base:.0f})", "met": bool(ratio >= PICKS_RATIO_TARGET)})
            targets.append({"target": f"picks p99 <= {PICKS_P99_TARGET_MS:.0f} ms (16 conn)",
                            "value": f"{picks.p99_ms:.1f} ms", "met": bool(picks.p99_ms <= PICKS_P99_TARGET_MS)})
    for wl in ("tafeng", "tafeng-stream"):
        runs_wl = [r for r in report.runs if r.workload == wl]
        live = next((r for r in runs_wl if r.scenario == "picks-live-members"), None)
        if live is not None:
            base = _baseline(runs_wl)
            ratio = live.rps / base if base else float("nan")
            where = "1 worker" if wl == "tafeng" else "2 workers, Redis stream"
            targets.append({"target": f"picks, members with live purchases >= {LIVE_PICKS_RATIO_TARGET:.0%} of bare "
                                      f"({where})",
                            "value": f"{ratio:.1%} ({live.rps:.0f} / {base:.0f})",
                            "met": bool(ratio >= LIVE_PICKS_RATIO_TARGET)})
            targets.append({"target": f"picks, members with live purchases p99 <= {LIVE_PICKS_P99_TARGET_MS:.0f} ms "
                                      f"({where})",
                            "value": f"{live.p99_ms:.1f} ms", "met": bool(live.p99_ms <= LIVE_PICKS_P99_TARGET_MS)})
    agree = report.replicas.get("agreement")
    if agree:
        targets.append({"target": f"two replicas agree <= {REPLICA_AGREEMENT_TARGET_S:.0f} s after a purchase (max)",
                        "value": f"p50 {agree['p50_ms']:.0f} / max {agree['max_ms']:.0f} ms, {agree['timeouts']} late",
                        "met": bool(agree["members"] > 0 and agree["timeouts"] == 0
                                    and agree["max_ms"] <= REPLICA_AGREEMENT_TARGET_S * 1e3)})
    a = report.agreement_re_ranked
    if isinstance(a, dict) and "differences" in a:
        targets.append({"target": "lists ranked again after live purchases identical to live scoring",
                        "value": f"{a['differences']} of {a['requests_compared']} differ",
                        "met": a["differences"] == 0 and a["requests_compared"] > 0})
    for res in report.sequential:
        if res["workload"].startswith("synthetic-") and res["scenario"].startswith("audience 10,000"):
            targets.append({"target": f"{res['scenario']}: server time <= {AUDIENCE_10K_TARGET_MS:.0f} ms (p99)",
                            "value": f"p50 {res['server_p50_ms']:.1f} / p99 {res['server_p99_ms']:.1f} ms",
                            "met": bool(res["server_p99_ms"] <= AUDIENCE_10K_TARGET_MS)})
    for rec in report.recall:
        if "recall" in rec:
            what = f"recall@{rec['k']}" + (f" ({rec['filter']})" if rec.get("filter") else "")
            targets.append({"target": f"member index {what} >= {RECALL_TARGET} vs exact (defaults)",
                            "value": f"{rec['recall']:.4f} ({rec.get('route')})",
                            "met": bool(rec["recall"] >= RECALL_TARGET)})
    for r in report.ready:
        if "indexes from the bundle" in r["what"]:
            targets.append({"target": f"{r['what']}: ready <= {READY_TARGET_S:.0f} s", "value": f"{r['seconds']:.1f} s",
                            "met": bool(r["seconds"] <= READY_TARGET_S and "error" not in r)})
    if isinstance(report.agreement, dict) and "differences" in report.agreement:
        a = report.agreement
        targets.append({"target": "pre-ranked picks identical to live scoring",
                        "value": f"{a['differences']} of {a['requests_compared']} differ",
                        "met": a["differences"] == 0 and a["requests_compared"] > 0})

    print_tables(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(asdict(report), indent=1, default=str))
        log(f"figures written to {args.json}")
    if report.errors:
        return 2 if not report.runs else 1
    return 0 if targets and all(t["met"] for t in targets) else 1


def _target_of(r: Run) -> tuple[str, float, float]:
    """The target a run is held to: (text, share of bare, p99 ms), or ("", ...) for none."""
    if r.workload == "tafeng" and r.scenario == "picks":
        return f">= {PICKS_RATIO_TARGET:.0%} bare, p99 <= {PICKS_P99_TARGET_MS:.0f} ms", PICKS_RATIO_TARGET, PICKS_P99_TARGET_MS
    if r.workload.startswith("tafeng") and r.scenario == "picks-live-members":
        return (f">= {LIVE_PICKS_RATIO_TARGET:.0%} bare, p99 <= {LIVE_PICKS_P99_TARGET_MS:.0f} ms",
                LIVE_PICKS_RATIO_TARGET, LIVE_PICKS_P99_TARGET_MS)
    return "", 0.0, 0.0


def print_tables(report: Report) -> None:
    runs = report.runs
    print("\n=== load runs (wrk, closed loop) ===")
    print(f"{'workload':<14} {'config':<20} {'scenario':<24} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'srv mean':>8} {'vs bare':>8} {'errors':>6}  target / met")
    groups: dict[tuple[str, str], list[Run]] = {}
    for r in runs:
        groups.setdefault((r.workload, r.config), []).append(r)
    for (wl, cfg), rs in groups.items():
        base = _baseline(rs)
        for r in rs:
            rel = r.rps / base if base and r.scenario != "bare" else float("nan")
            target, min_ratio, max_p99 = _target_of(r)
            met = ""
            if target:
                met = "met" if (rel >= min_ratio and r.p99_ms <= max_p99) else "NOT met"
            srv = f"{r.server_mean_ms:8.2f}" if r.server_mean_ms is not None else f"{'-':>8}"
            print(f"{wl:<14} {cfg:<20} {r.scenario:<24} {r.rps:8.0f} {r.p50_ms:8.2f} {r.p99_ms:8.2f} {srv} "
                  f"{rel:8.1%} {r.errors:6d}  {target} {met}".rstrip())
    if report.configs:
        print("\n=== configurations (Ta-Feng; picks = hybrid champion, 16 connections) ===")
        print(f"{'config':<24} {'workers':>7} {'threads':<8} {'acclog':<6} {'bare':>7} {'picks':>7} {'p99':>7} "
              f"{'sync':>7} {'p99':>7} {'fastapi':>7} {'p99':>7} {'picks/bare':>10}")
        for c in report.configs:
            def g(k: str, c: dict[str, Any] = c) -> float:
                v = c.get(k)
                return float(v) if v is not None else float("nan")
            print(f"{c['config']:<24} {c['workers']:>7} {c['threads']:<8} {str(c['access_log']):<6} {g('bare_rps'):7.0f} "
                  f"{g('picks_rps'):7.0f} {g('picks_p99_ms'):7.1f} {g('picks-sync_rps'):7.0f} {g('picks-sync_p99_ms'):7.1f} "
                  f"{g('picks-fastapi_rps'):7.0f} {g('picks-fastapi_p99_ms'):7.1f} {g('picks_ratio'):10.1%}")
    if report.sequential:
        print("\n=== sequential requests (one at a time): client time and Server-Timing ===")
        print(f"{'workload':<14} {'scenario':<36} {'n':>4} {'srv p50':>8} {'srv p99':>8} {'cli p50':>8} "
              f"{'cli p99':>8} {'KB':>6}")
        for s in report.sequential:
            print(f"{s['workload']:<14} {s['scenario']:<36} {s['requests']:>4} {s['server_p50_ms']:8.1f} "
                  f"{s['server_p99_ms']:8.1f} {s['client_p50_ms']:8.1f} {s['client_p99_ms']:8.1f} {s['response_kb']:6.0f}")
    if report.recall:
        print("\n=== member index recall vs exact (queries: product vectors, as audiences) ===")
        print(f"  {'k':>6} {'filter':<22} {'share':>6} {'served':>8} {'route':<6} {'nprobe':>7} {'index alone':>12}")
        for rec in report.recall:
            graph = rec.get("index_alone_recall")
            print(f"  {rec.get('k')!s:>6} {rec.get('filter')!s:<22} {rec.get('filter_share', float('nan')):6.2f} "
                  f"{rec.get('recall', float('nan')):8.4f} {rec.get('route')!s:<6} {rec.get('nprobe')!s:>7} "
                  f"{graph if graph is None else round(graph, 4)!s:>12}")
        index = next((r.get("index") for r in report.recall if r.get("index")), None)
        if index:
            print(f"  index: {index}")
    if report.index_build:
        b = report.index_build
        print("\n=== member index, built with the bundle (recsys bundle index) ===")
        print(f"  {b['wall_s']:.1f} s wall, peak {b['peak_rss_bytes'] / 2**30:.2f} GB"
              + (" (built by an earlier run)" if b.get("cached") else ""))
        for name, m in b.get("indexes", {}).items():
            print(f"  {name}: {m.get('kind')} over {m.get('n'):,} x {m.get('dim')}, nlist {m.get('nlist')}, "
                  f"train {m.get('train_s')} s, add {m.get('add_s')} s, calibrate {m.get('calibrate_s')} s, "
                  f"file {m.get('bytes', 0) / 2**30:.2f} GB; nprobe {m.get('nprobe')}; recall {m.get('recall')}")
    if report.ready:
        print("\n=== time to ready ===")
        for r in report.ready:
            extra = f" (server {r['server_seconds']} s)" if r.get("server_seconds") is not None else ""
            print(f"  {r['what']:<62} {r['seconds']:7.1f} s{extra}, resident {r['rss_bytes'] / 2**30:.1f} GB"
                  + (f"  error: {r['error']}" if "error" in r else ""))
    if report.agreement:
        print("\n=== pre-ranked lists vs live scoring (inside the Ta-Feng server) ===")
        print(f"  {report.agreement}")
    if report.agreement_re_ranked:
        print("\n=== lists ranked again after live purchases vs live scoring (inside the Ta-Feng server) ===")
        print(f"  {report.agreement_re_ranked}")
    for ev in report.live_events:
        print(f"\n=== live purchases posted ({ev['server']}) ===")
        print(f"  {ev['recorded']} events for {ev['members']} members, batches of {ev['batch']}: {ev['batch_seconds']} s; "
              f"every member's lists ranked again {ev['rerank_wait_seconds']} s after the last answer")
        print(f"  pre-ranked lists: {ev['pre_ranked']}")
    if report.replicas.get("agreement"):
        print("\n=== two replicas on one Redis stream ===")
        print(f"  {report.replicas['agreement']}")
    print("\n=== targets ===")
    print(f"{'target':<62} {'value':<28} met")
    for t in report.targets:
        print(f"{t['target']:<62} {t['value']:<28} {'met' if t['met'] else 'NOT met'}")
    for note in report.notes:
        print(f"note: {note}")
    for err in report.errors:
        print(f"error: {err}")


if __name__ == "__main__":
    sys.exit(main())
