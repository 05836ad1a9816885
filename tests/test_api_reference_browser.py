"""`/api/v1/docs` (Swagger UI on the api's own contract) in a real headless
browser: Debian's chromium through chromium-driver, against the session fleet.
The page must work offline: every request it makes stays on the api's origin,
and it renders the operations and a request body's schema from
/api/v1/openapi.json (decision 0190)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement

from tests.support.browser import chromium, wait_until
from tests.support.fleet import Fleet


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    with chromium() as session:
        yield session


def _operation(browser: WebDriver, method: str, path: str) -> WebElement | None:
    # Swagger UI draws each operation as a block holding its method and its path (data-path).
    for block in browser.find_elements(By.CSS_SELECTOR, f".opblock.opblock-{method.lower()}"):
        if block.find_elements(By.CSS_SELECTOR, f'.opblock-summary-path[data-path="{path}"]'):
            return block
    return None


def test_the_reference_renders_the_contract_offline_and_shows_the_submit_body(
    browser: WebDriver, fleet: Fleet, tmp_path: Path,
) -> None:
    browser.get(f"{fleet.api_url}/api/v1/docs")
    submit = wait_until(browser, lambda d: _operation(d, "POST", "/api/v1/tasks"),
                        "Swagger UI lists POST /api/v1/tasks")
    assert isinstance(submit, WebElement)
    tags = {t.get_attribute("data-tag") for t in browser.find_elements(By.CSS_SELECTOR, ".opblock-tag")}
    assert {"tasks", "operations", "reference"} <= tags, tags
    assert _operation(browser, "GET", "/api/v1/tasks/{task_id}") is not None

    # Open the operation and ask to try it: the editable body and the schema of TaskRequest.
    submit.find_element(By.CSS_SELECTOR, ".opblock-summary-control").click()
    try_out = wait_until(browser, lambda d: submit.find_elements(By.CSS_SELECTOR, ".try-out__btn"),
                         "the operation opens with a Try it out button")
    try_out[0].click()  # type: ignore[index]
    editor = wait_until(browser, lambda d: submit.find_elements(By.CSS_SELECTOR, "textarea.body-param__text"),
                        "Try it out shows an editable request body")
    assert '"task_type"' in editor[0].get_attribute("value")  # type: ignore[index]
    schema_tab = submit.find_element(By.CSS_SELECTOR, '.opblock-section-request-body button[data-name="model"]')
    schema_tab.click()
    model = wait_until(browser, lambda d: submit.find_elements(By.CSS_SELECTOR, ".opblock-section-request-body .model-box"),
                       "the Schema tab shows the request body's model")
    browser.save_screenshot(str(tmp_path / "api-reference.png"))
    assert "task_type" in model[0].text, model[0].text  # type: ignore[index]

    # Offline: everything the page loaded came from the api, and nothing was refused (a CSP
    # refusal or a failed load is a SEVERE console entry).
    loaded = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
        ".concat(performance.getEntriesByType('navigation').map(e => e.name))")
    assert loaded and all(url.startswith(fleet.api_url + "/") for url in loaded), loaded
    assert f"{fleet.api_url}/api/v1/openapi.json" in loaded
    severe = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe
