"""Slide safety: partial and flagged statuses, leases, archive folders, events, rejected folders.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_STATUSES = "('queued', 'running', 'done', 'failed')"
SLIDE_STATUSES = "('queued', 'running', 'done', 'partial', 'failed')"
FIELD_STATUSES = "('done', 'flagged', 'failed')"
EVENT_KINDS = "('reassigned', 'analysis-failed', 'requeued', 'lease-expired', 'gave-up')"


def _utc_datetime() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("slides") as batch:
        batch.drop_constraint(op.f("ck_slides_status"), type_="check")
        batch.create_check_constraint(op.f("ck_slides_status"), f"status IN {SLIDE_STATUSES}")
        batch.add_column(sa.Column("queued_at", _utc_datetime(), nullable=True))
        batch.add_column(sa.Column("heartbeat_at", _utc_datetime(), nullable=True))
        batch.add_column(sa.Column("holder", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("task_id", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("requeues", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("done_dir", sa.Text(), nullable=True))
        batch.add_column(sa.Column("failed_dir", sa.Text(), nullable=True))
    with op.batch_alter_table("slides") as batch:
        batch.alter_column("requeues", server_default=None)
    with op.batch_alter_table("fields") as batch:
        batch.drop_constraint(op.f("ck_fields_status"), type_="check")
        batch.create_check_constraint(op.f("ck_fields_status"), f"status IN {FIELD_STATUSES}")
        batch.add_column(sa.Column("quality", sa.JSON(), nullable=True))

    op.create_table(
        "slide_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("slide_id", sa.Integer(), nullable=False),
        sa.Column("at", _utc_datetime(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(length=255), nullable=True),
        sa.CheckConstraint(f"kind IN {EVENT_KINDS}", name=op.f("ck_slide_events_kind")),
        sa.ForeignKeyConstraint(
            ["slide_id"], ["slides.id"], name=op.f("fk_slide_events_slide_id_slides"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_slide_events")),
    )
    op.create_index(op.f("ix_slide_events_slide_id"), "slide_events", ["slide_id"], unique=False)

    op.create_table(
        "rejected_folders",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("folder", sa.Text(), nullable=False),
        sa.Column("slide_code", sa.String(length=128), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("moved_to", sa.Text(), nullable=True),
        sa.Column("rejected_at", _utc_datetime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rejected_folders")),
    )
    op.create_index(op.f("ix_rejected_folders_rejected_at"), "rejected_folders", ["rejected_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_rejected_folders_rejected_at"), table_name="rejected_folders")
    op.drop_table("rejected_folders")
    op.drop_index(op.f("ix_slide_events_slide_id"), table_name="slide_events")
    op.drop_table("slide_events")
    op.execute("UPDATE fields SET status = 'failed' WHERE status = 'flagged'")
    with op.batch_alter_table("fields") as batch:
        batch.drop_column("quality")
        batch.drop_constraint(op.f("ck_fields_status"), type_="check")
        batch.create_check_constraint(op.f("ck_fields_status"), f"status IN {OLD_STATUSES}")
    op.execute("UPDATE slides SET status = 'done' WHERE status = 'partial'")
    with op.batch_alter_table("slides") as batch:
        for column in ("failed_dir", "done_dir", "requeues", "task_id", "holder", "heartbeat_at", "queued_at"):
            batch.drop_column(column)
        batch.drop_constraint(op.f("ck_slides_status"), type_="check")
        batch.create_check_constraint(op.f("ck_slides_status"), f"status IN {OLD_STATUSES}")
