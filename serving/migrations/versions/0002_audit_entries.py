"""The audit trail in the shared database: one row per member list that left the server.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_entries",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("time", sa.DateTime(), nullable=False),
        sa.Column("key_id", sa.String(100), nullable=False),
        sa.Column("scope", sa.JSON(), nullable=True),
        sa.Column("route", sa.String(100), nullable=False),
        sa.Column("format", sa.String(10), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("model_version", sa.String(200), nullable=True),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("origin", sa.String(200), nullable=True),
    )
    op.create_index("ix_audit_entries_time", "audit_entries", ["time"])
    op.create_index("ix_audit_entries_key_id", "audit_entries", ["key_id", "time"])
    op.create_index("ix_audit_entries_route", "audit_entries", ["route", "time"])


def downgrade() -> None:
    op.drop_table("audit_entries")
