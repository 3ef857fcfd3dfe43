"""Giving a replaced model's memory back to the operating system.

A reload builds the new state in a worker thread while the old one serves, then drops the old
one. Its arrays, tables and FAISS indexes are freed, but glibc keeps freed blocks in its per-thread
arenas, so the process's resident memory climbed with every reload (measured on Ta-Feng: 667 MB
at start, 957 MB after one reload, 1,111 MB after 11) although only one state was alive.
``malloc_trim(0)`` after the swap returns those pages: 616-631 MB over 8 reloads in the same
measurement (``experiments/bench_robustness.py`` repeats it over 100 reloads of a running server).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import time
import weakref
from typing import Any

import anyio

log = logging.getLogger("serving.memory")


def _malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


_TRIM = _malloc_trim()


def release_memory() -> bool:
    """Collect reference cycles, then hand free heap pages back to the OS (glibc only);
    returns whether the allocator offers trimming. Seconds of work at most: call it off the event loop."""
    gc.collect()
    if _TRIM is None:
        return False
    try:
        _TRIM(0)  # 1 when pages were returned, 0 when there was nothing to return
        return True
    except OSError:  # pragma: no cover - a libc without the symbol after all
        log.debug("malloc_trim failed", exc_info=True)
        return False


async def release_when_dropped(ref: weakref.ref[Any] | None, within: float) -> bool:
    """Wait (up to ``within`` seconds) until the object behind ``ref`` -- a replaced state -- is
    no longer referenced, then :func:`release_memory` in a worker thread; returns whether it was
    gone by then. Requests in flight and the events tail (which waits on the state it follows for
    up to a poll interval) may hold the old state a moment after the swap: trimming before they let
    go would return nothing."""
    deadline = time.monotonic() + within
    while ref is not None and ref() is not None and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    gone = ref is None or ref() is None
    await anyio.to_thread.run_sync(release_memory)  # cycles collected there too
    return gone
