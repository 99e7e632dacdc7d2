"""indexes for the console's readers list; editions an operator took off the archive

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("edition") as batch:
        batch.add_column(
            sa.Column("unpublished", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    # The readers list pages by (column, id) keys; a reader's last delivery is looked up
    # per subscriber.
    op.create_index("ix_subscriber_created_id", "subscriber", ["created_at", "id"])
    op.create_index("ix_subscriber_status_id", "subscriber", ["status", "id"])
    op.create_index("ix_subscriber_timezone", "subscriber", ["timezone"])
    op.create_index("ix_delivery_subscriber_sent", "delivery", ["subscriber_id", "sent_at"])


def downgrade() -> None:
    op.drop_index("ix_delivery_subscriber_sent", "delivery")
    op.drop_index("ix_subscriber_timezone", "subscriber")
    op.drop_index("ix_subscriber_status_id", "subscriber")
    op.drop_index("ix_subscriber_created_id", "subscriber")
    with op.batch_alter_table("edition") as batch:
        batch.drop_column("unpublished")
