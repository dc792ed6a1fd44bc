"""Every route of the review station through the app's test client, including refused writes."""

from __future__ import annotations

import io
import re
import shutil

import numpy as np
import pytest
from fastapi.testclient import TestClient
from review_testkit import store_review_slide

from smearflow.db import review
from smearflow.db.engine import session_scope
from smearflow.review.app import create_app

TOKEN = "s3cret-token-for-tests"


def _csrf(client, path="/"):
    page = client.get(path)
    assert page.status_code == 200, page.text
    return re.search(r'name="csrf[-_]token" (?:content|value)="([^"]+)"', page.text).group(1)


def _cell_ids(client, slide="S-R1"):
    return [int(i) for i in re.findall(r'id="cell-(\d+)"', client.get(f"/slides/{slide}").text)]


@pytest.fixture
def slides(sqlite_review_db, tmp_path):
    _, factory = sqlite_review_db
    store_review_slide(factory, tmp_path / "inbox", notes="EDTA\nsecond line")
    store_review_slide(factory, tmp_path / "inbox", "S-R2", "P-R", fields=((("lymphocyte", 0.9),),),
                       collected_at="2026-11-22T08:00:00+00:00", seed=1)
    return factory


@pytest.fixture
def client(slides):
    with TestClient(create_app(slides, allowed_hosts=("testserver",))) as test_client:
        yield test_client


@pytest.fixture
def reviewer(client):
    """The client with a reviewer name set; returns its CSRF token."""
    token = _csrf(client)
    assert client.post("/reviewer", data={"reviewer": "Ann", "csrf_token": token}, follow_redirects=False).status_code == 303
    return token


def _least_confident_neutrophil(factory):
    with session_scope(factory) as session:
        cells = [c for c in review.slide_cells(session, "S-R1") if c.reviewable and c.label == "neutrophil"]
    return min(cells, key=lambda c: c.confidence).id


def _history(factory, slide="S-R1"):
    with session_scope(factory) as session:
        return review.review_history(session, slide)


# ---------------------------------------------------------------------- reading


@pytest.mark.parametrize(
    "path, kind",
    [
        ("/", "text/html"), ("/?status=done", "text/html"), ("/?patient=P-R", "text/html"),
        ("/slides/S-R1", "text/html"), ("/patients/P-R", "text/html"), ("/patients/P-R/history.png", "image/png"),
        ("/agreement", "text/html"), ("/agreement?since=2026-01-01", "text/html"), ("/login", "text/html"),
        ("/api/slides", "application/json"), ("/api/slides?status=done&patient=P-R", "application/json"),
        ("/api/slides/S-R1", "application/json"), ("/api/agreement?since=2026-01-01T00:00:00", "application/json"),
        ("/static/review.js", "javascript"), ("/static/review.css", "text/css"),
    ],
)
def test_every_page_answers_with_the_security_headers(client, path, kind):
    response = client.get(path)
    assert response.status_code == 200, response.text
    assert kind in response.headers["content-type"]
    assert "default-src 'none'" in response.headers["content-security-policy"]
    assert response.headers["x-frame-options"] == "DENY" and response.headers["x-content-type-options"] == "nosniff"


def test_the_slide_list_groups_by_status_and_filters_by_patient(client, slides, tmp_path):
    store_review_slide(slides, tmp_path / "inbox", "S-OTHER", "P-OTHER", seed=2)
    page = client.get("/?patient=P-R").text
    assert "S-R1" in page and "S-R2" in page and 'href="/slides/S-OTHER"' not in page
    assert [row["slide_id"] for row in client.get("/api/slides?patient=P-OTHER").json()] == ["S-OTHER"]
    assert client.get("/?status=failed").text.count('href="/slides/') == 0


