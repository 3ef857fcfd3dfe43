"""Benchmark the data foundation: ingest + feature build, wall time and peak memory.

Two workloads, each step run as its own ``recsys`` subprocess so its memory is measured alone:

* ``--tafeng``: the full Ta-Feng file (fetch excluded from the timing): ``data ingest tafeng``
  then ``features build --as-of 2001-02-01``. Target: ingest + features <= 20 s.
* ``--synth``: synthetic data of the given size (default 50 M lines, 1 M members, 100 k
  products): ``data synth`` (timed but not part of the target), then ``data ingest`` of its
  ``mapping.toml`` and ``features build``. Target: peak memory of every step < 16 GB.

Peak memory is the larger of two measurements of the child: ``ru_maxrss`` from ``wait4`` (the
kernel's high-water mark of the process and any children it reaped) and the sum of resident
memory over the live process tree, sampled every 0.2 s (catches concurrent worker processes,
which ``ru_maxrss`` does not add up).

Usage (from the repository root)::

    .venv/bin/python experiments/bench_foundation.py --tafeng
    .venv/bin/python experiments/bench_foundation.py --synth --lines 5000000 --members 100000
    .venv/bin/python experiments/bench_foundation.py            # both, full size

With neither ``--tafeng`` nor ``--synth`` both run. Each step's output goes to
``WORKDIR/logs/<step>.log``; a failing step's log tail is printed and the steps that need its
output are skipped. The exit code is 0 when every step succeeded and every target was met.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TAFENG_AS_OF = "2001-02-01"
SYNTH_AS_OF = "2024-06-01"  # the synthetic period is 2024-01-01..2024-06-30
TAFENG_TARGET_S = 20.0
MEMORY_TARGET_BYTES = 16 * 1024**3
_SAMPLE_EVERY_S = 0.2
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class StepResult:
    """One timed subprocess."""

    workload: str
    step: str
    command: list[str]
    wall_s: float = 0.0
    peak_rss_bytes: int = 0
    returncode: int | None = None  # None: skipped
    counted: bool = True  # part of the workload's target (generation is not)
    log: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.returncode == 0


# --------------------------------------------------------------------------------------------
# Measuring a child process tree
# --------------------------------------------------------------------------------------------


def _children_by_parent() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue  # exited meanwhile
        # Field 4 (ppid) follows the parenthesised command name, which may contain spaces.
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        out.setdefault(ppid, []).append(int(entry.name))
    return out


def _tree_rss_bytes(root: int) -> int:
    """Resident memory summed over ``root`` and all its live descendants."""
    children = _children_by_parent()
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        try:
            with open(f"/proc/{pid}/statm", "rb") as fh:
                total += int(fh.read().split()[1]) * _PAGE
        except OSError:
            continue
        stack.extend(children.get(pid, ()))
    return total


def run_step(result: StepResult, log_dir: Path, env: dict[str, str]) -> StepResult:
    """Run ``result.command``, filling in wall time, peak memory and return code."""
    log_path = log_dir / f"{result.workload}-{result.step}.log"
    result.log = str(log_path)
    print(f"[{result.workload}] {result.step}: {' '.join(result.command)}", flush=True)
    peak_sampled = 0
    done = threading.Event()
    with open(log_path, "wb") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(result.command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)

        def sample() -> None:
            nonlocal peak_sampled
            while not done.wait(_SAMPLE_EVERY_S):
                peak_sampled = max(peak_sampled, _tree_rss_bytes(proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        # wait4 (not Popen.wait) to get the child's rusage; Popen learns the status below.
        _, status, usage = os.wait4(proc.pid, 0)
        result.wall_s = time.perf_counter() - start
        done.set()
        sampler.join()
    proc.returncode = result.returncode = os.waitstatus_to_exitcode(status)
    result.peak_rss_bytes = max(usage.ru_maxrss * 1024, peak_sampled)  # ru_maxrss is in KiB
    state = "ok" if result.ok else f"FAILED ({exit_text(result.returncode)}), log: {log_path}"
    print(f"    {result.wall_s:8.1f} s   peak {_gb(result.peak_rss_bytes)}   {state}", flush=True)
    if not result.ok:
        tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-25:]
        print("    | " + "\n    | ".join(tail), flush=True)
    return result


def exit_text(returncode: int) -> str:
    """``exit 2``, or the signal that ended the process (SIGKILL is usually the OOM killer)."""
    if returncode >= 0:
        return f"exit {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    return f"{name} (OOM killer? see dmesg)" if name == "SIGKILL" else name


def skipped(result: StepResult, why: str) -> StepResult:
    result.notes.append(f"skipped: {why}")
    print(f"[{result.workload}] {result.step}: skipped ({why})", flush=True)
    return result


# --------------------------------------------------------------------------------------------
# Workloads
# --------------------------------------------------------------------------------------------


def bench_tafeng(recsys: str, workdir: Path, log_dir: Path, env: dict[str, str]) -> list[StepResult]:
    """Fetch Ta-Feng if needed (untimed), then time ingest and features."""
    data_dir = workdir / "tafeng-data"
    canonical = data_dir / "tafeng" / "canonical"
    features = data_dir / "tafeng" / "features" / TAFENG_AS_OF
    raw = data_dir / "raw" / "ta_feng.csv.zip"
    if not raw.is_file():
        fetch = run_step(
            StepResult("tafeng", "fetch", [recsys, "data", "fetch", "tafeng", "--data-dir", str(data_dir)],
                       counted=False),
            log_dir, env,
        )
        if not fetch.ok:
            return [fetch]
    for stale in (canonical, features):
        shutil.rmtree(stale, ignore_errors=True)
    steps = [
        StepResult("tafeng", "ingest", [recsys, "data", "ingest", "tafeng", "--data-dir", str(data_dir),
                                        "--out", str(canonical)]),
        StepResult("tafeng", "features", [recsys, "features", "build", "--as-of", TAFENG_AS_OF,
                                          "--data-dir", str(data_dir), "--dataset", "tafeng",
                                          "--canonical", str(canonical), "--out", str(features)]),
    ]
    return _run_chain(steps, log_dir, env)


def bench_synth(
    recsys: str, workdir: Path, log_dir: Path, env: dict[str, str], args: argparse.Namespace
) -> list[StepResult]:
    """Generate synthetic data (timed, not counted), then time ingest and features."""
    tag = f"{args.lines}l-{args.members}m-{args.products}p-s{args.seed}"
    data_dir = workdir / f"synth-{tag}"
    source = data_dir / "source"
    canonical = data_dir / "canonical"
    features = data_dir / "features" / args.synth_as_of
    generate = StepResult(
        "synth", "generate",
        [recsys, "data", "synth", "--out", str(source), "--members", str(args.members),
         "--products", str(args.products), "--lines", str(args.lines),
         "--categories", str(args.categories), "--seed", str(args.seed)],
        counted=False,
    )
    results: list[StepResult] = []
    if args.reuse and (source / "mapping.toml").is_file():
        results.append(skipped(generate, f"--reuse: {source} exists"))
    else:
        results.append(run_step(generate, log_dir, env))
        if not generate.ok:
            return results
    for stale in (canonical, features):
        shutil.rmtree(stale, ignore_errors=True)
    steps = [
        StepResult("synth", "ingest", [recsys, "data", "ingest", str(source / "mapping.toml"),
                                       "--data-dir", str(data_dir), "--out", str(canonical)]),
        StepResult("synth", "features", [recsys, "features", "build", "--as-of", args.synth_as_of,
                                         "--data-dir", str(data_dir), "--canonical", str(canonical),
                                         "--out", str(features)]),
    ]
    return results + _run_chain(steps, log_dir, env)


def _run_chain(steps: list[StepResult], log_dir: Path, env: dict[str, str]) -> list[StepResult]:
    """Run steps in order; once one fails, the rest (which need its output) are skipped."""
    failed: StepResult | None = None
    for step in steps:
        if failed is not None:
            skipped(step, f"{failed.step} failed")
        else:
            run_step(step, log_dir, env)
            if not step.ok:
                failed = step
    return steps


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _gb(n: int) -> str:
    return f"{n / 1024**3:6.2f} GB"


def summarise(results: list[StepResult], args: argparse.Namespace) -> tuple[list[str], bool]:
    """The result table and target lines, and whether everything passed."""
    rows = [("workload", "step", "wall s", "peak RSS", "status")]
    all_ok = all(r.ok for r in results if r.returncode is not None) and not any(
        r.returncode is None and r.counted for r in results
    )
    targets: list[str] = []
    for workload in ("tafeng", "synth"):
        mine = [r for r in results if r.workload == workload]
        for r in mine:
            ran = r.returncode is not None
            status = "ok" if r.ok else (exit_text(r.returncode) if ran else "skipped")
            if not r.counted:
                status += " (not in target)"
            rows.append((r.workload, r.step, f"{r.wall_s:.1f}" if ran else "-",
                         _gb(r.peak_rss_bytes).strip() if ran else "-", status))
        counted = [r for r in mine if r.counted]
        if not counted:
            continue
        complete = all(r.ok for r in counted)
        total = sum(r.wall_s for r in counted)
        peak = max(r.peak_rss_bytes for r in counted)
        rows.append((workload, "TOTAL ingest+features", f"{total:.1f}", _gb(peak).strip(),
                     "ok" if complete else "incomplete"))
        if workload == "tafeng":
            met = complete and total <= TAFENG_TARGET_S
            targets.append(f"Ta-Feng ingest + features {total:.1f} s (target <= {TAFENG_TARGET_S:.0f} s): "
                           f"{'PASS' if met else 'FAIL'}")
        else:
            met = complete and peak < MEMORY_TARGET_BYTES
            lines_s = args.lines / total if complete and total else 0
            targets.append(
                f"Synthetic {args.lines:,} lines: ingest + features {total:.1f} s "
                f"({lines_s / 1e6:.2f} M lines/s), peak {_gb(peak).strip()} (target < 16 GB): "
                f"{'PASS' if met else 'FAIL'}"
            )
        all_ok = all_ok and met
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for i, row in enumerate(rows):
        lines.append("  ".join(cell.rjust(w) if 2 <= j <= 3 else cell.ljust(w)
                               for j, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines + [""] + targets, all_ok


def machine_line() -> str:
    mem = ""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            total_kb = int(fh.readline().split()[1])
        mem = f", {total_kb / 1024**2:.0f} GB RAM"
    except (OSError, ValueError, IndexError):
        pass
    load = ", load {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())
    return f"{platform.node()}: {os.cpu_count()} cores{mem}{load}, Python {platform.python_version()}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--tafeng", action="store_true", help="run the Ta-Feng workload (neither flag: both)")
    p.add_argument("--synth", action="store_true", help="run the synthetic workload (neither flag: both)")
    p.add_argument("--lines", type=int, default=50_000_000, help="synthetic transaction lines")
    p.add_argument("--members", type=int, default=1_000_000, help="synthetic members")
    p.add_argument("--products", type=int, default=100_000, help="synthetic products")
    p.add_argument("--categories", type=int, default=200, help="synthetic categories")
    p.add_argument("--seed", type=int, default=0, help="synthetic seed")
    p.add_argument("--synth-as-of", default=SYNTH_AS_OF, help="feature date for synthetic data")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/recsys-bench"),
                   help="data, outputs and logs go here")
    p.add_argument("--reuse", action="store_true",
                   help="reuse previously generated synthetic files of the same size and seed")
    p.add_argument("--recsys", default=None,
                   help="the recsys executable; unset: the repository's .venv, else PATH")
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    args = p.parse_args(argv)
    if not args.tafeng and not args.synth:
        args.tafeng = args.synth = True
    for name in ("lines", "members", "products", "categories"):
        if getattr(args, name) <= 0:
            p.error(f"--{name} must be positive")
    return args


def find_recsys(explicit: str | None) -> str:
    if explicit:
        return explicit
    local = REPO / ".venv" / "bin" / "recsys"
    if local.is_file():
        return str(local)
    found = shutil.which("recsys")
    if not found:
        sys.exit("recsys executable not found: install the project (make install) or pass --recsys")
    return found


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    recsys = find_recsys(args.recsys)
    workdir = args.workdir.expanduser().resolve()
    log_dir = workdir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    print(machine_line(), flush=True)
    print(f"recsys: {recsys}   workdir: {workdir}", flush=True)

    results: list[StepResult] = []
    if args.tafeng:
        results += bench_tafeng(recsys, workdir, log_dir, env)
    if args.synth:
        results += bench_synth(recsys, workdir, log_dir, env, args)

    table, all_ok = summarise(results, args)
    print()
    print("\n".join(table))
    print(machine_line())
    if args.json:
        args.json.write_text(
            json.dumps({"machine": machine_line(), "steps": [asdict(r) for r in results],
                        "summary": table, "passed": all_ok}, indent=2),
            encoding="utf-8",
        )
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
