"""Slide folders: one folder is one slide, every image in it one field of view.

An optional ``slide.json`` in the folder describes the slide::

    {"slide_id": "S-2026-0001", "patient_id": "P-0042",
     "collected_at": "2026-11-25T08:30:00+00:00", "notes": "free text"}

Without it the slide id is the folder name and the patient is unknown.
Hidden files, ``slide.json`` itself and files that are not JPEG, PNG, TIFF or
BMP images are ignored with a warning.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path

from smearflow.errors import BadSlideError
from smearflow.imageio import IMAGE_SUFFIXES
from smearflow.types import SlideInfo

logger = logging.getLogger(__name__)

SLIDE_FILE = "slide.json"
SLIDE_KEYS = ("slide_id", "patient_id", "collected_at", "notes")
# Files a slide scanner or a desktop may leave beside the fields.
SIDECAR_FILES = frozenset({SLIDE_FILE, "error.txt"})


def list_field_files(folder: Path) -> list[Path]:
    """Image files of a slide folder, sorted by name; others are logged and skipped."""
    fields = []
    for path in sorted(folder.iterdir()):
        if path.name in SIDECAR_FILES:
            continue
        if path.name.startswith("."):
            logger.warning("%s: ignoring hidden file", path)
        elif path.is_dir():
            logger.warning("%s: ignoring sub-folder (a slide folder holds images only)", path)
        elif path.suffix.lower() not in IMAGE_SUFFIXES:
            logger.warning("%s: ignoring non-image file", path)
        else:
            fields.append(path)
    return fields


def _read_slide_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BadSlideError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise BadSlideError(f"{path}: expected a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - set(SLIDE_KEYS))
    if unknown:
        logger.warning("%s: ignoring unknown key(s) %s", path, unknown)
    for key in SLIDE_KEYS:
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            raise BadSlideError(f"{path}: {key} must be a string, got {type(value).__name__} {value!r}")
    if data.get("slide_id") is not None and not data["slide_id"].strip():
        raise BadSlideError(f"{path}: slide_id is empty")
    if data.get("collected_at"):
        try:
            datetime.fromisoformat(data["collected_at"])
        except ValueError:
            raise BadSlideError(
                f"{path}: collected_at must be an ISO 8601 date-time, got {data['collected_at']!r}"
            ) from None
    return data


def read_slide_folder(folder: str | Path) -> SlideInfo:
    """Describe a slide folder: its id, patient, and field image files.

    Raises
    ------
    BadSlideError
        When the path does not exist, is not a folder, holds no image, or
        its ``slide.json`` is invalid.
    """
    folder = Path(folder)
    if not folder.exists():
        raise BadSlideError(f"{folder}: slide folder does not exist")
    if not folder.is_dir():
        raise BadSlideError(f"{folder}: not a folder (a slide is a folder of field images)")
    meta = _read_slide_json(folder / SLIDE_FILE) if (folder / SLIDE_FILE).is_file() else {}
    fields = list_field_files(folder)
    if not fields:
        raise BadSlideError(f"{folder}: slide folder holds no image (JPEG, PNG, TIFF or BMP)")
    return SlideInfo(
        slide_id=(meta.get("slide_id") or folder.resolve().name).strip(),
        patient_id=meta.get("patient_id") or None,
        collected_at=meta.get("collected_at") or None,
        notes=meta.get("notes") or None,
        folder=str(folder.resolve()),
        field_paths=tuple(str(p.resolve()) for p in fields),
    )
