"""Token buckets against the real api: per API key and per kb_id, 429 with
Retry-After, exact under concurrent requests, one key's bucket not another's."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from shared.security.api_keys import Scope
from tests.conftest import FleetFactory
from tests.support.fleet import Fleet
from tests.support.keys import bearer, create_key


def _limited_api(fleet: Fleet) -> None:
    # No worker: the tasks only need to be admitted. Refill is negligible during the test.
    fleet.add_api(AUTH_REQUIRED="true", RATE_LIMIT_PER_SECOND="0.01", RATE_LIMIT_BURST="5",
                  KB_RATE_LIMIT_PER_SECOND="0.01", KB_RATE_LIMIT_BURST="3", MAX_BATCH_SIZE="3")


@pytest.fixture
async def limited(fleet_factory: FleetFactory) -> Fleet:
    return await fleet_factory(_limited_api)


async def _get(http: aiohttp.ClientSession, url: str, key: str) -> tuple[int, str | None, dict]:  # type: ignore[type-arg]
    async with http.get(url, headers=bearer(key)) as response:
        return response.status, response.headers.get("Retry-After"), await response.json()


async def test_a_key_gets_its_burst_then_429_with_retry_after_and_other_keys_are_unaffected(
    limited: Fleet, http: aiohttp.ClientSession
) -> None:
    env = limited.environment
    first = await create_key(env, "first", [Scope.TASKS_READ])
    second = await create_key(env, "second", [Scope.TASKS_READ])
    url = limited.api_url + "/api/v1/tasks"
    answers = await asyncio.gather(*(_get(http, url, first) for _ in range(20)))
    assert sorted(a[0] for a in answers) == [200] * 5 + [429] * 15
    for status, retry_after, body in answers:
        if status == 429:
            assert body["error"]["code"] == "rate_limited" and int(retry_after or 0) >= 1
    assert (await _get(http, url, second))[0] == 200
    async with http.get(limited.api_url + "/health/ready") as response:
        assert response.status == 200, "health checks are never rate limited"


async def test_a_kb_bucket_limits_tasks_per_knowledge_base(limited: Fleet, http: aiohttp.ClientSession) -> None:
    key = await create_key(limited.environment, "writer", [Scope.TASKS_WRITE])
    url = limited.api_url + "/api/v1/tasks"

    async def submit(kb: str) -> tuple[int, dict, str | None]:  # type: ignore[type-arg]
        async with http.post(url, json={"task_type": "echo", "kb_id": kb}, headers=bearer(key)) as response:
            return response.status, await response.json(), response.headers.get("Retry-After")

    assert [(await submit("kb_x"))[0] for _ in range(3)] == [201, 201, 201]
    status, body, retry_after = await submit("kb_x")
    assert status == 429 and "kb_id 'kb_x'" in body["error"]["message"] and int(retry_after or 0) >= 1
    assert (await submit("kb_y"))[0] == 201, "another kb has its own bucket"
