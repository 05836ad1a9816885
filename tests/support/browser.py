"""A headless Debian chromium driven by chromium-driver (selenium), for the
console's tests (decision 0143). Selenium's own driver download never runs: the
driver and the browser are the Debian packages' (make system-packages)."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

WAIT_SECONDS = 30


@contextlib.contextmanager
def chromium() -> Iterator[WebDriver]:
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver):
        message = "the console's browser tests need Debian's chromium and chromium-driver (make system-packages)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI installs them (.ci/run): absent there is a fault, not a skip
        pytest.skip(message)
    options = Options()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1400,1000", "--disable-extensions", "--no-first-run"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    session = webdriver.Chrome(service=Service(driver), options=options)
    session.set_page_load_timeout(WAIT_SECONDS)
    try:
        yield session
    finally:
        session.quit()


def wait_until(browser: WebDriver, condition: object, message: str) -> object:
    """`condition(browser)`'s first truthy value, polled for up to 30 s; on a timeout, an
    AssertionError with what the operator would have seen."""
    def check(driver: WebDriver) -> object:
        try:
            return condition(driver)  # type: ignore[operator]
        except StaleElementReferenceException:
            return False  # the view re-rendered between find and read: look again
    try:
        return WebDriverWait(browser, WAIT_SECONDS, poll_frequency=0.1).until(check, message)
    except TimeoutException:
        # What the operator would have seen: the alert line and the page's text.
        page = browser.execute_script(
            "return [document.getElementById('message')?.textContent, document.body.innerText.slice(0, 2000)]")
        logs = browser.get_log("browser")
        raise AssertionError(f"{message}: not seen in {WAIT_SECONDS}s at {browser.current_url}\n"
                             f"alert: {page[0]!r}\npage: {page[1]}\nbrowser log: {logs}") from None
