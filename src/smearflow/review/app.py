"""The review station: slides, a slide's cells by class, one-click reclassification, sign-off.

Pages are rendered on the server (Jinja2, autoescaped: slide ids, patient ids
and notes cannot inject HTML); one small script (``static/review.js``) sends
a reclassification without reloading the page and updates the counts, and
every form also works without it.

Access
------
- **Token.** When the app has a token (``SMEARFLOW_REVIEW_TOKEN``; ``serve``
  requires one to bind anywhere but the loopback), every request needs it:
  ``Authorization: Bearer TOKEN``, or the cookie the login page sets. Refused:
  401.
- **Writes** (reclassify, sign off, reopen) need a reviewer name (the form's
  ``reviewer`` or the cookie set by the reviewer form) and are CSRF-safe: the
  request must carry the token of the ``smearflow_csrf`` cookie in its form
  (``csrf_token``) or header (``X-CSRF-Token``), and an ``Origin`` header, when
  sent, must be this server. A request authenticated by its ``Authorization``
  header needs neither (a browser never adds that header by itself). Refused:
  403.
- **Hosts.** Without a token only the loopback names are accepted in the
  ``Host`` header, so a web page cannot reach the station through DNS
  rebinding.
- Every response carries a Content-Security-Policy allowing this server's
  own script, styles and images only, and ``X-Frame-Options: DENY``.
"""

from __future__ import annotations

import functools
import hmac
import logging
import os
import secrets
from collections.abc import Callable
from datetime import UTC, date, datetime
from hashlib import sha256
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from smearflow import WBC_CLASSES
from smearflow.errors import BadImageError
from smearflow.reporting.flags import FlagConfig

logger = logging.getLogger(__name__)

__all__ = ["LOOPBACK_HOSTS", "create_app"]

HERE = Path(__file__).resolve().parent
CSRF_COOKIE = "smearflow_csrf"
AUTH_COOKIE = "smearflow_auth"
REVIEWER_COOKIE = "smearflow_reviewer"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
MAX_ID_LENGTH = 128
MAX_LISTED = 1000
"""Most slides the slide list shows at once (filter by status or patient for the others)."""
KEYS = {str(i + 1): label for i, label in enumerate(WBC_CLASSES)} | {"a": "artefact"}
"""Keyboard: 1-8 give the PBC classes in order, ``a`` marks an artefact."""

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; img-src 'self'; style-src 'self'; script-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


