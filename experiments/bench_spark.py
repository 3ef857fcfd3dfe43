"""Benchmark: the Spark path in local mode against the single-machine path, in one run each.

1. ``--prerank``: every member's pre-ranked pick lists (top 100, both modes) for a synthetic
   programme of 200,000 members (``recsys data synth`` -> ingest -> features -> a model fitted on
   it), in process (``recsys.precompute.pre_rank``, a thread per core) and as the Spark job
   (``recsys batch pre-rank``: ``local[2]``, session start timed apart). Target: Spark within 2x.
   The lists are compared, not just timed.
2. ``--als``: ``spark_als`` against implicit's ALS on Ta-Feng (train before February 2001, test
   February) with the same factors, regularisation, alpha, weighting and iterations (the
   reference ALS of the report); recall@10 and fit time of each. Target: recall within 0.005.
3. ``--features``: ``recsys features build`` on the same canonical tables (10M synthetic lines)
   with DuckDB and with ``--engine spark`` (``local[2]``), wall time side by side; the snapshots
   are compared file by file.
4. ``--ingest``: ``recsys data ingest`` of a retailer's raw export with export noise (gzip CSV
   sales lines, product / member / identity files; ``recsys data synth --raw --dirty-lines``) with
   DuckDB and with ``--engine spark`` (``local[2]``), wall time side by side; the three tables are
   compared value by value and the reports' counts (rows in, kept, rejected by reason, repaired).
5. ``--dialects``: on Ta-Feng, every feature query translated to Spark SQL two ways -- the
   hand-kept shims of ``recsys/dialect.py`` (what the build runs) and ``sqlglot``'s DuckDB ->
   Spark transpilation -- each run on Spark and compared with DuckDB's result: rows that differ,
   or the error.

Figures are printed and written to ``experiments/results/spark.json``. Heavy: on a shared
machine run it alone (``.venv/bin/python experiments/bench_spark.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results" / "spark.json"
RECSYS = [sys.executable, "-m", "recsys.cli"]


def run(cmd: list[str], what: str) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
        raise SystemExit(f"{what} failed: {' '.join(cmd)}")
    return wall


def synth_dataset(work: Path, members: int, products: int, lines: int,
                  as_of: str = "2024-06-01") -> tuple[Path, Path, dict[str, float]]:
    """Synthetic canonical tables (January to June 2024) and a feature snapshot as of ``as_of``."""
    raw, data = work / "raw", work / "data"
    times = {"synth_s": run([*RECSYS, "data", "synth", "--out", str(raw), "--members", str(members),
                             "--products", str(products), "--lines", str(lines)], "synth")}
    times["ingest_s"] = run([*RECSYS, "data", "ingest", str(raw / "mapping.toml"), "--data-dir", str(data),
                             "--out", str(data / "synth" / "canonical")], "ingest")
    canonical = data / "synth" / "canonical"
    features = data / "synth" / "features" / as_of
    times["features_duckdb_s"] = run([*RECSYS, "features", "build", "--as-of", as_of, "--canonical",
                                      str(canonical), "--out", str(features)], "features")
    return canonical, features, times


def bench_prerank(work: Path, members: int, products: int, lines: int, model_name: str) -> dict[str, Any]:
    import numpy as np
    import pyarrow as pa

    from recsys.bundle import Bundle, save_bundle
    from recsys.models import get_model
    from recsys.precompute import pre_rank
    from recsys.spark.batch import ModelSource, pre_rank_lists
    from recsys.spark.session import SparkSettings, get_spark
    from training.data import DataPaths, load_split

    # every purchase (the export ends on 2024-06-30): every synthesised member is in the model
    canonical, features, times = synth_dataset(work, members, products, lines, as_of="2024-07-01")
    data, _ = load_split(DataPaths(canonical, features), date(2024, 7, 1), date(2024, 7, 1))
    t0 = time.perf_counter()
    model = get_model(model_name)({"factors": 64, "iterations": 15} if model_name == "als" else {}).fit(data)
    times["fit_s"] = time.perf_counter() - t0
    ids_m, ids_p = data.interactions.members, data.interactions.products
    bundle_dir = save_bundle(work / "bundle", Bundle(
        model, ids_m, ids_p, pa.table({"member_id": ids_m.external_ids.astype(str)}),
        pa.table({"product_id": ids_p.external_ids.astype(str)})))
    t0 = time.perf_counter()
    local = pre_rank(model, n=100)
    times["in_process_s"] = time.perf_counter() - t0
    del model
    t0 = time.perf_counter()
    spark = get_spark(SparkSettings(master="local[2]"))
    times["spark_session_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    summary = pre_rank_lists(spark, ModelSource(bundle=str(bundle_dir)), str(work / "lists"), n=100)
    times["spark_job_s"] = time.perf_counter() - t0
    spark.stop()
    from recsys.precompute import PreRanked

    got = PreRanked.from_parquet(work / "lists")
    equal = all(np.array_equal(got.indices[m], local.indices[m]) and np.array_equal(got.scores[m], local.scores[m])
                for m in local.modes)
    ratio = times["spark_job_s"] / times["in_process_s"]
    return {"members": int(data.n_members), "products": int(data.n_products), "lines": lines, "model": model_name,
            **{k: round(v, 2) for k, v in times.items()}, "spark_over_in_process": round(ratio, 3),
            "lists_equal": bool(equal), "verified_members": summary["verified_members"],
            "target_2x_met": bool(ratio <= 2.0)}


def bench_als(data_dir: Path) -> dict[str, Any]:
    from recsys.models import get_model
    from recsys.spark.session import SparkSettings, describe, get_spark
    from training.data import DataPaths, load_split
    from training.evaluate import evaluate_picks

    paths = DataPaths(data_dir / "tafeng/canonical", data_dir / "tafeng/features/2001-02-01")
    data, split = load_split(paths, date(2001, 2, 1), date(2001, 3, 1))
    truth, seen = split.truth(), split.seen()
    shared = {"factors": 64, "iterations": 15, "regularization": 0.05, "alpha": 1.0, "weighting": "bm25", "seed": 0}
    out: dict[str, Any] = {"params": shared}
    t0 = time.perf_counter()
    spark = get_spark(SparkSettings(master="local[2]"))
    out["spark_session_s"] = round(time.perf_counter() - t0, 2)
    for label, name in (("implicit_als", "als"), ("spark_als", "spark_als")):
        model = get_model(name)(shared)
        t0 = time.perf_counter()
        model.fit(data)
        fit = time.perf_counter() - t0
        metrics = evaluate_picks(model, truth, seen, ks=(10, 20))
        out[label] = {"fit_s": round(fit, 2), "recall@10": round(metrics["recall@10"], 4),
                      "ndcg@10": round(metrics["ndcg@10"], 4), "recall@20": round(metrics["recall@20"], 4)}
    out["spark"] = {k: v for k, v in describe(spark).items() if k != "conf"}
    spark.stop()
    gap = out["spark_als"]["recall@10"] - out["implicit_als"]["recall@10"]
    out["recall@10_gap"] = round(gap, 4)
    out["target_0.005_met"] = bool(abs(gap) <= 0.005)
    return out


def bench_features(work: Path, lines: int) -> dict[str, Any]:
    """Both engines as the command line runs them (a process each, Spark's JVM start included)."""
    import pyarrow.parquet as pq

    members = max(1000, lines // 50)
    canonical, features, times = synth_dataset(work, members, max(500, members // 10), lines)
    out_spark = work / "features-spark"
    spark_s = run([*RECSYS, "features", "build", "--as-of", "2024-06-01", "--canonical", str(canonical),
                   "--out", str(out_spark), "--engine", "spark", "--spark-master", "local[2]",
                   "--spark-conf", "spark.driver.memory=8g"], "features (spark)")
    same = {}
    for name in ("members.parquet", "products.parquet", "category_price_bands.parquet"):
        a, b = pq.read_table(features / name), pq.read_table(out_spark / name)
        same[name] = a.num_rows == b.num_rows and all(
            a.column(c).to_pylist() == b.column(c).to_pylist() for c in a.column_names)
    return {"lines": lines, "members": members, "duckdb_s": round(times["features_duckdb_s"], 2),
            "spark_s": round(spark_s, 2), "spark_over_duckdb": round(spark_s / times["features_duckdb_s"], 2),
            "identical_files": same}


def bench_ingest(work: Path, lines: int) -> dict[str, Any]:
    """Both engines as the command line runs them (a process each, Spark's JVM start included)."""
    import pyarrow.parquet as pq

    members = max(1000, lines // 50)
    raw = work / "raw"
    dirty = max(10, lines // 1000)
    synth_s = run([*RECSYS, "data", "synth", "--raw", "--out", str(raw), "--members", str(members), "--products",
                   str(max(500, members // 10)), "--lines", str(lines), "--dirty-lines", str(dirty)], "synth --raw")
    out, times = {}, {}
    for engine in ("duckdb", "spark"):
        out[engine] = work / engine
        extra = ["--engine", "spark", "--spark-master", "local[2]", "--spark-conf", "spark.driver.memory=8g"] \
            if engine == "spark" else []
        times[engine] = run([*RECSYS, "data", "ingest", str(raw / "mapping.toml"), "--out", str(out[engine]),
                             *extra], f"ingest ({engine})")
    same = {}
    for name in ("transactions.parquet", "products.parquet", "members.parquet"):
        a, b = pq.read_table(out["duckdb"] / name), pq.read_table(out["spark"] / name)
        same[name] = a.num_rows == b.num_rows and all(
            a.column(c).to_pylist() == b.column(c).to_pylist() for c in a.column_names)
    reports = {e: json.loads((out[e] / "validation_report.json").read_text()) for e in out}
    counts = ("rows_in", "rows_kept", "rows_rejected", "rejected_by_reason", "repaired_by_reason")
    d = reports["duckdb"]
    return {"lines_in": d["rows_in"], "rows_kept": d["rows_kept"], "rejected_by_reason": d["rejected_by_reason"],
            "synth_s": round(synth_s, 2), "duckdb_s": round(times["duckdb"], 2), "spark_s": round(times["spark"], 2),
            "spark_over_duckdb": round(times["spark"] / times["duckdb"], 2), "identical_files": same,
            "same_report_counts": all(reports["spark"][k] == d[k] for k in counts)}


def bench_dialects(data_dir: Path) -> dict[str, Any]:
    """Each feature query through recsys.dialect.to_spark and through sqlglot, on Spark, against
    DuckDB's own result (rows in one result and not the other, both ways)."""
    from datetime import date as _date

    import duckdb

    from features.build import _connect, _render, render_tag, sql_params
    from features.config import FeatureConfig
    from features.engine import DuckDBEngine, SparkEngine
    from recsys.dialect import to_spark, to_spark_sqlglot
    from recsys.spark.session import SparkSettings, get_spark
    from recsys.tags import TagRegistry

    canonical = data_dir / "tafeng" / "canonical"
    params = sql_params(_date(2001, 2, 1), FeatureConfig())
    spark = get_spark(SparkSettings(master="local[2]"))
    tmp = Path(tempfile.mkdtemp(prefix="bench-dialects-"))
    con = _connect("8GB", 2, tmp)
    engines = {"duckdb": DuckDBEngine(con), "spark": SparkEngine(spark)}
    for eng in engines.values():
        for view in ("transactions", "products", "members"):
            eng.view(view, f"SELECT * FROM {eng.parquet(canonical / (view + '.parquet'))}")
        eng.view("lines", _render("lines.sql", params))
        eng.table("category_price_bands", _render("category_price_bands.sql", params))
        eng.view("member_base", _render("member_features.sql", params))
        eng.view("product_base", _render("product_features.sql", params))
    queries = {name: _render(name, params) for name in ("lines.sql", "category_price_bands.sql",
                                                         "member_features.sql", "product_features.sql")}
    for tag in TagRegistry.builtin():
        t = render_tag(tag, params)
        base, key = ("member_base", "member_id") if t.entity == "member" else ("product_base", "product_id")
        queries[f"tag {t.name}"] = (f"SELECT {key}, ({t.expr}) AS value FROM {base}" if t.expr is not None
                                    else f"SELECT {key}, value FROM ({t.query}) AS q")
    out: dict[str, Any] = {}
    for name, sql in queries.items():
        res = con.execute(sql)
        want = res.to_arrow_table() if hasattr(res, "to_arrow_table") else res.fetch_arrow_table()
        expected = spark.createDataFrame(want)
        row: dict[str, Any] = {}
        for label, translate in (("hand", to_spark), ("sqlglot", to_spark_sqlglot)):
            try:
                got = spark.sql(translate(sql))
                got = got.select([got[c].cast(expected.schema[i].dataType) for i, c in enumerate(got.columns)])
                got = got.toDF(*expected.columns)
                diff = got.exceptAll(expected).count() + expected.exceptAll(got).count()
                row[label] = "same rows" if diff == 0 else f"{diff} rows differ"
            except Exception as exc:  # an error is a measurement here
                row[label] = "error: " + next((ln for ln in str(exc).splitlines() if ln.strip()), "")[:160]
        out[name] = row
        print(f"{name:34s} hand: {row['hand']:24s} sqlglot: {row['sqlglot']}")
    con.close()
    shutil.rmtree(tmp, ignore_errors=True)
    del duckdb
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=Path("data"), help="holds tafeng/canonical and its features")
    ap.add_argument("--prerank", action="store_true")
    ap.add_argument("--als", action="store_true")
    ap.add_argument("--features", action="store_true")
    ap.add_argument("--ingest", action="store_true")
    ap.add_argument("--ingest-lines", type=int, default=2_000_000)
    ap.add_argument("--dialects", action="store_true")
    ap.add_argument("--members", type=int, default=200_000)
    ap.add_argument("--products", type=int, default=20_000)
    ap.add_argument("--lines-per-member", type=int, default=50)
    ap.add_argument("--feature-lines", type=int, default=10_000_000)
    ap.add_argument("--model", default="als", help="the model whose lists are pre-ranked")
    args = ap.parse_args()
    if not (args.prerank or args.als or args.features or args.ingest or args.dialects):
        args.prerank = args.als = args.features = args.ingest = args.dialects = True
    results: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    work = Path(tempfile.mkdtemp(prefix="bench-spark-"))
    try:
        if args.als:
            results["als_tafeng"] = bench_als(args.data_dir)
            print(json.dumps(results["als_tafeng"], indent=1))
        if args.prerank:
            results[f"prerank_{args.model}"] = bench_prerank(work / "prerank", args.members, args.products,
                                                            args.members * args.lines_per_member, args.model)
            print(json.dumps(results[f"prerank_{args.model}"], indent=1))
        if args.features:
            results["features"] = bench_features(work / "features", args.feature_lines)
            print(json.dumps(results["features"], indent=1))
        if args.ingest:
            results["ingest"] = bench_ingest(work / "ingest", args.ingest_lines)
            print(json.dumps(results["ingest"], indent=1))
        if args.dialects:
            results["dialects_tafeng"] = bench_dialects(args.data_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["machine"] = {"cores": os.cpu_count(), "load_average_after": round(os.getloadavg()[0], 2),
                          "at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    print(f"{'figure':44s} value")
    for section, figs in results.items():
        if isinstance(figs, dict):
            for k, v in figs.items():
                if not isinstance(v, dict):
                    print(f"{section + '.' + k:44s} {v}")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
