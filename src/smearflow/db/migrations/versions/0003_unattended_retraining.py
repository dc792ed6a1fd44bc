"""Unattended retraining: run attempts, candidate and baseline figures, gate splits, activations, pruning.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TRAINING_OUTCOMES = "('running', 'activated', 'kept-active', 'failed')"


def _utc_datetime() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "gate_splits",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("dataset", sa.Text(), nullable=False),
        sa.Column("images", sa.JSON(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", _utc_datetime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_gate_splits")),
        sa.UniqueConstraint("version", name=op.f("uq_gate_splits_version")),
    )
    op.create_table(
        "model_activations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("previous_version_id", sa.Integer(), nullable=True),
        sa.Column("at", _utc_datetime(), nullable=False),
        sa.Column("actor", sa.String(length=255), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("automatic", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_model_activations_model_version_id_model_versions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["previous_version_id"],
            ["model_versions.id"],
            name=op.f("fk_model_activations_previous_version_id_model_versions"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_activations")),
    )
    op.create_index(
        op.f("ix_model_activations_model_version_id"), "model_activations", ["model_version_id"], unique=False
    )
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("pruned_at", _utc_datetime(), nullable=True))
    with op.batch_alter_table("benchmark_runs") as batch:
        batch.add_column(sa.Column("task_id", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        batch.create_index(op.f("ix_benchmark_runs_task_id"), ["task_id"], unique=False)
    with op.batch_alter_table("benchmark_runs") as batch:
        batch.alter_column("attempts", server_default=None)
    with op.batch_alter_table("training_runs") as batch:
        batch.add_column(sa.Column("task_id", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("candidate_dir", sa.Text(), nullable=True))
        batch.add_column(sa.Column("baseline", sa.Text(), nullable=True))
        batch.add_column(sa.Column("metric", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("candidate_figure", sa.Float(), nullable=True))
        batch.add_column(sa.Column("baseline_figure", sa.Float(), nullable=True))
        batch.add_column(sa.Column("reason", sa.Text(), nullable=True))
        batch.add_column(sa.Column("gate_split_id", sa.Integer(), nullable=True))
        batch.create_index(op.f("ix_training_runs_task_id"), ["task_id"], unique=False)
        batch.create_foreign_key(
            op.f("fk_training_runs_gate_split_id_gate_splits"), "gate_splits", ["gate_split_id"], ["id"],
            ondelete="SET NULL",
        )
        batch.create_check_constraint(op.f("ck_training_runs_outcome"), f"outcome IN {TRAINING_OUTCOMES}")
    with op.batch_alter_table("training_runs") as batch:
        batch.alter_column("attempts", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("training_runs") as batch:
        batch.drop_constraint(op.f("ck_training_runs_outcome"), type_="check")
        batch.drop_constraint(op.f("fk_training_runs_gate_split_id_gate_splits"), type_="foreignkey")
        batch.drop_index(op.f("ix_training_runs_task_id"))
        for column in (
            "gate_split_id", "reason", "baseline_figure", "candidate_figure", "metric", "baseline", "candidate_dir",
            "attempts", "task_id",
        ):
            batch.drop_column(column)
    with op.batch_alter_table("benchmark_runs") as batch:
        batch.drop_index(op.f("ix_benchmark_runs_task_id"))
        batch.drop_column("attempts")
        batch.drop_column("task_id")
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("pruned_at")
    op.drop_index(op.f("ix_model_activations_model_version_id"), table_name="model_activations")
    op.drop_table("model_activations")
    op.drop_table("gate_splits")
