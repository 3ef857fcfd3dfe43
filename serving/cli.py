"""``recsys serve``: run the HTTP server with uvicorn (the lead wires :func:`serve` into the CLI).

Settings travel to the worker processes through ``RECSYS_*`` environment variables, so one and
several workers start the same way (``uvicorn --factory serving.app:create_app_from_env``).
BLAS / OpenMP are pinned to one thread before numpy is imported by any worker.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

import uvicorn

from recsys.errors import InputError


class _TcpConfig(uvicorn.Config):
    """A listener bound with ``proto=IPPROTO_TCP`` (see :func:`run_workers`); module-level so the
    worker processes can unpickle the config."""

    def bind_socket(self) -> socket.socket:
        sock = super().bind_socket()
        if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.proto == 0:
            sock = socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, fileno=sock.detach())
            sock.set_inheritable(True)
        return sock


def serve(
    bundle: Path | None = None,
    registered_model: str | None = None,
    alias: str = "champion",
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    *,
    api_keys_file: Path | None = None,
    events_dir: Path | None = None,
    audit_log: Path | None = None,
    tracking_uri: str | None = None,
    auth_disabled: bool = False,
    log_level: str = "info",
    access_log: bool = False,
) -> None:
    """Serve ``bundle`` (a folder) or the ``alias`` version of ``registered_model`` until stopped.

    Parameters
    ----------
    bundle, registered_model, alias
        The model: a local bundle folder, or a registered model name and alias / version.
    host, port, workers
        Where to listen; one worker per core is the usual choice (each loads the model; live
        events reach every worker through the shared events file).
    api_keys_file
        TOML / JSON file of hashed keys (see :mod:`serving.keys`); required unless
        ``auth_disabled`` (development only) or ``RECSYS_API_KEYS`` is set.
    events_dir, audit_log
        Where live purchase events and the audience-export audit trail are written.
    access_log
        uvicorn's line per request. Off by default: ``/metrics`` counts every request by route and
        status, and writing the line cost about a fifth of the server's throughput (measured with
        ``experiments/bench_serving.py``, one worker, 16 connections: a bare endpoint 3,140 ->
        4,010 req/s, picks 2,745 -> 3,433 req/s without it).

    Raises
    ------
    InputError
        When the settings are inconsistent (both or neither model source, no keys, ...).

    Examples
    --------
    >>> serve(Path("bundles/latest"), api_keys_file=Path("keys.toml"), port=8080, workers=2)  # doctest: +SKIP
    """
    if (bundle is None) == (not registered_model):
        raise InputError("serve needs exactly one of a bundle folder or a registered model name")
    env = {
        "RECSYS_BUNDLE": str(Path(bundle).resolve()) if bundle is not None else None,
        "RECSYS_REGISTERED_MODEL": registered_model,
        "RECSYS_ALIAS": alias,
        "RECSYS_API_KEYS_FILE": str(Path(api_keys_file).resolve()) if api_keys_file is not None else None,
        "RECSYS_EVENTS_DIR": str(Path(events_dir).resolve()) if events_dir is not None else None,
        "RECSYS_AUDIT_LOG": str(Path(audit_log).resolve()) if audit_log is not None else None,
        "RECSYS_MLFLOW_TRACKING_URI": tracking_uri,
        "RECSYS_AUTH_DISABLED": "true" if auth_disabled else None,
    }
    for key, value in env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")

    from pydantic import ValidationError

    from serving.app import create_app_from_env
    from serving.settings import ServingSettings

    try:
        ServingSettings()  # fail here, with the message, rather than in every worker
        if workers <= 1:
            app = create_app_from_env()  # also checks the keys before listening
        else:
            create_app_from_env()
    except ValidationError as exc:
        raise InputError(f"server settings: {exc.errors()[0]['msg']}") from None

    if workers <= 1:
        uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=access_log)
    else:
        run_workers("serving.app:create_app_from_env", host=host, port=port, workers=workers, log_level=log_level,
                    access_log=access_log)


def run_workers(app: str, *, host: str, port: int, workers: int, log_level: str = "info",
                access_log: bool = True) -> None:
    """``uvicorn.run(app, factory=True, workers=workers)`` with a TCP listener that keeps
    ``TCP_NODELAY`` on accepted connections.

    uvicorn binds the shared listener of ``--workers N`` with ``proto=0``; accepted sockets
    inherit it and asyncio only sets ``TCP_NODELAY`` when ``proto == IPPROTO_TCP``, so every
    keep-alive response waits for the client's delayed ACK (~40 ms on Linux; uvicorn issue #3149).
    Measured with 16 connections: a bare endpoint fell from ~3,000 req/s to ~360 req/s.
    """
    from uvicorn.supervisors import Multiprocess

    config = _TcpConfig(app, factory=True, host=host, port=port, workers=workers, log_level=log_level,
                       access_log=access_log)
    with contextlib.suppress(KeyboardInterrupt):
        Multiprocess(config, sockets=[config.bind_socket()]).run()
