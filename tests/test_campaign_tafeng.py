"""A Ta-Feng backtest: an audience campaign "sent" on 2001-02-01 for the product most members bought
in January (chosen before the send date), measured over February. Nobody was contacted, so the
uplift must be indistinguishable from zero; the audience's conversion is set against random and
most-active lists of the same size from the same pool (the model must beat random)."""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pytest
from campaign_world import World, build_world

from serving.campaign_schemas import CampaignRequest
from serving.db import Database
from serving.service.audiences import member_activity
from serving.service.campaign_results import PurchaseSource, results
from serving.service.campaigns import create_campaign

REPO = Path(__file__).resolve().parent.parent
TAFENG_ZIP = REPO.parent / "shared" / "data" / "ta_feng.csv.zip"
SEND = date(2001, 2, 1)
pytestmark = [pytest.mark.tafeng, pytest.mark.skipif(not TAFENG_ZIP.is_file(), reason=f"{TAFENG_ZIP} not found")]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("tafeng-campaign")
    (root / "raw").mkdir()
    shutil.copyfile(TAFENG_ZIP, root / "raw" / "ta_feng.csv.zip")
    return build_world(root, None, SEND, model="top_frequency", pick_lists=False)


def february_buyers(canonical: Path, product: str, members: list[str]) -> int:
    con = duckdb.connect()
    try:
        con.register("m", __import__("pyarrow").table({"member_id": members}))
        ((n,),) = con.execute(
            f"SELECT COUNT(DISTINCT t.member_id) FROM read_parquet('{canonical / 'transactions.parquet'}') AS t "
            "JOIN m ON m.member_id = t.member_id WHERE t.product_id = ? AND t.ts >= TIMESTAMP '2001-02-01' "
            "AND t.ts < TIMESTAMP '2001-03-01'", [product]).fetchall()
        return int(n)
    finally:
        con.close()


def backtest(world: World, tmp: Path, size: int = 5_000, seed: int = 17) -> dict[str, Any]:
    con = duckdb.connect()
    ((product,),) = con.execute(
        f"SELECT product_id FROM read_parquet('{world.canonical / 'transactions.parquet'}') WHERE ts >= "
        "TIMESTAMP '2001-01-01' AND ts < TIMESTAMP '2001-02-01' GROUP BY product_id "
        "ORDER BY COUNT(DISTINCT member_id) DESC, product_id LIMIT 1").fetchall()
    con.close()
    db = Database(f"sqlite:///{tmp / 'tafeng.db'}")
    c = create_campaign(db, world.state, CampaignRequest(name="ta-feng backtest", product_id=product, size=size,
                                                         holdout_share=0.2, seed=seed, send_date=SEND,
                                                         window_days=28), key_id="test").campaign
    res = results(db, c.id, PurchaseSource.of(world.canonical))
    db.dispose()
    state = world.state
    n = res["groups"]["treated"]["members"]
    rng = np.random.default_rng(seed)
    base = state.members.n_base
    random_ids = state.members.external(rng.choice(base, size=n, replace=False))
    activity = member_activity(state)[:base]
    active_ids = state.members.external(np.lexsort((np.arange(base), -activity))[:n])
    return {"product": product, "result": res, "n": n,
            "random": february_buyers(world.canonical, product, random_ids) / n,
            "most_active": february_buyers(world.canonical, product, active_ids) / n}


def test_a_campaign_nobody_received_shows_no_uplift(world: World, tmp_path: Path) -> None:
    out = backtest(world, tmp_path)
    res = out["result"]
    assert not res["partial"] and res["read_until"] == "2001-03-01"
    u = res["comparisons"][0]["uplift"]
    assert u["low"] <= 0 <= u["high"] and not u["significant"], u
    treated = res["groups"]["treated"]["conversion"]
    assert treated > 2 * out["random"], out  # the model's audience buys it far more than random members
    print(f"\nTa-Feng backtest, product {out['product']}: treated {treated:.4f} ({out['n']:,}), holdout "
          f"{res['groups']['holdout']['conversion']:.4f} ({res['groups']['holdout']['members']:,}), random "
          f"{out['random']:.4f}, most active {out['most_active']:.4f}; uplift {u['estimate']:+.4f} "
          f"[{u['low']:+.4f}, {u['high']:+.4f}]")
