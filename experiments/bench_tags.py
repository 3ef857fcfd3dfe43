"""Benchmark the tag registry: what computing tags costs the feature build, and what filtering and
scoping by tags costs the server.

Two parts, each with its baseline measured in the same run (the machine is shared and noisy):

* ``features``: synthetic data (``--lines`` lines, ``--members`` members) is ingested once; then the
  feature build runs ``--reps`` times each, alternating, with every built-in tag and with the
  built-in tags minus ``channel`` and ``store`` (the tags the build had before the registry).
  Figures: the process's CPU seconds (user + system, DuckDB's threads included) and wall seconds,
  best of the repetitions.
* ``serving``: ``--serving-members`` members with a value segment (9 values), lifecycle (5),
  region (30), home store (``--stores``) and a multi-valued channel (3 values, one or two per
  member). The baseline is the design before the registry -- a boolean mask for every value of
  every tag, built at load -- against :class:`serving.tagindex.MemberTagIndex` (masks made when
  first asked for, the most recent kept): load time and memory of the masks, and the time of a
  filter (two values of one tag AND one of another) cold and warm, of a multi-valued filter, of a
  store scope and of one member's scope check (the picks path of a staff key).

Usage (from the repository root)::

    .venv/bin/python experiments/bench_tags.py                    # both parts
    .venv/bin/python experiments/bench_tags.py --part serving --serving-members 1000000

Writes ``experiments/results/tags.json`` (``--json`` to change).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SYNTH_AS_OF = date(2024, 6, 1)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def bench_features(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from features.build import build_features
    from features.config import FeatureConfig
    from recsys.data.ingest import ingest
    from recsys.data.mapping import resolve_source
    from recsys.data.synth import SynthSpec, synthesize
    from recsys.tags import TagRegistry

    raw, canonical = workdir / "raw", workdir / "canonical"
    t0 = time.perf_counter()
    synthesize(SynthSpec(members=args.members, products=args.products, lines=args.lines, seed=0), raw)
    ingest(resolve_source(str(raw / "mapping.toml"), workdir), canonical)
    prepare_s = time.perf_counter() - t0
    builtin = TagRegistry.builtin()
    variants = {
        "all built-in tags": builtin,
        "without channel and store": builtin.only(n for n in builtin.names() if n not in ("channel", "store")),
    }
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for _ in range(args.reps):
        for name, registry in variants.items():
            c0, w0 = _cpu(), time.perf_counter()
            build_features(canonical, workdir / "features", SYNTH_AS_OF, FeatureConfig(), threads=args.threads,
                           tags=registry)
            runs[name].append((_cpu() - c0, time.perf_counter() - w0))
    out: dict[str, Any] = {"lines": args.lines, "members": args.members, "products": args.products,
                           "threads": args.threads, "reps": args.reps, "prepare_s": round(prepare_s, 1)}
    for name, rs in runs.items():
        out[name] = {"cpu_s_best": round(min(c for c, _ in rs), 3), "wall_s_best": round(min(w for _, w in rs), 3),
                     "cpu_s": [round(c, 3) for c, _ in rs], "wall_s": [round(w, 3) for _, w in rs]}
    base = out["without channel and store"]["cpu_s_best"]
    out["cpu_ratio"] = round(out["all built-in tags"]["cpu_s_best"] / base, 3) if base else None
    return out


def _timed(fn: Any, repeat: int) -> float:
    """Median seconds of ``fn()`` over ``repeat`` calls."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def bench_serving(args: argparse.Namespace) -> dict[str, Any]:
    from recsys.models.base import Tag
    from recsys.tags import MultiTag, TagRegistry, with_seen_values
    from serving.tagindex import MemberTagIndex

    n = args.serving_members
    rng = np.random.default_rng(0)
    builtin = TagRegistry.builtin()
    segments = builtin.get("value_segment").value_names
    stages = builtin.get("lifecycle").value_names
    regions = tuple(f"R{i:02d}" for i in range(30))
    stores = tuple(f"S{i:04d}" for i in range(args.stores))
    channels = ("app", "mini_program", "store")
    columns: dict[str, Tag | MultiTag] = {
        "value_segment": Tag(rng.integers(0, len(segments), n).astype(np.int32), segments),
        "lifecycle": Tag(rng.integers(0, len(stages), n).astype(np.int32), stages),
        "region": Tag(rng.integers(0, len(regions), n).astype(np.int32), regions),
        "store": Tag(rng.integers(0, len(stores), n).astype(np.int32), stores),
    }
    first = rng.integers(0, 3, n)
    second = np.where(rng.random(n) < 0.5, (first + 1 + rng.integers(0, 2, n)) % 3, -1)
    indptr = np.concatenate([[0], np.cumsum(1 + (second >= 0))]).astype(np.int64)
    indices = np.empty(int(indptr[-1]), dtype=np.int32)
    indices[indptr[:-1]] = np.minimum(first, np.where(second >= 0, second, 3))
    two = second >= 0
    indices[indptr[:-1][two] + 1] = np.maximum(first, second)[two]
    import scipy.sparse as sp

    channel = MultiTag(sp.csr_matrix((np.ones(len(indices), bool), indices, indptr), shape=(n, 3)), channels)
    columns["channel"] = channel
    registry = TagRegistry((
        builtin.get("value_segment"), builtin.get("lifecycle"), with_seen_values(builtin.get("region"), regions),
        with_seen_values(builtin.get("store"), stores), with_seen_values(builtin.get("channel"), channels),
    ))
    repeat = args.serving_repeat

    # the baseline: every value of every single-valued tag as a mask, built at load
    t = time.perf_counter()
    masks = {name: {label: col.codes == code for code, label in enumerate(col.labels)}
             for name, col in columns.items() if isinstance(col, Tag)}
    load_s = time.perf_counter() - t
    mask_bytes = sum(m.nbytes for per in masks.values() for m in per.values())

    def old_filter() -> np.ndarray:
        keep = masks["value_segment"]["important_value"] | masks["value_segment"]["general_value"]
        return keep & masks["lifecycle"]["active"]

    filters = {"value_segment": ["important_value", "general_value"], "lifecycle": ["active"]}
    cold, warm = [], []
    for _ in range(repeat):
        index = MemberTagIndex(registry, columns, n, "bench")
        t = time.perf_counter()
        got = index.mask(filters)
        cold.append(time.perf_counter() - t)
        warm.append(_timed(lambda: index.mask(filters), 3))  # noqa: B023
    assert np.array_equal(got, old_filter())
    index = MemberTagIndex(registry, columns, n, "bench")
    channel_filter = {"channel": ["app", "mini_program"], "store": [stores[0]]}
    channel_cold = _timed(lambda: MemberTagIndex(registry, columns, n, "bench").mask(channel_filter), repeat)
    index.mask(channel_filter)
    channel_warm = _timed(lambda: index.mask(channel_filter), repeat)
    scope = (("store", (stores[1],)),)
    scope_cold = _timed(lambda: MemberTagIndex(registry, columns, n, "bench").scope_mask(scope), repeat)
    rows = rng.integers(0, n, 10_000)
    t = time.perf_counter()
    inside = sum(index.in_scope(int(r), scope) for r in rows)
    in_scope_us = (time.perf_counter() - t) / len(rows) * 1e6
    assert inside == int(np.count_nonzero(columns["store"].codes[rows] == 1))
    return {
        "members": n, "stores": args.stores, "repeat": repeat,
        "baseline_every_value_mask": {
            "load_s": round(load_s, 3), "mask_mb": round(mask_bytes / 1e6, 1),
            "filter_ms": round(_timed(old_filter, repeat) * 1e3, 3),
        },
        "tag_index": {
            "load_s": 0.0, "mask_mb_max": round(64 * n / 1e6, 1),
            "filter_cold_ms": round(float(np.median(cold)) * 1e3, 3),
            "filter_warm_ms": round(float(np.median(warm)) * 1e3, 3),
            "multi_valued_filter_cold_ms": round(channel_cold * 1e3, 3),
            "multi_valued_filter_warm_ms": round(channel_warm * 1e3, 3),
            "store_scope_cold_ms": round(scope_cold * 1e3, 3),
            "one_member_scope_check_us": round(in_scope_us, 2),
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--part", choices=("features", "serving", "both"), default="both")
    p.add_argument("--lines", type=int, default=2_000_000, help="synthetic lines (features)")
    p.add_argument("--members", type=int, default=100_000, help="synthetic members (features)")
    p.add_argument("--products", type=int, default=20_000, help="synthetic products (features)")
    p.add_argument("--threads", type=int, default=2, help="DuckDB threads (features)")
    p.add_argument("--reps", type=int, default=3, help="builds of each variant (features)")
    p.add_argument("--serving-members", type=int, default=1_000_000)
    p.add_argument("--stores", type=int, default=500, help="home store values (serving)")
    p.add_argument("--serving-repeat", type=int, default=15, help="timings per serving figure (median)")
    p.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temporary one, removed)")
    p.add_argument("--json", type=Path, default=REPO / "experiments" / "results" / "tags.json")
    args = p.parse_args(argv)

    result: dict[str, Any] = {"host": platform.node(), "python": platform.python_version(),
                              "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    if args.part in ("serving", "both"):
        result["serving"] = bench_serving(args)
        print(json.dumps(result["serving"], indent=1))
    if args.part in ("features", "both"):
        workdir = args.workdir or Path(tempfile.mkdtemp(prefix="recsys-bench-tags-"))
        try:
            result["features"] = bench_features(args, workdir)
        finally:
            if args.workdir is None:
                shutil.rmtree(workdir, ignore_errors=True)
        print(json.dumps(result["features"], indent=1))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"-> {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
