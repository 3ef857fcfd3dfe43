"""Dependencies injected into routes with ``Annotated[..., Depends(...)]``.

``State`` is the current :class:`~serving.state.ServingState` (503 until a model is loaded);
``Caller`` is the authenticated key; ``require(permission)`` also checks its role (401 / 403).

Every dependency here is ``async def``: they only read ``app.state`` and hash a key (microseconds),
and FastAPI runs each plain ``def`` dependency in the thread pool -- measured ~20 thread hops and
~0.7 ms per picks request, for nothing.

The same checks are plain functions too (:func:`authorize`, :func:`current_state`), for the one
route that skips FastAPI's dependency resolution: a member's picks, where resolving eight
dependency nodes and six parameters cost more than answering (see :mod:`serving.routers.picks`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from serving.audit import AuditLog
from serving.errors import NotReadyError
from serving.keys import KeyStore, Permission, Principal
from serving.metrics import Metrics
from serving.settings import ServingSettings
from serving.state import ServingState, StateHolder

_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key")
_bearer = HTTPBearer(auto_error=False, description="The API key as a bearer token")

DEV_PRINCIPAL = Principal("auth-disabled", "admin")


def state_of(holder: StateHolder) -> ServingState:
    """The loaded state, or :class:`NotReadyError` (503) saying why there is none."""
    state = holder.state
    if state is None:
        reason = f"start-up load failed: {holder.error}" if holder.error else "the model is still loading"
        raise NotReadyError(f"no model loaded yet ({reason}); retry when /health/ready answers 200")
    return state


def current_state(request: Request) -> ServingState:
    """:func:`get_state` as a plain function."""
    return state_of(request.app.state.holder)


async def get_holder(request: Request) -> StateHolder:
    return request.app.state.holder


async def get_state(holder: Annotated[StateHolder, Depends(get_holder)]) -> ServingState:
    return state_of(holder)


async def get_settings(request: Request) -> ServingSettings:
    return request.app.state.settings


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


async def get_audit(request: Request) -> AuditLog:
    return request.app.state.audit


# what the two schemes above declare, for a route that reads the headers itself (OpenAPI)
SECURITY = [{_api_key.scheme_name: []}, {_bearer.scheme_name: []}]


def principal_of(store: KeyStore | None, secret: str | None) -> Principal:
    """Who ``secret`` belongs to; 401 when it is missing or unknown."""
    if store is None:  # RECSYS_AUTH_DISABLED: development only
        return DEV_PRINCIPAL
    if not secret:
        raise HTTPException(401, "missing API key: send it as X-API-Key or Authorization: Bearer",
                            headers={"WWW-Authenticate": "Bearer"})
    principal = store.authenticate(secret)
    if principal is None:
        raise HTTPException(401, "invalid API key", headers={"WWW-Authenticate": "Bearer"})
    return principal


def permitted(caller: Principal, permission: Permission) -> Principal:
    """``caller`` when their role may use ``permission``; 403 otherwise."""
    if not caller.may(permission):
        raise HTTPException(403, f"key {caller.key_id!r} (role {caller.role}) may not use {permission}")
    return caller


def secret_of(request: Request) -> str | None:
    """The key as the two security schemes read it: ``X-API-Key``, else ``Authorization: Bearer``."""
    headers = request.headers
    key = headers.get("x-api-key")
    if key:
        return key
    scheme, _, credentials = (headers.get("authorization") or "").partition(" ")
    credentials = credentials.strip()
    return credentials if scheme.lower() == "bearer" and credentials else None


def authorize(request: Request, permission: Permission) -> Principal:
    """``require(permission)`` as a plain function (401 / 403)."""
    return permitted(principal_of(request.app.state.keys, secret_of(request)), permission)


async def get_caller(
    request: Request,
    api_key: Annotated[str | None, Security(_api_key)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> Principal:
    return principal_of(request.app.state.keys, api_key or (bearer.credentials if bearer is not None else None))


def require(permission: Permission) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency that lets only roles with ``permission`` through (403 otherwise)."""

    async def check(caller: Annotated[Principal, Depends(get_caller)]) -> Principal:
        return permitted(caller, permission)

    return check


State = Annotated[ServingState, Depends(get_state)]
Holder = Annotated[StateHolder, Depends(get_holder)]
Settings = Annotated[ServingSettings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
Audit = Annotated[AuditLog, Depends(get_audit)]
