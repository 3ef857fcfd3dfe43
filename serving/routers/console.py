"""The web console at ``/console``: static HTML, CSS and ES modules from ``serving/static``.

No build step and nothing from a CDN: the page calls the JSON API with the API key the user
signs in with (kept in ``sessionStorage``, sent as ``X-API-Key``). The files themselves need no
key; every piece of data behind them does, and the API checks the key's role.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

router = APIRouter(include_in_schema=False)


@router.get("/console")
async def console_root() -> RedirectResponse:
    return RedirectResponse("/console/", status_code=307)


def mount(app: FastAPI) -> None:
    """Serve the console: ``/console/`` is ``index.html``; the other files next to it."""
    app.include_router(router)
    app.mount("/console", StaticFiles(directory=STATIC_DIR, html=True), name="console")
