"""DELETE /api/v1/tasks/{id}: a queued task never runs, a running one stops."""

from __future__ import annotations

import asyncio
import time

from tests.conftest import FleetFactory
from tests.support.api import ApiClient
from tests.support.fleet import Fleet, one_slot


async def test_cancelling_a_running_sleep_stops_it_within_a_second(api: ApiClient) -> None:
    created = await api.submit({"task_type": "sleep", "payload": {"seconds": 30}})
    await api.wait_for(created["task_id"], {"processing"}, timeout=10)
    started = time.monotonic()
    status, body = await api.call("DELETE", f"/api/v1/tasks/{created['task_id']}")
    assert status in (200, 202), body
    task = await api.wait_for(created["task_id"], timeout=5)
    assert time.monotonic() - started < 1.5
    assert task["status"] == "cancelled"
    assert task["result"] is None


async def test_a_finished_task_cannot_be_cancelled(api: ApiClient) -> None:
    task = await api.run({"task_type": "echo"})
    status, body = await api.call("DELETE", f"/api/v1/tasks/{task['task_id']}")
    assert status == 409 and body["error"]["code"] == "conflict"
    assert (await api.get(task["task_id"]))["status"] == "completed"


async def test_a_queued_task_that_is_cancelled_never_runs(fleet_factory: FleetFactory, http) -> None:  # type: ignore[no-untyped-def]
    fleet = await fleet_factory(one_slot)
    api = ApiClient(fleet.api_url, http)
    blocker = await api.submit({"task_type": "sleep", "payload": {"seconds": 1.5}})
    await api.wait_for(blocker["task_id"], {"processing"}, timeout=10)
    queued = await api.submit({"task_type": "echo", "payload": {"should": "never run"}})
    assert (await api.get(queued["task_id"]))["status"] == "queued"

    status, _ = await api.call("DELETE", f"/api/v1/tasks/{queued['task_id']}")
    assert status in (200, 202)
    assert (await api.wait_for(queued["task_id"], timeout=5))["status"] == "cancelled"
    assert (await api.wait_for(blocker["task_id"], timeout=10))["status"] == "completed"
    after = await api.run({"task_type": "echo"})  # the worker has moved past the cancelled one
    assert after["status"] == "completed"
    await asyncio.sleep(0.3)
    task = await api.get(queued["task_id"])
    assert task["status"] == "cancelled" and task["started_at"] is None and task["result"] is None
    worker_log = next(p for p in fleet.processes if p.name == "worker-default").log_tail(200)
    assert "skipping a task cancelled before it ran" in worker_log


async def test_a_worker_started_after_the_cancel_still_skips_the_task(fleet_factory: FleetFactory, http) -> None:  # type: ignore[no-untyped-def]
    def without_worker(fleet: Fleet) -> None:
        fleet.add_api()
        fleet.add_dispatcher()

    fleet = await fleet_factory(without_worker)
    api = ApiClient(fleet.api_url, http)
    queued = await api.submit({"task_type": "sleep", "payload": {"seconds": 5}})
    status, _ = await api.call("DELETE", f"/api/v1/tasks/{queued['task_id']}")
    assert status == 200
    worker = fleet.add_worker()
    await fleet.start(worker)
    after = await api.run({"task_type": "echo"})
    assert after["status"] == "completed", "the worker consumed past the cancelled task"
    task = await api.get(queued["task_id"])
    assert task["status"] == "cancelled" and task["started_at"] is None
    log = worker.log_tail(200)
    assert "1 recently cancelled task(s) will be skipped" in log
    assert "skipping a task cancelled before it ran" in log
