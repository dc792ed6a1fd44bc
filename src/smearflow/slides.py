"""Slide folders: one folder is one slide, every image in it one field of view.

An optional ``slide.json`` in the folder describes the slide::

    {"slide_id": "S-2026-0001", "patient_id": "P-0042",
     "collected_at": "2026-11-25T08:30:00+00:00", "notes": "free text"}

Without it the slide id is the folder name and the patient is unknown.
Hidden files, ``slide.json`` itself and files that are not JPEG, PNG, TIFF or
BMP images are ignored with a warning.

A slide folder is untrusted input. It is read without following symbolic
links (a linked slide folder or ``slide.json`` is refused; a linked field is
refused by :func:`smearflow.imageio.read_rgb` and fails alone), its
``slide.json`` is validated with a schema (:class:`SlideMetadata`), and the
number of fields it may hold is bounded.
"""

from __future__ import annotations

import logging
import os
import stat
from datetime import date, datetime
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, StringConstraints, ValidationError

from smearflow.errors import BadSlideError
from smearflow.imageio import IMAGE_SUFFIXES, display_name
from smearflow.types import SlideInfo

logger = logging.getLogger(__name__)

SLIDE_FILE = "slide.json"
SLIDE_KEYS = ("slide_id", "patient_id", "collected_at", "notes")
# Files a slide scanner or a desktop may leave beside the fields.
SIDECAR_FILES = frozenset({SLIDE_FILE, "error.txt"})

MAX_CODE_LENGTH = 64
"""Longest slide or patient id accepted."""

MAX_NOTES_LENGTH = 2000
"""Longest ``notes`` text accepted."""

MAX_SLIDE_FILE_BYTES = 64 * 1024
"""Largest ``slide.json`` read."""

DEFAULT_MAX_FIELDS = 2000
"""Most field images one slide folder may hold."""


def check_code(value: str) -> str:
    """Validate a slide or patient id: short printable text, no path separator.

    Raises
    ------
    ValueError
        When the id is empty, too long, not printable or holds ``/`` or ``\\``.
    """
    if not value:
        raise ValueError("must not be empty")
    if len(value) > MAX_CODE_LENGTH:
        raise ValueError(f"must be at most {MAX_CODE_LENGTH} characters, got {len(value)}")
    if not value.isprintable():
        raise ValueError("must hold printable characters only (no control characters or undecodable bytes)")
    if "/" in value or "\\" in value or value in (".", ".."):
        raise ValueError("must not contain a path separator or be '.' or '..'")
    return value


def _check_notes(value: str) -> str:
    if any(not (ch.isprintable() or ch in "\n\t") for ch in value):
        raise ValueError("must not contain control characters other than newlines and tabs")
    return value


def _check_collected_at(value: str) -> str:
    try:
        datetime.fromisoformat(value)
    except ValueError:
        try:
            date.fromisoformat(value)
        except ValueError:
            raise ValueError("must be an ISO 8601 date or date-time such as 2026-11-25T08:30:00+00:00") from None
    return value


Code = Annotated[str, StringConstraints(strip_whitespace=True, strict=True), AfterValidator(check_code)]
Notes = Annotated[str, StringConstraints(max_length=MAX_NOTES_LENGTH, strict=True), AfterValidator(_check_notes)]
CollectedAt = Annotated[str, StringConstraints(strip_whitespace=True, strict=True), AfterValidator(_check_collected_at)]


class SlideMetadata(BaseModel):
    """The schema of ``slide.json``; every key is optional."""

    model_config = ConfigDict(extra="allow", frozen=True)

    slide_id: Code | None = None
    patient_id: Code | None = None
    collected_at: CollectedAt | None = None
    notes: Notes | None = None


def validation_message(error: ValidationError) -> str:
    """A pydantic error as one line: ``key: problem (received ...)`` per violation."""
    parts = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "slide.json"
        message = item["msg"].removeprefix("Value error, ")
        parts.append(f"{key}: {message} (received {item['input']!r})")
    return "; ".join(parts)


