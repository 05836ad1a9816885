"""Unique tasks (`unique_key`, `unique_for_seconds`): a second submission while
the first is unfinished, or within its window, returns the first (decision 0090)."""

from __future__ import annotations

import asyncio
import uuid

from tests.support.api import ApiClient


async def test_a_second_submission_with_the_key_returns_the_unfinished_first_task(api: ApiClient) -> None:
    key = f"reindex-{uuid.uuid4()}"
    status, first = await api.call("POST", "/api/v1/tasks", json={
        "task_type": "sleep", "payload": {"seconds": 1}, "unique_key": key})
    assert status == 201 and "created" not in first, first
    status, second = await api.call("POST", "/api/v1/tasks", json={
        "task_type": "sleep", "payload": {"seconds": 1}, "unique_key": key})
    assert status == 200 and second["created"] is False and second["task_id"] == first["task_id"], second

    assert (await api.wait_for(first["task_id"], timeout=20))["status"] == "completed"
    status, third = await api.call("POST", "/api/v1/tasks", json={"task_type": "echo", "unique_key": key})
    assert status == 201 and third["task_id"] != first["task_id"], third  # no window: free once it ended


async def test_a_key_with_a_window_stays_taken_after_its_task_ended(api: ApiClient) -> None:
    key = f"nightly-{uuid.uuid4()}"
    body = {"task_type": "echo", "unique_key": key, "unique_for_seconds": 3600}
    first = await api.run(body)
    assert first["status"] == "completed"
    status, again = await api.call("POST", "/api/v1/tasks", json=body)
    assert status == 200 and again["task_id"] == first["task_id"] and again["created"] is False, again


async def test_concurrent_submissions_with_one_key_create_one_task(api: ApiClient) -> None:
    key = f"race-{uuid.uuid4()}"
    body = {"task_type": "sleep", "payload": {"seconds": 0.5}, "unique_key": key}
    answers = await asyncio.gather(*(api.call("POST", "/api/v1/tasks", json=body) for _ in range(30)))
    assert sorted(status for status, _ in answers) == [200] * 29 + [201], answers
    assert len({created["task_id"] for _, created in answers}) == 1


async def test_unique_keys_in_one_batch_answer_the_first_item(api: ApiClient) -> None:
    key = f"batch-{uuid.uuid4()}"
    status, body = await api.call("POST", "/api/v1/tasks/batch", json={"tasks": [
        {"task_type": "sleep", "payload": {"seconds": 0.5}, "unique_key": key},
        {"task_type": "sleep", "payload": {"seconds": 0.5}, "unique_key": key},
    ]})
    assert status == 201, body
    first, second = body["results"]
    assert first["created"] is True and second["created"] is False and first["task_id"] == second["task_id"]


async def test_a_delayed_unique_task_holds_its_key_while_scheduled(api: ApiClient) -> None:
    key = f"later-{uuid.uuid4()}"
    first = await api.submit({"task_type": "echo", "unique_key": key, "delay_seconds": 30})
    status, again = await api.call("POST", "/api/v1/tasks", json={"task_type": "echo", "unique_key": key})
    assert status == 200 and again["task_id"] == first["task_id"] and again["status"] == "scheduled", again
    status, _ = await api.call("DELETE", f"/api/v1/tasks/{first['task_id']}")
    assert status == 200
    status, fresh = await api.call("POST", "/api/v1/tasks", json={"task_type": "echo", "unique_key": key})
    assert status == 201 and fresh["task_id"] != first["task_id"], fresh
