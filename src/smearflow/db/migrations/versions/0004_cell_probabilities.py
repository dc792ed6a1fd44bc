"""Cells keep their three most probable classes and whether they are uncertain.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("cells") as batch:
        batch.add_column(sa.Column("top_classes", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("uncertain", sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table("cells") as batch:
        batch.alter_column("uncertain", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("cells") as batch:
        batch.drop_column("uncertain")
        batch.drop_column("top_classes")
