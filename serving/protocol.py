"""uvicorn's HTTP/1.1 protocol (h11) with a deadline for a request's headers.

uvicorn has a keep-alive timeout (idle time between requests) but nothing that bounds how long a
client may take to send a request: the keep-alive timer is not armed before a connection's first
request, and every byte received cancels it. A client that opens a connection and sends one header
line every few seconds (slowloris) holds it, and a slot under ``limit_concurrency``, for as long
as it likes: 200 such connections stayed open for 20 s in the outside test (issue 12).

:class:`HeaderDeadlineProtocol` closes a connection whose request headers are not complete
``header_timeout`` seconds after its first byte (or after the connection opened, for the first
request). It is armed only while the connection waits for a request, so a long response or a slow
body never trips it; the body has its own limit in :class:`serving.limits.BodyLimitMiddleware`.
The protocol reads the deadline from :class:`ServerConfig` (a ``uvicorn.Config`` that also keeps
``TCP_NODELAY`` on a multi-worker listener), so it is picklable for ``--workers N``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from serving.settings import ServerSettings

log = logging.getLogger("serving.protocol")


class ServerConfig(uvicorn.Config):
    """``uvicorn.Config`` plus ``header_timeout`` (seconds), read by :class:`HeaderDeadlineProtocol`.

    Its listener keeps ``TCP_NODELAY`` on accepted connections with ``--workers N``: uvicorn binds
    that shared socket with ``proto=0``; accepted sockets inherit it and asyncio only sets
    ``TCP_NODELAY`` when ``proto == IPPROTO_TCP``, so every keep-alive response waited for the
    client's delayed ACK (~40 ms on Linux; uvicorn issue #3149; a bare endpoint fell from ~3,000
    to ~360 req/s with 16 connections).
    """

    def __init__(self, app: Any, *, header_timeout: float = 10.0, **kwargs: Any):
        super().__init__(app, http=HeaderDeadlineProtocol, **kwargs)
        self.header_timeout = header_timeout

    def bind_socket(self) -> socket.socket:
        sock = super().bind_socket()
        if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.proto == 0:
            sock = socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, fileno=sock.detach())
            sock.set_inheritable(True)
        return sock


class HeaderDeadlineProtocol(H11Protocol):
    """h11 with a request-header deadline (see the module docstring)."""

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any):
        super().__init__(config, *args, **kwargs)
        self.header_timeout = float(config.header_timeout) if isinstance(config, ServerConfig) else 10.0
        self._deadline: asyncio.TimerHandle | None = None

    def _waiting(self) -> bool:
        """No request in progress: the connection is new, or idle between keep-alive requests."""
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        if self._deadline is None and self.header_timeout > 0:
            self._deadline = self.loop.call_later(self.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self._waiting() and not self.transport.is_closing():
            who = f"{self.client[0]}:{self.client[1]}" if self.client else "a connection"
            log.info("closing %s: request headers not received within %.3g s", who, self.header_timeout)
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()  # the first request's headers are due from the moment the connection opens

    def data_received(self, data: bytes) -> None:
        if self._waiting():
            self._arm()  # a byte of the next request: its headers are due from now
        super().data_received(data)
        if not self._waiting():
            self._disarm()  # the headers are in; the request is being answered

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def server_config(app: Any, server: ServerSettings | None = None, **kwargs: Any) -> ServerConfig:
    """The uvicorn config for ``app`` with the timeouts and limits of ``server`` (the
    ``server`` section of :class:`serving.settings.ServingSettings`; defaults when None);
    ``kwargs`` are passed on (host, port, ...)."""
    s = server or ServerSettings()
    return ServerConfig(
        app,
        header_timeout=s.header_timeout_seconds,
        timeout_keep_alive=s.keep_alive_seconds,
        h11_max_incomplete_event_size=s.max_header_bytes,
        limit_concurrency=s.limit_concurrency,
        timeout_graceful_shutdown=s.graceful_shutdown_seconds,
        backlog=s.backlog,
        **kwargs,
    )
