"""edition_variant.slot_nonce: per-rendering random slot markers

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30

Variants rendered before this revision carry the old fixed markers; they are rewritten
to markers with a fresh nonce so one splicing path serves old and new rows.
"""

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_OLD = ("name_suffix", "unsubscribe_url", "preferences_url", "view_url")


def upgrade() -> None:
    with op.batch_alter_table("edition_variant") as batch:
        batch.add_column(sa.Column("slot_nonce", sa.String(64), nullable=False, server_default=""))
    bind = op.get_bind()
    variant = sa.table(
        "edition_variant",
        sa.column("id", sa.Integer),
        sa.column("html", sa.Text),
        sa.column("text", sa.Text),
        sa.column("slot_nonce", sa.String),
    )
    for row in bind.execute(sa.select(variant.c.id, variant.c.html, variant.c.text)).all():
        nonce = secrets.token_hex(16)
        html, text = row.html, row.text
        for name in _OLD:
            old = f"DGSTx{name.replace('_', 'x').upper()}xDGST"
            new = f"DGST{nonce}{name.replace('_', '').upper()}"
            html, text = html.replace(old, new), text.replace(old, new)
        bind.execute(
            variant.update()
            .where(variant.c.id == row.id)
            .values(html=html, text=text, slot_nonce=nonce)
        )


def downgrade() -> None:
    with op.batch_alter_table("edition_variant") as batch:
        batch.drop_column("slot_nonce")
