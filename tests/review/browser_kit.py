"""A review station on a real socket and a headless Chromium driven by Selenium (imported by module name).

Used by the browser test and by ``docs/make_screenshots.py``. Chromium and
chromedriver are Debian's (``.ci/run`` installs them); nothing is downloaded.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from contextlib import contextmanager

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
BROWSER_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-extensions", "--disable-sync",
)


@contextmanager
def running_station(application, deadline_s: float = 30.0):
    """Serve ``application`` on 127.0.0.1 (a port the system picks); yields its base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(application, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    limit = time.monotonic() + deadline_s
    while not server.started:
        if time.monotonic() > limit or not thread.is_alive():
            raise RuntimeError(f"the review station did not start within {deadline_s} s")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=deadline_s)
        sock.close()


@contextmanager
def chromium(profile_dir, width: int = 1280, height: int = 1000):
    """A headless Chromium with a fresh profile in ``profile_dir``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in BROWSER_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile_dir}")
    options.add_argument(f"--window-size={width},{height}")
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def full_page_screenshot(driver, path, width: int = 1280, max_height: int = 6000) -> None:
    """Resize the window to the page's height (at most ``max_height``) and save a PNG from the top of the page."""
    driver.set_window_size(width, 600)  # the document is at least as high as the window: start small
    height = driver.execute_script("return Math.max(document.body.scrollHeight, document.documentElement.scrollHeight)")
    driver.set_window_size(width, min(int(height) + 40, max_height))
    driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(str(path))
