"""subscriber.last_notice_at: throttle sign-up emails per address

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

import digest.models

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("subscriber") as batch:
        batch.add_column(sa.Column("last_notice_at", digest.models.UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("subscriber") as batch:
        batch.drop_column("last_notice_at")
