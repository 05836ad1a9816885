"""API keys against the real api with AUTH_REQUIRED=true: 401/403/404 shapes,
every scope on every endpoint, and two tenants that cannot see each other."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

import aiohttp
import pytest
import pytest_asyncio
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from shared.security.api_keys import Scope
from tests.support.api import ApiClient
from tests.support.browser import chromium, wait_until
from tests.support.environment import TestEnvironment, create_environment, destroy_environment
from tests.support.fleet import Fleet, log_dir
from tests.support.keys import bearer, create_key, revoke_key

METRICS_TOKEN = "metrics-token-" + "m" * 32
KB_A, KB_B = "kb_tenant_a", "kb_tenant_b"
READ, WRITE, ADMIN = Scope.TASKS_READ, Scope.TASKS_WRITE, Scope.ADMIN


@dataclass
class Secured:
    environment: TestEnvironment
    fleet: Fleet
    keys: dict[str, str]

    def client(self, http: aiohttp.ClientSession, key: str | None = None) -> ApiClient:
        return KeyedClient(self.fleet.api_url, http, self.keys[key] if key else None)


class KeyedClient(ApiClient):
    def __init__(self, base_url: str, session: aiohttp.ClientSession, token: str | None) -> None:
        super().__init__(base_url, session)
        self.token = token

    async def call(self, method: str, path: str, **kwargs):  # type: ignore[no-untyped-def, override]
        if self.token:
            kwargs["headers"] = {**bearer(self.token), **kwargs.get("headers", {})}
        return await super().call(method, path, **kwargs)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def secured(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Secured]:
    env = await create_environment("auth")
    keys = {
        "tenant_a": await create_key(env, "tenant a", [READ, WRITE], kb_ids=[KB_A]),
        "tenant_b": await create_key(env, "tenant b", [READ, WRITE], kb_ids=[KB_B]),
        "reader_a": await create_key(env, "reader a", [READ], kb_ids=[KB_A]),
        "writer_only": await create_key(env, "writer only", [WRITE]),
        "all_kbs": await create_key(env, "every kb", [READ, WRITE]),
        "admin": await create_key(env, "operator", [ADMIN]),
        "expired": await create_key(env, "expired", [READ], expires_in=timedelta(seconds=-1)),
    }
    fleet = Fleet(env, log_dir(tmp_path_factory.mktemp("secured")))
    common = {"AUTH_REQUIRED": "true", "API_KEY_CACHE_SECONDS": "0", "METRICS_TOKEN": METRICS_TOKEN}
    fleet.add_api(**common)
    fleet.add_worker(**common)
    fleet.add_dispatcher(**common)
    await fleet.start()
    yield Secured(env, fleet, keys)
    fleet.stop()
    await destroy_environment(env)


# Every route (including ones other modules add later: their rules already exist).
ENDPOINTS = [
    ("POST", "/api/v1/tasks", {"task_type": "echo", "kb_id": KB_A}),
    ("POST", "/api/v1/tasks/batch", {"tasks": [{"task_type": "echo", "kb_id": KB_A}]}),
    ("GET", "/api/v1/tasks", None),
    ("GET", f"/api/v1/tasks/{uuid.uuid4()}", None),
    ("DELETE", f"/api/v1/tasks/{uuid.uuid4()}", None),
    ("GET", "/api/v1/dlq", None),
    ("POST", "/api/v1/dlq/replay", {"task_ids": [str(uuid.uuid4())]}),
    ("POST", "/api/v1/dlq/purge", {"task_ids": [str(uuid.uuid4())]}),
]

# Which key may pass the access check of which endpoint (it may still get 404/409/422).
ALLOWED = {
    "tenant_a": {"POST /api/v1/tasks", "POST /api/v1/tasks/batch", "GET /api/v1/tasks", "GET /api/v1/tasks/{id}",
                 "DELETE /api/v1/tasks/{id}"},
    "reader_a": {"GET /api/v1/tasks", "GET /api/v1/tasks/{id}"},
    "writer_only": {"POST /api/v1/tasks", "POST /api/v1/tasks/batch", "DELETE /api/v1/tasks/{id}"},
    "admin": {"GET /api/v1/dlq", "POST /api/v1/dlq/replay", "POST /api/v1/dlq/purge"},
}


def _label(method: str, path: str) -> str:
    parts = path.split("/")
    if len(parts) == 5 and parts[3] == "tasks" and parts[4] != "batch":
        path = "/api/v1/tasks/{id}"
    return f"{method} {path}"


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS + [
    ("POST", "/api/v1/uploads", None), ("GET", "/api/v1/stats/workers", None),
    ("POST", f"/api/v1/kbs/{KB_A}/search", {"query": "x"}), ("GET", "/api/v1/not-a-route", None),
])
async def test_a_request_without_a_key_is_401_everywhere_under_api(
    secured: Secured, http: aiohttp.ClientSession, method: str, path: str, body: object
) -> None:
    async with http.request(method, secured.fleet.api_url + path, json=body) as response:
        assert response.status == 401, await response.text()
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="taskmgr"'
        error = (await response.json())["error"]
    assert error["code"] == "unauthorized" and "Authorization: Bearer" in error["message"]


@pytest.mark.parametrize("header", [
    "Bearer tmk_0000000000000000_" + "A" * 43,  # well-formed, unknown
    "Bearer not-a-key",
    "Basic dXNlcjpwYXNz",
    "Bearer ",
])
async def test_a_wrong_key_is_401_and_never_echoed(secured: Secured, http: aiohttp.ClientSession, header: str) -> None:
    async with http.get(secured.fleet.api_url + "/api/v1/tasks", headers={"Authorization": header}) as response:
        assert response.status == 401
        assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
        text = await response.text()
    secret = header.partition(" ")[2]
    assert not secret.strip() or secret not in text


async def test_expired_and_revoked_keys_are_refused(secured: Secured, http: aiohttp.ClientSession) -> None:
    status, _ = await secured.client(http, "expired").call("GET", "/api/v1/tasks")
    assert status == 401
    token = await create_key(secured.environment, "short-lived", [READ])
    client = KeyedClient(secured.fleet.api_url, http, token)
    assert (await client.call("GET", "/api/v1/tasks"))[0] == 200
    await revoke_key(secured.environment, token)
    status, error = await client.call("GET", "/api/v1/tasks")
    assert status == 401 and error["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("key", sorted(ALLOWED))
@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
async def test_every_scope_on_every_endpoint(
    secured: Secured, http: aiohttp.ClientSession, key: str, method: str, path: str, body: object
) -> None:
    status, answer = await secured.client(http, key).call(method, path, json=body)
    if _label(method, path) in ALLOWED[key]:
        assert status not in (401, 403), (key, method, path, answer)
    else:
        assert status == 403, (key, method, path, status, answer)
        assert answer["error"]["code"] == "forbidden" and "scope" in answer["error"]["message"]


async def test_a_tenant_cannot_read_cancel_list_or_even_detect_another_tenants_task(
    secured: Secured, http: aiohttp.ClientSession
) -> None:
    a, b = secured.client(http, "tenant_a"), secured.client(http, "tenant_b")
    created = await a.submit({"task_type": "sleep", "kb_id": KB_A, "payload": {"seconds": 30}})
    task_id = created["task_id"]
    assert (await a.call("GET", f"/api/v1/tasks/{task_id}"))[0] == 200

    missing_id = str(uuid.uuid4())
    for method in ("GET", "DELETE"):
        theirs = await b.call(method, f"/api/v1/tasks/{task_id}")
        nobody = await b.call(method, f"/api/v1/tasks/{missing_id}")
        assert theirs[0] == nobody[0] == 404
        # Same code, same wording: the answer does not tell "exists elsewhere" from "never existed".
        assert theirs[1]["error"]["code"] == nobody[1]["error"]["code"] == "not_found"
        assert theirs[1]["error"]["message"].replace(task_id, "X") == nobody[1]["error"]["message"].replace(
            missing_id, "X")
    assert (await a.call("GET", f"/api/v1/tasks/{task_id}"))[1]["status"] in ("queued", "processing")

    _, listed = await b.call("GET", "/api/v1/tasks?limit=200")
    assert task_id not in {t["task_id"] for t in listed["items"]}
    assert all(t["kb_id"] == KB_B for t in listed["items"])
    _, filtered = await b.call("GET", f"/api/v1/tasks?kb_id={KB_A}")
    assert filtered == {"items": [], "next_cursor": None}
    _, own = await a.call("GET", f"/api/v1/tasks?kb_id={KB_A}")
    assert task_id in {t["task_id"] for t in own["items"]}
    assert (await a.call("DELETE", f"/api/v1/tasks/{task_id}"))[0] in (200, 202)


async def test_a_tenant_cannot_submit_into_another_kb_or_without_one(
    secured: Secured, http: aiohttp.ClientSession
) -> None:
    b = secured.client(http, "tenant_b")
    status, error = await b.call("POST", "/api/v1/tasks", json={"task_type": "echo", "kb_id": KB_A})
    assert status == 403 and error["error"]["details"][0]["field"] == "kb_id"
    status, error = await b.call("POST", "/api/v1/tasks", json={"task_type": "echo"})
    assert status == 403 and "kb_id is required" in error["error"]["message"]

    status, batch = await b.call("POST", "/api/v1/tasks/batch", json={"tasks": [
        {"task_type": "echo", "kb_id": KB_B}, {"task_type": "echo", "kb_id": KB_A}, {"task_type": "echo"},
    ]})
    assert status == 207, batch
    ok, other_kb, no_kb = batch["results"]
    assert ok["ok"] is True
    assert other_kb["ok"] is False and other_kb["error"]["code"] == "forbidden"
    assert no_kb["ok"] is False and no_kb["error"]["code"] == "forbidden"
    _, listed = await secured.client(http, "tenant_a").call("GET", f"/api/v1/tasks?kb_id={KB_A}&limit=200")
    assert ok["task_id"] not in {t["task_id"] for t in listed["items"]}


async def test_idempotency_keys_are_per_api_key(secured: Secured, http: aiohttp.ClientSession) -> None:
    a, b = secured.client(http, "tenant_a"), secured.client(http, "tenant_b")
    key = {"Idempotency-Key": f"same-{uuid.uuid4()}"}
    first = await a.submit({"task_type": "echo", "kb_id": KB_A}, headers=key)
    again = await a.call("POST", "/api/v1/tasks", json={"task_type": "echo", "kb_id": KB_A}, headers=key)
    assert again[0] == 200 and again[1]["task_id"] == first["task_id"]
    # Another key with the same Idempotency-Key neither sees nor collides with the first task.
    other = await b.call("POST", "/api/v1/tasks", json={"task_type": "echo", "kb_id": KB_B}, headers=key)
    assert other[0] == 201 and other[1]["task_id"] != first["task_id"]


async def test_an_unrestricted_key_sees_every_kb_and_admin_is_separate(
    secured: Secured, http: aiohttp.ClientSession
) -> None:
    created = await secured.client(http, "tenant_a").submit({"task_type": "echo", "kb_id": KB_A})
    everyone = secured.client(http, "all_kbs")
    assert (await everyone.call("GET", f"/api/v1/tasks/{created['task_id']}"))[0] == 200
    assert (await secured.client(http, "admin").call("GET", f"/api/v1/tasks/{created['task_id']}"))[0] == 403
    assert (await secured.client(http, "admin").call("GET", "/api/v1/dlq"))[0] == 200


async def test_a_body_over_the_limit_is_413_for_a_valid_key_and_401_without(
    secured: Secured, http: aiohttp.ClientSession
) -> None:
    big = {"task_type": "echo", "kb_id": KB_A, "payload": {"blob": "x" * 2_000_000}}
    status, error = await secured.client(http, "tenant_a").call("POST", "/api/v1/tasks", json=big)
    assert status == 413 and error["error"]["code"] == "payload_too_large"
    assert (await secured.client(http).call("POST", "/api/v1/tasks", json=big))[0] == 401


async def test_health_stays_open_and_metrics_need_the_metrics_token(
    secured: Secured, http: aiohttp.ClientSession
) -> None:
    base = secured.fleet.api_url
    for path in ("/health", "/health/live", "/health/ready", "/api/v1/openapi.json", "/api/v1/docs"):
        async with http.get(base + path) as response:
            assert response.status == 200, path
    async with http.get(base + "/metrics") as response:
        assert response.status == 401
    async with http.get(base + "/metrics", headers=bearer(secured.keys["admin"])) as response:
        assert response.status == 401, "an API key is not the metrics token"
    async with http.get(base + "/metrics", headers=bearer(METRICS_TOKEN)) as response:
        assert response.status == 200 and "tasks_submitted_total" in await response.text()
    worker = next(p for p in secured.fleet.processes if p.name.startswith("worker"))
    metrics_url = worker.ready_url.replace("/health/ready", "/metrics")  # type: ignore[union-attr]
    async with http.get(metrics_url) as response:
        assert response.status == 401
    async with http.get(metrics_url, headers=bearer(METRICS_TOKEN)) as response:
        assert response.status == 200


def _taskmgr(env: TestEnvironment, *args: str) -> subprocess.CompletedProcess[str]:
    taskmgr = os.path.join(os.path.dirname(sys.executable), "taskmgr")
    return subprocess.run([taskmgr, *args], env=env.env, capture_output=True, text=True, timeout=60, check=False)


async def test_taskmgr_keys_create_shows_the_key_once_then_list_and_revoke(
    secured: Secured, http: aiohttp.ClientSession
) -> None:
    import json

    made = _taskmgr(secured.environment, "keys", "create", "--name", "cli key", "--scopes", "tasks:read",
                    "--kb", KB_A, "--expires", "90d")
    assert made.returncode == 0, made.stderr
    created = json.loads(made.stdout)
    assert created["key"].startswith("tmk_") and created["kb_ids"] == [KB_A] and created["expires_at"]
    client = KeyedClient(secured.fleet.api_url, http, created["key"])
    assert (await client.call("GET", "/api/v1/tasks"))[0] == 200

    listed = _taskmgr(secured.environment, "keys", "list")
    assert listed.returncode == 0 and created["id"] in listed.stdout
    assert created["key"].split("_", 2)[2] not in listed.stdout, "the secret is never shown again"

    assert _taskmgr(secured.environment, "keys", "revoke", created["id"]).returncode == 0
    assert (await client.call("GET", "/api/v1/tasks"))[0] == 401
    refused = _taskmgr(secured.environment, "keys", "create", "--name", "x", "--scopes", "admin", "--kb", KB_A)
    assert refused.returncode == 1 and "cannot be restricted" in refused.stderr
    refused = _taskmgr(secured.environment, "keys", "create", "--name", "x", "--scopes", "tasks:everything")
    assert refused.returncode == 1 and "unknown scope" in refused.stderr


async def test_the_console_asks_for_a_key_and_shows_what_the_key_may_see(
    secured: Secured, http: aiohttp.ClientSession,
) -> None:
    """AUTH_REQUIRED in a real browser: the console asks for a key, says why a wrong
    one is refused, keeps a good one for the tab, and shows only its kb's tasks."""
    mine = await secured.client(http, "tenant_a").submit({"task_type": "echo", "kb_id": KB_A})
    theirs = await secured.client(http, "tenant_b").submit({"task_type": "echo", "kb_id": KB_B})
    rows = '#task-rows tr[data-task-id="{}"]'
    with chromium() as browser:
        browser.get(f"{secured.fleet.api_url}/console?view=tasks")
        wait_until(browser, lambda d: d.find_elements(By.ID, "api-key"), "the key form")
        browser.find_element(By.ID, "api-key").send_keys("tmk_nope_nope" + Keys.ENTER)
        wait_until(browser, lambda d: "That key was refused" in d.find_element(By.ID, "login").text,
                   "the refusal, with the api's reason")
        browser.find_element(By.ID, "api-key").send_keys(secured.keys["reader_a"] + Keys.ENTER)
        wait_until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, rows.format(mine["task_id"])),
                   "the reader's kb's task")
        assert browser.find_elements(By.CSS_SELECTOR, rows.format(theirs["task_id"])) == []
        assert browser.find_element(By.ID, "who").text == "reader a: tasks:read"
        assert browser.execute_script("return sessionStorage.getItem('tm.console.api_key')") == secured.keys["reader_a"]
        assert browser.execute_script("return localStorage.length") == 0 and browser.get_cookies() == []
        browser.find_element(By.ID, "logout").click()
        wait_until(browser, lambda d: d.find_elements(By.ID, "api-key"), "the key form again")
