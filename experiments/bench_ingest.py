"""Benchmark ingest on the synthetic retailer export: wall time and peak memory, against a baseline.

Writes the raw export once (``recsys data synth --raw``: gzip ``;`` CSV sales lines, Parquet
product master, members, identities), then runs ``recsys data ingest`` of it as a subprocess,
with this checkout's code and, with ``--baseline-ref``, with the code of another git ref (unpacked
by ``git archive`` and put first on ``PYTHONPATH``) in the same run, and checks that both wrote
the same tables (same rows in the same order) and the same report counts. Peak memory is that of
the whole process tree (``ru_maxrss`` and a sampled sum of resident memory, see
``bench_foundation.run_step``).

Usage (from the repository root; sizes over ~10M lines are heavy jobs, run them under the heavy
lock, and mind the disk: the export takes ~13 bytes per line, the ingest output and its spill
files a few times that)::

    .venv/bin/python experiments/bench_ingest.py --members 200000 --products 20000 \\
        --lines 10000000 --baseline-ref main
    .venv/bin/python experiments/bench_ingest.py --members 1000000 --products 100000 \\
        --lines 50000000

Figures go to ``experiments/results/ingest.json`` (one object per run: code, members, lines,
wall_s, peak_rss_bytes, memory_limit) and are printed as a table. Target (the retail-scale
issue): 50M lines under 12 GB peak, 100M lines under 22 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_foundation import StepResult, run_step  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "experiments" / "results" / "ingest.json"
TABLES = ("transactions", "products", "members")


def _same_outputs(a: Path, b: Path) -> list[str]:
    """Differences between two ingest output folders (empty: identical rows, order and counts)."""
    con = duckdb.connect()
    diffs = []
    for table in TABLES:
        pa, pb = (str(d / f"{table}.parquet") for d in (a, b))
        (n,) = con.execute(f"""SELECT count(*) FROM (
            (SELECT row_number() OVER () AS i, * FROM read_parquet('{pa}')) EXCEPT ALL
            (SELECT row_number() OVER () AS i, * FROM read_parquet('{pb}')))""").fetchone()
        (na,), (nb,) = (con.execute(f"SELECT count(*) FROM read_parquet('{p}')").fetchone()
                        for p in (pa, pb))
        if n or na != nb:
            diffs.append(f"{table}: {na:,} vs {nb:,} rows, {n:,} differ")
    ra, rb = (json.loads((d / "validation_report.json").read_text()) for d in (a, b))
    for key in ("rows_in", "rows_kept", "rows_rejected"):
        if ra[key] != rb[key]:
            diffs.append(f"{key}: {ra[key]:,} vs {rb[key]:,}")
    for section in ("rejected_by_reason", "repaired_by_reason"):
        for reason in set(ra[section]) | set(rb[section]):
            if ra[section].get(reason, 0) != rb[section].get(reason, 0):
                diffs.append(f"{section}.{reason}: {ra[section].get(reason, 0):,} vs "
                             f"{rb[section].get(reason, 0):,}")
    return diffs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--members", type=int, default=200_000)
    ap.add_argument("--products", type=int, default=20_000)
    ap.add_argument("--lines", type=int, default=10_000_000)
    ap.add_argument("--dirty-lines", type=int, default=1_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--baseline-ref", help="also ingest with this git ref's code (e.g. main)")
    ap.add_argument("--memory-limit", help="RECSYS_INGEST_MEMORY for the runs (default: the code's)")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="where the export and outputs go (default: a temporary folder, removed)")
    ap.add_argument("--keep", action="store_true", help="keep the workdir")
    ap.add_argument("--json", type=Path, default=RESULTS)
    args = ap.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="recsys-bench-ingest-"))
    workdir.mkdir(parents=True, exist_ok=True)
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    if args.memory_limit:
        env["RECSYS_INGEST_MEMORY"] = args.memory_limit
    python = str(Path(sys.executable))
    data = workdir / "data"
    raw = data / "synth_retailer" / "raw"
    rows: list[dict] = []
    ok = True
    try:
        if not (raw / "sales_lines.csv.gz").is_file():
            gen = run_step(StepResult("ingest", "synth-raw", [
                python, "-m", "recsys.cli", "data", "synth", "--raw", "--out", str(raw),
                "--members", str(args.members), "--products", str(args.products),
                "--lines", str(args.lines), "--dirty-lines", str(args.dirty_lines),
                "--seed", str(args.seed)], counted=False), logs, env)
            if not gen.ok:
                return 1
        runs = [("this checkout", env)]
        if args.baseline_ref:
            src = workdir / f"src-{args.baseline_ref.replace('/', '_')}"
            shutil.rmtree(src, ignore_errors=True)
            src.mkdir()
            archive = subprocess.run(["git", "archive", args.baseline_ref], cwd=REPO,
                                     capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
            runs.insert(0, (args.baseline_ref, {**env, "PYTHONPATH": str(src)}))
        outs = []
        for code, run_env in runs:
            out = workdir / f"out-{len(outs)}"
            shutil.rmtree(out, ignore_errors=True)
            step = run_step(StepResult("ingest", f"ingest ({code})", [
                python, "-m", "recsys.cli", "data", "ingest", "synth_retailer",
                "--data-dir", str(data), "--out", str(out)]), logs, run_env)
            ok &= step.ok
            report = json.loads((out / "validation_report.json").read_text()) if step.ok else {}
            rows.append({"code": code, "members": args.members, "products": args.products,
                         "lines": report.get("rows_in", args.lines), "wall_s": round(step.wall_s, 1),
                         "peak_rss_bytes": step.peak_rss_bytes, "returncode": step.returncode,
                         "memory_limit": args.memory_limit or "default",
                         "bytes_per_line": round(step.peak_rss_bytes / max(args.lines, 1), 1)})
            outs.append(out if step.ok else None)
        if len(outs) == 2 and all(outs):
            diffs = _same_outputs(*outs)
            rows[-1]["same_output_as_baseline"] = not diffs
            print("outputs identical to the baseline's" if not diffs
                  else "OUTPUTS DIFFER: " + "; ".join(diffs), flush=True)
            ok &= not diffs
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    print(f"\n{'code':<16} {'lines':>12} {'wall s':>8} {'peak GB':>8} {'B/line':>7}")
    for r in rows:
        print(f"{r['code']:<16} {r['lines']:>12,} {r['wall_s']:>8.1f} "
              f"{r['peak_rss_bytes'] / 1e9:>8.2f} {r['bytes_per_line']:>7.0f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(args.json.read_text()) if args.json.is_file() else []
    args.json.write_text(json.dumps(previous + [{"host": platform.node(), "cpus": os.cpu_count(),
                                                  "runs": rows}], indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
