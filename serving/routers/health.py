"""Liveness, readiness and Prometheus metrics (no API key: for probes and scrapers)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from serving.deps import Holder, MetricsDep

router = APIRouter(tags=["operations"])


@router.get("/health/live", summary="The process is up")
async def live() -> dict[str, str]:
    return {"status": "live"}


@router.get(
    "/health/ready",
    summary="A model is loaded and answering",
    responses={503: {"description": "No model loaded yet, or the start-up load failed"}},
)
async def ready(holder: Holder, response: Response) -> dict[str, str | None]:
    state = holder.state
    if state is None:
        response.status_code = 503
        return {"status": "loading" if holder.error is None else "failed", "error": holder.error, "model_version": None}
    return {"status": "ready", "error": None, "model_version": state.info.version}


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(m: MetricsDep) -> Response:
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
