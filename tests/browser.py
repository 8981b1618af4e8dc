"""A real browser for the tests: Debian's headless chromium driven by selenium.

The tests look at pages as a person would (MLflow's UI, the report page) and fail on what a
person would see go wrong: a console error, an image that did not render. Chromium and its
driver come from Debian (`.ci/run` installs them); selenium manager, which would otherwise
download a browser of its own, is kept offline.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
PAGE_LOAD_S = 60.0  # a page from a local server on a shared 2-core machine
FLAGS = (
    "--headless", "--no-sandbox",  # root in a container: chromium's sandbox needs namespaces we don't have
    "--disable-gpu", "--disable-quic", "--no-first-run",
    # Nothing but the page under test may reach the network (none is reachable here anyway,
    # and a background fetch that fails would add console noise unrelated to the page).
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)
IMAGES_NOT_RENDERED = """
return Array.from(document.images)
  .filter(img => !img.complete || img.naturalWidth === 0)
  .map(img => img.currentSrc || img.src || img.outerHTML);
"""

if TYPE_CHECKING:  # selenium is a dev dependency, imported where a browser starts
    from selenium.webdriver.remote.webdriver import WebDriver


@contextlib.contextmanager
def chromium(width: int = 1400, height: int = 900) -> Iterator[WebDriver]:
    """Headless chromium with a fresh profile and the browser console recorded. Fails (never
    skips) when chromium or its driver is missing: a test that needs a browser and ran none
    proved nothing."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    assert not missing, f"{', '.join(missing)} missing: apt-get install chromium chromium-driver (.ci/run does)"
    os.environ["SE_OFFLINE"] = "true"  # selenium manager must not try to download a driver or a browser
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
        try:
            driver.set_page_load_timeout(PAGE_LOAD_S)
            yield driver
        finally:
            driver.quit()


def console_messages(driver: WebDriver, level: str = "SEVERE") -> list[str]:
    """The browser console's messages of `level` since the last call (chromium hands each
    message out once)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == level]


def wait_for(condition: Callable[[], object], timeout_s: float, what: str, poll_s: float = 0.25) -> object:
    """Poll `condition` until it returns something truthy; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        if value := condition():
            return value
        assert time.monotonic() < deadline, f"not seen in {timeout_s:.0f} s: {what}"
        time.sleep(poll_s)


def page_problems(driver: WebDriver, url: str, timeout_s: float = PAGE_LOAD_S) -> list[str]:
    """Load `url` (file:// or http://127.0.0.1) and return what went wrong: every SEVERE
    console message and every <img> that did not render (not complete, or no pixels)."""
    console_messages(driver)  # drop what an earlier page left in the log
    driver.get(url)
    wait_for(lambda: driver.execute_script("return document.readyState") == "complete", timeout_s,
             f"{url} loaded")
    broken = driver.execute_script(IMAGES_NOT_RENDERED)
    return [f"console: {m}" for m in console_messages(driver)] + [f"image not rendered: {src}" for src in broken]
