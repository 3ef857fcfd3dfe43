"""``recsys audit ...``: the audit trail of member lists that left the server, read from the
database it lives in (``--db``, default ``$RECSYS_CAMPAIGN_DB`` or ``sqlite:///campaigns/campaigns.db``,
the same as ``recsys serve --campaign-db``), and a JSON-lines trail of an older version brought in."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from recsys.errors import RecsysError

app = typer.Typer(no_args_is_help=True, help="The audit trail of member lists that left the server.")
err = Console(stderr=True)

DbOpt = Annotated[str | None, typer.Option("--db", help="Database URL (default: $RECSYS_CAMPAIGN_DB or "
                                           "sqlite:///campaigns/campaigns.db).")]


def _fail(exc: Exception) -> None:
    err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def _audit(db: str | None):  # noqa: ANN202 - serving.audit is imported here, not at start-up
    from serving.audit import AuditLog
    from serving.campaign_cli import _db

    return AuditLog(_db(db))


@app.command("list")
def list_cmd(
    db: DbOpt = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many entries.")] = 50,
    key: Annotated[str | None, typer.Option(help="Only entries of this API key id.")] = None,
    route: Annotated[list[str] | None, typer.Option(help="Only entries of this route (repeatable).")] = None,
) -> None:
    """Entries newest first, one JSON object a line (every route: audiences, batch picks, campaign exports)."""
    import orjson

    try:
        for n, entry in enumerate(_audit(db).newest_first(key, routes=route), start=1):
            sys.stdout.buffer.write(orjson.dumps(entry) + b"\n")
            if n >= limit:
                break
        sys.stdout.flush()
    except RecsysError as exc:
        _fail(exc)


@app.command("import")
def import_cmd(
    file: Annotated[Path, typer.Argument(help="A JSON-lines audit file an older version wrote (--audit-log).")],
    db: DbOpt = None,
) -> None:
    """Bring an older JSON-lines audit trail into the database (times kept, never twice)."""
    from serving.audit import import_lines

    if not file.is_file():
        _fail(RecsysError(f"{file}: no such file"))
    try:
        with open(file, "rb") as fh:
            result = import_lines(_audit(db), fh)
    except RecsysError as exc:
        _fail(exc)
    err.print(f"{result.imported:,} entries imported, {result.already:,} already there, "
              f"{result.unreadable:,} unreadable lines"
              + (f" (lines {', '.join(map(str, result.unreadable_lines))})" if result.unreadable else ""),
              highlight=False)