def parse_slide_metadata(data: object, source: str) -> SlideMetadata:
    """Validate the content of a ``slide.json``.

    Parameters
    ----------
    data : object
        The parsed JSON.
    source : str
        Named in errors (the file).

    Raises
    ------
    BadSlideError
        When ``data`` is not an object or a key breaks :class:`SlideMetadata`.
    """
    if not isinstance(data, dict):
        raise BadSlideError(f"{source}: expected a JSON object, got {type(data).__name__}")
    try:
        metadata = SlideMetadata.model_validate(data)
    except ValidationError as error:
        raise BadSlideError(f"{source}: {validation_message(error)}") from None
    if metadata.model_extra:
        logger.warning("%s: ignoring unknown key(s) %s", source, sorted(metadata.model_extra))
    return metadata


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _read_slide_json(path: Path) -> SlideMetadata:
    import json

    source = display_name(path)
    if stat.S_ISLNK(os.lstat(path).st_mode):
        raise BadSlideError(f"{source}: is a symbolic link; links are not followed")
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(descriptor, "rb") as file:
            raw = file.read(MAX_SLIDE_FILE_BYTES + 1)
    except OSError as error:
        raise BadSlideError(f"{source}: cannot be read ({error.strerror})") from None
    if len(raw) > MAX_SLIDE_FILE_BYTES:
        raise BadSlideError(f"{source}: larger than {MAX_SLIDE_FILE_BYTES} bytes")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BadSlideError(f"{source}: not valid JSON ({error})") from None
    return parse_slide_metadata(data, source)


def list_field_files(folder: Path) -> list[Path]:
    """Image files of a slide folder, sorted by name; others are logged and skipped.

    Symbolic links with an image suffix are listed: reading one fails, so the
    field is recorded as failed with that reason instead of vanishing.
    """
    fields = []
    with os.scandir(folder) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            path = Path(entry.path)
            if entry.name in SIDECAR_FILES:
                continue
            if entry.name.startswith("."):
                logger.warning("%s: ignoring hidden file", display_name(path))
            elif entry.is_dir(follow_symlinks=False):
                logger.warning("%s: ignoring sub-folder (a slide folder holds images only)", display_name(path))
            elif path.suffix.lower() not in IMAGE_SUFFIXES:
                logger.warning("%s: ignoring non-image file", display_name(path))
            else:
                fields.append(path)
    return fields


def read_slide_folder(folder: str | Path, *, max_fields: int = DEFAULT_MAX_FIELDS) -> SlideInfo:
    """Describe a slide folder: its id, patient, and field image files.

    Parameters
    ----------
    folder : str or Path
    max_fields : int
        A folder with more field images is refused.

    Raises
    ------
    BadSlideError
        When the path does not exist, is a symbolic link or not a folder,
        holds no image or more than ``max_fields``, its ``slide.json`` is
        invalid, or (without ``slide.json``) its name is not a valid slide id.
    ValueError
        When ``max_fields`` is below 1.
    """
    if max_fields < 1:
        raise ValueError(f"max_fields must be at least 1. Received: max_fields={max_fields}")
    folder = Path(os.path.abspath(folder))
    shown = display_name(folder)
    info = _lstat(folder)
    if info is None:
        raise BadSlideError(f"{shown}: slide folder does not exist")
    if stat.S_ISLNK(info.st_mode):
        raise BadSlideError(f"{shown}: is a symbolic link; slide folders are not followed")
    if not stat.S_ISDIR(info.st_mode):
        raise BadSlideError(f"{shown}: not a folder (a slide is a folder of field images)")
    slide_file = folder / SLIDE_FILE
    metadata = _read_slide_json(slide_file) if _lstat(slide_file) is not None else SlideMetadata()
    fields = list_field_files(folder)
    if not fields:
        raise BadSlideError(f"{shown}: slide folder holds no image (JPEG, PNG, TIFF or BMP)")
    if len(fields) > max_fields:
        raise BadSlideError(f"{shown}: holds {len(fields)} images; a slide may hold at most {max_fields} fields")
    return SlideInfo(
        slide_id=metadata.slide_id or _slide_id_from_name(folder),
        patient_id=metadata.patient_id,
        collected_at=metadata.collected_at,
        notes=metadata.notes,
        folder=str(folder),
        field_paths=tuple(str(p) for p in fields),
    )


def _slide_id_from_name(folder: Path) -> str:
    try:
        return check_code(folder.name.strip())
    except ValueError as error:
        raise BadSlideError(
            f"{display_name(folder)}: the folder name cannot be a slide id ({error}); "
            "name the slide in slide.json (slide_id)"
        ) from None
