"""Campaign benchmarks and backtests (issue 17): figures printed and written to
``experiments/results/campaigns.json``. Heavy: on a shared machine run it alone,
``.venv/bin/python experiments/bench_campaigns.py``.

``--scale``   a picks campaign for every member of a synthetic bundle (1,000,000 by default; random
              clustered ALS factors, as ``bench_serving.py`` builds them, each member's top 20 discover
              picks pre-ranked): create (rank from the lists, policy checks, holdout draw, store in
              SQLite) and export the treated CSV, timed against reading the same picks from the
              lists alone in the same run (target: create + export under 2 minutes); and an audience
              campaign of 100,000 for one product timed against the audience search itself.
``--planted`` the planted-effect recovery table: on a synthetic shop, 20 seeds x planted
              probability 0.05 and 0 (new holdout draw and new planted purchases per seed): planted
              uplift p x (1 - q) beside the estimate and its 95 % interval.
``--tafeng``  the Ta-Feng backtest: an audience campaign for January's most-bought product "sent" on
              2001-02-01 and measured over February (nobody was contacted: no uplift expected), the
              treated conversion beside the holdout, random and most-active lists of the same size.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "experiments" / "results" / "campaigns.json"
TAFENG_ZIP = REPO.parent / "shared" / "data" / "ta_feng.csv.zip"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _bench_serving() -> Any:
    spec = importlib.util.spec_from_file_location("bench_serving", REPO / "experiments" / "bench_serving.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_serving"] = mod
    spec.loader.exec_module(mod)
    return mod


def _settings(root: Path, bundle: Path) -> Any:
    from serving.settings import ServingSettings

    return ServingSettings(bundle=bundle, auth_disabled=True, events_dir=root / "events", campaign_db=f"sqlite:///{root / 'campaigns.db'}",
                           load_in_background=False, events_poll_seconds=0)


# --------------------------------------------------------------------------- scale
def scale(workdir: Path, members: int, products: int, factors: int, k: int) -> dict[str, Any]:
    from recsys.bundle import load_bundle, save_bundle
    from recsys.precompute import pre_rank
    from serving.campaign_schemas import CampaignRequest
    from serving.db import Database
    from serving.service import campaigns as service
    from serving.state import build_state

    bundle_dir = workdir / f"synthetic-{members}"
    _bench_serving().synthetic_bundle(bundle_dir, members, products, factors)
    meta = json.loads((bundle_dir / "bundle.json").read_text())
    if not meta.get("pre_ranked"):
        log(f"pre-ranking {members:,} members (top 20 discover picks) ...")
        t = time.perf_counter()
        b = load_bundle(bundle_dir)
        b.pre_ranked = pre_rank(b.model, n=20, modes=("discover",))
        save_bundle(bundle_dir, b)
        log(f"pre-ranked in {time.perf_counter() - t:.0f} s")
    t = time.perf_counter()
    state = build_state(_settings(workdir, bundle_dir), bundle_dir)
    load_s = time.perf_counter() - t
    log(f"state loaded in {load_s:.0f} s")
    out: dict[str, Any] = {"members": members, "products": products, "factors": factors, "k": k,
                           "load_seconds": round(load_s, 1),
                           "load_average_start": [round(x, 2) for x in os.getloadavg()]}

    # baseline: every member's top-k read from the lists (what any export of them must do)
    rows = np.arange(state.members.n_base, dtype=np.int64)
    t = time.perf_counter()
    picks = service._vector_picks(state, rows, k, "discover", None)
    out["baseline_read_lists_seconds"] = round(time.perf_counter() - t, 2)
    del picks

    db_path = workdir / "campaigns-bench.db"
    for f in workdir.glob("campaigns-bench.db*"):
        f.unlink()
    db = Database(f"sqlite:///{db_path}")
    req = CampaignRequest(name="member day", picks={"k": k, "mode": "discover"}, holdout_share=0.1, seed=1,
                          send_date=date(2024, 6, 1), window_days=14)
    t = time.perf_counter()
    created = service.create_campaign(db, state, req, key_id="bench")
    create_s = time.perf_counter() - t
    t = time.perf_counter()
    exp = service.export_rows(db, created.campaign.id)
    csv_path = workdir / "member-day.csv"
    with open(csv_path, "wb") as fh:
        for chunk in service.csv_chunks(exp.table):
            fh.write(chunk)
    export_s = time.perf_counter() - t
    out["picks_campaign"] = {
        "treated": created.summary.treated, "holdout": created.summary.holdout, "rows_exported": exp.table.num_rows,
        "csv_mb": round(csv_path.stat().st_size / 1e6, 1), "create_seconds": round(create_s, 1),
        "export_seconds": round(export_s, 1), "total_seconds": round(create_s + export_s, 1),
        "target_seconds": 120, "meets_target": create_s + export_s < 120,
        "create_phases_seconds": created.campaign.lineage.get("seconds"),
        "db_mb": round(sum(f.stat().st_size for f in workdir.glob("campaigns-bench.db*")) / 1e6, 1),
    }
    log(f"picks campaign: {out['picks_campaign']}")
    del exp

    # an audience campaign of 100,000 for the most-bought product, against the audience search alone
    product = int(np.argmax(np.asarray(state.history.sum(axis=0)).ravel()))
    pid = str(state.products.external_ids[product])
    t = time.perf_counter()
    state.scorer.audience(np.array([product]), 100_000, None)
    bare_s = time.perf_counter() - t
    t = time.perf_counter()
    state.scorer.audience(np.array([product]), state.members.n_base, None)
    whole_s = time.perf_counter() - t
    req = CampaignRequest(name="launch", product_id=pid, size=100_000, holdout_share=0.1, seed=2,
                          send_date=date(2024, 6, 20), window_days=14)
    t = time.perf_counter()
    audience = service.create_campaign(db, state, req, key_id="bench")
    aud_create = time.perf_counter() - t
    t = time.perf_counter()
    exp = service.export_rows(db, audience.campaign.id)
    aud_export = time.perf_counter() - t
    out["audience_campaign"] = {
        "size": 100_000, "treated": audience.summary.treated, "policy": audience.summary.policy,
        "audience_search_100k_seconds": round(bare_s, 2), "audience_search_whole_pool_seconds": round(whole_s, 2),
        "create_seconds": round(aud_create, 2), "create_phases_seconds": audience.campaign.lineage.get("seconds"),
        "export_seconds": round(aud_export, 2), "rows_exported": exp.table.num_rows,
    }
    log(f"audience campaign: {out['audience_campaign']}")
    out["load_average_end"] = [round(x, 2) for x in os.getloadavg()]  # the machine may be shared
    db.dispose()
    return out


# --------------------------------------------------------------------------- served shops
def served_shop(root: Path, spec: Any | None, as_of: date, model: str, pick_lists: bool) -> Any:
    sys.path.insert(0, str(REPO / "tests"))
    from campaign_world import build_world  # the tests' builder: synth / Ta-Feng -> served state

    return build_world(root, spec, as_of, model=model, pick_lists=pick_lists)


def planted(workdir: Path, seeds: int) -> dict[str, Any]:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from sqlalchemy import select

    from recsys.data.synth import SynthSpec
    from recsys.data.synth.campaign import plant_campaign_effect, planted_uplift
    from serving.campaign_schemas import CampaignRequest
    from serving.db import CampaignMember, Database
    from serving.service.campaign_results import PurchaseSource, results
    from serving.service.campaigns import create_campaign

    send, window = date(2024, 5, 1), 30
    root = workdir / "planted"
    shutil.rmtree(root, ignore_errors=True)
    world = served_shop(root, SynthSpec(members=4_000, products=300, lines=80_000, categories=20, seed=3), send,
                        "simple_blend", True)
    tx = pq.read_table(world.canonical / "transactions.parquet", columns=["member_id", "product_id", "ts"])
    win = tx.filter(pc.and_(pc.greater_equal(tx.column("ts"), pc.strptime("2024-05-01", "%Y-%m-%d", "us")),
                            pc.less(tx.column("ts"), pc.strptime("2024-05-31", "%Y-%m-%d", "us"))))
    target = str(win.group_by("product_id").aggregate([("member_id", "count_distinct")])
                 .sort_by([("member_id_count_distinct", "descending")]).column("product_id")[0].as_py())
    rows = []
    for p in (0.05, 0.0):
        for seed in range(seeds):
            db = Database(f"sqlite:///{root / f'c{seed}-{p}.db'}")
            c = create_campaign(db, world.state, CampaignRequest(
                name="planted", product_id=target, size=3_000, holdout_share=0.5, seed=seed, send_date=send,
                window_days=window), key_id="bench").campaign
            with db.sessions() as s:
                members = s.execute(select(CampaignMember.member_id, CampaignMember.grp)
                                    .where(CampaignMember.campaign_id == c.id)).all()
            treated = [m for m, g in members if g == "treated"]
            path = root / f"tx-{seed}-{p}.parquet"
            plant_campaign_effect(world.canonical / "transactions.parquet", path, product_id=target, members=treated,
                                  start=send, days=window, probability=p, seed=1_000 + seed)
            base = results(db, c.id, PurchaseSource.of(world.canonical))
            q = sum(base["groups"][g]["buyers"] for g in ("treated", "holdout")) / len(members)
            res = results(db, c.id, PurchaseSource.of(path))
            u = res["comparisons"][0]["uplift"]
            rows.append({"p": p, "seed": seed, "q": round(q, 4), "planted_uplift": round(planted_uplift(p, q), 4),
                         "estimate": round(u["estimate"], 4), "low": round(u["low"], 4), "high": round(u["high"], 4),
                         "covered": u["low"] <= planted_uplift(p, q) <= u["high"], "significant": u["significant"]})
            db.dispose()
            path.unlink()
    summary = {}
    for p in (0.05, 0.0):
        rs = [r for r in rows if r["p"] == p]
        summary[str(p)] = {"seeds": len(rs), "covered": sum(r["covered"] for r in rs),
                           "significant": sum(r["significant"] for r in rs),
                           "mean_planted": round(float(np.mean([r["planted_uplift"] for r in rs])), 4),
                           "mean_estimate": round(float(np.mean([r["estimate"] for r in rs])), 4)}
    log(f"planted: {summary}")
    return {"target": target, "treated_and_holdout": 3_000, "holdout_share": 0.5, "rows": rows, "summary": summary}


def tafeng(workdir: Path, model: str, size: int) -> dict[str, Any]:
    import duckdb
    import pyarrow as pa

    from serving.campaign_schemas import CampaignRequest
    from serving.db import Database
    from serving.service.audiences import member_activity
    from serving.service.campaign_results import PurchaseSource, results
    from serving.service.campaigns import create_campaign

    if not TAFENG_ZIP.is_file():
        return {"skipped": f"{TAFENG_ZIP} not found"}
    root = workdir / "tafeng"
    shutil.rmtree(root, ignore_errors=True)
    (root / "raw").mkdir(parents=True)
    shutil.copyfile(TAFENG_ZIP, root / "raw" / "ta_feng.csv.zip")
    send = date(2001, 2, 1)
    t = time.perf_counter()
    world = served_shop(root, None, send, model, False)
    log(f"Ta-Feng shop served with {model} in {time.perf_counter() - t:.0f} s")
    tx = world.canonical / "transactions.parquet"
    con = duckdb.connect()
    ((product,),) = con.execute(
        f"SELECT product_id FROM read_parquet('{tx}') WHERE ts >= TIMESTAMP '2001-01-01' AND ts < TIMESTAMP "
        "'2001-02-01' GROUP BY product_id ORDER BY COUNT(DISTINCT member_id) DESC, product_id LIMIT 1").fetchall()

    def feb(ids: list[str]) -> int:
        con.register("m", pa.table({"member_id": ids}))
        ((n,),) = con.execute(
            f"SELECT COUNT(DISTINCT t.member_id) FROM read_parquet('{tx}') t JOIN m USING (member_id) WHERE "
            "t.product_id = ? AND t.ts >= TIMESTAMP '2001-02-01' AND t.ts < TIMESTAMP '2001-03-01'", [product]).fetchall()
        return int(n)

    out: dict[str, Any] = {"model": model, "product": product, "size": size, "seeds": []}
    state = world.state
    base = state.members.n_base
    activity = member_activity(state)[:base]
    for seed in (17, 18, 19):
        db = Database(f"sqlite:///{root / f'backtest-{seed}.db'}")
        c = create_campaign(db, state, CampaignRequest(name="backtest", product_id=product, size=size,
                                                       holdout_share=0.2, seed=seed, send_date=send, window_days=28),
                            key_id="bench").campaign
        res = results(db, c.id, PurchaseSource.of(world.canonical))
        db.dispose()
        g = res["groups"]
        n = g["treated"]["members"]
        rng = np.random.default_rng(seed)
        random_ids = state.members.external(rng.choice(base, size=n, replace=False))
        active_ids = state.members.external(np.lexsort((np.arange(base), -activity))[:n])
        u = res["comparisons"][0]["uplift"]
        out["seeds"].append({
            "seed": seed, "treated": n, "holdout": g["holdout"]["members"],
            "treated_conversion": round(g["treated"]["conversion"], 4),
            "holdout_conversion": round(g["holdout"]["conversion"], 4),
            "random_conversion": round(feb(random_ids) / n, 4), "most_active_conversion": round(feb(active_ids) / n, 4),
            "expected_buyers_treated": g["treated"]["expected_buyers"], "buyers_treated": g["treated"]["buyers"],
            "uplift": round(u["estimate"], 4), "low": round(u["low"], 4), "high": round(u["high"], 4),
            "significant": u["significant"]})
        log(f"Ta-Feng seed {seed}: {out['seeds'][-1]}")
    con.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", action="store_true")
    ap.add_argument("--planted", action="store_true")
    ap.add_argument("--tafeng", action="store_true")
    ap.add_argument("--members", type=int, default=1_000_000)
    ap.add_argument("--products", type=int, default=20_000)
    ap.add_argument("--factors", type=int, default=32)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--model", default="hybrid", help="Model of the Ta-Feng backtest")
    ap.add_argument("--size", type=int, default=5_000, help="Ta-Feng campaign size (treated + holdout)")
    ap.add_argument("--workdir", type=Path, default=None, help="Kept between runs (the synthetic bundle is cached)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="Where the figures go (sections merged into it)")
    args = ap.parse_args(argv)
    if not (args.scale or args.planted or args.tafeng):
        args.scale = args.planted = args.tafeng = True
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="recsys-bench-campaigns-"))
    workdir.mkdir(parents=True, exist_ok=True)
    report = json.loads(args.out.read_text()) if args.out.exists() else {}
    try:
        if args.planted:
            report["planted"] = planted(workdir, args.seeds)
        if args.tafeng:
            report["tafeng"] = tafeng(workdir, args.model, args.size)
        if args.scale:
            report["scale"] = scale(workdir, args.members, args.products, args.factors, args.k)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    report["run_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    log(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
