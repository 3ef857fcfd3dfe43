"""The campaign database's schema comes from its Alembic migrations, on SQLite and a real PostgreSQL:
migrating is idempotent, the migrated schema is the ORM's (no difference autogenerate would write),
and the data survives a new process (a new engine) -- what replicas and restarts rely on."""

from __future__ import annotations

from datetime import date, datetime

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select

from serving.db import Base, Campaign, Database, current_revision, downgrade, head_revision, migrate


def test_migrations_make_the_orm_schema_and_are_idempotent(campaign_db_url: str) -> None:
    db = Database(campaign_db_url).ensure()
    try:
        assert current_revision(db.engine) == head_revision()
        migrate(db.engine)  # again: nothing to do
        with db.engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        assert {"campaigns", "campaign_members", "suppression_lists", "suppressed_members", "audit_entries"} <= set(
            inspect(db.engine).get_table_names())
        downgrade(db.engine, "base")  # and down again
        assert not {"campaigns", "audit_entries"} & set(inspect(db.engine).get_table_names())
        migrate(db.engine)
    finally:
        db.dispose()


def test_what_one_process_stores_another_reads(campaign_db_url: str) -> None:
    first = Database(campaign_db_url).ensure()
    with first.sessions.begin() as s:
        s.add(Campaign(name="会员日", kind="picks", created_at=datetime(2024, 5, 1, 9), created_by="k", target={"type": "picks"},
                       filters={"lifecycle": ["active"]}, size=None, holdout_share=0.1, seed=7, send_date=date(2024, 5, 1),
                       window_days=30, window_end=date(2024, 5, 31), model_version="m/v1", data_as_of=date(2024, 5, 1),
                       lineage={"seed": 7}, policy={}, n_eligible=10, n_treated=9, n_holdout=1, observational=False,
                       exports=0))
    first.dispose()
    second = Database(campaign_db_url).ensure()
    try:
        with second.sessions() as s:
            c = s.scalars(select(Campaign)).one()
        assert (c.name, c.filters, c.send_date, c.lineage) == ("会员日", {"lifecycle": ["active"]}, date(2024, 5, 1), {"seed": 7})
    finally:
        second.dispose()