def test_the_slide_page_shows_the_gallery_by_class_least_confident_first(client):
    page = client.get("/slides/S-R1").text
    neutrophils = page[page.index("neutrophil (3)"):page.index("</div>\n", page.index("neutrophil (3)") + 400)]
    confidences = [float(c) for c in re.findall(r"model: neutrophil (\d\.\d\d)", page)]
    assert confidences == [0.3, 0.8, 0.95] and "neutrophil (3)" in neutrophils
    assert 'class="tile label-neutrophil uncertain"' in page  # 0.3 is below 0.5
    assert page.count('class="review-form"') == 5 and "Sign off as verified" in page


def test_crops_and_fields_are_cut_from_the_field_images(client):
    from PIL import Image

    cell = _cell_ids(client)[0]
    crop = client.get(f"/slides/S-R1/cells/{cell}.png")
    assert crop.status_code == 200 and Image.open(io.BytesIO(crop.content)).size == (96, 96)
    field_id = int(re.search(r'/fields/(\d+)\.png', client.get("/slides/S-R1").text).group(1))
    field = client.get(f"/slides/S-R1/fields/{field_id}.png")
    assert field.status_code == 200 and Image.open(io.BytesIO(field.content)).size == (640, 480)
    assert client.get("/slides/S-R1/fields/999999.png").status_code == 404
    assert client.get("/slides/S-R1/cells/999999.png").status_code == 404


def test_review_works_after_the_folder_moved_to_done_and_says_when_an_image_is_gone(client, slides, tmp_path):
    from smearflow.db import repository

    done = tmp_path / "done" / "S-R1"
    shutil.move(str(tmp_path / "inbox" / "S-R1"), str(done))
    with session_scope(slides) as session:
        repository.get_slide(session, "S-R1").folder = str(done)  # what the worker records
    cell = _cell_ids(client)[0]
    assert client.get(f"/slides/S-R1/cells/{cell}.png").status_code == 200
    (done / "field_01.png").unlink()
    missing = client.get(f"/slides/S-R1/cells/{cell}.png", headers={"Accept": "application/json"})
    assert missing.status_code == 404 and "crop not available" in missing.json()["detail"]
    assert "field_01.png" in missing.json()["detail"]
    field_id = int(re.search(r'/fields/(\d+)\.png">field_01.png', client.get("/slides/S-R1").text).group(1))
    field = client.get(f"/slides/S-R1/fields/{field_id}.png", headers={"Accept": "application/json"})
    assert field.status_code == 404 and "field image not available" in field.json()["detail"]
    assert client.get("/slides/S-R1").status_code == 200


def test_a_linked_field_is_not_followed(client, slides, tmp_path):
    field = tmp_path / "inbox" / "S-R1" / "field_01.png"
    outside = tmp_path / "outside.png"
    shutil.move(str(field), str(outside))
    field.symlink_to(outside)
    response = client.get(f"/slides/S-R1/cells/{_cell_ids(client)[0]}.png", headers={"Accept": "application/json"})
    assert response.status_code == 404 and "link" in response.json()["detail"]


def test_the_api_gives_the_slide_result_schema(client):
    from smearflow.reporting.schema import SLIDE_RESULT_KEYS

    result = client.get("/api/slides/S-R1").json()
    assert tuple(result) == SLIDE_RESULT_KEYS and result["differential"] == "pre-classified"
    assert result["counts"] == {"lymphocyte": 1, "monocyte": 1, "neutrophil": 3}


@pytest.mark.parametrize(
    "path, status",
    [
        ("/slides/nope", 404), ("/api/slides/nope", 404), ("/patients/nobody", 404), ("/patients/nobody/history.png", 404),
        ("/?status=bogus", 400), ("/api/slides?status=bogus", 400), ("/agreement?since=yesterday", 400), ("/api/agreement?since=2026-13-01", 400),
        ("/slides/" + "x" * 200, 404), ("/slides/S-R1/cells/abc.png", 422),
    ],
)
def test_unknown_things_and_bad_queries_are_refused(client, path, status):
    assert client.get(path).status_code == status


# ---------------------------------------------------------------------- writing


