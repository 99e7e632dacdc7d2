"""heartbeats of beat and workers, alert mail state, an index for first/last message

Revision ID: 0006
Revises: 0004
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

import digest.models

revision = "0006"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "heartbeat",
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", digest.models.UTCDateTime(), nullable=False),
        sa.Column("seen_at", digest.models.UTCDateTime(), nullable=False),
        sa.Column("stopped_at", digest.models.UTCDateTime(), nullable=True),
    )
    op.create_table(
        "alert_state",
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("notified", sa.Boolean(), nullable=False),
        sa.Column("mailed_at", digest.models.UTCDateTime(), nullable=True),
        sa.Column("changed_at", digest.models.UTCDateTime(), nullable=False),
    )
    op.create_index("ix_delivery_edition_sent", "delivery", ["edition_id", "sent_at"])


def downgrade() -> None:
    op.drop_index("ix_delivery_edition_sent", "delivery")
    op.drop_table("alert_state")
    op.drop_table("heartbeat")
