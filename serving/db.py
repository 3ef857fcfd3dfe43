"""The database the campaigns live in: campaigns, their members, suppression lists and so the
contact history -- state that must survive restarts and be shared by every replica.

SQLAlchemy 2 over SQLite by default (one file, nothing to start: ``campaigns/campaigns.db``) or
PostgreSQL by URL (``RECSYS_CAMPAIGN_DB=postgresql+psycopg://user@host/db``); the schema is made
and moved forward by Alembic migrations (:mod:`serving.migrations`), run by :func:`open_db` before
the server answers (idempotent: a database at the newest revision is left as is; on PostgreSQL an
advisory lock keeps replicas starting together from migrating twice).

Tables
------
``campaigns``            one row per campaign: what was asked (target, filters, size, holdout share,
                         send date, window), its lineage (model version, data as-of date, seed,
                         parameters), what the contact policy removed, the group sizes
``campaign_members``     per campaign and member: ``grp`` (treated / holdout), ``arm`` (champion /
                         challenger, for an A/B campaign), the model's score and purchase
                         probability, the rank, and for picks campaigns the member's picks (JSON:
                         ``[[product_id, score, reason_code, reason], ...]``)
``suppression_lists``    uploaded opt-out lists (name, channel, counts of the upload)
``suppressed_members``   their members; every list that leaves the server is filtered by all of them
``audit_entries``        the audit trail: one row per member list that left the server (an audience
                         as JSON or CSV, batch picks, a campaign export) -- who (the key's id and
                         scope), through which route and format, what was asked (``request``), how
                         many rows left, the model version, and which server process answered;
                         never the members themselves (:mod:`serving.audit`)
"""

from __future__ import annotations

import threading
from datetime import date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    create_engine,
    event,
    text,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from recsys.errors import InputError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
ID_LENGTH = 200


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Campaign(Base):
    __tablename__ = "campaigns"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(20))  # audience | picks | imported
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=False))
    created_by: Mapped[str] = mapped_column(String(100))
    target: Mapped[dict[str, Any]] = mapped_column(JSON)
    filters: Mapped[dict[str, Any]] = mapped_column(JSON)
    size: Mapped[int | None] = mapped_column(Integer, nullable=True)  # None: everyone matching
    holdout_share: Mapped[float] = mapped_column(Float)
    seed: Mapped[int] = mapped_column(Integer)
    send_date: Mapped[date] = mapped_column(Date, index=True)
    window_days: Mapped[int] = mapped_column(Integer)
    window_end: Mapped[date] = mapped_column(Date, index=True)  # exclusive
    model_version: Mapped[str | None] = mapped_column(String(200), nullable=True)
    data_as_of: Mapped[date | None] = mapped_column(Date, nullable=True)
    lineage: Mapped[dict[str, Any]] = mapped_column(JSON)
    policy: Mapped[dict[str, Any]] = mapped_column(JSON)
    n_eligible: Mapped[int] = mapped_column(Integer)
    n_treated: Mapped[int] = mapped_column(Integer)
    n_holdout: Mapped[int] = mapped_column(Integer)
    observational: Mapped[bool] = mapped_column(Boolean, default=False)
    exports: Mapped[int] = mapped_column(Integer, default=0)
    scope: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class CampaignMember(Base):
    __tablename__ = "campaign_members"

    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True)
    member_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    grp: Mapped[str] = mapped_column(String(10))  # treated | holdout
    arm: Mapped[str | None] = mapped_column(String(20), nullable=True)
    rank: Mapped[int | None] = mapped_column(Integer, nullable=True)
    score: Mapped[float | None] = mapped_column(Float, nullable=True)
    probability: Mapped[float | None] = mapped_column(Float, nullable=True)
    picks: Mapped[str | None] = mapped_column(Text, nullable=True)

    __table_args__ = (Index("ix_campaign_members_member", "member_id", "grp"),)


class SuppressionList(Base):
    __tablename__ = "suppression_lists"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    channel: Mapped[str | None] = mapped_column(String(100), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=False))
    created_by: Mapped[str] = mapped_column(String(100))
    rows: Mapped[int] = mapped_column(Integer)
    members: Mapped[int] = mapped_column(Integer)
    unknown: Mapped[int] = mapped_column(Integer)
    duplicates: Mapped[int] = mapped_column(Integer)
    invalid: Mapped[int] = mapped_column(Integer)


class SuppressedMember(Base):
    __tablename__ = "suppressed_members"

    list_id: Mapped[int] = mapped_column(ForeignKey("suppression_lists.id", ondelete="CASCADE"), primary_key=True)
    member_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True, index=True)


class AuditEntry(Base):
    __tablename__ = "audit_entries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    time: Mapped[datetime] = mapped_column(DateTime(timezone=False), index=True)  # UTC, when the list left
    key_id: Mapped[str] = mapped_column(String(100))
    scope: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    route: Mapped[str] = mapped_column(String(100))
    format: Mapped[str] = mapped_column(String(10))  # json | csv
    rows: Mapped[int] = mapped_column(Integer)
    model_version: Mapped[str | None] = mapped_column(String(200), nullable=True)
    request: Mapped[dict[str, Any]] = mapped_column(JSON)  # what was asked (product, filters, size, k, campaign ...)
    origin: Mapped[str | None] = mapped_column(String(200), nullable=True)  # host:pid of the server process

    __table_args__ = (Index("ix_audit_entries_key_id", "key_id", "time"), Index("ix_audit_entries_route", "route", "time"))


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never wait for the one writer
    # FULL: a commit is on disk when it returns (WAL + NORMAL may lose the last commits on a power
    # cut) -- an audit entry is committed before the member list it records leaves the server
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=30000")  # workers of one server share the file
    cursor.close()


def make_engine(url: str) -> Engine:
    """An engine for ``url`` (``sqlite:///path`` or ``postgresql+psycopg://...``); nothing connects
    until it is used."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise InputError(f"campaign database {url!r} is not a database URL; use sqlite:///path/campaigns.db "
                         "or postgresql+psycopg://user@host:5432/db") from None
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(parsed, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if parsed.get_backend_name() != "postgresql":
        raise InputError(f"campaign database: {parsed.get_backend_name()} is not supported; use SQLite or PostgreSQL")
    return create_engine(parsed, pool_pre_ping=True)


def alembic_config(engine: Engine) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (Alembic ``upgrade``); a database already there is untouched."""
    from alembic import command

    command.upgrade(alembic_config(engine), revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Take the schema back to ``revision`` (``base``: no tables)."""
    from alembic import command

    command.downgrade(alembic_config(engine), revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


class Database:
    """An engine and a session factory over one campaign database, migrated on open."""

    def __init__(self, url: str):
        self.url = url
        self.engine = make_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._lock = threading.Lock()
        self._ready = False

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def ensure(self) -> Database:
        """Migrate once per process (the first request that needs the database)."""
        if self._ready:
            return self
        with self._lock:
            if not self._ready:
                parsed = make_url(self.url)
                if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
                    Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
                try:
                    if current_revision(self.engine) != head_revision():
                        migrate(self.engine)
                except OperationalError as exc:
                    from serving.errors import NotReadyError

                    raise NotReadyError(f"the campaign database cannot be reached ({redacted(self.url)}): "
                                        f"{str(exc.orig).splitlines()[0]}") from None
                self._ready = True
        return self

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()


def redacted(url: str) -> str:
    """``url`` without its password, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparsable URL>"
