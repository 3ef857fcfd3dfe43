"""Audiences for a product (以物找人, 人群包): as JSON with a profile, or exported as CSV."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response, StreamingResponse
from pydantic import ValidationError

from serving.audit import AuditLog
from serving.deps import BODY, KEYED, Audit, KeyFirstRoute, MetricsDep, State, errors, require
from serving.keys import Principal
from serving.schemas import (
    AudienceOptions,
    AudienceRequest,
    AudienceResponse,
    ExportRecord,
    ExportsResponse,
)
from serving.service import audiences as audience_service

router = APIRouter(tags=["audiences"], responses=errors(*KEYED), route_class=KeyFirstRoute)
Caller = Annotated[Principal, Depends(require("audiences"))]
CSV_CHUNK_ROWS = 5_000


@router.post(
    "/v1/audiences",
    summary="The members most likely to buy a product, with a profile of the audience",
    response_model=AudienceResponse,
    responses=errors(*BODY, 404),
)
def audiences(state: State, caller: Caller, audit: Audit, body: AudienceRequest) -> Response:
    # a def handler: a 100,000-member audience is tens of milliseconds of numpy, kept off the loop.
    # The body is encoded once with orjson: as 10,000 pydantic members validated again by FastAPI
    # it cost more than finding them (response_model documents it; the tests validate it)
    result = audience_service.audience(state, body, scope=caller.scope)
    audit_audience(audit, caller, body, result, "/v1/audiences", "json")  # a member list leaves: audited
    return Response(orjson.dumps(result.as_dict()), media_type="application/json")


AUDIENCE_ROUTES = ("/v1/audiences", "/v1/audiences/export")


def audit_audience(audit: AuditLog, caller: Principal, body: AudienceRequest,
                   result: audience_service.AudienceResult, route: str, fmt: str) -> None:
    """One audit entry for an audience that leaves the server, as JSON or CSV: who asked, what,
    and how many members it carried (never the members themselves). Committed before the answer
    is sent; a 503 (and no list) when it cannot be."""
    audit.write({
        "key_id": caller.key_id,
        "scope": caller.scope_dict(),
        "route": route,
        "format": fmt,
        "product_id": body.product_id,
        "attributes": body.attributes.model_dump() if body.attributes else None,
        "filters": body.filters,
        "exclude_bought_within_days": body.exclude_bought_within_days,
        "size": body.size,
        "rows": len(result.member_ids),
        "model_version": result.model_version,
    })


def _csv_rows(result: audience_service.AudienceResult) -> Iterator[bytes]:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["member_id", "score", "rank"])
    for rank, (member_id, score) in enumerate(zip(result.member_ids, result.scores, strict=True), start=1):
        writer.writerow([member_id, f"{score:.6g}", rank])
        if rank % CSV_CHUNK_ROWS == 0:
            yield buf.getvalue().encode("utf-8")
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue().encode("utf-8")


@router.post(
    "/v1/audiences/export",
    summary="The same audience as a CSV file (member_id,score,rank); every export is audited",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/csv": {}}, "description": "member_id,score,rank with a header row"},
        **errors(*BODY, 404),
    },
)
def export_audience(
    state: State, caller: Caller, audit: Audit, metrics: MetricsDep, body: AudienceRequest
) -> StreamingResponse:
    result = audience_service.audience(state, body, scope=caller.scope)
    audit_audience(audit, caller, body, result, "/v1/audiences/export", "csv")
    metrics.exports.inc()
    target = body.product_id or f"new-{body.attributes.category if body.attributes else 'product'}"
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in target)[:80]
    return StreamingResponse(
        _csv_rows(result),
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="audience-{safe}.csv"',
            "X-Model-Version": result.model_version,
        },
    )


@router.get("/v1/audiences/options", summary="Tag values, categories and brands an audience request may name")
async def audience_options(state: State, caller: Caller) -> AudienceOptions:
    return audience_service.audience_options(state, caller.scope)


@router.get("/v1/audiences/exports", summary="Past audiences (JSON and CSV) from the audit trail, newest first")
def past_exports(
    caller: Caller,
    audit: Audit,
    limit: Annotated[int, Query(ge=1, le=1000, description="At most this many exports")] = 50,
    mine: Annotated[bool, Query(description="Only the exports made with the calling key")] = False,
) -> ExportsResponse:
    records: list[ExportRecord] = []
    # audiences only (not batch picks or campaign exports), from the trail every replica writes
    for entry in audit.newest_first(caller.key_id if mine else None, routes=AUDIENCE_ROUTES):
        try:
            records.append(ExportRecord.model_validate(entry))
        except ValidationError:  # an entry edited by hand in the database: skipped, never a 500
            continue
        if len(records) >= limit:
            break
    return ExportsResponse(exports=records)
