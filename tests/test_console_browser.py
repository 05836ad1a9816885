"""The operator console (`/console`) in a real headless browser: Debian's
chromium driven by chromium-driver through selenium, against the session fleet.

One browser for the module. Waits are selenium's (polling a condition), never
sleeps. Screenshots of each view go to the test's temporary folder (printed on
failure) and, with CONSOLE_SCREENSHOTS=DIR, to DIR.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from shared.security.api_keys import Scope
from tests.support.api import ApiClient
from tests.support.browser import WAIT_SECONDS, chromium, wait_until
from tests.support.environment import TestEnvironment
from tests.support.eventually import eventually
from tests.support.fleet import Fleet
from tests.support.keys import create_key


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    with chromium() as session:
        yield session


@pytest.fixture
def screenshots(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    extra = os.environ.get("CONSOLE_SCREENSHOTS")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        for shot in tmp_path.glob("*.png"):
            shutil.copy(shot, Path(extra) / shot.name)


def _row_status(browser: WebDriver, task_id: str) -> str | None:
    rows = browser.find_elements(By.CSS_SELECTOR, f'#task-rows tr[data-task-id="{task_id}"] [data-status]')
    return rows[0].text if rows else None


def _open(browser: WebDriver, fleet: Fleet, query: str, key: str | None = None) -> None:
    # The key goes into the origin's sessionStorage from a page of the same origin that runs no
    # script, so the console starts once, with it.
    browser.get(f"{fleet.api_url}/console/favicon.svg")
    browser.execute_script("sessionStorage.clear()")
    if key is not None:
        browser.execute_script("sessionStorage.setItem('tm.console.api_key', arguments[0])", key)
    browser.get(f"{fleet.api_url}/console?{query}")


def _kb() -> str:
    return f"kb_console_{uuid.uuid4().hex[:8]}"


def _severe_console_entries(browser: WebDriver) -> list[str]:
    # /favicon.ico is asked for by the blank page _open starts from (the console names its own icon).
    return [e["message"] for e in browser.get_log("browser")
            if e["level"] == "SEVERE" and "/favicon.ico " not in e["message"]]


async def test_the_list_shows_tasks_and_filters_by_status_through_the_url(
    browser: WebDriver, fleet: Fleet, api: ApiClient, screenshots: Path,
) -> None:
    kb = _kb()
    done = await api.run({"task_type": "echo", "kb_id": kb, "payload": {"n": 1}})
    waiting = await api.submit({"task_type": "sleep", "kb_id": kb, "payload": {"seconds": 60}})
    try:
        _open(browser, fleet, f"view=tasks&kb_id={kb}")
        wait_until(browser, lambda d: _row_status(d, done["task_id"]) == "completed", "the completed task is listed")
        wait_until(browser, lambda d: _row_status(d, waiting["task_id"]) is not None, "the sleeping task is listed")
        browser.save_screenshot(str(screenshots / "tasks.png"))

        # Filter by status with the form: the URL carries it, and a fresh load of that URL shows the same.
        Select(browser.find_element(By.ID, "filter-status")).select_by_value("completed")
        browser.find_element(By.ID, "apply").click()
        wait_until(browser, lambda d: "status=completed" in d.current_url, "the filter is in the URL")
        wait_until(browser, lambda d: _row_status(d, waiting["task_id"]) is None
              and _row_status(d, done["task_id"]) == "completed", "only the completed task is listed")
        browser.get(browser.current_url)
        wait_until(browser, lambda d: _row_status(d, done["task_id"]) == "completed", "the URL alone restores the list")
        assert _row_status(browser, waiting["task_id"]) is None
        assert Select(browser.find_element(By.ID, "filter-status")).first_selected_option.text == "completed"
        assert browser.find_element(By.ID, "filter-kb_id").get_attribute("value") == kb
        assert _severe_console_entries(browser) == []
    finally:
        await api.call("DELETE", f"/api/v1/tasks/{waiting['task_id']}")


async def test_the_detail_of_a_completed_task_shows_its_payload_result_and_timeline(
    browser: WebDriver, fleet: Fleet, api: ApiClient, screenshots: Path,
) -> None:
    task = await api.run({"task_type": "echo", "kb_id": _kb(), "payload": {"answer": 42, "api_key": "hunter2"}})
    _open(browser, fleet, f"view=task&id={task['task_id']}")
    wait_until(browser, lambda d: '"answer": 42' in d.find_element(By.ID, "task-result").text, "the result is shown")
    wait_until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, '#timeline tr[data-event="task.completed"]'),
          "the timeline has the completion from the event log")
    payload = browser.find_element(By.ID, "task-payload").text
    assert '"answer": 42' in payload and '"api_key": "***"' in payload
    assert "hunter2" not in browser.find_element(By.TAG_NAME, "body").text  # the echoed result is masked too
    assert browser.find_element(By.CSS_SELECTOR, "[data-field=status] [data-status]").text == "completed"
    browser.save_screenshot(str(screenshots / "task.png"))


async def test_a_task_submitted_while_the_page_is_open_appears_and_completes_without_a_reload(
    browser: WebDriver, fleet: Fleet, api: ApiClient,
) -> None:
    kb = _kb()
    _open(browser, fleet, f"view=tasks&kb_id={kb}")
    wait_until(browser, lambda d: d.find_element(By.ID, "live-state").text == "live", "the event stream is open")
    browser.execute_script("window.__sameDocument = true")
    created = await api.submit({"task_type": "echo", "kb_id": kb, "payload": {"live": True}})
    wait_until(browser, lambda d: _row_status(d, created["task_id"]) == "completed", "the new task shows up completed")
    assert browser.execute_script("return window.__sameDocument") is True  # no reload happened

    # Paused: a task submitted now does not show up until live updates resume.
    browser.find_element(By.ID, "pause").click()
    wait_until(browser, lambda d: d.find_element(By.ID, "live-state").text == "paused", "paused")
    later = await api.run({"task_type": "echo", "kb_id": kb, "payload": {"live": False}})
    assert _row_status(browser, later["task_id"]) is None
    browser.find_element(By.ID, "pause").click()
    wait_until(browser, lambda d: _row_status(d, later["task_id"]) == "completed", "resuming catches up")


async def test_cancel_then_retry_from_the_page_change_the_task_in_the_api(
    browser: WebDriver, fleet: Fleet, api: ApiClient, screenshots: Path,
) -> None:
    created = await api.submit({"task_type": "sleep", "kb_id": _kb(), "payload": {"seconds": 60}})
    task_id = created["task_id"]
    try:
        _open(browser, fleet, f"view=task&id={task_id}")
        # A long task announces its start, with the worker running it, on the timeline.
        wait_until(browser, lambda d: any(c.text for c in d.find_elements(
            By.CSS_SELECTOR, '#timeline tr[data-event="task.started"] td.mono')), "the worker on the timeline")
        wait_until(browser, lambda d: d.find_elements(By.ID, "cancel"), "a cancel button")
        browser.find_element(By.ID, "cancel").click()
        await api.wait_for(task_id, {"cancelled"})
        wait_until(browser, lambda d: d.find_elements(By.ID, "retry"), "a retry button once cancelled")
        browser.save_screenshot(str(screenshots / "task-cancelled.png"))
        browser.find_element(By.ID, "retry").click()

        async def second_run() -> None:
            task = await api.get(task_id)
            assert task["run"] == 2 and task["status"] in {"queued", "processing"}, task
        await eventually(second_run, timeout=WAIT_SECONDS)
    finally:
        await api.call("DELETE", f"/api/v1/tasks/{task_id}")


async def test_cancel_all_matching_shows_the_count_then_cancels_once_confirmed(
    browser: WebDriver, fleet: Fleet, api: ApiClient, screenshots: Path,
) -> None:
    kb = _kb()
    ids = [(await api.submit({"task_type": "echo", "kb_id": kb, "delay_seconds": 3600}))["task_id"] for _ in range(2)]
    _open(browser, fleet, f"view=tasks&kb_id={kb}")
    wait_until(browser, lambda d: all(_row_status(d, i) == "scheduled" for i in ids), "the scheduled tasks listed")
    browser.find_element(By.ID, "bulk-cancel").click()
    wait_until(browser, lambda d: d.find_elements(By.ID, "bulk-count"), "the preview count")
    assert browser.find_element(By.ID, "bulk-count").text == "2"
    assert {(await api.get(i))["status"] for i in ids} == {"scheduled"}, "the preview changed nothing"
    browser.save_screenshot(str(screenshots / "tasks-bulk-confirm.png"))
    browser.find_element(By.ID, "bulk-confirm").click()
    for task_id in ids:
        await api.wait_for(task_id, {"cancelled"})
    wait_until(browser, lambda d: all(_row_status(d, i) == "cancelled" for i in ids), "the list shows them cancelled")


async def test_a_hostile_payload_is_shown_as_text_and_never_runs(
    browser: WebDriver, fleet: Fleet, api: ApiClient,
) -> None:
    hostile = {"a": "<script>window.__pwned = 1</script>", "b": "<img src=x onerror=\"window.__pwned = 2\">",
               "c": "</pre><svg onload=\"window.__pwned = 3\">"}
    task = await api.run({"task_type": "echo", "kb_id": _kb(), "payload": hostile})
    _open(browser, fleet, f"view=task&id={task['task_id']}")
    wait_until(browser, lambda d: "<script>" in d.find_element(By.ID, "task-result").text, "the result is shown as text")
    assert "<img src=x onerror" in browser.find_element(By.ID, "task-payload").text
    assert browser.find_elements(By.CSS_SELECTOR, "main img, main svg, main script") == []
    assert browser.execute_script("return window.__pwned === undefined") is True


async def test_a_read_only_key_sees_no_action_buttons(
    browser: WebDriver, fleet: Fleet, environment: TestEnvironment, api: ApiClient,
) -> None:
    reader = await create_key(environment, "console reader", [Scope.TASKS_READ])
    created = await api.submit({"task_type": "sleep", "kb_id": _kb(), "payload": {"seconds": 60}})
    try:
        _open(browser, fleet, f"view=task&id={created['task_id']}", key=reader)
        wait_until(browser, lambda d: d.find_elements(By.ID, "read-only"), "the read-only note")
        assert "console reader" in browser.find_element(By.ID, "who").text
        assert browser.find_elements(By.CSS_SELECTOR, "#actions button") == []
        _open(browser, fleet, "view=tasks", key=reader)
        wait_until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#task-rows tr"), "the list")
        assert browser.find_elements(By.CSS_SELECTOR, "#bulk button") == []
    finally:
        await api.call("DELETE", f"/api/v1/tasks/{created['task_id']}")


async def test_a_dead_letter_is_requeued_from_the_page(
    browser: WebDriver, fleet: Fleet, api: ApiClient, screenshots: Path,
) -> None:
    task = await api.run({"task_type": "fail", "kb_id": _kb(), "retry_limit": 0, "payload": {"fail_times": 1}})
    task_id = task["task_id"]
    try:
        _open(browser, fleet, "view=dlq")
        button = f'#dlq-rows tr[data-task-id="{task_id}"] button.requeue'
        wait_until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, button), "the dead letter with a requeue button")
        browser.save_screenshot(str(screenshots / "dead-letters.png"))
        browser.find_element(By.CSS_SELECTOR, button).click()

        async def second_run() -> None:
            assert (await api.get(task_id))["run"] == 2
        await eventually(second_run, timeout=WAIT_SECONDS)
        wait_until(browser, lambda d: "Requeued" in d.find_element(By.ID, "message").text, "the page says so")
    finally:
        # `fail` fails the new run's first attempt too: leave the session's tm.dead as it was.
        async def purged() -> None:
            status, report = await api.call("POST", "/api/v1/dlq/purge", json={"task_ids": [task_id]})
            assert status == 200 and report["purged"] >= 1, report
        await eventually(purged, timeout=WAIT_SECONDS)


async def test_opening_and_reloading_pages_again_and_again_keeps_working(browser: WebDriver, fleet: Fleet) -> None:
    """Each page's stream must end with the page: left to the browser, a few pages and
    reloads used up its six connections to the api and the next page never loaded."""
    for _ in range(6):
        browser.get(f"{fleet.api_url}/console?view=tasks&kb_id={_kb()}")
        wait_until(browser, lambda d: d.find_element(By.ID, "live-state").text == "live", "the stream is open")
        browser.refresh()
        wait_until(browser, lambda d: d.find_element(By.ID, "live-state").text == "live", "the stream is open")
