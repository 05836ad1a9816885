"""Submitting tasks over REST and seeing them through to their end."""

from __future__ import annotations

import asyncio
import uuid

from tests.support.api import ApiClient


async def test_the_seed_curl_example_completes_with_its_message(api: ApiClient) -> None:
    status, created = await api.call("POST", "/api/v1/tasks", json={"task_type": "test", "payload": {"message": "hello"}})
    assert status == 201
    assert set(created) == {"task_id", "status", "created_at"}
    assert created["status"] == "queued"
    assert created["created_at"].endswith("Z")
    task = await api.wait_for(created["task_id"])
    assert task["status"] == "completed"
    assert task["result"] == {"message": "hello"}
    assert task["progress"] == 100
    assert task["started_at"] and task["finished_at"]


async def test_a_get_right_after_the_post_finds_the_task(api: ApiClient) -> None:
    for _ in range(20):
        created = await api.submit({"task_type": "benchmark"})
        task = await api.get(created["task_id"])
        assert task["task_id"] == created["task_id"]
        assert task["task_type"] == "benchmark"


async def test_the_task_view_has_every_seed_field(api: ApiClient) -> None:
    task = await api.run({"task_type": "echo", "kb_id": "kb_123", "payload": {"a": [1, 2]}, "priority": "high"})
    for field in ("task_id", "status", "progress", "started_at", "estimated_completion", "result", "task_type",
                  "kb_id", "priority", "attempts", "error", "created_at", "finished_at"):
        assert field in task
    assert task["result"] == {"a": [1, 2]}
    assert task["kb_id"] == "kb_123" and task["priority"] == "high" and task["attempts"] == 1


async def test_sleep_reports_processing_with_rising_progress(api: ApiClient) -> None:
    created = await api.submit({"task_type": "sleep", "payload": {"seconds": 2}})
    seen = []
    task = await api.wait_for(created["task_id"], {"processing"}, timeout=10)
    while task["status"] == "processing":
        seen.append(task["progress"])
        await asyncio.sleep(0.2)
        task = await api.get(created["task_id"])
    assert task["status"] == "completed"
    assert seen == sorted(seen), "progress only moves forward"
    assert any(0 < p < 100 for p in seen)
    assert any(isinstance(p, int) for p in seen)


async def test_list_filters_by_kb_status_and_type_with_a_cursor(api: ApiClient) -> None:
    kb = f"kb_{uuid.uuid4().hex[:8]}"
    ids = [(await api.submit({"task_type": "echo", "kb_id": kb, "payload": {"i": i}}))["task_id"] for i in range(5)]
    failing = (await api.submit({"task_type": "fail", "kb_id": kb, "payload": {"permanent": True}}))["task_id"]
    for task_id in [*ids, failing]:
        await api.wait_for(task_id)

    status, page = await api.call("GET", f"/api/v1/tasks?kb_id={kb}&limit=4")
    assert status == 200 and len(page["items"]) == 4 and page["next_cursor"]
    status, rest = await api.call("GET", f"/api/v1/tasks?kb_id={kb}&limit=4&cursor={page['next_cursor']}")
    assert status == 200 and rest["next_cursor"] is None
    listed = [t["task_id"] for t in page["items"] + rest["items"]]
    assert listed == [failing, *reversed(ids)], "newest first, no duplicates across pages"

    _, completed = await api.call("GET", f"/api/v1/tasks?kb_id={kb}&status=completed")
    assert {t["task_id"] for t in completed["items"]} == set(ids)
    _, failed = await api.call("GET", f"/api/v1/tasks?kb_id={kb}&status=failed&task_type=fail")
    assert [t["task_id"] for t in failed["items"]] == [failing]
    _, none = await api.call("GET", f"/api/v1/tasks?kb_id={kb}&task_type=sleep")
    assert none["items"] == []


async def test_a_batch_with_a_bad_item_creates_the_valid_ones(api: ApiClient) -> None:
    kb = f"kb_{uuid.uuid4().hex[:8]}"
    body = {"tasks": [
        {"task_type": "echo", "kb_id": kb, "payload": {"n": 1}},
        {"task_type": "no_such_type", "kb_id": kb},
        {"task_type": "echo", "kb_id": kb, "priority": "urgent"},
        {"task_type": "test", "kb_id": kb},
    ]}
    status, result = await api.call("POST", "/api/v1/tasks/batch", json=body)
    assert status == 207
    assert result["created"] == 2 and result["failed"] == 2
    by_index = {r["index"]: r for r in result["results"]}
    assert by_index[0]["ok"] and by_index[3]["ok"]
    assert by_index[1]["error"]["details"][0]["field"] == "task_type"
    assert by_index[2]["error"]["details"][0]["field"] == "priority"
    for i in (0, 3):
        assert (await api.wait_for(by_index[i]["task_id"]))["status"] == "completed"


async def test_an_atomic_batch_with_a_bad_item_creates_nothing(api: ApiClient) -> None:
    kb = f"kb_{uuid.uuid4().hex[:8]}"
    body = {"atomic": True, "tasks": [{"task_type": "echo", "kb_id": kb}, {"task_type": "echo", "retry_limit": -1}]}
    status, result = await api.call("POST", "/api/v1/tasks/batch", json=body)
    assert status == 422
    assert result["created"] == 0
    assert result["results"][1]["error"]["details"][0]["field"] == "retry_limit"
    _, listed = await api.call("GET", f"/api/v1/tasks?kb_id={kb}")
    assert listed["items"] == []


async def test_the_same_idempotency_key_returns_the_same_task(api: ApiClient) -> None:
    key = uuid.uuid4().hex
    body = {"task_type": "echo", "payload": {"k": key}}
    first_status, first = await api.call("POST", "/api/v1/tasks", json=body, headers={"Idempotency-Key": key})
    results = await asyncio.gather(*(
        api.call("POST", "/api/v1/tasks", json=body, headers={"Idempotency-Key": key}) for _ in range(10)
    ))
    assert first_status == 201
    assert all(status == 200 and again["task_id"] == first["task_id"] for status, again in results)
    status, conflict = await api.call("POST", "/api/v1/tasks", json={**body, "payload": {"other": 1}},
                                      headers={"Idempotency-Key": key})
    assert status == 409 and conflict["error"]["code"] == "conflict"


async def test_batch_items_are_idempotent_by_their_own_keys(api: ApiClient) -> None:
    key = uuid.uuid4().hex
    body = {"tasks": [{"task_type": "echo", "idempotency_key": key}]}
    _, first = await api.call("POST", "/api/v1/tasks/batch", json=body)
    _, second = await api.call("POST", "/api/v1/tasks/batch", json=body)
    assert first["results"][0]["task_id"] == second["results"][0]["task_id"]
    assert first["results"][0]["created"] is True and second["results"][0]["created"] is False
