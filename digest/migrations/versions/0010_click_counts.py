"""click counts, reader clicks, open counts, sunset notices (issue 19)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

import digest.models

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("edition_variant") as batch:
        batch.add_column(
            sa.Column("click_tracking", sa.String(16), nullable=False, server_default="off")
        )
    op.create_table(
        "click_count",
        sa.Column(
            "edition_id",
            sa.Integer(),
            sa.ForeignKey("edition.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column(
            "article_id",
            sa.Integer(),
            sa.ForeignKey("article.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("hour", digest.models.UTCDateTime(), primary_key=True),
        sa.Column("human", sa.Integer(), nullable=False),
        sa.Column("machine", sa.Integer(), nullable=False),
    )
    op.create_table(
        "open_count",
        sa.Column(
            "edition_id",
            sa.Integer(),
            sa.ForeignKey("edition.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("hour", digest.models.UTCDateTime(), primary_key=True),
        sa.Column("human", sa.Integer(), nullable=False),
        sa.Column("machine", sa.Integer(), nullable=False),
    )
    op.create_table(
        "reader_click",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "subscriber_id",
            sa.Integer(),
            sa.ForeignKey("subscriber.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "edition_id",
            sa.Integer(),
            sa.ForeignKey("edition.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "article_id",
            sa.Integer(),
            sa.ForeignKey("article.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("clicked_at", digest.models.UTCDateTime(), nullable=False),
    )
    op.create_index("ix_reader_click_clicked_at", "reader_click", ["clicked_at"])
    op.create_index(
        "ix_reader_click_subscriber_at", "reader_click", ["subscriber_id", "clicked_at"]
    )
    op.create_table(
        "sunset_notice",
        sa.Column(
            "subscriber_id",
            sa.Integer(),
            sa.ForeignKey("subscriber.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("asked_at", digest.models.UTCDateTime(), nullable=False),
        sa.Column("kept_at", digest.models.UTCDateTime(), nullable=True),
        sa.Column("ended_at", digest.models.UTCDateTime(), nullable=True),
    )
    op.create_index("ix_sunset_notice_ended_at", "sunset_notice", ["ended_at"])


def downgrade() -> None:
    op.drop_index("ix_sunset_notice_ended_at", "sunset_notice")
    op.drop_table("sunset_notice")
    op.drop_index("ix_reader_click_subscriber_at", "reader_click")
    op.drop_index("ix_reader_click_clicked_at", "reader_click")
    op.drop_table("reader_click")
    op.drop_table("open_count")
    op.drop_table("click_count")
    with op.batch_alter_table("edition_variant") as batch:
        batch.drop_column("click_tracking")
