"""Campaigns (``/v1/campaigns``, ``recsys campaign``): who gets contacted, who is held back, what
leaves the server, and the contact policy every list passes.

Creating a campaign:

1. the **pool**: bundle members whose tags (rule tags too) pass the filters, inside the key's scope;
2. ranked by the **target**: for a product (sold, or described by attributes) the model's audience
   order; for picks, each member's top-``k`` picks (the bundle's pre-ranked lists where they answer,
   scored live otherwise), members ordered by their first pick's score;
3. the **contact policy** (:func:`apply_policy`), in order: suppression lists; holdouts of campaigns
   being measured in an overlapping window (contacting them would spoil that measurement); members
   of a concurrent campaign (overlapping windows), who stay with the campaign where their purchase
   probability -- or score, for a model without calibrated probabilities -- is higher (a campaign
   not yet exported gives them up); the frequency cap (at most K campaigns whose send dates are
   within D days of this one);
4. the first ``size`` (or everyone) of what is left, split at random -- ``numpy``'s generator
   with a recorded seed -- into the **treated** and the **holdout** (``holdout_share``); with
   ``arms``, the treated members are split at random again between the champion (the served model)
   and a challenger (another registered version), each arm's members getting that model's picks.

Policy before the split keeps the two groups drawn from the same members. The campaign is stored
(:mod:`serving.db`) with its lineage and every member; only the treated list is ever exported
(:func:`export_rows`), filtered again by the suppression lists as they are at export time, and
every export is audited by the caller.
"""

from __future__ import annotations

import csv
import io
import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
from sqlalchemy import delete, func, insert, select, update

from recsys.errors import InputError
from recsys.models.base import Capability
from serving.campaign_schemas import (
    CampaignRequest,
    CampaignSummary,
    ImportRequest,
    SuppressionSummary,
)
from serving.db import Campaign, CampaignMember, Database, SuppressedMember, SuppressionList
from serving.errors import NotFoundError
from serving.service.audiences import audience_target, member_mask
from serving.service.common import listing
from serving.state import Scope, ServingState

INSERT_CHUNK = 20_000
TREATED, HOLDOUT = "treated", "holdout"
CHAMPION, CHALLENGER = "champion", "challenger"
PICK_BATCH = 2_000


@dataclass(frozen=True)
class ContactPolicy:
    """Frequency cap: a member is in at most ``max_campaigns`` campaigns whose send dates lie
    within ``days`` days of each other (``RECSYS_CONTACT_MAX_CAMPAIGNS`` / ``RECSYS_CONTACT_DAYS``)."""

    max_campaigns: int = 3
    days: int = 30


def today() -> date:
    return datetime.now(UTC).date()


def status_of(c: Campaign, now: date | None = None) -> str:
    now = now or today()
    if now < c.send_date:
        return "scheduled"
    return "measuring" if now < c.window_end else "closed"


def summary(c: Campaign, arms: dict[str, int] | None = None) -> CampaignSummary:
    return CampaignSummary(
        id=c.id, name=c.name, kind=c.kind, status=status_of(c), created_at=c.created_at.isoformat(timespec="seconds"),
        created_by=c.created_by, send_date=c.send_date, window_end=c.window_end, window_days=c.window_days,
        model_version=c.model_version, data_as_of=c.data_as_of, seed=c.seed, holdout_share=c.holdout_share,
        target=c.target, filters=c.filters, size=c.size, eligible=c.n_eligible, treated=c.n_treated,
        holdout=c.n_holdout, arms=arms if arms is not None else c.lineage.get("arm_sizes"),
        observational=c.observational, policy=c.policy, lineage=c.lineage, exports=c.exports,
        notes=list(c.lineage.get("notes", [])),
    )


# --------------------------------------------------------------------------- the pool and its order
@dataclass
class Ranked:
    """Candidate members in contact order, with what the campaign stores for each."""

    rows: np.ndarray  # member rows, best first
    scores: np.ndarray
    probability: np.ndarray | None  # calibrated purchase probability (audience campaigns), else None
    picks: dict[int, list[list[Any]]] = field(default_factory=dict)  # row -> [[pid, score, code, reason]]
    notes: list[str] = field(default_factory=list)


def _probabilities(state: ServingState, scores: np.ndarray) -> np.ndarray | None:
    model = state.bundle.model
    if not model.has(Capability.PROBABILITIES):
        return None
    return np.asarray(model.purchase_probability(scores), dtype=np.float64)


