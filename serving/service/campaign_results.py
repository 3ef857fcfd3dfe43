"""What a campaign did (``GET /v1/campaigns/{id}/results``, ``recsys campaign report``), from the
purchases made from its send date to the end of its window: the ingested transactions (the
canonical ``transactions.parquet``) and the live events the server stored, read together in DuckDB.

A member converts when they buy a target product in the window: the product of an audience
campaign; a product of the category (and brand) of a product not yet sold; any of the member's own
picks for a picks campaign (held-out members are measured on the picks they would have had; in an
A/B campaign on each arm's); the named products, category or brand of an imported campaign.
Per group: members, buyers, conversion, revenue; the uplift (treated minus holdout conversion) with
its 95 % interval (:mod:`recsys.uplift`), incremental buyers and revenue, the ROI for a cost per
contact and a margin, the expected buyers from the model's calibrated probabilities beside the
actual ones, and the cumulative conversion per day. Before the window has closed -- or while the
purchases read end before it -- the figures are the partial ones, labelled ``partial``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import orjson
import pyarrow as pa
from sqlalchemy import select

from recsys.errors import InputError
from recsys.uplift import mean_difference, roi, uplift
from serving.db import Campaign, CampaignMember, Database
from serving.service.campaigns import CHALLENGER, CHAMPION, HOLDOUT, TREATED, get_campaign, today

PURCHASE_SCHEMA = pa.schema([("member_id", pa.string()), ("product_id", pa.string()), ("ts", pa.timestamp("us")),
                             ("amount", pa.float64())])


@dataclass
class PurchaseSource:
    """Where purchases after the send date are read: a canonical folder (or its transactions.parquet)
    and/or live events (``EventRecord``s, e.g. :meth:`serving.events.EventStore.read` from the start);
    ``products`` maps product ids to category and brand when the folder has no products.parquet."""

    transactions: Path | None = None
    events: list[Any] | None = None
    products: pa.Table | None = None

    @classmethod
    def of(cls, path: Path | None, events: list[Any] | None = None, products: pa.Table | None = None) -> PurchaseSource:
        tx = None
        if path is not None:
            path = Path(path)
            tx = path / "transactions.parquet" if path.is_dir() else path
            if not tx.is_file():
                raise InputError(f"no purchases at {tx}: give the canonical folder of `recsys data ingest` "
                                 "(or its transactions.parquet)")
        return cls(tx, events, products)

    def products_path(self) -> Path | None:
        if self.transactions is None:
            return None
        p = self.transactions.parent / "products.parquet"
        return p if p.is_file() else None


def _events_table(events: list[Any]) -> pa.Table:
    return pa.table({
        "member_id": [e.member_id for e in events], "product_id": [e.product_id for e in events],
        "ts": pa.array([e.ts.astimezone(UTC).replace(tzinfo=None) for e in events], pa.timestamp("us")),
        "amount": pa.array([e.amount for e in events], pa.float64()),
    }, schema=PURCHASE_SCHEMA)


def _sql_path(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _members(db: Database, campaign_id: int) -> list[tuple[str, str, str | None, float | None, str | None]]:
    with db.sessions() as s:
        return list(s.execute(select(CampaignMember.member_id, CampaignMember.grp, CampaignMember.arm,
                                     CampaignMember.probability, CampaignMember.picks)
                              .where(CampaignMember.campaign_id == campaign_id)).all())


def _targets(c: Campaign, members: list[tuple[Any, ...]]) -> tuple[pa.Table, list[str]]:
    """(member_id, series, product_id | NULL, category, brand) rows: what converts each member, per
    series it is measured in (treated / holdout, or the arms)."""
    rows: dict[str, list[Any]] = {"member_id": [], "series": [], "product_id": [], "category": [], "brand": []}
    series: list[str] = []

    def add(m: str, ser: str, pid: str | None = None, cat: str | None = None, brand: str | None = None) -> None:
        rows["member_id"].append(m)
        rows["series"].append(ser)
        rows["product_id"].append(pid)
        rows["category"].append(cat)
        rows["brand"].append(brand)

    t = c.target
    arms = c.lineage.get("arm_sizes") is not None
    if c.kind == "picks":
        series = [CHAMPION, CHALLENGER, HOLDOUT, f"{HOLDOUT}_{CHALLENGER}"] if arms else [TREATED, HOLDOUT]
        for m, grp, arm, _p, packed in members:
            lists = orjson.loads(packed) if packed else {}
            for key, picks in lists.items():
                if grp == TREATED:
                    ser = (arm or CHAMPION) if arms else TREATED
                else:
                    ser = HOLDOUT if key == CHAMPION else f"{HOLDOUT}_{CHALLENGER}"
                for pid, *_ in picks:
                    add(m, ser, pid)
    else:
        series = [TREATED, HOLDOUT]
        for m, grp, *_ in members:
            if t["type"] == "product":
                add(m, grp, t["product_id"])
            elif t["type"] == "attributes":
                add(m, grp, None, t["category"], t.get("brand"))
            else:
                for pid in t.get("product_ids") or []:
                    add(m, grp, pid)
                if t.get("category") or t.get("brand"):
                    add(m, grp, None, t.get("category"), t.get("brand"))
    return pa.table(rows, schema=pa.schema([(k, pa.string()) for k in rows])), series


def _series_members(c: Campaign, members: list[tuple[Any, ...]]) -> dict[str, list[tuple[str, float | None]]]:
    arms = c.lineage.get("arm_sizes") is not None
    out: dict[str, list[tuple[str, float | None]]] = {}
    for m, grp, arm, prob, _packed in members:
        if grp == TREATED:
            out.setdefault((arm or CHAMPION) if arms and c.kind == "picks" else TREATED, []).append((m, prob))
        else:
            out.setdefault(HOLDOUT, []).append((m, prob))
            if arms and c.kind == "picks":
                out.setdefault(f"{HOLDOUT}_{CHALLENGER}", []).append((m, prob))
    return out


def results(db: Database, campaign_id: int, source: PurchaseSource, *, cost_per_contact: float | None = None,
            margin: float | None = None, now: date | None = None) -> dict[str, Any]:
    """The campaign's results (see the module docstring) as JSON-able values."""
    c = get_campaign(db, campaign_id)
    members = _members(db, campaign_id)
    targets, series = _targets(c, members)
    params = c.lineage.get("params", {})
    cost_per_contact = cost_per_contact if cost_per_contact is not None else params.get("cost_per_contact")
    margin = margin if margin is not None else params.get("margin")
    start = datetime.combine(c.send_date, datetime.min.time())
    end = datetime.combine(c.window_end, datetime.min.time())
    con = duckdb.connect()
    try:
        sources = []
        data_end: date | None = None
        if source.transactions is not None:
            sources.append(f"SELECT member_id, product_id, CAST(ts AS TIMESTAMP) AS ts, amount "
                           f"FROM read_parquet({_sql_path(source.transactions)})")
            ((last,),) = con.execute(f"SELECT MAX(ts) FROM read_parquet({_sql_path(source.transactions)})").fetchall()
            if last is not None:
                data_end = last.date() + timedelta(days=1)
        if source.events is not None:
            con.register("live_events", _events_table(source.events))
            sources.append("SELECT member_id, product_id, ts, amount FROM live_events")
            # live events arrive as they happen: they are current up to now
            last = (now or today()) + timedelta(days=1)
            data_end = max(data_end, last) if data_end else last
        if not sources:
            raise InputError("no purchases to measure with: give the ingested data (--purchases / "
                             "RECSYS_CAMPAIGN_PURCHASES) or serve with live events")
        now = now or today()
        # purchases are read up to (not including) this day: the window's end, tomorrow, or the day
        # after the last purchase the data holds, whichever comes first
        until = max(min(c.window_end, now + timedelta(days=1), data_end or c.send_date), c.send_date)
        partial = until < c.window_end
        cut = datetime.combine(until, datetime.min.time())
        con.register("targets", targets)
        products_sql = "SELECT NULL::VARCHAR AS product_id, NULL::VARCHAR AS category, NULL::VARCHAR AS brand WHERE FALSE"
        pp = source.products_path()
        if pp is not None:
            products_sql = f"SELECT product_id, category, brand FROM read_parquet({_sql_path(pp)})"
        elif source.products is not None:
            con.register("product_info", source.products)
            products_sql = "SELECT product_id, category, brand FROM product_info"
        union = " UNION ".join(sources)  # UNION: a live event later ingested is one purchase
        rows = con.execute(f"""
            WITH p AS (SELECT DISTINCT * FROM ({union}) AS u
                       WHERE ts >= ? AND ts < ? AND member_id IN (SELECT member_id FROM targets)),
                 info AS ({products_sql}),
                 hit AS (
                    SELECT t.member_id, t.series, p.ts, p.amount, p.product_id
                    FROM targets AS t JOIN p ON p.member_id = t.member_id
                    LEFT JOIN info AS i ON i.product_id = p.product_id
                    WHERE (t.product_id IS NOT NULL AND p.product_id = t.product_id)
                       OR (t.product_id IS NULL AND (t.category IS NULL OR i.category = t.category)
                           AND (t.brand IS NULL OR i.brand = t.brand))),
                 distinct_hit AS (SELECT DISTINCT member_id, series, ts, product_id, amount FROM hit)
            SELECT member_id, series, MIN(ts) AS first_ts, SUM(COALESCE(amount, 0)) AS revenue
            FROM distinct_hit GROUP BY member_id, series""", [start, min(end, cut)]).fetchall()
    finally:
        con.close()
    by_series: dict[str, dict[str, tuple[datetime, float]]] = {}
    for m, ser, first, revenue in rows:
        by_series.setdefault(ser, {})[m] = (first, float(revenue))
    in_series = _series_members(c, members)
    days = (until - c.send_date).days
    groups: dict[str, Any] = {}
    for ser in series:
        ms = in_series.get(ser, [])
        if not ms and ser not in (TREATED, HOLDOUT):
            continue
        hits = by_series.get(ser, {})
        n = len(ms)
        revenues = np.array([hits[m][1] if m in hits else 0.0 for m, _ in ms], dtype=np.float64)
        buyers = sum(1 for m, _ in ms if m in hits)
        probs = [p for _, p in ms if p is not None]
        first_days = np.array([(hits[m][0].date() - c.send_date).days for m, _ in ms if m in hits], dtype=np.int64)
        cumulative = [int((first_days <= d).sum()) / n if n else 0.0 for d in range(days)]
        groups[ser] = {
            "members": n, "buyers": buyers, "conversion": buyers / n if n else None,
            "revenue": float(revenues.sum()), "revenue_per_member": float(revenues.mean()) if n else None,
            "expected_buyers": float(np.sum(probs)) if probs and len(probs) == n else None,
            "_sum": float(revenues.sum()), "_sq": float((revenues**2).sum()), "cumulative": cumulative,
        }
    comparisons = []
    pairs = [(TREATED, HOLDOUT)]
    if c.kind == "picks" and c.lineage.get("arm_sizes") is not None:
        pairs = [(CHAMPION, HOLDOUT), (CHALLENGER, f"{HOLDOUT}_{CHALLENGER}"), (CHALLENGER, CHAMPION)]
    for a, b in pairs:
        if a not in groups or b not in groups:
            continue
        ga, gb = groups[a], groups[b]
        u = uplift(ga["buyers"], ga["members"], gb["buyers"], gb["members"])
        rev = mean_difference(ga["_sum"], ga["_sq"], ga["members"], gb["_sum"], gb["_sq"], gb["members"])
        entry: dict[str, Any] = {"treated": a, "comparison": b, "uplift": u.as_dict() if u else None}
        if u is not None:
            n_t = ga["members"]
            entry["incremental_buyers"] = {"estimate": u.estimate * n_t, "low": u.low * n_t, "high": u.high * n_t}
        if ga["members"] and gb["members"]:
            n_t = ga["members"]
            diff = ga["_sum"] / n_t - gb["_sum"] / gb["members"]
            entry["incremental_revenue"] = {"estimate": diff * n_t, "low": rev.low * n_t if rev else None,
                                            "high": rev.high * n_t if rev else None}
            if cost_per_contact is not None and margin is not None and b.startswith(HOLDOUT):
                entry["roi"] = roi(diff * n_t, n_t, cost_per_contact, margin)
        comparisons.append(entry)
    for g in groups.values():
        g.pop("_sum")
        g.pop("_sq")
    notes = []
    if c.observational:
        notes.append("observational: the comparison group was matched on value segment and lifecycle, not held "
                     "out at random; the uplift may carry selection bias")
    if partial:
        notes.append(f"partial: purchases up to {until.isoformat()} of a window ending {c.window_end.isoformat()}")
    if any(g.get("expected_buyers") is not None for g in groups.values()):
        notes.append("expected buyers: the sum of the model's calibrated purchase probabilities at creation "
                     "(for the model's own label window)")
    return {
        "campaign_id": c.id, "name": c.name, "kind": c.kind, "send_date": c.send_date.isoformat(),
        "window_end": c.window_end.isoformat(), "read_until": until.isoformat(), "partial": partial,
        "observational": c.observational, "groups": groups, "comparisons": comparisons,
        "cumulative_days": [(c.send_date + timedelta(days=d)).isoformat() for d in range(days)],
        "cost_per_contact": cost_per_contact, "margin": margin, "model_version": c.model_version, "notes": notes,
    }


def plot(result: dict[str, Any], path: Path) -> Path:
    """The cumulative conversion per group over the window, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    days = list(range(1, len(result["cumulative_days"]) + 1))
    for name, g in result["groups"].items():
        ax.plot(days, [100 * v for v in g["cumulative"]], label=f"{name} ({g['members']:,})")
    ax.set_xlabel("days since the send date")
    ax.set_ylabel("members who bought a target product (%)")
    ax.set_title(f"{result['name']} — cumulative conversion" + (" (partial)" if result["partial"] else ""))
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
