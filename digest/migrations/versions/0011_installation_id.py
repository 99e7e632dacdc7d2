"""installation id: a random part in every Message-ID (issue 16, section 6)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""

import base64
import secrets

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "installation",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("installation_id", sa.String(16), nullable=False),
    )
    # 40 random bits as 8 lowercase base32 characters, made once per database.
    value = base64.b32encode(secrets.token_bytes(5)).decode("ascii").lower()
    op.bulk_insert(table, [{"id": 1, "installation_id": value}])


def downgrade() -> None:
    op.drop_table("installation")
