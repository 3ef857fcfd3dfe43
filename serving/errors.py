"""Errors the server answers with a 4xx: each carries the status and a message saying what to fix.

:class:`recsys.errors.RecsysError` (and so :class:`recsys.bundle.BundleError`) is the root, so
the one exception handler in :mod:`serving.app` turns every such error into a response.
"""

from __future__ import annotations

from recsys.errors import RecsysError


class NotFoundError(RecsysError):
    """A member, product or other id named in the path or body is not known (404)."""


class ForbiddenError(RecsysError):
    """The key may not have this, e.g. a scope the served model cannot check (403)."""


class ConflictError(RecsysError):
    """The request cannot run now, e.g. a reload while another is in progress (409)."""


class NotReadyError(RecsysError):
    """No model is loaded yet (503): the server is starting or its start-up load failed."""


def status_of(exc: RecsysError) -> int:
    """The HTTP status for a user-facing error."""
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, ForbiddenError):
        return 403
    if isinstance(exc, ConflictError):
        return 409
    if isinstance(exc, NotReadyError):
        return 503
    return 422  # InputError, BundleError (a bundle that cannot be served) and the rest
