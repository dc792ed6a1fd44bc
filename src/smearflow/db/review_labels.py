"""What a reviewer may call a cell, and who may sign: the review station's vocabulary and checks."""

from __future__ import annotations

from smearflow import WBC_CLASSES

ARTEFACT = "artefact"
"""The reviewer's class for a candidate that is not a cell worth counting (debris, a smudge, stain)."""

REVIEW_LABELS = (*WBC_CLASSES, ARTEFACT)
"""What a reviewer may call a white-cell candidate: a PBC class or ``artefact``."""

DIFFERENTIAL_STATES = ("pre-classified", "in review", "verified")
"""Values of a slide's ``differential``."""

MAX_REVIEWER_LENGTH = 64
"""Longest reviewer name accepted."""

REVIEWABLE_STATUSES = ("done", "partial")
"""Slide statuses whose cells can be reviewed and signed off."""


def check_reviewer(reviewer: object) -> str:
    """A reviewer name: printable text of 1 to 64 characters, surrounding spaces removed.

    Raises
    ------
    ValueError
        When the name is not a string, is empty, too long or not printable.
    """
    if not isinstance(reviewer, str) or not reviewer.strip():
        raise ValueError(f"a reviewer name is required. Received: reviewer={reviewer!r}")
    name = reviewer.strip()
    if len(name) > MAX_REVIEWER_LENGTH:
        raise ValueError(f"reviewer must be at most {MAX_REVIEWER_LENGTH} characters. Received {len(name)} characters")
    if not name.isprintable():
        raise ValueError(f"reviewer must be printable text. Received: reviewer={name!r}")
    return name


def check_review_label(label: object) -> str:
    """A reviewer's class: one of ``REVIEW_LABELS``.

    Raises
    ------
    ValueError
        When ``label`` is not one of them.
    """
    if label not in REVIEW_LABELS:
        raise ValueError(f"label must be one of {list(REVIEW_LABELS)}. Received: label={label!r}")
    return label  # type: ignore[return-value]
