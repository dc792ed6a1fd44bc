"""Initial schema: patients, slides, fields, cells, counts, models, runs.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SLIDE_STATUSES = "('queued', 'running', 'done', 'failed')"


def _utc_datetime() -> sa.DateTime:
    # smearflow.db.models.UTCDateTime stores exactly this type; its
    # conversion to aware UTC happens in Python only.
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    _create_model_versions_and_patients()
    _create_slides()
    _create_results()
    _create_runs()


def _create_model_versions_and_patients() -> None:
    """The model versions (at most one active) and the patients."""
    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("architecture", sa.String(length=64), nullable=False),
        sa.Column("path", sa.Text(), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("created_at", _utc_datetime(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_versions")),
        sa.UniqueConstraint("name", name=op.f("uq_model_versions_name")),
    )
    op.create_index(
        "uq_model_versions_one_active",
        "model_versions",
        ["active"],
        unique=True,
        sqlite_where=sa.text("active"),
        postgresql_where=sa.text("active"),
    )

    op.create_table(
        "patients",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("patient_code", sa.String(length=128), nullable=False),
        sa.Column("created_at", _utc_datetime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_patients")),
        sa.UniqueConstraint("patient_code", name=op.f("uq_patients_patient_code")),
    )


def _create_slides() -> None:
    """The slides, with their patient and the model that analysed them."""
    op.create_table(
        "slides",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("slide_code", sa.String(length=128), nullable=False),
        sa.Column("patient_id", sa.Integer(), nullable=True),
        sa.Column("folder", sa.Text(), nullable=True),
        sa.Column("collected_at", _utc_datetime(), nullable=True),
        sa.Column("notes", sa.Text(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("rbc_count", sa.Integer(), nullable=True),
        sa.Column("platelet_count", sa.Integer(), nullable=True),
        sa.Column("model_version_id", sa.Integer(), nullable=True),
        sa.Column("created_at", _utc_datetime(), nullable=False),
        sa.Column("updated_at", _utc_datetime(), nullable=False),
        sa.Column("started_at", _utc_datetime(), nullable=True),
        sa.Column("finished_at", _utc_datetime(), nullable=True),
        sa.CheckConstraint(f"status IN {SLIDE_STATUSES}", name=op.f("ck_slides_status")),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_slides_model_version_id_model_versions"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["patient_id"],
            ["patients.id"],
            name=op.f("fk_slides_patient_id_patients"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_slides")),
        sa.UniqueConstraint("slide_code", name=op.f("uq_slides_slide_code")),
    )
    op.create_index(op.f("ix_slides_patient_id"), "slides", ["patient_id"], unique=False)
    op.create_index(op.f("ix_slides_status"), "slides", ["status"], unique=False)


def _create_results() -> None:
    """A slide's fields, their cells and the slide's counts."""
    op.create_table(
        "fields",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("slide_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("width_px", sa.Integer(), nullable=False),
        sa.Column("height_px", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.CheckConstraint(f"status IN {SLIDE_STATUSES}", name=op.f("ck_fields_status")),
        sa.ForeignKeyConstraint(
            ["slide_id"], ["slides.id"], name=op.f("fk_fields_slide_id_slides"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fields")),
    )
    op.create_index(op.f("ix_fields_slide_id"), "fields", ["slide_id"], unique=False)

    op.create_table(
        "cells",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("field_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("label", sa.String(length=64), nullable=True),
        sa.Column("confidence", sa.Float(), nullable=True),
        sa.Column("bbox_row_min", sa.Integer(), nullable=False),
        sa.Column("bbox_col_min", sa.Integer(), nullable=False),
        sa.Column("bbox_row_max", sa.Integer(), nullable=False),
        sa.Column("bbox_col_max", sa.Integer(), nullable=False),
        sa.Column("centroid_row", sa.Float(), nullable=False),
        sa.Column("centroid_col", sa.Float(), nullable=False),
        sa.Column("area_px", sa.Integer(), nullable=False),
        sa.Column("touches_border", sa.Boolean(), nullable=False),
        sa.Column("visible_fraction", sa.Float(), nullable=False),
        sa.Column("counted", sa.Boolean(), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=True),
        sa.CheckConstraint("kind IN ('wbc', 'rbc', 'platelet')", name=op.f("ck_cells_kind")),
        sa.ForeignKeyConstraint(
            ["field_id"], ["fields.id"], name=op.f("fk_cells_field_id_fields"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_cells_model_version_id_model_versions"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cells")),
    )
    op.create_index(op.f("ix_cells_field_id"), "cells", ["field_id"], unique=False)

    op.create_table(
        "slide_counts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("slide_id", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(length=64), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_slide_counts_model_version_id_model_versions"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["slide_id"],
            ["slides.id"],
            name=op.f("fk_slide_counts_slide_id_slides"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_slide_counts")),
        sa.UniqueConstraint("slide_id", "label", name=op.f("uq_slide_counts_slide_id_label")),
    )


def _create_runs() -> None:
    """Benchmark runs and results, and training runs."""
    op.create_table(
        "benchmark_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", _utc_datetime(), nullable=False),
        sa.Column("finished_at", _utc_datetime(), nullable=True),
        sa.Column("run_folder", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "status IN ('running', 'done', 'failed')", name=op.f("ck_benchmark_runs_status")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_benchmark_runs")),
    )

    op.create_table(
        "benchmark_results",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("architecture", sa.String(length=64), nullable=False),
        sa.Column("fold", sa.Integer(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("accuracy", sa.Float(), nullable=True),
        sa.Column("macro_f1", sa.Float(), nullable=True),
        sa.Column("seconds", sa.Float(), nullable=True),
        sa.CheckConstraint("fold >= -1", name=op.f("ck_benchmark_results_fold")),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["benchmark_runs.id"],
            name=op.f("fk_benchmark_results_run_id_benchmark_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_benchmark_results")),
    )
    op.create_index(
        op.f("ix_benchmark_results_run_id"), "benchmark_results", ["run_id"], unique=False
    )

    op.create_table(
        "training_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("started_at", _utc_datetime(), nullable=False),
        sa.Column("finished_at", _utc_datetime(), nullable=True),
        sa.Column("dataset", sa.Text(), nullable=True),
        sa.Column("architecture", sa.String(length=64), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("candidate_model_version_id", sa.Integer(), nullable=True),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["candidate_model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_training_runs_candidate_model_version_id_model_versions"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_training_runs")),
    )


def downgrade() -> None:
    op.drop_table("training_runs")
    op.drop_index(op.f("ix_benchmark_results_run_id"), table_name="benchmark_results")
    op.drop_table("benchmark_results")
    op.drop_table("benchmark_runs")
    op.drop_table("slide_counts")
    op.drop_index(op.f("ix_cells_field_id"), table_name="cells")
    op.drop_table("cells")
    op.drop_index(op.f("ix_fields_slide_id"), table_name="fields")
    op.drop_table("fields")
    op.drop_index(op.f("ix_slides_status"), table_name="slides")
    op.drop_index(op.f("ix_slides_patient_id"), table_name="slides")
    op.drop_table("slides")
    op.drop_table("patients")
    op.drop_index("uq_model_versions_one_active", table_name="model_versions")
    op.drop_table("model_versions")
