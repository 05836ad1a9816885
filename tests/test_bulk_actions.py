"""POST /api/v1/tasks/bulk/{cancel,retry}: the list's filters select the tasks,
a dry run counts them, the real run touches the same ones; tenant scope and
the no-filter refusal. Delayed tasks stay `scheduled`, so counts hold still."""

from __future__ import annotations

import uuid

from shared.security.api_keys import Scope
from tests.support.api import ApiClient
from tests.support.environment import TestEnvironment
from tests.support.eventually import eventually
from tests.support.keys import bearer, create_key

LATER = 3600  # seconds: a delayed task waits `scheduled` for the whole test


def _kb() -> str:
    return f"kb_bulk_{uuid.uuid4().hex[:8]}"


async def _bulk(api: ApiClient, action: str, body: dict, key: str | None = None) -> tuple[int, dict]:  # type: ignore[type-arg]
    headers = bearer(key) if key else {}
    return await api.call("POST", f"/api/v1/tasks/bulk/{action}", json=body, headers=headers)


async def test_the_preview_counts_what_the_run_then_does_and_a_repeat_touches_nothing(api: ApiClient) -> None:
    kb = _kb()
    waiting = [await api.submit({"task_type": "echo", "kb_id": kb, "delay_seconds": LATER, "payload": {"n": i}})
               for i in range(3)]
    done = await api.run({"task_type": "echo", "kb_id": kb})  # finished: cancel leaves it alone
    ids = {t["task_id"] for t in waiting}

    status, preview = await _bulk(api, "cancel", {"kb_id": kb, "dry_run": True})
    assert status == 200 and preview["matched"] == 3 and preview["done"] == 0, preview
    assert preview["limit"] == 10_000 and preview["more"] is False
    status, ran = await _bulk(api, "cancel", {"kb_id": kb})
    assert status == 200 and ran["done"] == preview["matched"] == ran["matched"], ran
    assert set(ran["task_ids"]) == ids

    async def all_cancelled() -> None:
        assert {(await api.get(i))["status"] for i in ids} == {"cancelled"}
    await eventually(all_cancelled)
    assert (await api.get(done["task_id"]))["status"] == "completed"
    status, again = await _bulk(api, "cancel", {"kb_id": kb})
    assert status == 200 and again["matched"] == again["done"] == 0, again

    # Retry takes only failed or cancelled ones: the completed task is not among them.
    status, preview = await _bulk(api, "retry", {"kb_id": kb, "task_type": "echo", "dry_run": True})
    assert status == 200 and preview["matched"] == 3, preview
    status, ran = await _bulk(api, "retry", {"kb_id": kb, "task_type": "echo"})
    assert status == 200 and ran["done"] == 3 and ran["skipped"] == 0 and set(ran["task_ids"]) == ids, ran
    for task_id in ids:  # a new run of the same task, from its first stage (the delay was the first run's)
        task = await api.wait_for(task_id, {"completed"})
        assert task["run"] == 2
    status, again = await _bulk(api, "retry", {"kb_id": kb, "dry_run": True})
    assert status == 200 and again["matched"] == 0, again


async def test_a_key_limited_to_other_kbs_neither_counts_nor_touches_these_tasks(
    api: ApiClient, environment: TestEnvironment,
) -> None:
    kb, own_kb = _kb(), _kb()
    task = await api.submit({"task_type": "echo", "kb_id": kb, "delay_seconds": LATER})
    writer = await create_key(environment, "bulk writer", [Scope.TASKS_READ, Scope.TASKS_WRITE], kb_ids=[own_kb])
    try:
        status, preview = await _bulk(api, "cancel", {"kb_id": kb, "dry_run": True}, writer)
        assert status == 200 and preview["matched"] == 0, preview
        status, ran = await _bulk(api, "cancel", {"all": True}, writer)
        assert status == 200 and task["task_id"] not in ran["task_ids"], ran
        status, everything = await _bulk(api, "cancel", {"all": True, "dry_run": True})  # an unlimited key sees it
        assert status == 200 and everything["matched"] >= 1, everything
        assert (await api.get(task["task_id"]))["status"] == "scheduled"
    finally:
        await api.call("DELETE", f"/api/v1/tasks/{task['task_id']}")


async def test_no_filter_is_refused_unless_all_is_said_and_reading_is_not_enough(
    api: ApiClient, environment: TestEnvironment,
) -> None:
    status, error = await _bulk(api, "cancel", {"dry_run": True})
    assert status == 422 and error["error"]["details"][0]["field"] == "all", error
    status, error = await _bulk(api, "retry", {"all": False})
    assert status == 422 and error["error"]["details"][0]["field"] == "all", error
    status, error = await _bulk(api, "retry", {"status": "sleeping"})
    assert status == 422 and error["error"]["details"][0]["field"] == "status", error
    reader = await create_key(environment, "bulk reader", [Scope.TASKS_READ])
    status, _ = await _bulk(api, "cancel", {"kb_id": _kb(), "dry_run": True}, reader)
    assert status == 403