def _check_product(state: ServingState, product_id: str) -> int:
    row = state.products.get(product_id)
    if row < 0:
        sample = state.products.external_ids[:10].tolist()
        raise InputError(f"unknown product {product_id!r}: not in the model's catalogue ({state.info.version}, "
                         f"{state.n_products:,} products, e.g. {', '.join(map(str, sample))}; "
                         "GET /v1/products?q= searches them)")
    return row


def rank_audience(state: ServingState, req: CampaignRequest, pool: np.ndarray | None) -> Ranked:
    """Every pool member, in the model's order for the product (best first)."""
    row = _check_product(state, req.product_id) if req.product_id is not None else None
    target = audience_target(state, row, req.attributes)
    notes = list(target.notes)
    n_rows = state.scorer.n_members
    mask = None if pool is None else pool[:n_rows]
    n_pool = n_rows if mask is None else int(mask.sum())
    if req.exclude_bought_within_days is not None and row is not None:
        recent, _ = state.recent_buyers(row, req.exclude_bought_within_days)
        mask = (np.ones(n_rows, dtype=bool) if mask is None else mask.copy()) & ~recent[:n_rows]
        n_pool = int(mask.sum())
    if n_pool == 0:
        return Ranked(np.empty(0, np.int64), np.empty(0, np.float32), None, notes=notes)
    with state.lock:
        idx, sc = target.rank(state, n_pool, mask)
    ok = (idx >= 0) & np.isfinite(sc)
    rows, scores = idx[ok].astype(np.int64), sc[ok].astype(np.float64)
    return Ranked(rows, scores, _probabilities(state, scores), notes=notes)


def pick_lists_for(state: ServingState, rows: np.ndarray, k: int, mode: str, categories: list[str] | None,
                   exclude: list[str] | None) -> tuple[dict[int, list[list[Any]]], dict[int, float]]:
    """Each member's top-``k`` picks as ``[product_id, score, reason_code, reason]`` and their first
    pick's score: from the pre-ranked lists where they answer (vectorised), else scored live."""
    from serving.service.picks import pick_dicts, picks, product_allowed

    filtered = bool(categories or exclude)
    allowed = product_allowed(state, categories, exclude) if filtered else state.product_active
    list_mask = None if not filtered and state.all_active else allowed
    out: dict[int, list[list[Any]]] = {}
    top: dict[int, float] = {}
    lists = state.pick_lists
    rest = np.asarray(rows, dtype=np.int64)
    if lists is not None and mode in lists.rows and len(rest):
        base = rest[(rest < len(lists.valid))]
        fresh = lists.valid[base].copy()
        if lists.re_ranked:  # members ranked again after live purchases are answered by picks()
            fresh &= ~np.isin(base, np.fromiter(lists.re_ranked, dtype=np.int64))
        fast = base[fresh]
        answered = np.zeros(len(lists.valid), dtype=bool)
        for row, entry in zip(fast.tolist(), _vector_picks(state, fast, k, mode, list_mask), strict=True):
            if entry is None:
                continue
            out[row] = entry
            top[row] = entry[0][1] if entry else float("-inf")
            answered[row] = True
        rest = rest[~answered[np.minimum(rest, len(answered) - 1)] | (rest >= len(answered))]
    external = state.members.external(rest) if len(rest) else []
    for start in range(0, len(rest), PICK_BATCH):
        chunk_rows = rest[start:start + PICK_BATCH].tolist()
        chunk_ids = external[start:start + PICK_BATCH]
        answers = picks(state, chunk_ids, k, mode, categories, exclude)  # type: ignore[arg-type]
        assert answers is not None
        for row, pl in zip(chunk_rows, answers, strict=True):
            entry = [[d["product_id"], round(float(d["score"]), 6), d["reason_code"], d["reason"]]
                     for d in pick_dicts(state, pl)]
            out[row] = entry
            top[row] = entry[0][1] if entry else float("-inf")
    return out, top


