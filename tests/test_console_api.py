"""What the console relies on, over plain HTTP: its files with a strict
Content-Security-Policy, `GET /api/v1/me`, and a task's payload with secrets
masked. (The console itself runs in a browser: test_console_browser.py.)"""

from __future__ import annotations

import aiohttp

from shared.security.api_keys import Scope
from tests.support.api import ApiClient
from tests.support.environment import TestEnvironment
from tests.support.fleet import Fleet
from tests.support.keys import bearer, create_key


async def test_the_console_is_served_with_a_policy_that_forbids_inline_and_foreign_scripts(
    fleet: Fleet, http: aiohttp.ClientSession,
) -> None:
    async with http.get(fleet.api_url + "/console") as page:
        assert page.status == 200 and page.content_type == "text/html"
        policy = page.headers["Content-Security-Policy"]
        html = await page.text()
    assert "script-src 'self';" in policy and "unsafe-inline" not in policy and "default-src 'none'" in policy
    assert '<script src="/console/console.js"' in html and "http" not in html.split("<body>")[0]
    async with http.get(fleet.api_url + "/console/console.js") as script:
        assert script.status == 200 and script.content_type == "text/javascript"
        assert "innerHTML" not in await script.text()  # everything from the API goes in as text
    async with http.get(fleet.api_url + "/console/..%2Fapp.py") as missing:
        assert missing.status == 404


async def test_me_says_what_the_key_may_do(
    fleet: Fleet, api: ApiClient, environment: TestEnvironment,
) -> None:
    status, anonymous = await api.call("GET", "/api/v1/me")
    assert status == 200 and anonymous["anonymous"] is True and anonymous["auth_required"] is False
    reader = await create_key(environment, "me reader", [Scope.TASKS_READ], kb_ids=["kb_me"])
    status, me = await api.call("GET", "/api/v1/me", headers=bearer(reader))
    assert status == 200, me
    assert me == {"name": "me reader", "anonymous": False, "scopes": ["tasks:read"], "kb_ids": ["kb_me"],
                  "auth_required": False}


async def test_a_tasks_payload_is_in_its_detail_with_secret_looking_values_masked(api: ApiClient) -> None:
    created = await api.submit({"task_type": "echo", "payload": {
        "file": "a.pdf", "source": {"password": "pw1", "access_token": "t0k", "max_tokens": 5, "token_count": 9},
        "items": [{"API-Key": "k"}]}})
    task = await api.get(created["task_id"])
    assert task["payload"] == {"file": "a.pdf", "items": [{"API-Key": "***"}], "source": {
        "password": "***", "access_token": "***", "max_tokens": 5, "token_count": 9}}
