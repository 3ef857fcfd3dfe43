"""The measurement recovers a planted campaign effect, and finds none when there is none.

On a synthetic shop (tests/campaign_world.py) an audience campaign is created for a well-selling
product; then the synthetic generator plants the effect (recsys/data/synth/campaign.py): each
*treated* member buys the product once more with probability ``p`` during the window. The true
uplift is ``p x (1 - q)``, ``q`` the conversion the pool has without the campaign (known from the
unplanted purchases). Over 20 seeds -- each a new holdout draw and new planted purchases -- the
95 % interval must cover the truth about 19 times in 20 (at least 17: P(fewer) < 2 % under correct
coverage), exclude zero nearly always when ``p`` = 0.05, and with ``p`` = 0 cover zero as often."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from campaign_world import World, build_world
from sqlalchemy import select

from recsys.data.synth import SynthSpec
from recsys.data.synth.campaign import plant_campaign_effect, planted_uplift
from serving.campaign_schemas import CampaignRequest
from serving.db import CampaignMember, Database
from serving.service.campaign_results import PurchaseSource, results
from serving.service.campaigns import create_campaign

SEND = date(2024, 5, 1)
WINDOW = 30
SEEDS = range(20)
SPEC = SynthSpec(members=4_000, products=300, lines=80_000, categories=20, seed=3)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return build_world(tmp_path_factory.mktemp("campaign-world"), SPEC, SEND)


@pytest.fixture(scope="module")
def target(world: World) -> str:
    """The product most members bought in the window: a baseline conversion of a few percent."""
    tx = pq.read_table(world.canonical / "transactions.parquet", columns=["member_id", "product_id", "ts"])
    start, end = pc.greater_equal(tx.column("ts"), pc.strptime("2024-05-01", "%Y-%m-%d", "us")), pc.less(
        tx.column("ts"), pc.strptime("2024-05-31", "%Y-%m-%d", "us"))
    window = tx.filter(pc.and_(start, end))
    buyers = window.group_by("product_id").aggregate([("member_id", "count_distinct")])
    best = buyers.sort_by([("member_id_count_distinct", "descending")]).column("product_id")[0].as_py()
    return str(best)


def run(world: World, target: str, tmp: Path, p: float, seed: int) -> dict[str, Any]:
    url = f"sqlite:///{tmp / f'c{seed}-{p}.db'}"
    db = Database(url)
    try:
        req = CampaignRequest(name=f"planted {p}", product_id=target, size=3_000, holdout_share=0.5, seed=seed,
                              send_date=SEND, window_days=WINDOW)
        c = create_campaign(db, world.state, req, key_id="test").campaign
        with db.sessions() as s:
            rows = s.execute(select(CampaignMember.member_id, CampaignMember.grp)
                             .where(CampaignMember.campaign_id == c.id)).all()
        treated = [m for m, g in rows if g == "treated"]
        members = {m for m, _ in rows}
        planted = tmp / f"tx-{seed}-{p}.parquet"
        plant_campaign_effect(world.canonical / "transactions.parquet", planted, product_id=target, members=treated,
                              start=SEND, days=WINDOW, probability=p, seed=1_000 + seed)
        base = results(db, c.id, PurchaseSource.of(world.canonical))  # the same campaign without the effect
        q = sum(base["groups"][g]["buyers"] for g in ("treated", "holdout")) / len(members)
        out = results(db, c.id, PurchaseSource.of(planted))
        u = out["comparisons"][0]["uplift"]
        return {"seed": seed, "p": p, "truth": planted_uplift(p, q), "estimate": u["estimate"], "low": u["low"],
                "high": u["high"], "significant": u["significant"], "partial": out["partial"], "q": q}
    finally:
        db.dispose()


@pytest.mark.parametrize("p", [0.05, 0.0])
def test_the_planted_uplift_is_recovered_within_its_interval(world: World, target: str, tmp_path: Path,
                                                             p: float) -> None:
    rows = [run(world, target, tmp_path, p, seed) for seed in SEEDS]
    assert not any(r["partial"] for r in rows)
    covered = sum(r["low"] <= r["truth"] <= r["high"] for r in rows)
    assert covered >= 17, rows
    mean = sum(r["estimate"] - r["truth"] for r in rows) / len(rows)
    assert abs(mean) < 0.01, rows  # unbiased: the mean error over 20 draws is well inside one standard error
    significant = sum(r["significant"] for r in rows)
    if p > 0:
        assert 0.01 < rows[0]["q"] < 0.5  # a real baseline to be recovered on top of
        assert significant >= 18, rows
    else:
        assert significant <= 3, rows


def test_rule_tags_filter_a_campaign(world: World, target: str, tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'rules.db'}")
    req = CampaignRequest(name="twice in 30 days", product_id=target, filters={"twice_in_30d": ["true"]},
                          holdout_share=0.1, seed=1, send_date=SEND)
    c = create_campaign(db, world.state, req, key_id="test").summary
    members = pq.read_table(world.bundle / "members.parquet", columns=["member_id", "twice_in_30d"])
    holders = {m for m, v in zip(members.column("member_id").to_pylist(), members.column("twice_in_30d").to_pylist(),
                                 strict=True) if v}
    with db.sessions() as s:
        chosen = set(s.scalars(select(CampaignMember.member_id).where(CampaignMember.campaign_id == c.id)))
    assert chosen and chosen <= holders and c.eligible == c.treated + c.holdout
    db.dispose()
