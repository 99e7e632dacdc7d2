"""edition.queue_after: an edition's readers queued a chunk at a time (issue 20)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("edition") as batch:
        batch.add_column(sa.Column("queue_after", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("edition") as batch:
        batch.drop_column("queue_after")
