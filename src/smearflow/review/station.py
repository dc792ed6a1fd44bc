"""What every page and action of the review station shares: settings, access checks, sessions, rendering.

:class:`Station` holds one application's settings (database, token, flag
rules, field reader, accepted hosts) and the helpers its routes call; the
routes themselves are in :mod:`smearflow.review.pages` (reading) and
:mod:`smearflow.review.actions` (writing). The access rules are described in
:mod:`smearflow.review.app`.
"""

from __future__ import annotations

import functools
import hmac
import os
from collections.abc import Callable
from datetime import datetime
from hashlib import sha256
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import numpy as np
from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from smearflow import WBC_CLASSES
from smearflow.db import review as repo
from smearflow.db.engine import session_scope
from smearflow.db.models import SLIDE_STATUSES
from smearflow.db.values import parse_iso_time
from smearflow.reporting import images
from smearflow.reporting.flags import FlagConfig
from smearflow.reporting.report import gallery
from smearflow.reporting.schema import class_order, differential_rows, from_stored

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


# --------------------------------------------------------------------------- request values


def environment():
    """The Jinja2 environment of the station's templates (autoescaped, strict)."""
    import jinja2

    templates = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    templates.filters["segment"] = lambda value: quote(str(value), safe="")
    templates.filters["css"] = lambda value: "".join(c if c.isalnum() else "-" for c in str(value))
    return templates


def auth_cookie_value(token: str) -> str:
    """The login cookie's value for ``token`` (an HMAC, so the cookie never holds the token)."""
    return hmac.new(token.encode(), b"smearflow-review-session", sha256).hexdigest()


def wants_json(request: Request) -> bool:
    """Whether the request is the API's or asks for JSON."""
    return request.url.path.startswith("/api/") or "application/json" in request.headers.get("accept", "")


def check_id(value: str, name: str) -> str:
    """A slide or patient id from a path: printable, at most ``MAX_ID_LENGTH``; 404 otherwise."""
    if not value or len(value) > MAX_ID_LENGTH or not value.isprintable():
        raise Refused(404, f"no {name} {value[:MAX_ID_LENGTH]!r}")
    return value


def parse_since(value: str | None) -> datetime | None:
    """``since`` of the agreement pages: an ISO 8601 date or date-time (UTC without an offset); 400 otherwise."""
    if not value:
        return None
    try:
        return parse_iso_time(value)
    except ValueError:
        raise Refused(400, f"since must be an ISO 8601 date or date-time. Received: since={value!r}") from None


def check_status(status: str | None) -> str | None:
    """A slide-status filter: one of ``SLIDE_STATUSES`` or empty; 400 otherwise."""
    if status and status not in SLIDE_STATUSES:
        raise Refused(400, f"status must be one of {list(SLIDE_STATUSES)}. Received: status={status!r}")
    return status or None


def local_path(value: str | None, fallback: str) -> str:
    """``value`` when it is a path on this server, else ``fallback`` (no open redirects)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return fallback
    return value


def reviewer_cookie(request: Request) -> str | None:
    """The reviewer name of the reviewer cookie, unchecked."""
    value = request.cookies.get(REVIEWER_COOKIE)
    return unquote(value) if value else None


def reviewer_of(request: Request) -> str | None:
    """The reviewer name of the cookie when it is valid, else ``None``."""
    candidate = reviewer_cookie(request)
    if not candidate:
        return None
    try:
        return repo.check_reviewer(candidate)
    except ValueError:
        return None


def require_reviewer(request: Request, body: dict[str, Any]) -> str:
    """The reviewer of a write (the form's, else the cookie's); 403 without a valid one."""
    candidate = body.get("reviewer") or reviewer_cookie(request)
    if not candidate:
        raise Refused(403, "a reviewer name is required to change anything: enter your name first")
    try:
        return repo.check_reviewer(candidate)
    except ValueError as error:
        raise Refused(403, str(error)) from None


def differential_view(stored: repo.StoredSlide) -> dict[str, Any]:
    """The model's and the current differential side by side, with the review state."""
    model = {row["class"]: row for row in differential_rows(stored.counts)}
    current = {row["class"]: row for row in differential_rows(stored.reviewed_counts)}
    labels = list(class_order(stored.counts, stored.reviewed_counts))
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


