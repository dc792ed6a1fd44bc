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

import secrets
from collections.abc import Callable

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles

from smearflow.reporting.flags import FlagConfig
from smearflow.review.actions import review_actions, session_actions
from smearflow.review.pages import patient_and_agreement_pages, read_api, slide_pages
from smearflow.review.station import (
    CONTENT_SECURITY_POLICY,
    CSRF_COOKIE,
    HERE,
    LOOPBACK_HOSTS,
    Refused,
    Station,
)

__all__ = ["LOOPBACK_HOSTS", "create_app"]


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
    station = Station(
        session_factory, token=token, flag_config=flag_config, read_field=read_field, allowed_hosts=allowed_hosts
    )
    app = FastAPI(title="smearflow review", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    _add_guard(app, station)
    for router in (
        slide_pages(station),
        patient_and_agreement_pages(station),
        read_api(station),
        review_actions(station),
        session_actions(station),
    ):
        app.include_router(router)
    return app


def _add_guard(app: FastAPI, station: Station) -> None:
    """Host and token checks on every request, the CSRF cookie, and the security headers on every response."""

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if not station.host_allowed(request):
            return Response("Host not allowed", status_code=403, media_type="text/plain")
        request.state.csrf = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(32)
        public = request.url.path in ("/login",) or request.url.path.startswith("/static/")
        if not public and not station.authenticated(request):
            response = station.refused_response(request, Refused(401, "a valid token is required"))
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
        return station.refused_response(request, refusal)