def _vector_picks(state: ServingState, rows: np.ndarray, k: int, mode: str,
                  allowed: np.ndarray | None) -> list[list[list[Any]] | None]:
    """The first ``k`` allowed entries of each member's stored list as ``[product_id, score,
    reason_code, reason]`` (None where the list cannot answer exactly: fewer than ``k`` allowed
    entries in a truncated list). Vectorised per block of members; one Python pass builds the
    entries."""
    lists = state.pick_lists
    assert lists is not None
    text = state.text
    assert text is not None
    out: list[list[list[Any]] | None] = []
    if not len(rows):
        return out
    popular = ("popular_in_segment", "您所在会员群体的热门商品") if "value_segment" in state.member_tags \
        else ("popular", "热门商品")
    ids, often, also = text.ids, text.often_zh, text.also_zh
    for start in range(0, len(rows), 100_000):
        r = rows[start:start + 100_000]
        prod = lists.rows[mode][r]
        length = lists.length[mode][r]
        valid = np.arange(prod.shape[1])[None, :] < length[:, None]
        keep = valid & allowed[np.maximum(prod, 0)] if allowed is not None else valid
        take = keep & (np.cumsum(keep, axis=1) <= k)
        found = take.sum(axis=1)
        answers = ((found >= k) | lists.complete[mode][r]).tolist()
        i_idx, c_idx = np.nonzero(take)
        p = prod[i_idx, c_idx].tolist()
        sc = np.round(lists.scores[mode][r][i_idx, c_idx].astype(np.float64), 6).tolist()
        n = lists.times[mode][r][i_idx, c_idx].tolist()
        a = lists.anchors[mode][r][i_idx, c_idx].tolist()
        entries = [
            [ids[pp], ss, "often_buys", often[pp] + (f"（{nn}次）" if nn > 1 else "")] if nn > 0
            else [ids[pp], ss, "also_bought", also[aa]] if aa >= 0
            else [ids[pp], ss, popular[0], popular[1]]
            for pp, ss, nn, aa in zip(p, sc, n, a, strict=True)
        ]
        bounds = np.concatenate([[0], np.cumsum(found)]).tolist()
        for i, ok in enumerate(answers):
            out.append(entries[bounds[i]:bounds[i + 1]] if ok else None)
    return out


def rank_picks(state: ServingState, req: CampaignRequest, pool: np.ndarray | None) -> Ranked:
    """Pool members with their picks, ordered by their first pick's score (members with no pick left
    after the product filters are not contacted)."""
    assert req.picks is not None
    n_base = state.members.n_base
    rows = np.arange(n_base, dtype=np.int64) if pool is None else np.flatnonzero(pool[:n_base])
    t = req.picks
    picks_of, top = pick_lists_for(state, rows, t.k, t.mode, t.category, t.exclude)
    rows = np.array([r for r in rows.tolist() if picks_of.get(r)], dtype=np.int64)
    scores = np.array([top[r] for r in rows.tolist()], dtype=np.float64)
    order = np.lexsort((rows, -scores))
    return Ranked(rows[order], scores[order], None, picks_of)


# --------------------------------------------------------------------------- the contact policy
def _overlapping(session: Any, start: date, end: date) -> Any:
    return select(Campaign.id).where(Campaign.send_date < end, Campaign.window_end > start)


def suppressed_ids(session: Any) -> set[str]:
    return set(session.scalars(select(SuppressedMember.member_id).distinct()))


