"""Alembic environment of the campaign database: run by :func:`serving.db.migrate` with the
engine in ``config.attributes["engine"]`` (no alembic.ini; the URL never lives in a file)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from serving.db import Base

config = context.config
target_metadata = Base.metadata

# a fixed key: replicas starting together against one PostgreSQL migrate one after the other
ADVISORY_LOCK = 7_017_017


def run_migrations_online() -> None:
    engine = config.attributes["engine"]
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text(f"SELECT pg_advisory_lock({ADVISORY_LOCK})"))
            connection.commit()
        try:
            context.configure(connection=connection, target_metadata=target_metadata,
                              render_as_batch=connection.dialect.name == "sqlite")
            with context.begin_transaction():
                context.run_migrations()
        finally:
            if connection.dialect.name == "postgresql":
                connection.execute(text(f"SELECT pg_advisory_unlock({ADVISORY_LOCK})"))
                connection.commit()


if context.is_offline_mode():
    raise SystemExit("the campaign database is migrated online only (serving.db.migrate)")
run_migrations_online()
