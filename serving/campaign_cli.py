"""``recsys campaign ...``: the campaign API's operations from the command line, on the same database
(``--db``, default ``sqlite:///campaigns/campaigns.db`` or ``$RECSYS_CAMPAIGN_DB``) and the same code
as the server (:mod:`serving.service.campaigns`). Commands that rank members load the model like
``recsys serve`` does (``--bundle`` or ``--registered-model``); heavy imports happen inside them."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from recsys.errors import RecsysError
from recsys.tags import parse_where

app = typer.Typer(no_args_is_help=True, help="Campaigns: create, export, measure, import; suppression lists.")
console = Console()
err = Console(stderr=True)

DEFAULT_DB = "sqlite:///campaigns/campaigns.db"
DbOpt = Annotated[str | None, typer.Option("--db", help="Campaign database URL (default: $RECSYS_CAMPAIGN_DB or "
                                           f"{DEFAULT_DB}).")]
BundleOpt = Annotated[Path | None, typer.Option("--bundle", help="A bundle folder to rank members with.")]
RegisteredOpt = Annotated[str | None, typer.Option("--registered-model", help="Or a registered model (its alias below).")]
AliasOpt = Annotated[str, typer.Option(help="Registry alias or version.")]
TrackingOpt = Annotated[str | None, typer.Option(help="MLflow tracking URI.")]
WhereOpt = Annotated[list[str] | None, typer.Option("--where", help="Only members with this tag value, TAG=V1,V2 "
                                                    "(repeatable; rule tags too, e.g. lapsed_60d=true).")]


def _fail(exc: Exception) -> None:
    err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def _db(url: str | None) -> Any:
    from serving.db import Database

    return Database(url or os.environ.get("RECSYS_CAMPAIGN_DB") or DEFAULT_DB)


@contextlib.contextmanager
def _state(bundle: Path | None, registered_model: str | None, alias: str, tracking_uri: str | None) -> Iterator[Any]:
    """``(settings, state)`` of the model that ranks the members, for the ``with`` block. The
    state replays no live events (a campaign command ranks on the bundle): its events folder is
    a temporary one, removed on exit."""
    from serving.settings import ServingSettings
    from serving.state import resolve_and_build

    if (bundle is None) == (registered_model is None):
        raise RecsysError("give --bundle DIR or --registered-model NAME (the model that ranks the members)")
    with tempfile.TemporaryDirectory(prefix="recsys-campaign-events-") as events_dir:
        settings = ServingSettings(bundle=bundle, registered_model=registered_model, alias=alias,
                                   mlflow_tracking_uri=tracking_uri, auth_disabled=True, events_dir=Path(events_dir))
        yield settings, resolve_and_build(settings)


def _print_summary(s: Any) -> None:
    console.print_json(data=json.loads(s.model_dump_json()))


@app.command("create")
def create(
    name: Annotated[str, typer.Option(help="The campaign's name.")],
    product: Annotated[str | None, typer.Option(help="以物找人: a product id.")] = None,
    category: Annotated[str | None, typer.Option(help="以物找人, a product not yet sold: its category ...")] = None,
    price: Annotated[float | None, typer.Option(help="... price ...")] = None,
    brand: Annotated[str | None, typer.Option(help="... and brand.")] = None,
    picks: Annotated[int | None, typer.Option(help="以人找物: each member's top N picks (a member-day push).")] = None,
    mode: Annotated[str, typer.Option(help="Picks mode: discover or replenish.")] = "discover",
    where: WhereOpt = None,
    size: Annotated[int | None, typer.Option(help="Members (contacted + held out); default everyone matching.")] = None,
    holdout_share: Annotated[float, typer.Option(help="Share held out at random, in (0, 0.5].")] = 0.1,
    seed: Annotated[int | None, typer.Option(help="Seed of the holdout draw (recorded).")] = None,
    send_date: Annotated[str | None, typer.Option(help="YYYY-MM-DD (default today).")] = None,
    window_days: Annotated[int, typer.Option(help="Measurement window from the send date.")] = 30,
    challenger: Annotated[str | None, typer.Option(help="A/B: registry alias / version of a challenger model "
                                                   "(picks campaigns, with --registered-model).")] = None,
    export: Annotated[Path | None, typer.Option(help="Also write the treated list here (CSV).")] = None,
    max_campaigns: Annotated[int, typer.Option(help="Frequency cap: campaigns per member ...")] = 3,
    cap_days: Annotated[int, typer.Option(help="... within this many days.")] = 30,
    db: DbOpt = None, bundle: BundleOpt = None, registered_model: RegisteredOpt = None, alias: AliasOpt = "champion",
    tracking_uri: TrackingOpt = None,
) -> None:
    """Create a campaign (the same as POST /v1/campaigns) and optionally export its treated list."""
    from pydantic import ValidationError

    from serving.campaign_schemas import CampaignRequest
    from serving.service import campaigns as service

    try:
        body: dict[str, Any] = {"name": name, "filters": parse_where(where), "size": size, "holdout_share": holdout_share,
                                "seed": seed, "window_days": window_days,
                                "send_date": date.fromisoformat(send_date) if send_date else None}
        if product:
            body["product_id"] = product
        if category:
            body["attributes"] = {"category": category, "price": price, "brand": brand}
        if picks:
            body["picks"] = {"k": picks, "mode": mode}
        if challenger:
            body["arms"] = {"challenger": challenger}
        try:
            req = CampaignRequest.model_validate(body)
        except ValidationError as exc:
            e = exc.errors()[0]
            raise RecsysError(f"{'.'.join(map(str, e['loc'])) or 'campaign'}: {e['msg']}") from None
        with _state(bundle, registered_model, alias, tracking_uri) as (settings, state):
            other = None
            if challenger:
                from serving.state import resolve_and_build

                if registered_model is None:
                    raise RecsysError("--challenger needs --registered-model (another version of it)")
                other = resolve_and_build(settings, alias=challenger)
            created = service.create_campaign(_db(db), state, req, key_id="cli", policy=service.ContactPolicy(
                max_campaigns, cap_days), challenger=other)
        _print_summary(created.summary)
        if export is not None:
            _export(db, created.campaign.id, export)
    except (RecsysError, ValueError) as exc:
        _fail(exc)


def _export(db: str | None, campaign_id: int, out: Path) -> None:
    from serving.audit import AuditLog
    from serving.service import campaigns as service

    database = _db(db)
    audit = AuditLog(database)
    result = service.export_rows(database, campaign_id)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    try:
        with open(tmp, "wb") as fh:
            for chunk in service.csv_chunks(result.table):
                fh.write(chunk)
        audit.write({"key_id": "cli", "scope": None, "route": "recsys campaign export", "format": "csv",
                     "campaign_id": campaign_id, "campaign": result.campaign.name, "rows": result.table.num_rows,
                     "members": result.members, "suppressed": result.suppressed,
                     "model_version": result.campaign.model_version})
        tmp.replace(out)  # the list appears under its name only once its audit entry is committed
    finally:
        tmp.unlink(missing_ok=True)
    err.print(f"{result.table.num_rows:,} rows ({result.suppressed:,} suppressed members left out) -> {out}; audited in "
              f"{audit.where}", highlight=False)


@app.command("export")
def export_cmd(
    campaign_id: Annotated[int, typer.Argument(help="The campaign.")],
    out: Annotated[Path, typer.Option(help="CSV file (treated members only; never the holdout).")],
    db: DbOpt = None,
) -> None:
    """Write a campaign's treated list as CSV (audited in the same database; no file if that fails)."""
    try:
        _export(db, campaign_id, out)
    except RecsysError as exc:
        _fail(exc)