def apply_policy(db: Database, state: ServingState, ranked: Ranked, send: date, end: date,
                 policy: ContactPolicy, kind: str) -> tuple[Ranked, dict[str, Any], dict[int, list[str]]]:
    """``ranked`` without the members the contact policy removes; how many each rule removed;
    and, per other campaign, the members this one takes over from it (see the module docstring)."""
    ids = state.members.external(ranked.rows) if len(ranked.rows) else []
    keep = np.ones(len(ids), dtype=bool)
    pos = {m: i for i, m in enumerate(ids)}
    removed: dict[str, Any] = {}
    moved: dict[int, list[str]] = {}
    with db.sessions() as s:
        # 1. suppression lists
        gone = [pos[m] for m in suppressed_ids(s) if m in pos]
        keep[gone] = False
        removed["suppressed"] = len(gone)
        # 2. holdouts of campaigns measured in an overlapping window
        concurrent = list(s.scalars(_overlapping(s, send, end)))
        n = 0
        if concurrent:
            for (m,) in s.execute(select(CampaignMember.member_id).where(
                    CampaignMember.campaign_id.in_(concurrent), CampaignMember.grp == HOLDOUT)):
                i = pos.get(m)
                if i is not None and keep[i]:
                    keep[i] = False
                    n += 1
        removed["held_out_elsewhere"] = n
        # 3. concurrent campaigns: the member stays where their probability (or score) is higher
        dedup, taken = 0, 0
        if concurrent:
            others = list(s.scalars(select(Campaign).where(Campaign.id.in_(concurrent))))
            exported = {c.id: c.exports for c in others}
            kinds = {c.id: c.kind for c in others}
            for cid, m, prob, score in s.execute(select(
                    CampaignMember.campaign_id, CampaignMember.member_id, CampaignMember.probability,
                    CampaignMember.score).where(CampaignMember.campaign_id.in_(concurrent),
                                                CampaignMember.grp == TREATED)):
                i = pos.get(m)
                if i is None or not keep[i]:
                    continue
                # probabilities compare across campaigns; scores only within one kind of campaign;
                # otherwise the campaign that has the member keeps them
                if ranked.probability is not None and prob is not None:
                    theirs, ours = prob, float(ranked.probability[i])
                elif kinds.get(cid) == kind and score is not None:
                    theirs, ours = score, float(ranked.scores[i])
                else:
                    theirs, ours = float("inf"), 0.0
                if theirs >= ours or exported.get(cid, 0) > 0:
                    keep[i] = False
                    dedup += 1
                else:
                    moved.setdefault(cid, []).append(m)
                    taken += 1
        removed["deduplicated"] = dedup
        removed["taken_from_concurrent"] = taken
        # 4. frequency cap over treated memberships with send dates within D days
        lo, hi = send - timedelta(days=policy.days - 1), send + timedelta(days=policy.days - 1)
        counts = s.execute(
            select(CampaignMember.member_id, CampaignMember.campaign_id)
            .join(Campaign, Campaign.id == CampaignMember.campaign_id)
            .where(Campaign.send_date >= lo, Campaign.send_date <= hi, CampaignMember.grp == TREATED))
        per: dict[str, int] = {}
        moving = {m for ms in moved.values() for m in ms}
        for m, cid in counts:
            if m in pos and not (m in moving and m in set(moved.get(cid, ()))):
                per[m] = per.get(m, 0) + 1
        capped = 0
        for m, c in per.items():
            i = pos[m]
            if keep[i] and c >= policy.max_campaigns:
                keep[i] = False
                capped += 1
                for ms in moved.values():
                    if m in ms:
                        ms.remove(m)
                        removed["taken_from_concurrent"] -= 1
        removed["frequency_capped"] = capped
    removed["frequency_cap"] = {"max_campaigns": policy.max_campaigns, "days": policy.days}
    out = Ranked(ranked.rows[keep], ranked.scores[keep],
                 ranked.probability[keep] if ranked.probability is not None else None, ranked.picks, ranked.notes)
    return out, removed, {c: ms for c, ms in moved.items() if ms}


