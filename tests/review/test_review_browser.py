"""End to end in a real headless Chromium: open a slide, reclassify a cell, see the count change, sign off."""

from __future__ import annotations

import pytest
from browser_kit import CHROMEDRIVER, CHROMIUM, chromium, running_station
from review_testkit import store_review_slide

from smearflow.db import review
from smearflow.db.engine import session_scope
from smearflow.review.app import create_app

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not (CHROMIUM and CHROMEDRIVER), reason="chromium and chromedriver are not installed (.ci/run installs them)"
    ),
]


def _wait_for_text(driver, element_id, text, timeout_s=20):
    """Wait until the element shows ``text``; across a page load the old page's element goes stale: look again."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout_s, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)).until(
        lambda d: d.find_element(By.ID, element_id).text == text
    )


def test_a_reviewer_reclassifies_cells_by_click_and_key_and_signs_off(sqlite_review_db, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.expected_conditions import staleness_of
    from selenium.webdriver.support.ui import WebDriverWait

    _, factory = sqlite_review_db
    store_review_slide(factory, tmp_path / "inbox", notes="<script>alert('notes')</script>")
    with session_scope(factory) as session:
        cells = sorted((c for c in review.slide_cells(session, "S-R1") if c.reviewable), key=lambda c: c.confidence)
    neutrophil = next(c for c in cells if c.label == "neutrophil")
    monocyte = next(c for c in cells if c.label == "monocyte")

    with running_station(create_app(factory)) as url, chromium(tmp_path / "profile") as driver:
        driver.get(f"{url}/slides/S-R1")
        assert driver.find_element(By.ID, "notes").text == "<script>alert('notes')</script>"  # shown, not run
        name = driver.find_element(By.ID, "reviewer-name")
        name.send_keys("Ann")
        name.submit()
        WebDriverWait(driver, 20).until(staleness_of(name))  # the page came back with the reviewer set
        _wait_for_text(driver, "current-count-neutrophil", "3")
        assert driver.find_element(By.ID, "reviewer-name").get_attribute("value") == "Ann"

        # one click: the least confident neutrophil is a lymphocyte
        tile = driver.find_element(By.ID, f"cell-{neutrophil.id}")
        tile.find_element(By.CSS_SELECTOR, "button[value=lymphocyte]").click()
        _wait_for_text(driver, "current-count-neutrophil", "2")
        _wait_for_text(driver, "current-count-lymphocyte", "2")
        _wait_for_text(driver, "state", "in review")
        assert driver.find_element(By.ID, f"final-{neutrophil.id}").text == "reviewer: lymphocyte"

        # one key: select the monocyte and press "a" (artefact)
        driver.find_element(By.ID, f"cell-{monocyte.id}").find_element(By.TAG_NAME, "img").click()
        driver.switch_to.active_element.send_keys("a")
        _wait_for_text(driver, "artefact-count", "1")
        _wait_for_text(driver, "current-count-monocyte", "0")

        # the page shows what the database holds after a reload, then the slide is signed off
        state = driver.find_element(By.ID, "state")
        driver.refresh()
        WebDriverWait(driver, 20).until(staleness_of(state))
        _wait_for_text(driver, "current-count-neutrophil", "2")
        driver.find_element(By.ID, "verify").click()
        _wait_for_text(driver, "state", "verified")

    with session_scope(factory) as session:
        stored = review.stored_slide(session, "S-R1")
        figures = review.agreement(session)
    assert stored.differential == "verified" and stored.verified_by == "Ann"
    assert stored.reviewed_counts == {"lymphocyte": 2, "neutrophil": 2} and stored.artefacts == 1
    assert (figures["cells"], figures["changed"]) == (5, 2)
