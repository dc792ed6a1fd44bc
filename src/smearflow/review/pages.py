"""The review station's pages and read-only API: slide list, slide, cell and field images, patients, agreement."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from smearflow.db import review as repo
from smearflow.db.models import SLIDE_STATUSES
from smearflow.errors import BadImageError
from smearflow.imageio import encode_png
from smearflow.reporting import images
from smearflow.reporting.history import CLASSES as HISTORY_CLASSES
from smearflow.reporting.history import load_patient_history, plot_points
from smearflow.reporting.plots import history_png
from smearflow.reporting.report import (
    CROP_SIZE_PX,
    FIELD_MAX_SIDE_PX,
    cell_is_uncertain,
)
from smearflow.reporting.schema import from_stored
from smearflow.review.station import (
    KEYS,
    MAX_LISTED,
    Refused,
    Station,
    check_id,
    check_status,
    parse_since,
)

STATUS_ORDER = ["done", "partial", "running", "queued", "failed"]
"""The order of the slide list's groups."""


def slide_pages(station: Station) -> APIRouter:
    """The slide list, a slide's page, and its cell crops and field images."""
    router = APIRouter()
    config = station.config

    @router.get("/", response_class=HTMLResponse)
    def slides_page(request: Request, status: str | None = None, patient: str | None = None):
        status = check_status(status)
        if patient:
            check_id(patient, "patient")
        rows, patients = station.in_session(lambda s: (
            [from_stored(x, config) for x in repo.stored_slides(
                s, status=status, patient_code=patient or None, uncertain_below=config.uncertain_below,
                limit=MAX_LISTED + 1)],
            repo.patients(s),
        ))
        more = len(rows) > MAX_LISTED
        by_status: dict[str, list] = {}
        for row in rows[:MAX_LISTED]:
            by_status.setdefault(row["status"], []).append(row)
        return station.page(request, "slides.html", {
            "groups": [(s, by_status[s]) for s in STATUS_ORDER if s in by_status],
            "statuses": SLIDE_STATUSES, "status": status or "", "patient": patient or "", "patients": patients,
            "more": more, "max_listed": MAX_LISTED,
        })

    @router.get("/slides/{slide_id}", response_class=HTMLResponse)
    def slide_page(request: Request, slide_id: str):
        check_id(slide_id, "slide")
        view = station.in_session(station.slide_view, slide_id)
        return station.page(request, "slide.html", {
            **view, "labels": repo.REVIEW_LABELS, "keys": KEYS, "uncertain": lambda c: cell_is_uncertain(c, config),
            "editable": view["result"]["differential"] != "verified" and view["result"]["status"] in repo.REVIEWABLE_STATUSES,
        })

    router.add_api_route("/slides/{slide_id}/cells/{cell_id}.png", _cell_png(station), methods=["GET"])
    router.add_api_route("/slides/{slide_id}/fields/{field_id}.png", _field_png(station), methods=["GET"])
    return router


def _cell_png(station: Station):
    def cell_png(slide_id: str, cell_id: int):
        check_id(slide_id, "slide")

        def load(session):
            cell = repo.get_cell(session, slide_id, cell_id)
            return cell, repo.slide_folder(session, slide_id), repo.rbc_diameters_px(session, [cell.field_id]).get(cell.field_id)

        cell, folder, diameter = station.in_session(load)
        try:
            image = station.cached_field(folder, cell.field_name)
        except BadImageError as error:
            raise Refused(404, f"crop not available: {error}") from None
        crop = images.cell_crop(image, cell.centroid, cell.bbox, diameter, CROP_SIZE_PX)
        return Response(encode_png(crop), media_type="image/png", headers={"Cache-Control": "private, max-age=60"})

    return cell_png


def _field_png(station: Station):
    def field_png(slide_id: str, field_id: int):
        check_id(slide_id, "slide")

        def load(session):
            fields = {f.id: f for f in repo.slide_fields(session, slide_id)}
            if field_id not in fields:
                raise LookupError(f"slide {slide_id} has no field {field_id}")
            cells = [c for c in repo.slide_cells(session, slide_id) if c.field_id == field_id]
            return fields[field_id].name, repo.slide_folder(session, slide_id), cells

        name, folder, cells = station.in_session(load)
        try:
            image = station.cached_field(folder, name)
        except BadImageError as error:
            raise Refused(404, f"field image not available: {error}") from None
        return Response(encode_png(images.draw_cells(image, cells, FIELD_MAX_SIDE_PX)), media_type="image/png")

    return field_png


def patient_and_agreement_pages(station: Station) -> APIRouter:
    """A patient's history (page and plot) and the agreement page."""
    router = APIRouter()
    config = station.config

    @router.get("/patients/{patient_id}", response_class=HTMLResponse)
    def patient_page(request: Request, patient_id: str):
        check_id(patient_id, "patient")
        rows = station.in_session(load_patient_history, patient_id, config)
        return station.page(request, "patient.html", {"patient_id": patient_id, "rows": rows, "classes": HISTORY_CLASSES})

    @router.get("/patients/{patient_id}/history.png")
    def patient_png(patient_id: str):
        check_id(patient_id, "patient")
        rows = station.in_session(load_patient_history, patient_id, config)
        png = history_png(plot_points(rows), list(HISTORY_CLASSES), f"patient {patient_id}: % of white cells per slide")
        return Response(png, media_type="image/png")

    @router.get("/agreement", response_class=HTMLResponse)
    def agreement_page(request: Request, since: str | None = None):
        figures = station.in_session(repo.agreement, parse_since(since))
        return station.page(request, "agreement.html", {"figures": figures, "since": since or ""})

    return router


def read_api(station: Station) -> APIRouter:
    """The JSON API for reading: slides, one slide, agreement."""
    router = APIRouter()
    config = station.config

    @router.get("/api/slides")
    def api_slides(status: str | None = None, patient: str | None = None):
        status = check_status(status)
        stored = station.in_session(
            repo.stored_slides, status=status, patient_code=patient, uncertain_below=config.uncertain_below
        )
        return [from_stored(s, config) for s in stored]

    @router.get("/api/slides/{slide_id}")
    def api_slide(slide_id: str):
        check_id(slide_id, "slide")
        return from_stored(station.in_session(repo.stored_slide, slide_id, config.uncertain_below), config)

    @router.get("/api/agreement")
    def api_agreement(since: str | None = None):
        return station.in_session(repo.agreement, parse_since(since))

    return router
