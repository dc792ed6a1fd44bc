"""Take the screenshots in docs/images/ with a real headless Chromium: the review station and a slide report.

    python docs/make_screenshots.py [--out docs/images]

Runs ``smearflow demo`` into a temporary folder (the packaged model), starts
the review station on a free loopback port, sets a reviewer, reclassifies the
least confident cell of DEMO-SLIDE-002 by clicking, signs the slide off, and
saves PNGs of the slide's review page, the slide list, the agreement page and
the slide's report (written after the sign-off). Needs Debian's chromium
and chromium-driver (``.ci/run`` installs them); the browser helpers are the
browser test's (``tests/review/browser_kit.py``).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "review"))

SLIDE = "DEMO-SLIDE-002"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    args = parser.parse_args()

    from browser_kit import chromium, full_page_screenshot, running_station
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.expected_conditions import staleness_of
    from selenium.webdriver.support.ui import WebDriverWait

    from smearflow.db import make_engine, session_factory
    from smearflow.review.app import create_app

    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="smearflow-screens-"))
    try:
        url = f"sqlite:///{work / 'smearflow.db'}"
        smearflow = [sys.executable, "-m", "smearflow"]
        subprocess.run([*smearflow, "demo", "--out", str(work / "demo"), "--database-url", url], check=True,
                       capture_output=True)
        engine = make_engine(url)
        with running_station(create_app(session_factory(engine))) as base, chromium(work / "profile") as driver:
            driver.get(f"{base}/slides/{SLIDE}")
            name = driver.find_element(By.ID, "reviewer-name")
            name.send_keys("A. Reviewer")
            name.submit()
            WebDriverWait(driver, 20).until(staleness_of(name))
            tile = driver.find_elements(By.CSS_SELECTOR, ".tile.uncertain")
            tile = tile[0] if tile else driver.find_elements(By.CSS_SELECTOR, ".tile")[0]
            current = next(b for b in tile.find_elements(By.CSS_SELECTOR, "button") if "current" in b.get_attribute("class"))
            target = "monocyte" if current.get_attribute("value") != "monocyte" else "lymphocyte"
            tile.find_element(By.CSS_SELECTOR, f"button[value={target}]").click()
            WebDriverWait(driver, 20).until(lambda d: d.find_element(By.ID, "state").text == "in review")
            full_page_screenshot(driver, args.out / "review-slide.png")
            driver.find_element(By.ID, "verify").click()
            WebDriverWait(driver, 20, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)).until(
                lambda d: d.find_element(By.ID, "state").text == "verified"
            )
            driver.get(f"{base}/")
            full_page_screenshot(driver, args.out / "review-slides.png")
            driver.get(f"{base}/agreement")
            full_page_screenshot(driver, args.out / "review-agreement.png")
            subprocess.run([*smearflow, "report", SLIDE, "--out", str(work / "report"), "--database-url", url],
                           check=True, capture_output=True)
            driver.get((work / "report" / "report.html").as_uri())
            full_page_screenshot(driver, args.out / "slide-report.png", max_height=2200)
        engine.dispose()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for path in sorted(args.out.glob("*.png")):
        print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


if __name__ == "__main__":
    main()
