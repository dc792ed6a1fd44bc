"""Review: the reviewer's class beside the model's on each cell, the history of changes, sign-offs.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SIGNOFF_ACTIONS = "('verified', 'reopened')"


def _utc_datetime() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("cells") as batch:
        batch.add_column(sa.Column("review_label", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("reviewed_by", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("reviewed_at", _utc_datetime(), nullable=True))

    op.create_table(
        "cell_reviews",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("slide_id", sa.Integer(), nullable=False),
        sa.Column("cell_id", sa.Integer(), nullable=True),
        sa.Column("field_name", sa.Text(), nullable=False),
        sa.Column("model_label", sa.String(length=64), nullable=True),
        sa.Column("previous_label", sa.String(length=64), nullable=True),
        sa.Column("label", sa.String(length=64), nullable=False),
        sa.Column("reviewer", sa.String(length=255), nullable=False),
        sa.Column("at", _utc_datetime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["slide_id"], ["slides.id"], name=op.f("fk_cell_reviews_slide_id_slides"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["cell_id"], ["cells.id"], name=op.f("fk_cell_reviews_cell_id_cells"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cell_reviews")),
    )
    op.create_index(op.f("ix_cell_reviews_slide_id"), "cell_reviews", ["slide_id"], unique=False)
    op.create_index(op.f("ix_cell_reviews_cell_id"), "cell_reviews", ["cell_id"], unique=False)
    op.create_index(op.f("ix_cell_reviews_at"), "cell_reviews", ["at"], unique=False)

    op.create_table(
        "slide_signoffs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("slide_id", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=255), nullable=False),
        sa.Column("at", _utc_datetime(), nullable=False),
        sa.Column("analysis_finished_at", _utc_datetime(), nullable=True),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.CheckConstraint(f"action IN {SIGNOFF_ACTIONS}", name=op.f("ck_slide_signoffs_action")),
        sa.ForeignKeyConstraint(
            ["slide_id"], ["slides.id"], name=op.f("fk_slide_signoffs_slide_id_slides"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_slide_signoffs")),
    )
    op.create_index(op.f("ix_slide_signoffs_slide_id"), "slide_signoffs", ["slide_id"], unique=False)
    op.create_index(op.f("ix_slide_signoffs_at"), "slide_signoffs", ["at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_slide_signoffs_at"), table_name="slide_signoffs")
    op.drop_index(op.f("ix_slide_signoffs_slide_id"), table_name="slide_signoffs")
    op.drop_table("slide_signoffs")
    op.drop_index(op.f("ix_cell_reviews_at"), table_name="cell_reviews")
    op.drop_index(op.f("ix_cell_reviews_cell_id"), table_name="cell_reviews")
    op.drop_index(op.f("ix_cell_reviews_slide_id"), table_name="cell_reviews")
    op.drop_table("cell_reviews")
    with op.batch_alter_table("cells") as batch:
        batch.drop_column("reviewed_at")
        batch.drop_column("reviewed_by")
        batch.drop_column("review_label")