@app.command("list")
def list_cmd(db: DbOpt = None) -> None:
    """Campaigns, newest first, with their status."""
    from serving.service import campaigns as service

    try:
        rows = service.list_campaigns(_db(db), 1000)
    except RecsysError as exc:
        _fail(exc)
    table = Table(title="campaigns")
    for col in ("id", "name", "kind", "status", "send", "window end", "treated", "holdout", "model"):
        table.add_column(col)
    for c in rows:
        table.add_row(str(c.id), c.name, c.kind, c.status, str(c.send_date), str(c.window_end), f"{c.treated:,}",
                      f"{c.holdout:,}", c.model_version or "")
    console.print(table)


@app.command("report")
def report(
    campaign_id: Annotated[int, typer.Argument(help="The campaign.")],
    purchases: Annotated[Path | None, typer.Option(help="The canonical folder of `recsys data ingest` (purchases "
                                                   "since the send date).")] = None,
    events_dir: Annotated[Path | None, typer.Option(help="A live-events folder to read too (events/events.jsonl).")] = None,
    cost_per_contact: Annotated[float | None, typer.Option(help="Cost of one contact, for the ROI.")] = None,
    margin: Annotated[float | None, typer.Option(help="Gross margin on the sales (0-1), for the ROI.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write the cumulative conversion plot here (PNG).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    db: DbOpt = None,
) -> None:
    """Conversion per group, uplift with its 95 % interval, incremental revenue, ROI."""
    from serving.service import campaign_results as results_service

    try:
        events = None
        if events_dir is not None:
            from serving.events import FileEventLog

            log = FileEventLog(events_dir / "events.jsonl")
            events, cursor = [], log.start
            while True:
                batch = log.read(cursor)
                events.extend(batch.records)
                if batch.cursor == cursor:
                    break
                cursor = batch.cursor
        source = results_service.PurchaseSource.of(purchases, events)
        result = results_service.results(_db(db), campaign_id, source, cost_per_contact=cost_per_contact, margin=margin)
        if plot is not None:
            results_service.plot(result, plot)
    except RecsysError as exc:
        _fail(exc)
    if as_json:
        console.print_json(data=result)
        return
    print_report(result)


def print_report(result: dict[str, Any]) -> None:
    title = f"campaign {result['campaign_id']} {result['name']}: {result['send_date']} .. {result['window_end']}"
    if result["partial"]:
        title += f" (partial: purchases up to {result['read_until']})"
    table = Table(title=title, title_justify="left")
    for col in ("group", "members", "buyers", "conversion", "expected buyers", "revenue"):
        table.add_column(col, justify="right" if col != "group" else "left")
    for name, g in result["groups"].items():
        exp = g.get("expected_buyers")
        table.add_row(name, f"{g['members']:,}", f"{g['buyers']:,}",
                      f"{g['conversion']:.2%}" if g["conversion"] is not None else "-",
                      f"{exp:,.1f}" if exp is not None else "-", f"{g['revenue']:,.2f}")
    console.print(table)
    for comp in result["comparisons"]:
        u = comp.get("uplift")
        if not u:
            continue
        line = (f"{comp['treated']} vs {comp['comparison']}: uplift {u['estimate']:+.2%} "
                f"(95 % CI {u['low']:+.2%} .. {u['high']:+.2%}{', significant' if u['significant'] else ''})")
        rev = comp.get("incremental_revenue")
        if rev:
            line += f"; incremental revenue {rev['estimate']:,.2f}"
            if rev["low"] is not None:
                line += f" ({rev['low']:,.2f} .. {rev['high']:,.2f})"
        if comp.get("roi"):
            line += f"; ROI {comp['roi']['roi']:+.1%} on a cost of {comp['roi']['cost']:,.2f}"
        console.print(line, highlight=False)
    for note in result["notes"]:
        console.print(f"note: {note}", highlight=False)


@app.command("import")
def import_cmd(
    name: Annotated[str, typer.Option(help="The campaign's name.")],
    recipients: Annotated[Path, typer.Option(help="CSV of the member ids it was sent to (first column).")],
    send_date: Annotated[str, typer.Option(help="When it was sent, YYYY-MM-DD.")],
    holdout: Annotated[Path | None, typer.Option(help="CSV of held-out member ids (else a matched comparison "
                                                 "group, observational).")] = None,
    product: Annotated[list[str] | None, typer.Option("--product", help="A target product id (repeatable).")] = None,
    category: Annotated[str | None, typer.Option(help="Or a target category.")] = None,
    brand: Annotated[str | None, typer.Option(help="Or a target brand.")] = None,
    window_days: Annotated[int, typer.Option(help="Measurement window.")] = 30,
    seed: Annotated[int | None, typer.Option(help="Seed of the matched comparison draw.")] = None,
    db: DbOpt = None, bundle: BundleOpt = None, registered_model: RegisteredOpt = None, alias: AliasOpt = "champion",
    tracking_uri: TrackingOpt = None,
) -> None:
    """Record a campaign another tool sent, to measure it like one created here."""
    from serving.campaign_schemas import ImportRequest
    from serving.service import campaigns as service

    try:
        req = ImportRequest(name=name, recipients_csv=recipients.read_text(encoding="utf-8"),
                            holdout_csv=holdout.read_text(encoding="utf-8") if holdout else None,
                            product_ids=product, category=category, brand=brand,
                            send_date=date.fromisoformat(send_date), window_days=window_days, seed=seed)
        with _state(bundle, registered_model, alias, tracking_uri) as (_, state):
            _print_summary(service.import_campaign(_db(db), state, req, key_id="cli").summary)
    except (RecsysError, ValueError, OSError) as exc:
        _fail(exc)


@app.command("suppress")
def suppress(
    file: Annotated[Path, typer.Argument(help="CSV of member ids who opted out (first column).")],
    name: Annotated[str, typer.Option(help="The list's name.")],
    channel: Annotated[str | None, typer.Option(help="The channel they opted out of.")] = None,
    db: DbOpt = None, bundle: BundleOpt = None, registered_model: RegisteredOpt = None, alias: AliasOpt = "champion",
    tracking_uri: TrackingOpt = None,
) -> None:
    """Keep a suppression list; ids the model does not know are counted and reported."""
    from serving.service import campaigns as service

    try:
        with _state(bundle, registered_model, alias, tracking_uri) as (_, state):
            _print_summary(service.add_suppression_list(_db(db), state, name, channel,
                                                        file.read_text(encoding="utf-8"), "cli"))
    except (RecsysError, OSError) as exc:
        _fail(exc)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
