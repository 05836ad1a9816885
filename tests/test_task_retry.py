"""POST /api/v1/tasks/{id}/retry: a failed or cancelled task runs again as a new
run of the same task id; everything else is refused, with cancel's tenancy."""

from __future__ import annotations

import uuid

import aiohttp

from tests.conftest import FleetFactory
from tests.support.api import ApiClient
from tests.support.fleet import one_slot
from tests.test_auth import KB_A, KB_B, Secured, secured  # noqa: F401 - the module fixture, used below


async def _retry(api: ApiClient, task_id: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    return await api.call("POST", f"/api/v1/tasks/{task_id}/retry")


async def test_a_failed_task_runs_again_as_a_new_run(api: ApiClient) -> None:
    failed = await api.run({"task_type": "fail", "retry_limit": 0, "payload": {"permanent": True}})
    assert failed["status"] == "failed" and failed["run"] == 1 and failed["error"]

    status, body = await _retry(api, failed["task_id"])
    assert status == 200, body
    assert body["task_id"] == failed["task_id"] and body["run"] == 2
    assert body["status"] in ("queued", "processing", "failed")
    again = await api.wait_for(failed["task_id"])
    assert again["run"] == 2 and again["status"] == "failed" and again["attempts"] == 1
    assert again["finished_at"] != failed["finished_at"], "the second run finished on its own"


async def test_a_cancelled_task_is_retried_and_completes(fleet_factory: FleetFactory, http) -> None:  # type: ignore[no-untyped-def]
    # The worker remembers the cancel of run 1; the retry (run 2) must still run.
    fleet = await fleet_factory(one_slot)
    api = ApiClient(fleet.api_url, http)
    blocker = await api.submit({"task_type": "sleep", "payload": {"seconds": 1}})
    await api.wait_for(blocker["task_id"], {"processing"}, timeout=10)
    queued = await api.submit({"task_type": "echo", "payload": {"hello": "again"}})
    status, _ = await api.call("DELETE", f"/api/v1/tasks/{queued['task_id']}")
    assert status in (200, 202)
    assert (await api.wait_for(queued["task_id"]))["status"] == "cancelled"

    status, body = await _retry(api, queued["task_id"])
    assert status in (200, 202), body
    done = await api.wait_for(queued["task_id"], {"completed"}, timeout=30)
    assert done["run"] == 2 and done["result"] == {"hello": "again"}


async def test_only_failed_or_cancelled_tasks_can_be_retried(api: ApiClient) -> None:
    done = await api.run({"task_type": "echo"})
    status, body = await _retry(api, done["task_id"])
    assert status == 409 and body["error"]["code"] == "conflict"
    assert "only failed or cancelled" in body["error"]["message"]
    status, body = await _retry(api, str(uuid.uuid4()))
    assert status == 404, body
    assert (await api.get(done["task_id"]))["run"] == 1


async def test_a_second_retry_of_the_same_run_is_refused(api: ApiClient) -> None:
    failed = await api.run({"task_type": "fail", "retry_limit": 0, "payload": {"permanent": True}})
    first, _ = await _retry(api, failed["task_id"])
    assert first == 200
    second, body = await _retry(api, failed["task_id"])
    # Either the first run is still going (409) or it already failed again (a third run).
    assert second == 409 or (second == 200 and body["run"] == 3), body


async def test_retry_follows_cancel_tenancy_and_scopes(secured: Secured, http: aiohttp.ClientSession) -> None:  # noqa: F811
    tenant_a, tenant_b = secured.client(http, "tenant_a"), secured.client(http, "tenant_b")
    reader = secured.client(http, "reader_a")
    failed = await tenant_a.run({"task_type": "fail", "kb_id": KB_A, "retry_limit": 0,
                                 "payload": {"permanent": True}})
    assert failed["status"] == "failed"
    status, body = await _retry(reader, failed["task_id"])
    assert status == 403, body
    status, body = await _retry(tenant_b, failed["task_id"])
    assert status == 404, body
    assert (await tenant_a.get(failed["task_id"]))["run"] == 1, "refused retries changed nothing"
    status, body = await _retry(tenant_a, failed["task_id"])
    assert status == 200 and body["run"] == 2, body
    assert KB_B  # the other tenant's kb exists in the fixture
