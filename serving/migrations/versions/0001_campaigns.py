"""Campaigns, their members (treated / holdout, arms, picks), suppression lists.

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "campaigns",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("created_by", sa.String(100), nullable=False),
        sa.Column("target", sa.JSON(), nullable=False),
        sa.Column("filters", sa.JSON(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=True),
        sa.Column("holdout_share", sa.Float(), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("send_date", sa.Date(), nullable=False),
        sa.Column("window_days", sa.Integer(), nullable=False),
        sa.Column("window_end", sa.Date(), nullable=False),
        sa.Column("model_version", sa.String(200), nullable=True),
        sa.Column("data_as_of", sa.Date(), nullable=True),
        sa.Column("lineage", sa.JSON(), nullable=False),
        sa.Column("policy", sa.JSON(), nullable=False),
        sa.Column("n_eligible", sa.Integer(), nullable=False),
        sa.Column("n_treated", sa.Integer(), nullable=False),
        sa.Column("n_holdout", sa.Integer(), nullable=False),
        sa.Column("observational", sa.Boolean(), nullable=False),
        sa.Column("exports", sa.Integer(), nullable=False),
        sa.Column("scope", sa.JSON(), nullable=True),
    )
    op.create_index("ix_campaigns_send_date", "campaigns", ["send_date"])
    op.create_index("ix_campaigns_window_end", "campaigns", ["window_end"])
    op.create_table(
        "campaign_members",
        sa.Column("campaign_id", sa.Integer(), sa.ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("member_id", sa.String(200), primary_key=True),
        sa.Column("grp", sa.String(10), nullable=False),
        sa.Column("arm", sa.String(20), nullable=True),
        sa.Column("rank", sa.Integer(), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("probability", sa.Float(), nullable=True),
        sa.Column("picks", sa.Text(), nullable=True),
    )
    op.create_index("ix_campaign_members_member", "campaign_members", ["member_id", "grp"])
    op.create_table(
        "suppression_lists",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("channel", sa.String(100), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("created_by", sa.String(100), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("members", sa.Integer(), nullable=False),
        sa.Column("unknown", sa.Integer(), nullable=False),
        sa.Column("duplicates", sa.Integer(), nullable=False),
        sa.Column("invalid", sa.Integer(), nullable=False),
    )
    op.create_table(
        "suppressed_members",
        sa.Column("list_id", sa.Integer(), sa.ForeignKey("suppression_lists.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("member_id", sa.String(200), primary_key=True),
    )
    op.create_index("ix_suppressed_members_member_id", "suppressed_members", ["member_id"])


def downgrade() -> None:
    op.drop_table("suppressed_members")
    op.drop_table("suppression_lists")
    op.drop_table("campaign_members")
    op.drop_table("campaigns")
