"""Request bodies bounded before anything reads them: size (413) and time to arrive (408).

:class:`BodyLimitMiddleware` is pure ASGI, outside routing and the key check:

* a ``Content-Length`` over ``max_bytes`` is answered 413 at once, before the application (or
  uvicorn, which buffers at most 64 KB of an unread body) takes in a byte of it;
* a body without a length (chunked) is counted as it streams in, and the read that passes the
  limit raises a 413 there: FastAPI re-raises an ``HTTPException`` from the body read, so the
  route answers it in the API's error shape and the rest is never buffered;
* a body that has not fully arrived ``read_timeout`` seconds after the application first asked
  for it is answered 408 (a client trickling a body holds a request slot otherwise).

Both answers close the connection: the unread rest of the body would otherwise be drained first.
Starlette's own ``RequestBodyLimitMiddleware`` (FastAPI's ``max_body_size``) waits until the body
is read and answers in plain text; this one decides from the header and answers like every other
error (``{"detail": ...}``).

The key is checked before the body is read by :class:`serving.deps.KeyFirstRoute`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio
import orjson
from starlette.exceptions import HTTPException

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CLOSE = {"Connection": "close"}


def too_large(limit: int, size: int | None = None, setting: str = "RECSYS_MAX_BODY_BYTES") -> str:
    got = f"{size:,} bytes" if size is not None else "more"
    return (f"request body too large: {got}, the limit is {limit:,} bytes ({setting}); "
            "send fewer items per request")


def content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class BodyLimitMiddleware:
    """413 for a body over ``max_bytes``, 408 for one slower than ``read_timeout`` seconds (see
    the module docstring)."""

    def __init__(self, app: ASGIApp, max_bytes: int, read_timeout: float | None = None,
                 upload_paths: frozenset[str] = frozenset(), max_upload_bytes: int | None = None):
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout = read_timeout
        # member lists uploaded whole (suppression lists, an imported campaign's recipients) have
        # a limit of their own: a programme's opt-out list is millions of ids
        self.upload_paths = upload_paths
        self.max_upload_bytes = max_upload_bytes if max_upload_bytes is not None else max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = scope.get("path") in self.upload_paths
        limit = self.max_upload_bytes if upload else self.max_bytes
        setting = "RECSYS_MAX_UPLOAD_BYTES" if upload else "RECSYS_MAX_BODY_BYTES"
        length = content_length(scope)
        if length is not None and length > limit:
            await _answer(send, 413, too_large(limit, length, setting))
            return
        received = 0
        done = False
        deadline: float | None = None

        def count(message: Message) -> Message:
            nonlocal received, done
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, too_large(limit, None, setting), headers=CLOSE)
                done = not message.get("more_body", False)
            else:
                done = True  # http.disconnect
            return message

        async def limited() -> Message:
            nonlocal deadline
            if done or self.read_timeout is None:  # once the body is in: waiting for a disconnect
                return count(await receive()) if not done else await receive()
            if deadline is None:
                deadline = time.monotonic() + self.read_timeout
            with anyio.move_on_after(max(deadline - time.monotonic(), 0.0)):
                return count(await receive())
            raise HTTPException(408, f"request body not received within {self.read_timeout:g} s "
                                     "(RECSYS_SERVER__BODY_TIMEOUT_SECONDS); send it at once", headers=CLOSE)

        await self.app(scope, limited, send)


async def _answer(send: Send, status: int, detail: str) -> None:
    body = orjson.dumps({"detail": detail})
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]})
    await send({"type": "http.response.body", "body": body})
