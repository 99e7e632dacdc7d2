"""returned_mail (bounces, complaints, unsubscribes by any path) and webhook_seen (replays)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

import digest.models

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "returned_mail",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("at", digest.models.UTCDateTime(), nullable=False),
        sa.Column(
            "subscriber_id",
            sa.Integer(),
            sa.ForeignKey("subscriber.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("edition_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False, server_default=""),
    )
    op.create_index("ix_returned_mail_at", "returned_mail", ["at"])
    op.create_index("ix_returned_mail_subscriber_at", "returned_mail", ["subscriber_id", "at"])
    op.create_table(
        "webhook_seen",
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("at", digest.models.UTCDateTime(), nullable=False),
    )
    op.create_index("ix_webhook_seen_at", "webhook_seen", ["at"])


def downgrade() -> None:
    op.drop_index("ix_webhook_seen_at", "webhook_seen")
    op.drop_table("webhook_seen")
    op.drop_index("ix_returned_mail_subscriber_at", "returned_mail")
    op.drop_index("ix_returned_mail_at", "returned_mail")
    op.drop_table("returned_mail")
