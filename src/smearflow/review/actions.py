"""The review station's writes: reclassify a cell, sign a slide off, reopen it, name the reviewer, log in.

Every write goes through :meth:`Station.read_write_request` (CSRF and origin
checks) and, but for the login, needs a reviewer name.
"""

from __future__ import annotations

import hmac
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from smearflow.db import review as repo
from smearflow.reporting.schema import from_stored
from smearflow.review.station import (
    AUTH_COOKIE,
    REVIEWER_COOKIE,
    Refused,
    Station,
    auth_cookie_value,
    check_id,
    differential_view,
    local_path,
    require_reviewer,
    wants_json,
)


def review_actions(station: Station) -> APIRouter:
    """Reclassifying a cell, signing a slide off and reopening it."""
    router = APIRouter()
    config = station.config

    @router.post("/slides/{slide_id}/cells/{cell_id}")
    async def review_cell(request: Request, slide_id: str, cell_id: int):
        check_id(slide_id, "slide")
        body = await station.read_write_request(request)
        reviewer = require_reviewer(request, body)
        label = body.get("label")

        def change(session):
            cell = repo.review_cell(session, slide_id, cell_id, label, reviewer)
            stored = repo.stored_slide(session, slide_id, config.uncertain_below)
            return cell, differential_view(stored)

        cell, differential = await run_in_threadpool(station.in_session, change)
        if wants_json(request):
            return {
                "cell": {"id": cell.id, "label": cell.label, "review_label": cell.review_label,
                         "final_label": cell.final_label, "reviewed_by": cell.reviewed_by},
                "differential": differential,
            }
        return RedirectResponse(f"/slides/{quote(slide_id, safe='')}#cell-{cell.id}", status_code=303)

    router.add_api_route("/slides/{slide_id}/verify", _signoff_route(station, repo.sign_off), methods=["POST"], name="verify")
    router.add_api_route("/slides/{slide_id}/reopen", _signoff_route(station, repo.reopen), methods=["POST"], name="reopen")
    return router


def _signoff_route(station: Station, action):
    """A route that signs a slide off or reopens it (``action`` is ``repo.sign_off`` or ``repo.reopen``)."""
    config = station.config

    async def signoff(request: Request, slide_id: str):
        check_id(slide_id, "slide")
        body = await station.read_write_request(request)
        reviewer = require_reviewer(request, body)
        note = str(body.get("note") or "") or None
        await run_in_threadpool(station.in_session, action, slide_id, reviewer, note=note)
        if wants_json(request):
            stored = await run_in_threadpool(station.in_session, repo.stored_slide, slide_id, config.uncertain_below)
            return from_stored(stored, config)
        return RedirectResponse(f"/slides/{quote(slide_id, safe='')}", status_code=303)

    return signoff


def session_actions(station: Station) -> APIRouter:
    """Naming the reviewer and logging in with the token."""
    router = APIRouter()
    token = station.token

    @router.post("/reviewer")
    async def set_reviewer(request: Request):
        body = await station.read_write_request(request)
        name = require_reviewer(request, {"reviewer": body.get("reviewer")})
        response = RedirectResponse(local_path(str(body.get("next") or ""), "/"), status_code=303)
        response.set_cookie(REVIEWER_COOKIE, quote(name, safe=""), httponly=True, samesite="strict", path="/")
        return response

    @router.get("/login", response_class=HTMLResponse)
    def login_page(request: Request, next: str | None = None):
        return station.page(request, "login.html", {"message": None, "status": 200, "next": local_path(next, "/")})

    @router.post("/login")
    async def login(request: Request):
        body = await station.read_write_request(request)
        sent = str(body.get("token") or "")
        target = local_path(str(body.get("next") or ""), "/")
        if not token:
            return RedirectResponse(target, status_code=303)
        if not hmac.compare_digest(sent.encode(), token.encode()):
            raise Refused(401, "wrong token")
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(AUTH_COOKIE, auth_cookie_value(token), httponly=True, samesite="strict", path="/")
        return response

    return router