def _check_csrf(request: Request, body: dict[str, Any]) -> None:
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


# --------------------------------------------------------------------------- the station


class Station:
    """One review station's settings and the helpers its routes share.

    Parameters are those of :func:`smearflow.review.app.create_app`.
    """

    def __init__(
        self,
        session_factory,
        *,
        token: str | None,
        flag_config: FlagConfig | None,
        read_field: Callable[[str | None, str], np.ndarray] | None,
        allowed_hosts: tuple[str, ...] | None,
    ):
        self.session_factory = session_factory
        self.token = token
        self.config = flag_config or FlagConfig()
        self.read_field = read_field or images.read_field
        self.allowed_hosts = allowed_hosts if allowed_hosts is not None else (("*",) if token else LOOPBACK_HOSTS)
        self.templates = environment()
        self._field_image = functools.lru_cache(maxsize=8)(self._read_field_at)

    # ------------------------------------------------------------------ access

    def host_allowed(self, request: Request) -> bool:
        if "*" in self.allowed_hosts:
            return True
        host = request.headers.get("host", "")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return name in self.allowed_hosts or host in self.allowed_hosts

    def bearer_ok(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        token = self.token
        return bool(token) and header.startswith("Bearer ") and hmac.compare_digest(header[7:].encode(), token.encode())

    def authenticated(self, request: Request) -> bool:
        if not self.token:
            return True
        cookie = request.cookies.get(AUTH_COOKIE, "")
        return self.bearer_ok(request) or hmac.compare_digest(cookie.encode(), auth_cookie_value(self.token).encode())

    async def read_write_request(self, request: Request) -> dict[str, Any]:
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
        if not self.bearer_ok(request):
            _check_csrf(request, body)
        return body

    # ------------------------------------------------------------------ responses

    def page(self, request: Request, name: str, context: dict[str, Any], status: int = 200, headers=None) -> HTMLResponse:
        html = self.templates.get_template(name).render(
            csrf=request.state.csrf,
            reviewer=reviewer_of(request),
            path=request.url.path,
            **context,
        )
        return HTMLResponse(html, status_code=status, headers=headers)

    def refused_response(self, request: Request, refusal: Refused) -> Response:
        headers = {"WWW-Authenticate": "Bearer"} if refusal.status == 401 else None
        if wants_json(request):
            return JSONResponse({"detail": refusal.message}, status_code=refusal.status, headers=headers)
        name = "login.html" if refusal.status == 401 else "error.html"
        return self.page(request, name, {"message": refusal.message, "status": refusal.status, "next": request.url.path},
                         status=refusal.status, headers=headers)

    # ------------------------------------------------------------------ data

    def in_session(self, function, *args, **kwargs):
        """``function(session, *args, **kwargs)`` in one transaction; lookup and rule errors become refusals."""
        with session_scope(self.session_factory) as session:
            try:
                return function(session, *args, **kwargs)
            except LookupError as error:
                raise Refused(404, str(error)) from None
            except repo.ReviewConflictError as error:
                raise Refused(409, str(error)) from None
            except ValueError as error:
                raise Refused(400, str(error)) from None

    def _read_field_at(self, folder: str | None, name: str, stamp: tuple) -> np.ndarray:
        return self.read_field(folder, name)

    def cached_field(self, folder: str | None, name: str) -> np.ndarray:
        """A field image, read again when its file changed."""
        try:
            info = os.lstat(images.field_path(folder, name))
            stamp = (info.st_mtime_ns, info.st_size, info.st_ino)
        except OSError:
            stamp = ()
        return self._field_image(folder, name, stamp)

    def slide_view(self, session, slide_id: str) -> dict[str, Any]:
        """What the slide page shows: result, differential, gallery, fields and history."""
        stored = repo.stored_slide(session, slide_id, self.config.uncertain_below)
        cells = repo.slide_cells(session, slide_id, kinds=("wbc",))
        return {
            "result": from_stored(stored, self.config),
            "notes": stored.notes,
            "stale_signoff": stored.stale_signoff,
            "differential": differential_view(stored),
            "gallery": gallery(cells, self.config),
            "fields": [
                {"id": f.id, "name": f.name, "status": f.status, "error": f.error}
                for f in repo.slide_fields(session, slide_id)
            ],
            "history": repo.review_history(session, slide_id),
        }
