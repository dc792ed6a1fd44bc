"""SQLAlchemy tables: slides, their fields, cells and counts; models; runs.

Layout decisions
----------------
- ``slides.slide_code`` and ``patients.patient_code`` are the ids the outside
  world uses (``SlideInfo.slide_id`` / ``SlideInfo.patient_id``); the integer
  ``id`` columns are internal.
- ``slide_counts`` holds one row per classifier label of the slide's latest
  stored result (``SlideResult.counts``, zeros included), unique on
  ``(slide_id, label)``. The red-cell and platelet totals of the segmenter are
  columns on ``slides`` (``rbc_count``, ``platelet_count``; ``NULL`` until a
  result is stored), so a classifier label called ``platelet`` never collides
  with the segmenter's platelet total.
- Cells keep their box, centroid, area and border flags, not their masks.
- Every datetime is timezone-aware UTC (:class:`UTCDateTime`); SQLite, which
  stores no offset, gets it back on read.
- ``model_versions.active``: at most one row is true, enforced by a partial
  unique index on both SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

SLIDE_STATUSES = ("queued", "running", "done", "partial", "failed")
"""Allowed values of ``slides.status``: ``partial`` is a slide with counts from
some fields while others failed or were flagged."""

FINISHED_STATUSES = ("done", "partial", "failed")
"""Slide statuses after which a slide task has nothing left to do."""

FIELD_STATUSES = ("done", "flagged", "failed")
"""Allowed values of ``fields.status``: ``flagged`` is a field the quality
gate left out of the counts (its reason in ``error``)."""

EVENT_KINDS = ("reassigned", "analysis-failed", "requeued", "lease-expired", "gave-up")
"""Allowed values of ``slide_events.kind``."""

CELL_KINDS = ("wbc", "rbc", "platelet")
"""Allowed values of ``cells.kind``."""

RUN_STATUSES = ("running", "done", "failed")
"""Allowed values of ``benchmark_runs.status``."""

TRAINING_OUTCOMES = ("running", "activated", "kept-active", "failed")
"""Allowed values of ``training_runs.outcome``: ``running`` until the run ends."""

SIGNOFF_ACTIONS = ("verified", "reopened")
"""Allowed values of ``slide_signoffs.action``."""

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utc_now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A ``DateTime(timezone=True)`` that always hands back aware UTC datetimes.

    Naive datetimes written to it are taken to be UTC already.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _in(column: str, values: tuple[str, ...]) -> str:
    quoted = ", ".join(f"'{v}'" for v in values)
    return f"{column} IN ({quoted})"


class Base(DeclarativeBase):
    """Declarative base; its ``metadata`` is what the migrations must match."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


class Patient(Base):
    __tablename__ = "patients"

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_code: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)

    slides: Mapped[list[Slide]] = relationship(back_populates="patient")

    def __repr__(self) -> str:
        return f"Patient(patient_code={self.patient_code!r})"


class ModelVersion(Base):
    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    architecture: Mapped[str] = mapped_column(String(64))
    path: Mapped[str | None] = mapped_column(Text)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    # Retention removes old candidates' folders; the row stays for the history.
    pruned_at: Mapped[datetime | None]

    def __repr__(self) -> str:
        return f"ModelVersion(name={self.name!r}, active={self.active!r})"


