"""Benchmark the whole offline chain as a programme grows: synth -> ingest -> features -> train.

For each size (members; 50 purchase lines per member; products scale too), the four commands a
user runs on the synthetic retailer export (README, "Your own data, worked through"), each as its
own ``recsys`` subprocess, timed and measured:

1. ``recsys data synth --raw --members M --products P --lines 50*M``
2. ``recsys data ingest <its mapping.toml>``
3. ``recsys features build --as-of 2024-06-01``
4. ``recsys train`` with the hybrid model and no next-basket step (a copy of
   ``experiments/configs/synth_retailer.toml`` pointing at this size's data, ``next_basket =
   false``, a tracking store of its own), registering the model as a user would.

Each step's wall time and the peak memory of its whole process tree (the larger of the kernel's
``ru_maxrss`` for the process and its reaped children, and the resident memory summed over the
live tree every 0.2 s -- see ``bench_foundation.run_step``) go to
``experiments/results/scale.json``: one object per step (``members``, ``lines``, ``products``,
``step``, ``wall_s``, ``peak_rss_bytes`` + the return code, the load average as the step started
and ended (``load_start``, ``load_end``: the machine may be shared), and for ``train`` the run's own
stage timings and headline metrics, read from its output). Results of sizes not run this time are
kept, so sizes can be measured one at a time. A table is printed at the end, with the targets of
issue 16: at 1M members every step under 12 GB and ``recsys train`` under 20 minutes; at 2M
members every step completes under 22 GB.

A size's data is deleted once its steps are done (``--keep`` keeps it): 2M members are ~100M
lines. Sizes of 200k members and up are heavy: on a shared machine run them alone, and look at
``free -g`` first.

Usage (from the repository root)::

    .venv/bin/python experiments/bench_scale.py --sizes 20k                # a minute
    .venv/bin/python experiments/bench_scale.py --sizes 200k,1m
    .venv/bin/python experiments/bench_scale.py --sizes 20k --steps train --keep   # re-train only

Exit code 0 when every step ran and every target of the sizes run was met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_foundation import StepResult, exit_text, find_recsys, machine_line, run_step  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "experiments" / "results" / "scale.json"
AS_OF = "2024-06-01"
LINES_PER_MEMBER = 50
STEPS = ("synth", "ingest", "features", "train")
GB = 1024**3
# issue 16's targets: members -> (peak bytes every step stays under, train wall seconds or None)
TARGETS: dict[int, tuple[int, float | None]] = {1_000_000: (12 * GB, 20 * 60.0), 2_000_000: (22 * GB, None)}
# the train summary's rows worth keeping (recsys train prints them as a table)
TRAIN_TIMINGS = ("load_s", "fit_s", "pre_rank_s", "evaluate_audiences_s", "evaluate_picks_s", "evaluate_s", "total_s")
TRAIN_METRICS = ("recall@10", "ndcg@10", "audience_known_recall@1000", "audience_known_lift_most_active@1000",
                 "audience_new_recall@1000", "audience_new_lift_most_active@1000")


def products_for(members: int) -> int:
    """Products scale with members: 5,000 at 20k members, a tenth of the members from 50k up
    (20,000 at 200k and 50,000 at 500k, as in issue 16's table; 100,000 at 1M)."""
    return max(5_000, members // 10)


def parse_size(text: str) -> int:
    """``20k``, ``200000``, ``1m``, ``2M`` -> members."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 20k, 200k, 1m, 2000000)")
    value = float(m.group(1)) * {"": 1, "k": 1_000, "m": 1_000_000}[m.group(2).lower()]
    if value < 1_000:
        raise argparse.ArgumentTypeError(f"{text!r}: at least 1,000 members")
    return int(value)


@dataclass
class ScaleStep:
    """One row of ``scale.json``."""

    members: int
    lines: int
    products: int
    step: str
    wall_s: float
    peak_rss_bytes: int
    returncode: int | None
    command: list[str]
    started: str
    parts: dict[str, float] = field(default_factory=dict)  # train: the run's own stage timings
    metrics: dict[str, float] = field(default_factory=dict)  # train: headline metrics
    log: str = ""
    code: str = ""  # the commit measured (+ "-dirty" with uncommitted changes)
    load_start: list[float] = field(default_factory=list)  # load average (1, 5, 15 min) as the step started
    load_end: list[float] = field(default_factory=list)  # ... and as it ended: the machine is shared


def code_version() -> str:
    import subprocess

    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=False).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, check=False).stdout.strip()
    return head + ("-dirty" if dirty else "")


def train_config(data_dir: Path, path: Path) -> Path:
    """The synthetic retailer's training config, on this size's data, without the next-basket step."""
    text = (REPO / "experiments" / "configs" / "synth_retailer.toml").read_text(encoding="utf-8")
    text = re.sub(r'(?m)^data_dir = .*$', f"data_dir = {json.dumps(str(data_dir))}", text)
    text = re.sub(r"(?m)^next_basket = .*$", "next_basket = false", text)
    if "next_basket = false" not in text or str(data_dir) not in text:
        raise RuntimeError("experiments/configs/synth_retailer.toml changed shape: update bench_scale.train_config")
    path.write_text(text, encoding="utf-8")
    return path


_ROW = re.compile(r"[│|]\s*([\w@.]+)\s*[│|]\s*(-?[\d.]+(?:e-?\d+)?|nan)\s*[│|]")


def read_train_summary(log: Path) -> tuple[dict[str, float], dict[str, float]]:
    """The stage timings and headline metrics from ``recsys train``'s summary table."""
    rows: dict[str, float] = {}
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        m = _ROW.search(line)
        if m:
            rows[m.group(1)] = float(m.group(2))
    return ({k: rows[k] for k in TRAIN_TIMINGS if k in rows}, {k: rows[k] for k in TRAIN_METRICS if k in rows})


def run_size(recsys: str, members: int, workdir: Path, steps: tuple[str, ...], args: argparse.Namespace,
             env: dict[str, str]) -> list[ScaleStep]:
    products, lines = products_for(members), LINES_PER_MEMBER * members
    root = workdir / f"m{members}"
    data_dir, raw = root / "data", root / "data" / "synth_retailer" / "raw"
    log_dir = root / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    commands = {
        "synth": [recsys, "data", "synth", "--raw", "--out", str(raw), "--members", str(members),
                  "--products", str(products), "--lines", str(lines), "--seed", str(args.seed),
                  "--dirty-lines", str(args.dirty_lines)],
        "ingest": [recsys, "data", "ingest", str(raw / "mapping.toml"), "--data-dir", str(data_dir)],
        "features": [recsys, "features", "build", "--dataset", "synth_retailer", "--as-of", AS_OF,
                     "--data-dir", str(data_dir)],
        "train": [recsys, "train", "--config", str(train_config(data_dir, root / "train.toml")),
                  "--tracking-uri", f"sqlite:///{root / 'mlflow.db'}"],
    }
    out: list[ScaleStep] = []
    print(f"\n== {members:,} members x {products:,} products x {lines:,} lines  ({root})", flush=True)
    for step in steps:
        started = time.strftime("%Y-%m-%dT%H:%M:%S")
        load_start = [round(x, 2) for x in os.getloadavg()]
        res = run_step(StepResult(f"m{members}", step, commands[step]), log_dir, env)
        shown = ["recsys", *(c.replace(str(workdir), "WORKDIR") for c in commands[step][1:])]  # no local paths
        row = ScaleStep(members, lines, products, step, round(res.wall_s, 2), res.peak_rss_bytes, res.returncode,
                        shown, started, code=code_version(), load_start=load_start,
                        load_end=[round(x, 2) for x in os.getloadavg()])
        if step == "train" and res.ok:
            row.parts, row.metrics = read_train_summary(Path(res.log))
        if not res.ok:
            row.log = res.log
        out.append(row)
        if not res.ok:
            print(f"   {step} failed ({exit_text(res.returncode or 0)}): the later steps of this size are skipped")
            break
    if not args.keep:
        shutil.rmtree(data_dir, ignore_errors=True)
        for extra in ("mlflow.db", "mlartifacts", "mlruns"):
            p = root / extra
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return out


def merge(rows: list[ScaleStep], path: Path) -> list[dict[str, Any]]:
    """Rows already in ``path`` for other (members, step, code) triples, plus these: a size
    measured again on the same commit replaces its rows, other commits' rows stay (before /
    after a change, side by side)."""
    old: list[dict[str, Any]] = []
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8")).get("steps", [])
        except (json.JSONDecodeError, AttributeError):
            old = []
    fresh = {(r.members, r.step, r.code) for r in rows}
    kept = [r for r in old if (r.get("members"), r.get("step"), r.get("code", "")) not in fresh]
    merged = kept + [asdict(r) for r in rows]
    merged.sort(key=lambda r: (r["members"], r.get("started", ""), STEPS.index(r["step"]) if r["step"] in STEPS else 99))
    return merged


def table(rows: list[dict[str, Any]]) -> tuple[list[str], list[str], bool]:
    """The printed table, the target lines and whether every target of these rows was met."""
    head = f"{'members':>10} {'products':>9} {'lines':>12} {'step':<9} {'wall s':>8} {'peak GB':>8}  notes"
    lines = [head, "-" * len(head)]
    for r in rows:
        note = "" if r.get("returncode") == 0 else f"FAILED ({exit_text(r.get('returncode') or 0)})"
        if r["step"] == "train" and r.get("parts"):
            p = r["parts"]
            note = " ".join(f"{k[:-2]} {p[k]:.0f}" for k in ("fit_s", "pre_rank_s", "evaluate_audiences_s")
                            if k in p) + (" " + note if note else "")
            m = r.get("metrics", {})
            if "recall@10" in m:
                note += f"; recall@10 {m['recall@10']:.4f}, lift {m.get('audience_known_lift_most_active@1000', float('nan')):.3f}"
        lines.append(f"{r['members']:>10,} {r['products']:>9,} {r['lines']:>12,} {r['step']:<9} {r['wall_s']:>8.1f} "
                     f"{r['peak_rss_bytes'] / GB:>8.2f}  {note}".rstrip())
    targets, ok = [], True
    for members, (peak_max, train_max) in TARGETS.items():
        mine = [r for r in rows if r["members"] == members]
        if not mine:
            continue
        done = {r["step"] for r in mine if r.get("returncode") == 0}
        peak = max(r["peak_rss_bytes"] for r in mine)
        met = done >= set(STEPS) and peak < peak_max
        targets.append(f"{members:,} members: every step completes under {peak_max / GB:.0f} GB: "
                       f"{'met' if met else 'NOT met'} (peak {peak / GB:.2f} GB; steps done: {', '.join(sorted(done))})")
        ok &= met
        if train_max is not None:
            train = next((r for r in mine if r["step"] == "train"), None)
            t_met = train is not None and train.get("returncode") == 0 and train["wall_s"] < train_max
            targets.append(f"{members:,} members: recsys train under {train_max / 60:.0f} min: "
                           f"{'met' if t_met else 'NOT met'}"
                           + (f" ({train['wall_s'] / 60:.1f} min)" if train is not None else " (not run)"))
            ok &= t_met
    return lines, targets, ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="20k,200k,1m,2m",
                    help="members per size, comma-separated (20k, 200k, 1m, 2m, or plain numbers)")
    ap.add_argument("--steps", default=",".join(STEPS), help=f"which steps, in order ({','.join(STEPS)})")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/recsys-bench-scale"))
    ap.add_argument("--json", type=Path, default=RESULTS, help="results file (rows of other sizes are kept)")
    ap.add_argument("--keep", action="store_true", help="keep each size's data (default: deleted when done)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dirty-lines", type=int, default=0, help="export noise lines of each kind (synth --raw)")
    ap.add_argument("--recsys", default=None, help="the recsys executable (default: the repository's .venv)")
    args = ap.parse_args(argv)
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    steps = tuple(s.strip() for s in args.steps.split(",") if s.strip())
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        ap.error(f"unknown step(s) {', '.join(unknown)}; steps: {', '.join(STEPS)}")
    recsys = find_recsys(args.recsys)
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    workdir = args.workdir.expanduser().resolve()
    print(machine_line(), flush=True)
    rows: list[ScaleStep] = []
    for members in sizes:
        rows += run_size(recsys, members, workdir, steps, args, env)
        merged = merge(rows, args.json)  # written after every size: a later failure loses nothing
        args.json.parent.mkdir(parents=True, exist_ok=True)
        extra = {}  # other top-level keys (a note on earlier rows) are kept
        if args.json.exists():
            try:
                extra = {k: v for k, v in json.loads(args.json.read_text(encoding="utf-8")).items()
                         if k not in ("machine", "steps")}
            except (json.JSONDecodeError, AttributeError):
                extra = {}
        args.json.write_text(json.dumps({"machine": machine_line(), "steps": merged, **extra}, indent=1),
                             encoding="utf-8")
    lines, targets, ok = table([asdict(r) for r in rows])
    print("\n" + "\n".join(lines))
    print("\n".join(["", *targets]) if targets else "")
    print(f"\n{machine_line()}\nresults: {args.json}")
    return 0 if ok and all(r.returncode == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
