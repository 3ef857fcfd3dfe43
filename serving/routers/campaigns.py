"""Campaigns (营销闭环): create from an audience or a picks push, export the treated list, measure the
results; suppression lists; campaigns another tool sent, imported to be measured the same way."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from recsys.errors import InputError
from serving.campaign_schemas import (
    CampaignList,
    CampaignRequest,
    CampaignSummary,
    ImportRequest,
    SuppressionListResponse,
    SuppressionSummary,
)
from serving.db import Database
from serving.deps import (
    BODY,
    KEYED,
    Audit,
    KeyFirstRoute,
    MetricsDep,
    Settings,
    State,
    errors,
    require,
)
from serving.keys import Principal
from serving.service import campaign_results as results_service
from serving.service import campaigns as service
from serving.settings import ServingSettings
from serving.state import ServingState

router = APIRouter(tags=["campaigns"], responses=errors(*KEYED), route_class=KeyFirstRoute)
Caller = Annotated[Principal, Depends(require("campaigns"))]
# routes that take a whole member list: the body limit is RECSYS_MAX_UPLOAD_BYTES (serving.limits)
UPLOAD_PATHS = frozenset({"/v1/suppressions", "/v1/campaigns:import"})


async def get_db(request: Request) -> Database:
    return request.app.state.db


DB = Annotated[Database, Depends(get_db)]


def policy_of(settings: ServingSettings) -> service.ContactPolicy:
    return service.ContactPolicy(settings.contact_max_campaigns, settings.contact_days)


def _challenger(request: Request, settings: ServingSettings, version: str) -> ServingState:
    """The state of another registered version of the served model (kept for later campaigns)."""
    if not settings.registered_model:
        raise InputError("arms need the server to serve a registered model (--registered-model): the challenger "
                         "is another version of it")
    cache: dict[str, ServingState] = request.app.state.challengers
    if version not in cache:
        from serving.state import resolve_and_build

        cache.clear()  # one challenger at a time: each is a whole model in memory
        cache[version] = resolve_and_build(settings, alias=version)
    return cache[version]


@router.post("/v1/campaigns", summary="Create a campaign: target, filters, size, holdout, send date and window",
             response_model=CampaignSummary, responses=errors(*BODY, 404))
def create(request: Request, state: State, caller: Caller, db: DB, settings: Settings,
           body: CampaignRequest) -> CampaignSummary:
    challenger = _challenger(request, settings, body.arms.challenger) if body.arms is not None else None
    return service.create_campaign(db, state, body, key_id=caller.key_id, scope=caller.scope,
                                   policy=policy_of(settings), challenger=challenger).summary


@router.get("/v1/campaigns", summary="Campaigns, newest first, with their status")
def list_campaigns(caller: Caller, db: DB,
                   limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> CampaignList:
    return CampaignList(campaigns=service.list_campaigns(db, limit))


@router.get("/v1/campaigns/{campaign_id}", summary="One campaign: lineage, group sizes, what the policy removed",
            responses=errors(404))
def get_campaign(campaign_id: int, caller: Caller, db: DB) -> CampaignSummary:
    return service.summary(service.get_campaign(db, campaign_id))


@router.get(
    "/v1/campaigns/{campaign_id}/export",
    summary="The treated members as CSV (picks: member_id,rank,product_id,reason); never the holdout; audited",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}}, **errors(404)},
)
def export(campaign_id: int, caller: Caller, db: DB, audit: Audit, metrics: MetricsDep) -> StreamingResponse:
    out = service.export_rows(db, campaign_id)
    members = out.members
    audit.write({
        "key_id": caller.key_id, "scope": caller.scope_dict(), "route": "/v1/campaigns/{id}/export", "format": "csv",
        "campaign_id": campaign_id, "campaign": out.campaign.name, "rows": out.table.num_rows, "members": members,
        "suppressed": out.suppressed, "model_version": out.campaign.model_version,
    })
    metrics.exports.inc()
    return StreamingResponse(service.csv_chunks(out.table), media_type="text/csv; charset=utf-8", headers={
        "Content-Disposition": f'attachment; filename="campaign-{campaign_id}-treated.csv"',
        "X-Suppressed": str(out.suppressed), "X-Members": str(members)})


def all_events(state: ServingState) -> list[Any]:
    """Every purchase the events store holds (the file, or the stream the replicas share)."""
    out: list[Any] = []
    cursor = state.events.start
    while True:
        batch = state.events.read(cursor)
        out.extend(batch.records)
        if batch.cursor == cursor:
            return out
        cursor = batch.cursor


@router.get("/v1/campaigns/{campaign_id}/results",
            summary="Conversion per group, uplift with its 95 % interval, incremental revenue, ROI, cumulative curve",
            responses=errors(404))
def campaign_results(
    campaign_id: int, state: State, caller: Caller, db: DB, settings: Settings,
    cost_per_contact: Annotated[float | None, Query(ge=0, lt=1e6)] = None,
    margin: Annotated[float | None, Query(ge=0, le=1)] = None,
) -> dict[str, Any]:
    products = state.product_table.select([c for c in ("product_id", "category", "brand")
                                           if c in state.product_table.column_names])
    if "brand" not in products.column_names:
        import pyarrow as pa

        products = products.append_column("brand", pa.nulls(products.num_rows, pa.string()))
    source = results_service.PurchaseSource.of(settings.campaign_purchases, all_events(state), products)
    return results_service.results(db, campaign_id, source, cost_per_contact=cost_per_contact, margin=margin)


@router.post("/v1/campaigns:import", summary="Measure a campaign another tool sent (recipients CSV, optional holdout)",
             response_model=CampaignSummary, responses=errors(*BODY, 404))
def import_campaign(state: State, caller: Caller, db: DB, body: ImportRequest) -> CampaignSummary:
    return service.import_campaign(db, state, body, key_id=caller.key_id).summary


@router.post("/v1/suppressions", summary="Upload a suppression list (CSV of member ids, body text/csv); kept and "
             "applied to every list that leaves the server", response_model=SuppressionSummary,
             responses=errors(*BODY))
async def upload_suppression(
    request: Request, state: State, caller: Caller, db: DB,
    name: Annotated[str, Query(min_length=1, max_length=200)],
    channel: Annotated[str | None, Query(min_length=1, max_length=100)] = None,
) -> SuppressionSummary:
    body = await request.body()  # bounded by RECSYS_MAX_UPLOAD_BYTES before it is read
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError("the list must be UTF-8 text: one member id per line (CSV, first column)") from None
    import anyio

    return await anyio.to_thread.run_sync(
        lambda: service.add_suppression_list(db, state, name, channel, text, caller.key_id))


@router.get("/v1/suppressions", summary="Suppression lists and how many members they hold")
def list_suppressions(caller: Caller, db: DB) -> SuppressionListResponse:
    lists, total = service.list_suppressions(db)
    return SuppressionListResponse(lists=lists, suppressed_members=total)


@router.delete("/v1/suppressions/{list_id}", summary="Drop a suppression list", status_code=204,
               responses=errors(404))
def delete_suppression(list_id: int, caller: Caller, db: DB) -> None:
    service.delete_suppression_list(db, list_id)