class Refused(Exception):
    """A request the station answers with ``status`` and ``message`` instead of its page."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _environment():
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["segment"] = lambda value: quote(str(value), safe="")
    environment.filters["css"] = lambda value: "".join(c if c.isalnum() else "-" for c in str(value))
    return environment


def _auth_cookie_value(token: str) -> str:
    return hmac.new(token.encode(), b"smearflow-review-session", sha256).hexdigest()


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/") or "application/json" in request.headers.get("accept", "")


def _check_id(value: str, name: str) -> str:
    if not value or len(value) > MAX_ID_LENGTH or not value.isprintable():
        raise Refused(404, f"no {name} {value[:MAX_ID_LENGTH]!r}")
    return value


def _parse_since(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        try:
            parsed = datetime.combine(date.fromisoformat(value), datetime.min.time())
        except ValueError:
            raise Refused(400, f"since must be an ISO 8601 date or date-time. Received: since={value!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def create_app(
    session_factory,
    *,
    token: str | None = None,
    flag_config: FlagConfig | None = None,
    read_field: Callable[[str | None, str], np.ndarray] | None = None,
    allowed_hosts: tuple[str, ...] | None = None,
) -> FastAPI:
    """Build the review station's application.

    Parameters
    ----------
    session_factory : sqlalchemy.orm.sessionmaker
        Of a database migrated to this version's schema.
    token : str, optional
        Required on every request when given (see the module docstring).
    flag_config : FlagConfig, optional
    read_field : callable, optional
        ``(folder, name) -> RGB image``; :func:`smearflow.reporting.images.read_field` by default.
    allowed_hosts : tuple of str, optional
        Host names accepted in the ``Host`` header; the loopback names by
        default without a token, any with one.

    Returns
    -------
    fastapi.FastAPI
    """
    from smearflow.db import review as repo
    from smearflow.db.engine import session_scope
    from smearflow.reporting import images
    from smearflow.reporting.history import CLASSES as HISTORY_CLASSES
    from smearflow.reporting.history import load_patient_history, plot_points
    from smearflow.reporting.plots import history_png
    from smearflow.reporting.report import CROP_SIZE_PX, FIELD_MAX_SIDE_PX, cell_is_uncertain, gallery
    from smearflow.reporting.schema import class_order, differential_rows, from_stored

    config = flag_config or FlagConfig()
    read_field = read_field or images.read_field
    if allowed_hosts is None:
        allowed_hosts = ("*",) if token else LOOPBACK_HOSTS
    templates = _environment()
    app = FastAPI(title="smearflow review", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @functools.lru_cache(maxsize=8)
    def field_image(folder: str | None, name: str, stamp: tuple) -> np.ndarray:
        return read_field(folder, name)

    def cached_field(folder: str | None, name: str) -> np.ndarray:
        try:
            info = os.lstat(images.field_path(folder, name))
            stamp = (info.st_mtime_ns, info.st_size, info.st_ino)
        except OSError:
            stamp = ()
        return field_image(folder, name, stamp)

    # ------------------------------------------------------------------ request checks

    def host_allowed(request: Request) -> bool:
        if "*" in allowed_hosts:
            return True
        host = request.headers.get("host", "")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return name in allowed_hosts or host in allowed_hosts

    def bearer_ok(request: Request) -> bool:
        header = request.headers.get("authorization", "")
        return bool(token) and header.startswith("Bearer ") and hmac.compare_digest(header[7:].encode(), token.encode())

    def authenticated(request: Request) -> bool:
        if not token:
            return True
        cookie = request.cookies.get(AUTH_COOKIE, "")
        return bearer_ok(request) or hmac.compare_digest(cookie.encode(), _auth_cookie_value(token).encode())

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if not host_allowed(request):
            return Response("Host not allowed", status_code=403, media_type="text/plain")
        request.state.csrf = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(32)
        public = request.url.path in ("/login",) or request.url.path.startswith("/static/")
        if not public and not authenticated(request):
            response = refused_response(request, Refused(401, "a valid token is required"))
        else:
            response = await call_next(request)
        if request.cookies.get(CSRF_COOKIE) != request.state.csrf:
            response.set_cookie(CSRF_COOKIE, request.state.csrf, httponly=True, samesite="strict", path="/")
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.exception_handler(Refused)
    async def refused_handler(request: Request, refusal: Refused) -> Response:
        return refused_response(request, refusal)

    def refused_response(request: Request, refusal: Refused) -> Response:
        headers = {"WWW-Authenticate": "Bearer"} if refusal.status == 401 else None
        if _wants_json(request):
            return JSONResponse({"detail": refusal.message}, status_code=refusal.status, headers=headers)
        name = "login.html" if refusal.status == 401 else "error.html"
        return page(request, name, {"message": refusal.message, "status": refusal.status, "next": request.url.path},
                    status=refusal.status, headers=headers)

    def page(request: Request, name: str, context: dict[str, Any], status: int = 200, headers=None) -> HTMLResponse:
        html = templates.get_template(name).render(
            csrf=request.state.csrf,
            reviewer=reviewer_of(request),
            path=request.url.path,
            **context,
        )
        return HTMLResponse(html, status_code=status, headers=headers)

    def reviewer_cookie(request: Request) -> str | None:
        value = request.cookies.get(REVIEWER_COOKIE)
        return unquote(value) if value else None

    def reviewer_of(request: Request) -> str | None:
        candidate = reviewer_cookie(request)
        if not candidate:
            return None
        try:
            return repo.check_reviewer(candidate)
        except ValueError:
            return None

    async def read_write_request(request: Request) -> dict[str, Any]:
        """The body of a write (form or JSON), once its CSRF token and origin are checked."""
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("application/json"):
            try:
                body = await request.json()
            except ValueError:
                raise Refused(400, "the body is not valid JSON") from None
            if not isinstance(body, dict):
                raise Refused(400, "the body must be a JSON object")
        else:
            body = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
        if not bearer_ok(request):
            origin = request.headers.get("origin")
            if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host", ""):
                raise Refused(403, "cross-origin request refused")
            if origin == "null":
                raise Refused(403, "cross-origin request refused")
            sent = request.headers.get("x-csrf-token") or str(body.get("csrf_token") or "")
            cookie = request.cookies.get(CSRF_COOKIE, "")
            if not cookie or not sent or not hmac.compare_digest(sent.encode(), cookie.encode()):
                raise Refused(403, "the form is stale or was not sent by this station (CSRF token missing or wrong): "
                                   "reload the page and try again")
        return body

    def require_reviewer(request: Request, body: dict[str, Any]) -> str:
        candidate = body.get("reviewer") or reviewer_cookie(request)
        if not candidate:
            raise Refused(403, "a reviewer name is required to change anything: enter your name first")
        try:
            return repo.check_reviewer(candidate)
        except ValueError as error:
            raise Refused(403, str(error)) from None

    def in_session(function, *args, **kwargs):
        with session_scope(session_factory) as session:
            try:
                return function(session, *args, **kwargs)
            except LookupError as error:
                raise Refused(404, str(error)) from None
            except repo.ReviewConflictError as error:
                raise Refused(409, str(error)) from None
            except ValueError as error:
                raise Refused(400, str(error)) from None

    def local_path(value: str | None, fallback: str) -> str:
        if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
            return fallback
        return value

    # ------------------------------------------------------------------ reading

    def slide_view(session, slide_id: str) -> dict[str, Any]:
        stored = repo.stored_slide(session, slide_id, config.uncertain_below)
        result = from_stored(stored, config)
        cells = repo.slide_cells(session, slide_id, kinds=("wbc",))
        return {
            "result": result,
            "notes": stored.notes,
            "stale_signoff": stored.stale_signoff,
            "differential": differential_view(stored),
            "gallery": gallery(cells, config),
            "fields": [
                {"id": f.id, "name": f.name, "status": f.status, "error": f.error}
                for f in repo.slide_fields(session, slide_id)
            ],
            "history": repo.review_history(session, slide_id),
        }

    def differential_view(stored) -> dict[str, Any]:
        model = {row["class"]: row for row in differential_rows(stored.counts)}
        current = {row["class"]: row for row in differential_rows(stored.reviewed_counts)}
        labels = [label for label in class_order(stored.counts, stored.reviewed_counts)]
        empty = {"count": 0, "percent": None, "ci_low": None, "ci_high": None}
        return {
            "rows": [{"class": label, "model": model.get(label, empty), "current": current.get(label, empty)}
                     for label in labels],
            "model_total": sum(n for label, n in stored.counts.items() if label != "platelet"),
            "current_total": sum(n for label, n in stored.reviewed_counts.items() if label != "platelet"),
            "artefacts": stored.artefacts,
            "changed": stored.changed_cells,
            "state": stored.differential,
        }

    def check_status(status: str | None) -> str | None:
        from smearflow.db.models import SLIDE_STATUSES

        if status and status not in SLIDE_STATUSES:
            raise Refused(400, f"status must be one of {list(SLIDE_STATUSES)}. Received: status={status!r}")
        return status or None

    @app.get("/", response_class=HTMLResponse)
    def slides_page(request: Request, status: str | None = None, patient: str | None = None):
        from smearflow.db.models import SLIDE_STATUSES

        status = check_status(status)
        if patient:
            _check_id(patient, "patient")
        rows, patients = in_session(lambda s: (
            [from_stored(x, config) for x in repo.stored_slides(
                s, status=status, patient_code=patient or None, uncertain_below=config.uncertain_below,
                limit=MAX_LISTED + 1)],
            repo.patients(s),
        ))
        more = len(rows) > MAX_LISTED
        rows = rows[:MAX_LISTED]
        by_status: dict[str, list] = {}
        for row in rows:
            by_status.setdefault(row["status"], []).append(row)
        order = ["done", "partial", "running", "queued", "failed"]
        return page(request, "slides.html", {
            "groups": [(s, by_status[s]) for s in order if s in by_status],
            "statuses": SLIDE_STATUSES, "status": status or "", "patient": patient or "", "patients": patients,
            "more": more, "max_listed": MAX_LISTED,
        })

    @app.get("/slides/{slide_id}", response_class=HTMLResponse)
    def slide_page(request: Request, slide_id: str):
        _check_id(slide_id, "slide")
        view = in_session(slide_view, slide_id)
        return page(request, "slide.html", {
            **view, "labels": repo.REVIEW_LABELS, "keys": KEYS, "uncertain": lambda c: cell_is_uncertain(c, config),
            "editable": view["result"]["differential"] != "verified" and view["result"]["status"] in repo.REVIEWABLE_STATUSES,
        })

    @app.get("/slides/{slide_id}/cells/{cell_id}.png")
    def cell_png(slide_id: str, cell_id: int):
        from smearflow.imageio import encode_png

        _check_id(slide_id, "slide")

        def load(session):
            cell = repo.get_cell(session, slide_id, cell_id)
            return cell, repo.slide_folder(session, slide_id), repo.rbc_diameters_px(session, [cell.field_id]).get(cell.field_id)

        cell, folder, diameter = in_session(load)
        try:
            image = cached_field(folder, cell.field_name)
        except BadImageError as error:
            raise Refused(404, f"crop not available: {error}") from None
        crop = images.cell_crop(image, cell.centroid, cell.bbox, diameter, CROP_SIZE_PX)
        return Response(encode_png(crop), media_type="image/png", headers={"Cache-Control": "private, max-age=60"})

    @app.get("/slides/{slide_id}/fields/{field_id}.png")
    def field_png(slide_id: str, field_id: int):
        from smearflow.imageio import encode_png

        _check_id(slide_id, "slide")

        def load(session):
            fields = {f.id: f for f in repo.slide_fields(session, slide_id)}
            if field_id not in fields:
                raise LookupError(f"slide {slide_id} has no field {field_id}")
            cells = [c for c in repo.slide_cells(session, slide_id) if c.field_id == field_id]
            return fields[field_id].name, repo.slide_folder(session, slide_id), cells

        name, folder, cells = in_session(load)
        try:
            image = cached_field(folder, name)
        except BadImageError as error:
            raise Refused(404, f"field image not available: {error}") from None
        return Response(encode_png(images.draw_cells(image, cells, FIELD_MAX_SIDE_PX)), media_type="image/png")

    @app.get("/patients/{patient_id}", response_class=HTMLResponse)
    def patient_page(request: Request, patient_id: str):
        _check_id(patient_id, "patient")
        rows = in_session(load_patient_history, patient_id, config)
        return page(request, "patient.html", {"patient_id": patient_id, "rows": rows, "classes": HISTORY_CLASSES})

    @app.get("/patients/{patient_id}/history.png")
    def patient_png(patient_id: str):
        _check_id(patient_id, "patient")
        rows = in_session(load_patient_history, patient_id, config)
        png = history_png(plot_points(rows), list(HISTORY_CLASSES), f"patient {patient_id}: % of white cells per slide")
        return Response(png, media_type="image/png")

    @app.get("/agreement", response_class=HTMLResponse)
    def agreement_page(request: Request, since: str | None = None):
        figures = in_session(repo.agreement, _parse_since(since))
        return page(request, "agreement.html", {"figures": figures, "since": since or ""})

    @app.get("/api/slides")
    def api_slides(status: str | None = None, patient: str | None = None):
        status = check_status(status)
        stored = in_session(repo.stored_slides, status=status, patient_code=patient, uncertain_below=config.uncertain_below)
        return [from_stored(s, config) for s in stored]

    @app.get("/api/slides/{slide_id}")
    def api_slide(slide_id: str):
        _check_id(slide_id, "slide")
        return from_stored(in_session(repo.stored_slide, slide_id, config.uncertain_below), config)

    @app.get("/api/agreement")
    def api_agreement(since: str | None = None):
        return in_session(repo.agreement, _parse_since(since))

    # ------------------------------------------------------------------ writing

    @app.post("/slides/{slide_id}/cells/{cell_id}")
    async def review_cell(request: Request, slide_id: str, cell_id: int):
        _check_id(slide_id, "slide")
        body = await read_write_request(request)
        reviewer = require_reviewer(request, body)
        label = body.get("label")

        def change(session):
            cell = repo.review_cell(session, slide_id, cell_id, label, reviewer)
            stored = repo.stored_slide(session, slide_id, config.uncertain_below)
            return cell, differential_view(stored)

        cell, differential = await run_in_threadpool(in_session, change)
        if _wants_json(request):
            return {
                "cell": {"id": cell.id, "label": cell.label, "review_label": cell.review_label,
                         "final_label": cell.final_label, "reviewed_by": cell.reviewed_by},
                "differential": differential,
            }
        return RedirectResponse(f"/slides/{quote(slide_id, safe='')}#cell-{cell.id}", status_code=303)

    @app.post("/slides/{slide_id}/verify")
    async def verify(request: Request, slide_id: str):
        _check_id(slide_id, "slide")
        body = await read_write_request(request)
        reviewer = require_reviewer(request, body)
        note = str(body.get("note") or "") or None
        await run_in_threadpool(in_session, repo.sign_off, slide_id, reviewer, note=note)
        if _wants_json(request):
            return from_stored(await run_in_threadpool(in_session, repo.stored_slide, slide_id, config.uncertain_below), config)
        return RedirectResponse(f"/slides/{quote(slide_id, safe='')}", status_code=303)

    @app.post("/slides/{slide_id}/reopen")
    async def reopen(request: Request, slide_id: str):
        _check_id(slide_id, "slide")
        body = await read_write_request(request)
        reviewer = require_reviewer(request, body)
        note = str(body.get("note") or "") or None
        await run_in_threadpool(in_session, repo.reopen, slide_id, reviewer, note=note)
        if _wants_json(request):
            return from_stored(await run_in_threadpool(in_session, repo.stored_slide, slide_id, config.uncertain_below), config)
        return RedirectResponse(f"/slides/{quote(slide_id, safe='')}", status_code=303)

    @app.post("/reviewer")
    async def set_reviewer(request: Request):
        body = await read_write_request(request)
        name = require_reviewer(request, {"reviewer": body.get("reviewer")})
        response = RedirectResponse(local_path(str(body.get("next") or ""), "/"), status_code=303)
        response.set_cookie(REVIEWER_COOKIE, quote(name, safe=""), httponly=True, samesite="strict", path="/")
        return response

    @app.get("/login", response_class=HTMLResponse)
    def login_page(request: Request, next: str | None = None):
        return page(request, "login.html", {"message": None, "status": 200, "next": local_path(next, "/")})

    @app.post("/login")
    async def login(request: Request):
        body = await read_write_request(request)
        sent = str(body.get("token") or "")
        target = local_path(str(body.get("next") or ""), "/")
        if not token:
            return RedirectResponse(target, status_code=303)
        if not hmac.compare_digest(sent.encode(), token.encode()):
            raise Refused(401, "wrong token")
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(AUTH_COOKIE, _auth_cookie_value(token), httponly=True, samesite="strict", path="/")
        return response

    return app