class ModelActivation(Base):
    """Who made which model version active, when and why (automatic or by hand)."""

    __tablename__ = "model_activations"

    id: Mapped[int] = mapped_column(primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"), index=True)
    previous_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id", ondelete="SET NULL"))
    at: Mapped[datetime] = mapped_column(default=utc_now)
    actor: Mapped[str] = mapped_column(String(255))
    reason: Mapped[str] = mapped_column(Text)
    automatic: Mapped[bool] = mapped_column(Boolean, default=False)

    model_version: Mapped[ModelVersion] = relationship(foreign_keys=[model_version_id])
    previous_version: Mapped[ModelVersion | None] = relationship(foreign_keys=[previous_version_id])

    def __repr__(self) -> str:
        return f"ModelActivation(actor={self.actor!r}, reason={self.reason!r})"


# At most one active model: a unique index over the rows where active is true.
Index(
    "uq_model_versions_one_active",
    ModelVersion.active,
    unique=True,
    sqlite_where=text("active"),
    postgresql_where=text("active"),
)


class Slide(Base):
    __tablename__ = "slides"
    __table_args__ = (CheckConstraint(_in("status", SLIDE_STATUSES), name="status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    slide_code: Mapped[str] = mapped_column(String(128), unique=True)
    patient_id: Mapped[int | None] = mapped_column(
        ForeignKey("patients.id", ondelete="SET NULL"), index=True
    )
    folder: Mapped[str | None] = mapped_column(Text)
    collected_at: Mapped[datetime | None]
    notes: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    rbc_count: Mapped[int | None] = mapped_column(Integer)
    platelet_count: Mapped[int | None] = mapped_column(Integer)
    model_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(default=utc_now, onupdate=utc_now)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # The lease of a running slide: its holder renews heartbeat_at; an expired
    # lease lets reconciliation hand the slide to another worker.
    queued_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    holder: Mapped[str | None] = mapped_column(String(255))
    task_id: Mapped[str | None] = mapped_column(String(64))
    requeues: Mapped[int] = mapped_column(Integer, default=0)
    done_dir: Mapped[str | None] = mapped_column(Text)
    failed_dir: Mapped[str | None] = mapped_column(Text)

    patient: Mapped[Patient | None] = relationship(back_populates="slides")
    model_version: Mapped[ModelVersion | None] = relationship()
    fields: Mapped[list[Field]] = relationship(
        back_populates="slide", cascade="all, delete-orphan", passive_deletes=True
    )
    counts: Mapped[list[SlideCount]] = relationship(
        back_populates="slide", cascade="all, delete-orphan", passive_deletes=True
    )

    def __repr__(self) -> str:
        return f"Slide(slide_code={self.slide_code!r}, status={self.status!r})"


class Field(Base):
    __tablename__ = "fields"
    __table_args__ = (CheckConstraint(_in("status", FIELD_STATUSES), name="status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    slide_id: Mapped[int] = mapped_column(ForeignKey("slides.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(Text)
    width_px: Mapped[int] = mapped_column(Integer, default=0)
    height_px: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)
    quality: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    slide: Mapped[Slide] = relationship(back_populates="fields")
    cells: Mapped[list[Cell]] = relationship(
        back_populates="field", cascade="all, delete-orphan", passive_deletes=True
    )

    def __repr__(self) -> str:
        return f"Field(name={self.name!r}, status={self.status!r})"


class Cell(Base):
    __tablename__ = "cells"
    __table_args__ = (CheckConstraint(_in("kind", CELL_KINDS), name="kind"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    field_id: Mapped[int] = mapped_column(ForeignKey("fields.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    label: Mapped[str | None] = mapped_column(String(64))
    confidence: Mapped[float | None] = mapped_column(Float)
    # The three most probable classes, [[label, probability], ...], and the threshold decision.
    top_classes: Mapped[list[Any] | None] = mapped_column(JSON)
    uncertain: Mapped[bool] = mapped_column(Boolean, default=False)
    bbox_row_min: Mapped[int] = mapped_column(Integer)
    bbox_col_min: Mapped[int] = mapped_column(Integer)
    bbox_row_max: Mapped[int] = mapped_column(Integer)
    bbox_col_max: Mapped[int] = mapped_column(Integer)
    centroid_row: Mapped[float] = mapped_column(Float)
    centroid_col: Mapped[float] = mapped_column(Float)
    area_px: Mapped[int] = mapped_column(Integer)
    touches_border: Mapped[bool] = mapped_column(Boolean, default=False)
    visible_fraction: Mapped[float] = mapped_column(Float, default=1.0)
    counted: Mapped[bool] = mapped_column(Boolean, default=True)
    model_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL")
    )
    # Review: the reviewer's class (a white-cell class or "artefact") beside the model's
    # ``label``, which is never overwritten; every change is also a row of cell_reviews.
    review_label: Mapped[str | None] = mapped_column(String(64))
    reviewed_by: Mapped[str | None] = mapped_column(String(255))
    reviewed_at: Mapped[datetime | None]

    field: Mapped[Field] = relationship(back_populates="cells")

    def __repr__(self) -> str:
        return f"Cell(kind={self.kind!r}, label={self.label!r})"


class SlideCount(Base):
    __tablename__ = "slide_counts"
    __table_args__ = (UniqueConstraint("slide_id", "label"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    slide_id: Mapped[int] = mapped_column(ForeignKey("slides.id", ondelete="CASCADE"))
    label: Mapped[str] = mapped_column(String(64))
    count: Mapped[int] = mapped_column(Integer)
    model_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL")
    )

    slide: Mapped[Slide] = relationship(back_populates="counts")

    def __repr__(self) -> str:
        return f"SlideCount(label={self.label!r}, count={self.count!r})"


class SlideEvent(Base):
    """Something that happened to a slide besides its analysis: an audit trail."""

    __tablename__ = "slide_events"
    __table_args__ = (CheckConstraint(_in("kind", EVENT_KINDS), name="kind"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    slide_id: Mapped[int] = mapped_column(ForeignKey("slides.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(default=utc_now)
    kind: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text)
    actor: Mapped[str | None] = mapped_column(String(255))

    def __repr__(self) -> str:
        return f"SlideEvent(kind={self.kind!r}, detail={self.detail!r})"


class RejectedFolder(Base):
    """A folder that never became a slide: unreadable, invalid, or in conflict with a stored slide."""

    __tablename__ = "rejected_folders"

    id: Mapped[int] = mapped_column(primary_key=True)
    folder: Mapped[str] = mapped_column(Text)
    slide_code: Mapped[str | None] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text)
    moved_to: Mapped[str | None] = mapped_column(Text)
    rejected_at: Mapped[datetime] = mapped_column(default=utc_now, index=True)

    def __repr__(self) -> str:
        return f"RejectedFolder(folder={self.folder!r}, reason={self.reason!r})"


class BenchmarkRun(Base):
    __tablename__ = "benchmark_runs"
    __table_args__ = (CheckConstraint(_in("status", RUN_STATUSES), name="status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16), default="running")
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(default=utc_now)
    finished_at: Mapped[datetime | None]
    run_folder: Mapped[str | None] = mapped_column(Text)
    # The task that runs it, and how many deliveries it has had (a killed run is redelivered).
    task_id: Mapped[str | None] = mapped_column(String(64), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)

    results: Mapped[list[BenchmarkResult]] = relationship(
        back_populates="run",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="BenchmarkResult.id",
    )

    def __repr__(self) -> str:
        return f"BenchmarkRun(name={self.name!r}, status={self.status!r})"


class BenchmarkResult(Base):
    __tablename__ = "benchmark_results"
    __table_args__ = (CheckConstraint("fold >= -1", name="fold"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(
        ForeignKey("benchmark_runs.id", ondelete="CASCADE"), index=True
    )
    architecture: Mapped[str] = mapped_column(String(64))
    fold: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    accuracy: Mapped[float | None] = mapped_column(Float)
    macro_f1: Mapped[float | None] = mapped_column(Float)
    seconds: Mapped[float | None] = mapped_column(Float)

    run: Mapped[BenchmarkRun] = relationship(back_populates="results")

    def __repr__(self) -> str:
        return f"BenchmarkResult(architecture={self.architecture!r}, fold={self.fold!r})"


class TrainingRun(Base):
    """One retraining: created when it starts, updated when it ends, whatever the outcome."""

    __tablename__ = "training_runs"
    __table_args__ = (CheckConstraint(_in("outcome", TRAINING_OUTCOMES), name="outcome"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    started_at: Mapped[datetime] = mapped_column(default=utc_now)
    finished_at: Mapped[datetime | None]
    dataset: Mapped[str | None] = mapped_column(Text)
    architecture: Mapped[str | None] = mapped_column(String(64))
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    candidate_model_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL")
    )
    outcome: Mapped[str] = mapped_column(String(32))
    error: Mapped[str | None] = mapped_column(Text)
    task_id: Mapped[str | None] = mapped_column(String(64), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    candidate_dir: Mapped[str | None] = mapped_column(Text)
    baseline: Mapped[str | None] = mapped_column(Text)
    metric: Mapped[str | None] = mapped_column(String(32))
    candidate_figure: Mapped[float | None] = mapped_column(Float)
    baseline_figure: Mapped[float | None] = mapped_column(Float)
    reason: Mapped[str | None] = mapped_column(Text)
    gate_split_id: Mapped[int | None] = mapped_column(ForeignKey("gate_splits.id", ondelete="SET NULL"))

    candidate_model_version: Mapped[ModelVersion | None] = relationship()

    def __repr__(self) -> str:
        return f"TrainingRun(architecture={self.architecture!r}, outcome={self.outcome!r})"


class GateSplit(Base):
    """A fixed, versioned set of images that judges retraining candidates against the active model.

    No retraining trains or validates on these images, and a model whose own
    ``splits.json`` shows it trained on one of them is not judged on the set.
    A new version is made only when the set can no longer be used (its images
    vanished, or a model to judge trained on them); the run says so.
    """

    __tablename__ = "gate_splits"

    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[int] = mapped_column(Integer, unique=True)
    dataset: Mapped[str] = mapped_column(Text)
    images: Mapped[list[Any]] = mapped_column(JSON)
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)

    def __repr__(self) -> str:
        return f"GateSplit(version={self.version!r}, images={len(self.images or [])})"


class CellReview(Base):
    """One reviewer's change of one cell's class: the history of a slide's review.

    ``cell_id`` is set to ``NULL`` when a re-analysis replaces the slide's
    cells; the row stays, with the field name and the model's class, so the
    history of a slide outlives its cells.
    """

    __tablename__ = "cell_reviews"

    id: Mapped[int] = mapped_column(primary_key=True)
    slide_id: Mapped[int] = mapped_column(ForeignKey("slides.id", ondelete="CASCADE"), index=True)
    cell_id: Mapped[int | None] = mapped_column(ForeignKey("cells.id", ondelete="SET NULL"), index=True)
    field_name: Mapped[str] = mapped_column(Text)
    model_label: Mapped[str | None] = mapped_column(String(64))
    previous_label: Mapped[str | None] = mapped_column(String(64))
    label: Mapped[str] = mapped_column(String(64))
    reviewer: Mapped[str] = mapped_column(String(255))
    at: Mapped[datetime] = mapped_column(default=utc_now, index=True)

    def __repr__(self) -> str:
        return f"CellReview(previous_label={self.previous_label!r}, label={self.label!r}, reviewer={self.reviewer!r})"


class SlideSignoff(Base):
    """A slide signed off as verified, or reopened for review: who, when, and the differential signed.

    A sign-off applies to the analysis that finished at ``analysis_finished_at``
    (the slide's ``finished_at`` then); a later re-analysis makes it stale, and
    the slide reads as pre-classified again.
    """

    __tablename__ = "slide_signoffs"
    __table_args__ = (CheckConstraint(_in("action", SIGNOFF_ACTIONS), name="action"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    slide_id: Mapped[int] = mapped_column(ForeignKey("slides.id", ondelete="CASCADE"), index=True)
    action: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(255))
    at: Mapped[datetime] = mapped_column(default=utc_now, index=True)
    analysis_finished_at: Mapped[datetime | None]
    counts: Mapped[dict[str, Any]] = mapped_column(default=dict)
    note: Mapped[str | None] = mapped_column(Text)

    def __repr__(self) -> str:
        return f"SlideSignoff(action={self.action!r}, actor={self.actor!r})"
