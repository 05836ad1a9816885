"""Admission under concurrency: requests that share a transaction (group
commit) each get exactly what a request of their own would have got."""

from __future__ import annotations

import asyncio
import uuid

from tests.conftest import FleetFactory
from tests.support.api import ApiClient
from tests.support.fleet import Fleet


async def test_concurrent_submissions_each_get_their_own_readable_task(api: ApiClient) -> None:
    kb = f"kb_{uuid.uuid4().hex[:8]}"
    answers = await asyncio.gather(*(
        api.call("POST", "/api/v1/tasks", json={"task_type": "echo", "kb_id": kb, "payload": {"i": i}})
        for i in range(40)
    ))
    assert all(status == 201 for status, _ in answers), answers
    ids = {body["task_id"] for _, body in answers}
    assert len(ids) == 40
    found = await asyncio.gather(*(api.get(task_id) for task_id in ids))  # read-your-writes, every one
    assert {task["task_id"] for task in found} == ids
    for task in found:
        assert (await api.wait_for(task["task_id"]))["status"] == "completed"


async def test_concurrent_first_requests_with_one_key_create_one_task(api: ApiClient) -> None:
    key = uuid.uuid4().hex
    body = {"task_type": "echo", "payload": {"k": key}}
    answers = await asyncio.gather(*(
        api.call("POST", "/api/v1/tasks", json=body, headers={"Idempotency-Key": key}) for _ in range(12)
    ))
    statuses = sorted(status for status, _ in answers)
    assert statuses == [200] * 11 + [201], answers
    assert len({created["task_id"] for _, created in answers}) == 1


async def test_a_full_stage_queue_refuses_some_of_a_burst_and_creates_only_the_accepted(
    fleet_factory: FleetFactory, http  # type: ignore[no-untyped-def]
) -> None:
    def api_alone_with_a_tiny_queue(fleet: Fleet) -> None:
        fleet.add_api(STAGE_QUEUE_MAX_LENGTH="3")

    fleet = await fleet_factory(api_alone_with_a_tiny_queue)
    api = ApiClient(fleet.api_url, http)
    kb = f"kb_{uuid.uuid4().hex[:8]}"
    answers = await asyncio.gather(*(
        api.call("POST", "/api/v1/tasks", json={"task_type": "echo", "kb_id": kb}) for _ in range(10)
    ))
    accepted = {body["task_id"] for status, body in answers if status == 201}
    refused = [body for status, body in answers if status == 503]
    assert len(accepted) == 3 and len(refused) == 7, answers
    assert all(body["error"]["code"] == "unavailable" for body in refused)
    _, listed = await api.call("GET", f"/api/v1/tasks?kb_id={kb}")
    assert {task["task_id"] for task in listed["items"]} == accepted