# --------------------------------------------------------------------------- creating
def draw_groups(n: int, holdout_share: float, seed: int, arms: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per position ``0..n-1``: whether it is held out, and (with ``arms``) whether a treated position
    is in the challenger arm; both drawn at random from ``seed`` (exactly round(n x share) held out)."""
    rng = np.random.default_rng(seed)
    hold = np.zeros(n, dtype=bool)
    n_hold = int(round(n * holdout_share))
    if n_hold:
        hold[rng.permutation(n)[:n_hold]] = True
    challenger = np.zeros(n, dtype=bool)
    if arms:
        treated = np.flatnonzero(~hold)
        challenger[treated[rng.permutation(len(treated))[: len(treated) // 2]]] = True
    return hold, challenger


@dataclass
class Created:
    campaign: Campaign
    summary: CampaignSummary


def create_campaign(db: Database, state: ServingState, req: CampaignRequest, *, key_id: str,
                    scope: Scope | None = None, policy: ContactPolicy = ContactPolicy(),
                    challenger: ServingState | None = None) -> Created:
    """Rank, apply the policy, draw the groups and store the campaign (see the module docstring)."""
    db.ensure()
    send = req.send_date or today()
    end = send + timedelta(days=req.window_days)
    pool = member_mask(state, req.filters, scope)  # unknown tags / values: InputError listing what exists
    if pool is not None:
        pool = pool.copy()
        pool[state.members.n_base:] = False
    else:
        pool = np.zeros(len(state.members), dtype=bool)
        pool[: state.members.n_base] = True
    n_pool = int(pool.sum())
    t0 = time.perf_counter()
    ranked = rank_picks(state, req, pool) if req.picks is not None else rank_audience(state, req, pool)
    t_rank = time.perf_counter()
    kind = "picks" if req.picks is not None else "audience"
    ranked, removed, moved = apply_policy(db, state, ranked, send, end, policy, kind)
    t_policy = time.perf_counter()
    n = len(ranked.rows) if req.size is None else min(req.size, len(ranked.rows))
    rows = ranked.rows[:n]
    seed = req.seed if req.seed is not None else secrets.randbelow(2**31 - 1)
    hold, in_challenger = draw_groups(n, req.holdout_share, seed, arms=req.arms is not None)
    notes = list(ranked.notes)
    if req.size is not None and n < req.size:
        notes.append(f"{n:,} members left after the filters and the contact policy; {req.size:,} were asked for")
    member_ids = state.members.external(rows) if n else []
    picks: dict[int, dict[str, list[list[Any]]]] = {}
    if req.picks is not None:
        for j, row in enumerate(rows.tolist()):
            picks[j] = {CHAMPION: ranked.picks[int(row)]}
        if req.arms is not None:
            assert challenger is not None, "the caller loads the challenger's state"
            t = req.picks
            need = [j for j in range(n) if hold[j] or in_challenger[j]]
            crow = [challenger.members.get(member_ids[j]) for j in need]
            known = [(j, r) for j, r in zip(need, crow, strict=True) if r >= 0]
            other, _ = pick_lists_for(challenger, np.array([r for _, r in known], dtype=np.int64), t.k, t.mode,
                                      t.category, t.exclude)
            for j, r in known:
                picks[j][CHALLENGER] = other.get(r, [])
            for j in need:
                picks[j].setdefault(CHALLENGER, [])
                if in_challenger[j]:
                    del picks[j][CHAMPION]
    arm_sizes = None
    if req.arms is not None:
        arm_sizes = {CHAMPION: int((~hold & ~in_challenger).sum()), CHALLENGER: int((~hold & in_challenger).sum())}
    lineage = {
        "model_version": state.info.version, "model": state.info.model, "run_id": state.info.run_id,
        "registered_model": state.info.registered_model, "registry_version": state.info.registry_version,
        "data_as_of": state.as_of.isoformat(), "seed": seed, "pool": n_pool,
        "params": req.model_dump(mode="json", exclude={"name"}),
        "challenger_version": challenger.info.version if challenger is not None else None,
        "arm_sizes": arm_sizes, "notes": notes,
        "probabilities": ranked.probability is not None,
        "seconds": {"rank": round(t_rank - t0, 3), "policy": round(t_policy - t_rank, 3)},
    }
    target: dict[str, Any]
    if req.picks is not None:
        target = {"type": "picks", **req.picks.model_dump(mode="json")}
    elif req.product_id is not None:
        target = {"type": "product", "product_id": req.product_id}
    else:
        assert req.attributes is not None
        target = {"type": "attributes", **req.attributes.model_dump(mode="json")}
    camp = Campaign(
        name=req.name, kind=kind,
        created_at=datetime.now(UTC).replace(tzinfo=None, microsecond=0), created_by=key_id, target=target,
        filters=req.filters, size=req.size, holdout_share=req.holdout_share, seed=seed, send_date=send,
        window_days=req.window_days, window_end=end, model_version=state.info.version, data_as_of=state.as_of,
        lineage=lineage, policy=removed, n_eligible=len(ranked.rows), n_treated=int((~hold).sum()),
        n_holdout=int(hold.sum()), observational=False, exports=0,
        scope=None if scope is None else {t: list(v) for t, v in scope},
    )
    records = []
    for j in range(n):
        prob = ranked.probability[j] if ranked.probability is not None else None
        arm = None if req.arms is None else (None if hold[j] else (CHALLENGER if in_challenger[j] else CHAMPION))
        records.append({
            "member_id": member_ids[j], "grp": HOLDOUT if hold[j] else TREATED, "arm": arm, "rank": j + 1,
            "score": float(ranked.scores[j]), "probability": None if prob is None else float(prob),
            "picks": orjson.dumps(picks[j]).decode() if picks else None,
        })
    with db.sessions.begin() as s:
        s.add(camp)
        s.flush()
        for r in records:
            r["campaign_id"] = camp.id
        _insert_members(s, records)
        lineage["seconds"]["store"] = round(time.perf_counter() - t_policy, 3)
        camp.lineage = dict(lineage)
        for cid, ms in moved.items():  # members this campaign takes over from one not yet exported
            s.execute(delete(CampaignMember).where(CampaignMember.campaign_id == cid,
                                                   CampaignMember.member_id.in_(ms)))
            other = s.get(Campaign, cid)
            other.n_treated -= len(ms)
            other.policy = {**other.policy, "moved_to_later_campaigns": other.policy.get("moved_to_later_campaigns", 0)
                            + len(ms)}
    return Created(camp, summary(camp))


MEMBER_COLUMNS = ("campaign_id", "member_id", "grp", "arm", "rank", "score", "probability", "picks")


def _insert_members(session: Any, records: Sequence[dict[str, Any]]) -> None:
    """Bulk insert on the session's own connection (same transaction): the driver's executemany on
    SQLite, COPY on PostgreSQL; SQLAlchemy's per-row parameter handling was a third of the time."""
    conn = session.connection()
    rows = [tuple(r[c] for c in MEMBER_COLUMNS) for r in records]
    raw = conn.connection.driver_connection
    if conn.dialect.name == "postgresql":
        with raw.cursor() as cur, cur.copy(f"COPY campaign_members ({', '.join(MEMBER_COLUMNS)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        return
    if conn.dialect.name == "sqlite":
        cur = raw.cursor()
        try:
            sql = f"INSERT INTO campaign_members ({', '.join(MEMBER_COLUMNS)}) VALUES ({', '.join('?' * len(MEMBER_COLUMNS))})"
            for start in range(0, len(rows), INSERT_CHUNK):
                cur.executemany(sql, rows[start:start + INSERT_CHUNK])
        finally:
            cur.close()
        return
    table = CampaignMember.__table__
    for start in range(0, len(records), INSERT_CHUNK):
        session.execute(insert(table), list(records[start:start + INSERT_CHUNK]))


# --------------------------------------------------------------------------- reading
def get_campaign(db: Database, campaign_id: int) -> Campaign:
    db.ensure()
    with db.sessions() as s:
        c = s.get(Campaign, campaign_id)
    if c is None:
        raise NotFoundError(f"no campaign {campaign_id}; GET /v1/campaigns lists them")
    return c


def list_campaigns(db: Database, limit: int = 100) -> list[CampaignSummary]:
    db.ensure()
    with db.sessions() as s:
        rows = list(s.scalars(select(Campaign).order_by(Campaign.id.desc()).limit(limit)))
    return [summary(c) for c in rows]


@dataclass
class Export:
    campaign: Campaign
    table: pa.Table  # the CSV's columns
    members: int
    suppressed: int

    @property
    def header(self) -> list[str]:
        return self.table.column_names


def export_rows(db: Database, campaign_id: int) -> Export:
    """The treated members as a table (audience: member_id, rank, score; picks: member_id, rank,
    product_id, reason, reason_code [, arm]), without anyone on a suppression list now; counts the
    export on the campaign. The holdout is never among them."""
    c = get_campaign(db, campaign_id)
    with db.sessions() as s:
        blocked = suppressed_ids(s)
        members = s.execute(select(CampaignMember.member_id, CampaignMember.score, CampaignMember.arm,
                                   CampaignMember.picks)
                            .where(CampaignMember.campaign_id == campaign_id, CampaignMember.grp == TREATED)
                            .order_by(CampaignMember.rank)).all()
    kept = [row for row in members if row[0] not in blocked]
    suppressed = len(members) - len(kept)
    arms = c.lineage.get("arm_sizes") is not None
    if c.kind == "picks":
        cols: dict[str, list[Any]] = {"member_id": [], "rank": [], "product_id": [], "reason": [], "reason_code": []}
        arm_col: list[Any] = []
        for m, _score, arm, packed in kept:
            own = orjson.loads(packed).get(arm or CHAMPION, []) if packed else []
            cols["member_id"].extend([m] * len(own))
            cols["rank"].extend(range(1, len(own) + 1))
            for pid, _s, code, reason in own:
                cols["product_id"].append(pid)
                cols["reason"].append(reason)
                cols["reason_code"].append(code)
            if arms:
                arm_col.extend([arm] * len(own))
        if arms:
            cols["arm"] = arm_col
        table = pa.table({k: pa.array(v, pa.int32() if k == "rank" else pa.string()) for k, v in cols.items()})
    else:
        table = pa.table({
            "member_id": pa.array([m for m, *_ in kept], pa.string()),
            "rank": pa.array(np.arange(1, len(kept) + 1, dtype=np.int32)),
            "score": pa.array([f"{sc:.6g}" if sc is not None else "" for _, sc, *_ in kept], pa.string()),
        })
    with db.sessions.begin() as s:
        s.execute(update(Campaign).where(Campaign.id == campaign_id).values(exports=Campaign.exports + 1))
    return Export(c, table, len(kept), suppressed)


def csv_chunks(table: pa.Table, rows_per_chunk: int = 100_000) -> Iterator[bytes]:
    """``table`` as UTF-8 CSV (a header row, values quoted only where needed), in chunks."""
    import pyarrow.csv as pcsv

    for start in range(0, max(table.num_rows, 1), rows_per_chunk):
        buf = io.BytesIO()
        part = table.slice(start, rows_per_chunk)
        pcsv.write_csv(part, buf, pcsv.WriteOptions(include_header=start == 0, quoting_style="needed"))
        yield buf.getvalue()


# --------------------------------------------------------------------------- suppression lists
def read_id_csv(text: str, what: str) -> tuple[list[str], int, int]:
    """Member ids from the first column of a CSV (a header row ``member_id`` is skipped); the ids
    in file order without repeats, how many repeats, how many empty or unprintable values."""
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff")))
    ids: dict[str, None] = {}
    dup = bad = 0
    for i, row in enumerate(reader):
        if not row or not any(cell.strip() for cell in row):
            continue
        value = row[0].strip()
        if i == 0 and value.lower() in ("member_id", "member", "id", "会员", "会员id", "会员号"):
            continue
        if not value or len(value) > 200 or not value.isprintable():
            bad += 1
        elif value in ids:
            dup += 1
        else:
            ids[value] = None
    if not ids and not bad:
        raise InputError(f"{what}: no member ids found; one id per line, in the first column")
    return list(ids), dup, bad


def add_suppression_list(db: Database, state: ServingState, name: str, channel: str | None, csv_text: str,
                         key_id: str) -> SuppressionSummary:
    """Keep a list of members who opted out; ids the served model does not know are counted and
    reported, not kept (the rest are applied to every list that leaves the server)."""
    db.ensure()
    ids, dup, bad = read_id_csv(csv_text, "suppression list")
    known = [m for m in ids if state.members.get(m) >= 0]
    entry = SuppressionList(name=name, channel=channel, created_at=datetime.now(UTC).replace(tzinfo=None, microsecond=0),
                            created_by=key_id, rows=len(ids) + dup + bad, members=len(known),
                            unknown=len(ids) - len(known), duplicates=dup, invalid=bad)
    with db.sessions.begin() as s:
        s.add(entry)
        s.flush()
        table = SuppressedMember.__table__
        for start in range(0, len(known), INSERT_CHUNK):
            s.execute(insert(table), [{"list_id": entry.id, "member_id": m} for m in known[start:start + INSERT_CHUNK]])
    return suppression_summary(entry)


def suppression_summary(e: SuppressionList) -> SuppressionSummary:
    return SuppressionSummary(id=e.id, name=e.name, channel=e.channel, created_at=e.created_at.isoformat(timespec="seconds"),
                              created_by=e.created_by, rows=e.rows, members=e.members, unknown=e.unknown,
                              duplicates=e.duplicates, invalid=e.invalid)


def list_suppressions(db: Database) -> tuple[list[SuppressionSummary], int]:
    db.ensure()
    with db.sessions() as s:
        lists = [suppression_summary(e) for e in s.scalars(select(SuppressionList).order_by(SuppressionList.id))]
        total = s.scalar(select(func.count(func.distinct(SuppressedMember.member_id)))) or 0
    return lists, int(total)


def delete_suppression_list(db: Database, list_id: int) -> None:
    db.ensure()
    with db.sessions.begin() as s:
        entry = s.get(SuppressionList, list_id)
        if entry is None:
            raise NotFoundError(f"no suppression list {list_id}")
        s.execute(delete(SuppressedMember).where(SuppressedMember.list_id == list_id))
        s.delete(entry)


# --------------------------------------------------------------------------- imported campaigns
STRATA = ("value_segment", "lifecycle")


def import_campaign(db: Database, state: ServingState, req: ImportRequest, *, key_id: str) -> Created:
    """A campaign sent by another tool: its recipients (treated), its holdout or -- without one -- a
    comparison group of non-recipients matched on value segment and lifecycle (observational)."""
    db.ensure()
    recipients, _, bad = read_id_csv(req.recipients_csv, "recipients")
    holdout: list[str] = []
    if req.holdout_csv:
        holdout, _, bad_h = read_id_csv(req.holdout_csv, "holdout")
        bad += bad_h
        both = set(recipients) & set(holdout)
        if both:
            raise InputError(f"{len(both):,} member(s) are both recipients and held out (e.g. {sorted(both)[:3]}); "
                             "a member is in one group")
    if req.product_ids:
        unknown = [p for p in req.product_ids if state.products.get(p) < 0]
        if unknown:
            raise InputError(f"unknown product(s) {', '.join(map(repr, unknown[:20]))}: not in the model's "
                             f"catalogue ({state.n_products:,} products)")
    if req.category is not None and state.category.code(req.category) < 0:
        raise InputError(f"unknown category {req.category!r}; categories: {listing(state.category.labels)}")
    notes: list[str] = []
    unknown_r = [m for m in recipients if state.members.get(m) < 0]
    if unknown_r:
        notes.append(f"{len(unknown_r):,} recipient id(s) are not known to the model; they are measured all the same")
    observational = not holdout
    seed = req.seed if req.seed is not None else secrets.randbelow(2**31 - 1)
    if observational:
        holdout, matched_notes = matched_comparison(state, recipients, seed)
        notes += matched_notes
    send, end = req.send_date, req.send_date + timedelta(days=req.window_days)
    target = {"type": "imported", "product_ids": req.product_ids, "category": req.category, "brand": req.brand}
    camp = Campaign(
        name=req.name, kind="imported", created_at=datetime.now(UTC).replace(tzinfo=None, microsecond=0),
        created_by=key_id, target=target, filters={}, size=None,
        holdout_share=len(holdout) / max(len(holdout) + len(recipients), 1), seed=seed, send_date=send,
        window_days=req.window_days, window_end=end, model_version=state.info.version, data_as_of=state.as_of,
        lineage={"model_version": state.info.version, "data_as_of": state.as_of.isoformat(), "seed": seed,
                 "params": req.model_dump(mode="json", exclude={"name", "recipients_csv", "holdout_csv"}),
                 "comparison": "matched on value segment and lifecycle (observational)" if observational
                 else "the sender's holdout", "notes": notes, "invalid_ids": bad},
        policy={}, n_eligible=len(recipients) + len(holdout), n_treated=len(recipients), n_holdout=len(holdout),
        observational=observational, exports=0, scope=None,
    )
    records = [{"member_id": m, "grp": TREATED, "arm": None, "rank": None, "score": None, "probability": None,
                "picks": None} for m in recipients]
    records += [{"member_id": m, "grp": HOLDOUT, "arm": None, "rank": None, "score": None, "probability": None,
                 "picks": None} for m in holdout]
    with db.sessions.begin() as s:
        s.add(camp)
        s.flush()
        for r in records:
            r["campaign_id"] = camp.id
        _insert_members(s, records)
    return Created(camp, summary(camp))


def _strata(state: ServingState) -> np.ndarray:
    """A stratum code per bundle member: the combination of value segment and lifecycle."""
    n = state.members.n_base
    code = np.zeros(n, dtype=np.int64)
    for name in STRATA:
        column = state.member_tags.get(name)
        if column is None or not hasattr(column, "codes"):
            continue
        codes = np.asarray(column.codes, dtype=np.int64)  # type: ignore[union-attr]
        code = code * (len(column.labels) + 1) + (codes + 1)  # type: ignore[union-attr]
    return code


def matched_comparison(state: ServingState, recipients: list[str], seed: int) -> tuple[list[str], list[str]]:
    """As many non-recipients as recipients in each value segment x lifecycle stratum, drawn at
    random (``seed``); a stratum with too few non-recipients gives all it has (said in the notes)."""
    strata = _strata(state)
    rows = np.array([r for r in (state.members.get(m) for m in recipients) if 0 <= r < state.members.n_base],
                    dtype=np.int64)
    is_recipient = np.zeros(state.members.n_base, dtype=bool)
    is_recipient[rows] = True
    rng = np.random.default_rng(seed)
    chosen: list[np.ndarray] = []
    short = 0
    wanted = np.bincount(strata[rows]) if len(rows) else np.zeros(0, np.int64)
    for s in np.flatnonzero(wanted):
        candidates = np.flatnonzero((strata == s) & ~is_recipient)
        k = min(int(wanted[s]), len(candidates))
        short += int(wanted[s]) - k
        if k:
            chosen.append(rng.choice(candidates, size=k, replace=False))
    picked = np.sort(np.concatenate(chosen)) if chosen else np.empty(0, np.int64)
    notes = [f"comparison group: {len(picked):,} non-recipients matched on {' x '.join(STRATA)}; "
             "observational, not a randomised holdout"]
    if short:
        notes.append(f"{short:,} recipient(s) in strata with too few non-recipients to match")
    return state.members.external(picked) if len(picked) else [], notes
