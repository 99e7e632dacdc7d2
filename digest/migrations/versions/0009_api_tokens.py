"""API tokens (stored as hashes) and API jobs (bulk imports and their reports)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

import digest.models

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_token",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(60), nullable=False, unique=True),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("created_at", digest.models.UTCDateTime(), nullable=False),
        sa.Column("last_used_at", digest.models.UTCDateTime(), nullable=True),
        sa.Column("revoked_at", digest.models.UTCDateTime(), nullable=True),
    )
    op.create_table(
        "api_job",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("token_name", sa.String(60), nullable=False),
        sa.Column("created_at", digest.models.UTCDateTime(), nullable=False),
        sa.Column("finished_at", digest.models.UTCDateTime(), nullable=True),
        sa.Column("report", sa.Text(), nullable=False, server_default="{}"),
    )


def downgrade() -> None:
    op.drop_table("api_job")
    op.drop_table("api_token")
