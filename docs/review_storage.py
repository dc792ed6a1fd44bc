"""Measure what review costs in storage: crops stored at analysis time versus cut from the fields on demand.

    python docs/review_storage.py FIELDS_DIR [--fields 20] [--json OUT.json]

Copies the first ``--fields`` images of FIELDS_DIR into a temporary slide
folder, analyses it with the packaged model into a temporary SQLite database,
then for every classified white cell:

- encodes the crop the review station shows (96 px) and the crop
  ``export-verified`` writes (224 px) as PNG and JPEG (quality 90): what
  storing crops at analysis time would cost;
- reclassifies it and signs the slide off, and reads the bytes the review
  rows take in the database (SQLite's ``dbstat``: payload of the ``cells``
  review columns' growth, ``cell_reviews``, ``slide_signoffs`` and their
  indexes);
- times cutting one crop from its field on demand (decode the field, crop).

Nothing is written outside the temporary folder. Figures go to docs/review.md.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _payload(db: Path, tables: tuple[str, ...]) -> dict[str, int]:
    with sqlite3.connect(db) as connection:
        connection.execute("VACUUM")
        rows = connection.execute("SELECT name, SUM(payload) FROM dbstat GROUP BY name").fetchall()
    sizes = dict(rows)
    return {name: int(size or 0) for name, size in sizes.items() if any(name.startswith(t) or t in name for t in tables)}


def _jpeg_bytes(image) -> int:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=90)
    return len(buffer.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fields_dir", type=Path)
    parser.add_argument("--fields", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from smearflow.db import make_engine, review, session_factory
    from smearflow.db.engine import session_scope
    from smearflow.imageio import encode_png, is_image_file
    from smearflow.reporting import images

    work = Path(tempfile.mkdtemp(prefix="review-storage-"))
    try:
        slide = work / "MEASURE-1"
        slide.mkdir()
        chosen = sorted(p for p in args.fields_dir.iterdir() if is_image_file(p))[: args.fields]
        for path in chosen:
            shutil.copyfile(path, slide / path.name)
        db = work / "measure.db"
        url = f"sqlite:///{db}"
        subprocess.run([sys.executable, "-m", "smearflow", "analyze", str(slide), "--json", "--database-url", url],
                       check=False, capture_output=True)
        factory = session_factory(make_engine(url))
        with session_scope(factory) as session:
            cells = [c for c in review.slide_cells(session, "MEASURE-1") if c.reviewable]
            diameters = review.rbc_diameters_px(session, sorted({c.field_id for c in cells}))
            folder = review.stored_slide(session, "MEASURE-1").folder
        field_bytes = sum((slide / p.name).stat().st_size for p in chosen)

        sizes = {"png96": 0, "jpeg96": 0, "png224": 0, "jpeg224": 0}
        cut_s = []
        for cell in cells:
            start = time.perf_counter()
            field = images.read_field(folder, cell.field_name)
            small = images.cell_crop(field, cell.centroid, cell.bbox, diameters.get(cell.field_id), 96)
            cut_s.append(time.perf_counter() - start)
            large = images.cell_crop(field, cell.centroid, cell.bbox, diameters.get(cell.field_id), 224)
            sizes["png96"] += len(encode_png(small))
            sizes["jpeg96"] += _jpeg_bytes(small)
            sizes["png224"] += len(encode_png(large))
            sizes["jpeg224"] += _jpeg_bytes(large)

        tables = ("cells", "cell_reviews", "ix_cell_reviews", "slide_signoffs", "ix_slide_signoffs")
        before = _payload(db, tables)
        with session_scope(factory) as session:
            for cell in cells:
                other = "lymphocyte" if cell.label != "lymphocyte" else "monocyte"
                review.review_cell(session, "MEASURE-1", cell.id, other, "A. Reviewer")
            review.sign_off(session, "MEASURE-1", "A. Reviewer")
        after = _payload(db, tables)
        review_bytes = sum(after.values()) - sum(before.values())
        n = max(1, len(cells))
        cut_s.sort()
        figures = {
            "fields": len(chosen),
            "field_image_bytes": field_bytes,
            "classified_white_cells": len(cells),
            "crop_bytes_per_cell": {k: round(v / n) for k, v in sizes.items()},
            "review_db_bytes_per_changed_cell_and_signoff": {"total": review_bytes, "per_cell": round(review_bytes / n)},
            "cut_one_crop_on_demand_ms_median": round(1000 * cut_s[len(cut_s) // 2], 1) if cut_s else None,
            "payload_before": before,
            "payload_after": after,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
