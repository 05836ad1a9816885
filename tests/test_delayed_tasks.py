"""Delayed tasks (`run_at`, `delay_seconds`): status `scheduled` until due, then
released by the dispatcher within a second (decision 0090). Times are read from
the database, not from wall-clock waits."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import orjson
import pytest
from sqlalchemy import text

from shared.db.engine import create_engine
from tests.conftest import FleetFactory
from tests.support.api import ApiClient
from tests.support.eventually import eventually
from tests.support.fleet import Fleet, Process, standard
from tests.support.metrics import metrics_url, scrape
from tests.test_submit_queue import SubmitClient, submitter  # noqa: F401 - the fixture


async def _task_row(fleet: Fleet, task_id: str) -> Any:
    engine = create_engine(fleet.environment.postgres)
    try:
        async with engine.connect() as conn:
            row = (await conn.execute(text(
                "SELECT status, run_at, started_at, finished_at, created_at, "
                "EXISTS (SELECT 1 FROM delayed_tasks WHERE task_id = tasks.id) AS waiting "
                "FROM tasks WHERE id = CAST(:id AS uuid)"), {"id": task_id})).one()
    finally:
        await engine.dispose()
    return row


async def test_a_delayed_task_waits_scheduled_then_starts_within_a_second_of_its_time(
    fleet_factory: FleetFactory, http: aiohttp.ClientSession
) -> None:
    fleet = await fleet_factory(standard)
    api = ApiClient(fleet.api_url, http)
    created = await api.submit({"task_type": "echo", "payload": {"x": 1}, "delay_seconds": 2})
    assert created["status"] == "scheduled" and created["run_at"] is not None
    assert (await api.get(created["task_id"]))["status"] == "scheduled"

    task = await api.wait_for(created["task_id"], timeout=20)
    assert task["status"] == "completed" and task["result"] == {"x": 1}
    row = await _task_row(fleet, created["task_id"])
    assert row.run_at - row.created_at >= timedelta(seconds=2)
    assert row.run_at <= row.started_at < row.run_at + timedelta(seconds=1), (row.run_at, row.started_at)
    assert not row.waiting


async def test_run_at_in_the_past_runs_now(api: ApiClient) -> None:
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    created = await api.submit({"task_type": "echo", "run_at": past})
    assert created["status"] == "queued"
    assert (await api.wait_for(created["task_id"], timeout=20))["status"] == "completed"


async def test_a_scheduled_task_can_be_cancelled_and_never_runs(
    fleet_factory: FleetFactory, http: aiohttp.ClientSession
) -> None:
    fleet = await fleet_factory(standard)
    api = ApiClient(fleet.api_url, http)
    run_at = datetime.now(UTC) + timedelta(seconds=2)
    created = await api.submit({"task_type": "echo", "run_at": run_at.isoformat()})
    assert created["status"] == "scheduled"
    status, body = await api.call("DELETE", f"/api/v1/tasks/{created['task_id']}")
    assert status == 200 and body["status"] == "cancelled", (status, body)

    async def dropped_by_the_release_loop() -> Any:
        row = await _task_row(fleet, created["task_id"])
        assert not row.waiting
        return row

    row = await eventually(dropped_by_the_release_loop, timeout=20)
    assert row.status == "cancelled" and row.started_at is None


async def test_a_scheduled_task_survives_a_restart_of_the_whole_fleet(
    fleet_factory: FleetFactory, http: aiohttp.ClientSession
) -> None:
    fleet = await fleet_factory(standard)
    api = ApiClient(fleet.api_url, http)
    created = await api.submit({"task_type": "echo", "payload": {"after": "restart"}, "delay_seconds": 4})
    fleet.stop()
    row = await _task_row(fleet, created["task_id"])
    assert row.status == "scheduled" and row.waiting
    await fleet.start()
    task = await api.wait_for(created["task_id"], timeout=30)
    assert task["status"] == "completed" and task["result"] == {"after": "restart"}
    row = await _task_row(fleet, created["task_id"])
    assert row.started_at >= row.run_at


async def test_two_dispatchers_release_each_due_task_exactly_once(
    fleet_factory: FleetFactory, http: aiohttp.ClientSession
) -> None:
    dispatchers: list[Process] = []

    def two_dispatchers(fleet: Fleet) -> None:
        standard(fleet, WORKER_POOL_SIZE="8")
        dispatchers.append(fleet.processes[-1])
        dispatchers.append(fleet.add_dispatcher())

    fleet = await fleet_factory(two_dispatchers)
    api = ApiClient(fleet.api_url, http)
    run_at = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    status, body = await api.call("POST", "/api/v1/tasks/batch", json={
        "tasks": [{"task_type": "echo", "payload": {"i": i}, "run_at": run_at} for i in range(40)]})
    assert status == 201, body
    for result in body["results"]:
        assert (await api.wait_for(result["task_id"], timeout=30))["status"] == "completed"
    released = [(await scrape(http, metrics_url(p))).value("tasks_released_total", reason="delay") for p in dispatchers]
    assert sum(released) == 40, released


@pytest.mark.parametrize("body, field", [
    ({"run_at": "2030-01-01T00:00:00Z", "delay_seconds": 5}, "delay_seconds"),
    ({"run_at": "2030-01-01T00:00:00"}, "run_at"),  # no offset: ambiguous
    ({"delay_seconds": -1}, "delay_seconds"),
    ({"unique_for_seconds": 60}, "unique_for_seconds"),
])
async def test_bad_scheduling_fields_are_refused_naming_the_field(
    api: ApiClient, body: dict[str, Any], field: str
) -> None:
    status, answer = await api.call("POST", "/api/v1/tasks", json={"task_type": "echo", **body})
    assert status == 422, answer
    assert field in [d["field"] for d in answer["error"]["details"]], answer


async def test_tm_submit_takes_delay_and_unique_key_like_rest(submitter: SubmitClient, api: ApiClient) -> None:  # noqa: F811
    key = f"amqp-{uuid.uuid4()}"
    reply = await submitter.submit(orjson.dumps({"task_type": "echo", "delay_seconds": 1, "unique_key": key}))
    assert reply["ok"] is True and reply["created"] is True and reply["status"] == "scheduled", reply
    again = await submitter.submit(orjson.dumps({"task_type": "echo", "unique_key": key}))
    assert again["created"] is False and again["task_id"] == reply["task_id"], again
    assert (await api.wait_for(reply["task_id"], timeout=20))["status"] == "completed"
