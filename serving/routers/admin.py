"""The model being served, and reloading another one without downtime."""

from __future__ import annotations

import time
import weakref
from pathlib import Path
from typing import Annotated

import anyio
from fastapi import APIRouter, Depends, Request

from recsys.errors import InputError, RecsysError
from serving.deps import (
    BODY,
    KEYED,
    Holder,
    KeyFirstRoute,
    MetricsDep,
    State,
    errors,
    get_caller,
    require,
)
from serving.errors import ConflictError
from serving.keys import PERMISSIONS, Principal
from serving.memory import release_when_dropped
from serving.schemas import ModelResponse, ReloadRequest, ReloadResponse, WhoAmI
from serving.settings import ServingSettings
from serving.state import resolve_and_build

router = APIRouter(tags=["operations"], responses=errors(*KEYED), route_class=KeyFirstRoute)


def bundle_path(settings: ServingSettings, raw: str) -> Path:
    """The folder a reload asked for, when it lies inside one of the bundle roots (a relative
    path is taken from each root in turn); :class:`InputError` (422) otherwise."""
    roots = settings.reload_roots()
    if not roots:
        raise InputError(
            "reloading from a folder is off: no bundle roots are configured (RECSYS_BUNDLE_ROOTS or "
            "recsys serve --bundle-root); reload a registry version with {\"alias\": ...} instead"
        )
    path = Path(raw)
    for candidate in [path] if path.is_absolute() else [root / path for root in roots]:
        real = candidate.resolve()  # symlinks and '..' followed: the folder that would be read
        if any(real == root or real.is_relative_to(root) for root in roots):
            return real
    shown = ", ".join(str(r) for r in roots)
    raise InputError(
        f"bundle {raw!r} is outside the folders reloads may read ({shown}); put the bundle in one of them "
        "(a relative path is taken from them) or add its folder to RECSYS_BUNDLE_ROOTS"
    )


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
    responses=errors(*BODY, 409),
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
            folder = bundle_path(settings, body.bundle) if body.bundle else None
            # everything heavy (download, load, FAISS build, smoke test, event replay) runs in a
            # worker thread; requests keep being answered by the old state meanwhile
            new = await anyio.to_thread.run_sync(
                lambda: resolve_and_build(settings, bundle=folder, alias=body.alias)
            )
        except RecsysError:
            metrics.reloads.labels(outcome="refused").inc()
            raise
        except Exception:
            metrics.reloads.labels(outcome="failed").inc()
            raise
        new.sync_events()  # anything appended while the new state was being built
        replica = request.app.state.replica
        replica.add(new)  # recorded with the old one until it is dropped: a trim keeps what either replays
        await anyio.to_thread.run_sync(replica.publish)
        old = weakref.ref(holder.state) if holder.state is not None else None
        holder.state, holder.error = new, None  # the swap: one reference assignment
        metrics.set_model(new.info.version, new.info.model, new.info.run_id)
        metrics.reloads.labels(outcome="swapped").inc()
        version, seconds = new.info.version, round(time.perf_counter() - start, 3)
        del new
        # the old state's pages back to the OS, once the events tail has let go of it
        await release_when_dropped(old, within=settings.events_poll_seconds + 1.0)
        await anyio.to_thread.run_sync(replica.publish)  # the old state's watermark no longer held
        return ReloadResponse(previous_version=previous, model_version=version, seconds=seconds)
    finally:
        holder.reload_lock.release()

