"""The model being served, and reloading another one without downtime."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import anyio
from fastapi import APIRouter, Depends, Request

from recsys.errors import RecsysError
from serving.deps import Holder, MetricsDep, State, get_caller, require
from serving.errors import ConflictError
from serving.keys import PERMISSIONS, Principal
from serving.schemas import ErrorResponse, ModelResponse, ReloadRequest, ReloadResponse, WhoAmI
from serving.state import resolve_and_build

router = APIRouter(tags=["operations"], responses={401: {"model": ErrorResponse}, 403: {"model": ErrorResponse}})


@router.get("/v1/whoami", summary="The calling key's id, role and what it may do")
async def whoami(caller: Annotated[Principal, Depends(get_caller)]) -> WhoAmI:
    return WhoAmI(key_id=caller.key_id, role=caller.role, permissions=sorted(PERMISSIONS[caller.role]),
                  scope=caller.scope_dict())


@router.get("/v1/model", summary="The model being served: version, run, training date, metrics")
async def model_info(state: State, _: Annotated[Principal, Depends(require("model"))]) -> ModelResponse:
    i = state.info
    return ModelResponse(
        model_version=i.version, model=i.model, run_id=i.run_id, trained_on=i.trained_on, saved_at=i.saved_at,
        metrics=i.metrics, source=i.source, registered_model=i.registered_model,
        registry_version=i.registry_version, loaded_at=state.loaded_at,
        n_members=state.members.n_base, n_products=state.n_products,
        live_members_added=len(state.members) - state.members.n_base,
        events_applied=state.events_applied, events=state.events_info(), scorer=state.scorer.describe(),
        pre_ranked=state.pick_lists.describe() if state.pick_lists is not None else None,
    )


@router.post(
    "/v1/admin/reload",
    summary="Load, validate and index another bundle, then swap it in; the old one serves until then",
    responses={409: {"model": ErrorResponse}, 422: {"model": ErrorResponse}},
)
async def reload_model(
    request: Request,
    holder: Holder,
    metrics: MetricsDep,
    _: Annotated[Principal, Depends(require("reload"))],
    body: ReloadRequest | None = None,
) -> ReloadResponse:
    body = body or ReloadRequest()
    if not holder.reload_lock.acquire(blocking=False):
        raise ConflictError("another reload is in progress; retry when it has finished")
    try:
        settings = request.app.state.settings
        previous = holder.state.info.version if holder.state is not None else None
        start = time.perf_counter()
        try:
            # everything heavy (download, load, FAISS build, smoke test, event replay) runs in a
            # worker thread; requests keep being answered by the old state meanwhile
            new = await anyio.to_thread.run_sync(
                lambda: resolve_and_build(
                    settings, bundle=Path(body.bundle) if body.bundle else None, alias=body.alias
                )
            )
        except RecsysError:
            metrics.reloads.labels(outcome="refused").inc()
            raise
        new.sync_events()  # anything appended while the new state was being built
        holder.state, holder.error = new, None  # the swap: one reference assignment
        metrics.set_model(new.info.version, new.info.model, new.info.run_id)
        metrics.reloads.labels(outcome="swapped").inc()
        return ReloadResponse(previous_version=previous, model_version=new.info.version,
                              seconds=round(time.perf_counter() - start, 3))
    finally:
        holder.reload_lock.release()