def test_reclassifying_a_cell_updates_the_counts_at_once(client, reviewer, slides):
    cell = _least_confident_neutrophil(slides)
    response = client.post(
        f"/slides/S-R1/cells/{cell}", data={"label": "lymphocyte", "csrf_token": reviewer},
        headers={"Accept": "application/json"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["cell"] == {"id": cell, "label": "neutrophil", "review_label": "lymphocyte",
                            "final_label": "lymphocyte", "reviewed_by": "Ann"}
    rows = {row["class"]: row for row in body["differential"]["rows"]}
    assert (rows["neutrophil"]["model"]["count"], rows["neutrophil"]["current"]["count"]) == (3, 2)
    assert rows["lymphocyte"]["current"]["count"] == 2 and body["differential"]["state"] == "in review"
    assert client.get("/api/slides/S-R1").json()["counts"]["neutrophil"] == 3  # pre-classified unchanged
    assert [(e["who"], e["label"]) for e in _history(slides)] == [("Ann", "lymphocyte")]
    assert 'id="current-count-neutrophil">2<' in client.get("/slides/S-R1").text


def test_without_the_script_a_form_post_redirects_back_to_the_cell(client, reviewer):
    cell = _cell_ids(client)[0]
    response = client.post(f"/slides/S-R1/cells/{cell}", data={"label": "artefact", "csrf_token": reviewer},
                           follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == f"/slides/S-R1#cell-{cell}"


def test_a_json_body_works_with_the_csrf_header(client, reviewer):
    cell = _cell_ids(client)[0]
    response = client.post(f"/slides/S-R1/cells/{cell}", json={"label": "monocyte", "reviewer": "Bob"},
                           headers={"X-CSRF-Token": reviewer, "Accept": "application/json"})
    assert response.status_code == 200 and response.json()["cell"]["reviewed_by"] == "Bob"


def test_signing_off_verifies_the_slide_and_freezes_it_until_reopened(client, reviewer, slides):
    cell = _least_confident_neutrophil(slides)
    client.post(f"/slides/S-R1/cells/{cell}", data={"label": "lymphocyte", "csrf_token": reviewer})
    signed = client.post("/slides/S-R1/verify", data={"csrf_token": reviewer, "note": "ok"}, follow_redirects=False)
    assert signed.status_code == 303 and signed.headers["location"] == "/slides/S-R1"
    result = client.get("/api/slides/S-R1").json()
    assert (result["differential"], result["verified_by"]) == ("verified", "Ann")
    assert result["verified_counts"] == {"lymphocyte": 2, "monocyte": 1, "neutrophil": 2}
    page = client.get("/slides/S-R1").text
    assert "Reopen for changes" in page and 'class="review-form"' not in page
    refused = client.post(f"/slides/S-R1/cells/{cell}", data={"label": "monocyte", "csrf_token": reviewer},
                          headers={"Accept": "application/json"})
    assert refused.status_code == 409 and "reopen" in refused.json()["detail"]
    assert client.post("/slides/S-R1/verify", data={"csrf_token": reviewer}).status_code == 409
    assert client.get("/api/agreement").json()["changed"] == 1
    assert client.post("/slides/S-R1/reopen", data={"csrf_token": reviewer, "note": "typo"},
                       follow_redirects=False).status_code == 303
    assert client.get("/api/slides/S-R1").json()["differential"] == "in review"
    assert client.post("/slides/S-R1/reopen", data={"csrf_token": reviewer},
                       headers={"Accept": "application/json"}).status_code == 409
    json_signed = client.post("/slides/S-R1/verify", data={"csrf_token": reviewer}, headers={"Accept": "application/json"})
    assert json_signed.status_code == 200 and json_signed.json()["differential"] == "verified"
    reopened = client.post("/slides/S-R1/reopen", data={"csrf_token": reviewer}, headers={"Accept": "application/json"})
    assert reopened.status_code == 200 and reopened.json()["differential"] == "in review"


@pytest.mark.parametrize(
    "headers, data, status, message",
    [
        ({}, {"label": "monocyte"}, 403, "CSRF"),
        ({}, {"label": "monocyte", "csrf_token": "forged"}, 403, "CSRF"),
        ({"Origin": "http://evil.example"}, {"label": "monocyte", "csrf_token": None}, 403, "cross-origin"),
        ({"Origin": "null"}, {"label": "monocyte", "csrf_token": None}, 403, "cross-origin"),
        ({}, {"label": "monocyte", "csrf_token": None, "reviewer": "x" * 65}, 403, "at most 64"),
        ({}, {"label": "blast", "csrf_token": None}, 400, "label must be one of"),
        ({}, {"csrf_token": None}, 400, "label must be one of"),
    ],
)
def test_refused_writes_change_nothing(client, reviewer, slides, headers, data, status, message):
    data = {k: (reviewer if k == "csrf_token" and v is None else v) for k, v in data.items()}
    cell = _cell_ids(client)[0]
    response = client.post(f"/slides/S-R1/cells/{cell}", data=data, headers={**headers, "Accept": "application/json"})
    assert response.status_code == status and message in response.json()["detail"]
    assert _history(slides) == []


def test_a_write_without_a_reviewer_name_is_refused(client):
    token = _csrf(client)
    cell = _cell_ids(client)[0]
    for path, data in ((f"/slides/S-R1/cells/{cell}", {"label": "monocyte"}), ("/slides/S-R1/verify", {}),
                       ("/slides/S-R1/reopen", {}), ("/reviewer", {"reviewer": "  "})):
        response = client.post(path, data={**data, "csrf_token": token}, headers={"Accept": "application/json"})
        assert response.status_code == 403 and "reviewer name is required" in response.json()["detail"], path
    html = client.post("/slides/S-R1/verify", data={"csrf_token": token})
    assert html.status_code == 403 and "enter your name first" in html.text


def test_writes_to_unknown_slides_and_cells_and_bad_bodies_are_refused(client, reviewer, slides):
    other = _cell_ids(client, "S-R2")[0]
    assert client.post(f"/slides/S-R1/cells/{other}", data={"label": "monocyte", "csrf_token": reviewer}).status_code == 404
    assert client.post("/slides/nope/verify", data={"csrf_token": reviewer}).status_code == 404
    bad_json = client.post(f"/slides/S-R2/cells/{other}", content=b"{", headers={
        "Content-Type": "application/json", "X-CSRF-Token": reviewer, "Accept": "application/json"})
    assert bad_json.status_code == 400 and "not valid JSON" in bad_json.json()["detail"]
    not_object = client.post(f"/slides/S-R2/cells/{other}", json=["monocyte"], headers={"X-CSRF-Token": reviewer})
    assert not_object.status_code == 400
    assert _history(slides, "S-R2") == []


def test_the_reviewer_form_only_redirects_inside_the_station(client):
    token = _csrf(client)
    for target, expected in (("/slides/S-R1", "/slides/S-R1"), ("//evil.example/x", "/"), ("https://evil.example", "/")):
        response = client.post("/reviewer", data={"reviewer": "Ann", "csrf_token": token, "next": target},
                               follow_redirects=False)
        assert response.headers["location"] == expected


# ---------------------------------------------------------------------- escaping


def test_ids_and_notes_cannot_inject_html(sqlite_review_db, tmp_path):
    from urllib.parse import quote

    _, factory = sqlite_review_db
    slide, patient = "S-<img src=x onerror=alert(1)>", 'P-"><svg onload=alert(2)>'
    store_review_slide(factory, tmp_path, slide, patient, notes="<script>alert(3)</script>")
    with TestClient(create_app(factory, allowed_hosts=("testserver",))) as client:
        pages = [client.get("/").text, client.get("/slides/" + quote(slide, safe="")).text,
                 client.get("/patients/" + quote(patient, safe="")).text, client.get("/agreement").text]
    for page in pages:
        assert "<script>alert" not in page and "<img src=x" not in page and "<svg" not in page
    assert "&lt;script&gt;alert(3)&lt;/script&gt;" in pages[1] and "S-&lt;img src=x onerror=alert(1)&gt;" in pages[1]
    assert "P-&#34;&gt;&lt;svg onload=alert(2)&gt;" in pages[2]
    assert 'href="/slides/S-%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E"' in pages[0]


# ---------------------------------------------------------------------- access


@pytest.fixture
def locked(slides):
    with TestClient(create_app(slides, token=TOKEN)) as test_client:
        yield test_client


def test_with_a_token_every_request_needs_it(locked):
    page = locked.get("/")
    assert page.status_code == 401 and "Access token" in page.text and page.headers["www-authenticate"] == "Bearer"
    api = locked.get("/api/slides")
    assert api.status_code == 401 and api.json() == {"detail": "a valid token is required"}
    assert locked.get("/api/slides", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert locked.get("/slides/S-R1/cells/1.png").status_code == 401
    assert locked.get("/api/slides", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert locked.get("/login").status_code == 200 and locked.get("/static/review.css").status_code == 200


def test_signing_in_with_the_token_sets_a_session_cookie(locked):
    token = re.search(r'name="csrf_token" value="([^"]+)"', locked.get("/login").text).group(1)
    wrong = locked.post("/login", data={"token": "nope", "csrf_token": token})
    assert wrong.status_code == 401 and "wrong token" in wrong.text
    right = locked.post("/login", data={"token": TOKEN, "csrf_token": token, "next": "/agreement"}, follow_redirects=False)
    assert right.status_code == 303 and right.headers["location"] == "/agreement"
    assert locked.get("/").status_code == 200
    assert locked.post("/login", data={"token": TOKEN}).status_code == 403  # no CSRF token


def test_a_bearer_client_writes_without_a_csrf_token(locked, slides):
    headers = {"Authorization": f"Bearer {TOKEN}", "Accept": "application/json"}
    cells = [c for c in review.slide_cells(slides(), "S-R1") if c.reviewable]
    response = locked.post(f"/slides/S-R1/cells/{cells[0].id}", json={"label": "monocyte", "reviewer": "lis"}, headers=headers)
    assert response.status_code == 200 and response.json()["cell"]["reviewed_by"] == "lis"
    assert locked.post("/slides/S-R1/verify", json={}, headers=headers).status_code == 403  # still needs a reviewer


def test_login_without_a_token_configured_just_goes_on(client):
    token = _csrf(client, "/login")
    assert client.post("/login", data={"token": "x", "csrf_token": token}, follow_redirects=False).status_code == 303


def test_only_loopback_host_names_reach_a_station_without_a_token(slides):
    with TestClient(create_app(slides)) as client:
        assert client.get("/", headers={"Host": "evil.example"}).status_code == 403
        assert client.get("/", headers={"Host": "127.0.0.1:8000"}).status_code == 200
        assert client.get("/", headers={"Host": "localhost"}).status_code == 200
        assert client.get("/", headers={"Host": "[::1]:8000"}).status_code == 200


@pytest.mark.parametrize("database_url", [pytest.param("postgresql", marks=pytest.mark.integration)], indirect=True)
def test_the_station_on_postgresql(tmp_path, database_url):
    from smearflow.db import make_engine, session_factory, upgrade_database

    upgrade_database(database_url)
    engine = make_engine(database_url)
    try:
        factory = session_factory(engine)
        store_review_slide(factory, tmp_path)
        with TestClient(create_app(factory, allowed_hosts=("testserver",))) as client:
            token = _csrf(client)
            client.post("/reviewer", data={"reviewer": "Ann", "csrf_token": token})
            cell = _cell_ids(client)[0]
            changed = client.post(f"/slides/S-R1/cells/{cell}", data={"label": "ig", "csrf_token": token},
                                  headers={"Accept": "application/json"})
            assert changed.status_code == 200
            assert client.post("/slides/S-R1/verify", data={"csrf_token": token}).status_code == 200
            assert client.get("/api/slides/S-R1").json()["verified_counts"]["ig"] == 1
            assert np.isclose(client.get("/api/agreement").json()["agreement"], 4 / 5)
    finally:
        engine.dispose()
