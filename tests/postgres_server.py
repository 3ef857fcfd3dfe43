"""A real PostgreSQL server (Debian's package, installed by ``make postgres``) started once per test
session on a free port in a temporary folder by ``pytest-postgresql``'s executor, from the
installed binaries; never the system service.

PostgreSQL refuses to run as root (CI and this machine run the tests as root): then ``pg_ctl`` is
run as the unprivileged ``postgres`` account Debian's package creates, through a two-line wrapper
in the temporary folder, which that account owns.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def pg_ctl_binary() -> str:
    """The installed ``pg_ctl`` (Debian keeps it under /usr/lib/postgresql/VERSION/bin); skips the
    test, or fails it under CI, when there is none."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    path = found[-1] if found else shutil.which("pg_ctl")
    if path is None:
        message = "PostgreSQL is not installed (`make postgres` installs Debian's package)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A started server; yields a SQLAlchemy URL of an empty database ``recsys_test`` on it."""
    from pytest_postgresql.executors.proc import PostgreSQLExecutor
    from pytest_postgresql.janitor import DatabaseJanitor

    pg_ctl = pg_ctl_binary()
    folder = Path(tempfile.mkdtemp(prefix="recsys-postgres-"))
    try:
        executable = pg_ctl
        if os.geteuid() == 0:
            import pwd

            account = pwd.getpwnam("postgres")
            os.chown(folder, account.pw_uid, account.pw_gid)
            wrapper = folder / "pg_ctl"
            wrapper.write_text(f'#!/bin/sh\nexec runuser -u postgres -- "{pg_ctl}" "$@"\n', encoding="utf-8")
            wrapper.chmod(0o755)
            executable = str(wrapper)
        port = _free_port()
        executor = PostgreSQLExecutor(
            executable=executable, host="127.0.0.1", port=port, datadir=str(folder / "data"),
            unixsocketdir=str(folder), logfile=str(folder / "postgresql.log"), startparams="-w",
            dbname="recsys_test", user="recsys", postgres_options="-c fsync=off -c full_page_writes=off",
        )
        with executor:
            executor.wait_for_postgres()
            with DatabaseJanitor(user="recsys", host="127.0.0.1", port=port, dbname="recsys_test",
                                 version=executor.version):
                yield f"postgresql+psycopg://recsys@127.0.0.1:{port}/recsys_test"
    finally:
        shutil.rmtree(folder, ignore_errors=True)
