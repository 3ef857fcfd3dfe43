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

from collections.abc import Awaitable, Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, Response, Security
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from serving.audit import AuditLog
from serving.errors import NotReadyError
from serving.keys import KeyStore, Permission, Principal
from serving.metrics import Metrics
from serving.schemas import ErrorResponse
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


# dependency -> the permission it checks (None: any valid key), read by KeyFirstRoute
_ACCESS: dict[Callable[..., Any], Permission | None] = {get_caller: None}


def require(permission: Permission) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency that lets only roles with ``permission`` through (403 otherwise)."""

    async def check(caller: Annotated[Principal, Depends(get_caller)]) -> Principal:
        return permitted(caller, permission)

    _ACCESS[check] = permission
    return check


def route_access(dependant: Dependant) -> tuple[bool, Permission | None]:
    """Whether a route's dependencies need a key, and which permission (the first found)."""
    needs_key, permission = False, None
    stack = list(dependant.dependencies)
    while stack:
        dep = stack.pop()
        if dep.call in _ACCESS:
            needs_key = True
            permission = permission or _ACCESS[dep.call]
        stack.extend(dep.dependencies)
    return needs_key, permission


class KeyFirstRoute(APIRoute):
    """An ``APIRoute`` that checks the caller's key (401) and role (403) before FastAPI reads the
    request body.

    FastAPI reads and parses a route's body before it resolves the route's dependencies, so a
    50 MB POST with no key was parsed in full (~650 MB, 0.5 s) before its 401. Routes with a
    body declare their access with the same ``require(...)`` / ``get_caller`` dependencies as
    every other route; this route class finds them and runs the same check on the headers first.
    The dependencies still run afterwards (the route gets its :class:`Principal` as before).
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        needs_key, permission = route_access(self.dependant)
        if self.body_field is None or not needs_key:
            return handler

        async def checked(request: Request) -> Response:
            caller = principal_of(request.app.state.keys, secret_of(request))
            if permission is not None:
                permitted(caller, permission)
            return await handler(request)

        return checked


State = Annotated[ServingState, Depends(get_state)]
Holder = Annotated[StateHolder, Depends(get_holder)]
Settings = Annotated[ServingSettings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
Audit = Annotated[AuditLog, Depends(get_audit)]


# Every error the API answers has one shape, ErrorResponse ({"detail": "what to fix"}); each route
# documents the statuses it can answer with it (schemathesis checks the schema against answers).
ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "The body could not be parsed (e.g. not UTF-8 JSON)",
    401: "Missing or unknown API key",
    403: "The key's role may not use this route",
    404: "An id in the path or body is not known to the model",
    408: "The request body did not arrive in time",
    409: "Conflicts with work in progress (e.g. another reload)",
    413: "The request body is over the size limit",
    422: "A parameter or the body is invalid; the detail says which and what is allowed",
    503: "No model loaded yet (retry when /health/ready answers 200), or a store the request needs cannot "
         "be reached (the database holding the audit trail and campaigns): nothing was sent; retry",
}
KEYED = (401, 403, 422, 503)  # every route behind a key that reads the model
BODY = (400, 408, 413, 422)  # every route that reads a JSON body


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` for these statuses, all :class:`ErrorResponse`."""
    return {code: {"model": ErrorResponse, "description": ERROR_DESCRIPTIONS[code]} for code in sorted(set(codes))}
