"""Fairness between knowledge bases (decision 0161), on a real fleet: kb A's backlog
does not hold back kb B's few tasks when the fair window is on, and does when it is
off. Progress is judged on the finished times the database recorded."""

from __future__ import annotations

import sys
import uuid
from datetime import datetime

import aiohttp
from sqlalchemy import text

from shared.db.engine import create_engine
from tests.conftest import FleetFactory
from tests.support.api import ApiClient
from tests.support.eventually import eventually
from tests.support.fleet import Fleet, free_port

A_TASKS, B_TASKS = 300, 10
_SLEEP = {"task_type": "sleep", "payload": {"seconds": 0.05}}


def _fleet(fleet: Fleet, unfair_port: int) -> None:
    fleet.add_api(FAIR_SCHEDULING="true", FAIR_WINDOW="8")
    # A second replica with fairness off, on the same database and queues.
    fleet.add("api-unfair", [sys.executable, "-m", "services.api"], ready_url=f"http://127.0.0.1:{unfair_port}/health/ready",
              METRICS_PORT="0", PORT=str(unfair_port), FAIR_SCHEDULING="false")
    fleet.add_worker(WORKER_POOL_SIZE="4")
    fleet.add_dispatcher()


async def _submit(api: ApiClient, kb_id: str, count: int) -> list[str]:
    status, body = await api.call("POST", "/api/v1/tasks/batch",
                                  json={"tasks": [{**_SLEEP, "kb_id": kb_id} for _ in range(count)]})
    assert status == 201, body
    return [item["task_id"] for item in body["results"]]


async def _a_done_when_b_done(api: ApiClient, fleet: Fleet, *, fair: bool) -> int:
    """Submit A's backlog then B's tasks; how many of A's had finished when B's last did."""
    kb_a, kb_b = f"kb-a-{uuid.uuid4().hex[:8]}", f"kb-b-{uuid.uuid4().hex[:8]}"
    a_ids = await _submit(api, kb_a, A_TASKS)
    b_ids = await _submit(api, kb_b, B_TASKS)
    if fair:  # a task waiting for the window can be cancelled there, and never runs
        waiting = (await _submit(api, kb_b, 1))[0]
        status, _ = await api.call("DELETE", f"/api/v1/tasks/{waiting}")
        assert status in (200, 202)
        cancelled = await api.wait_for(waiting, timeout=10)
        assert cancelled["status"] == "cancelled" and cancelled["started_at"] is None, cancelled
    b_done = [await api.wait_for(task_id, timeout=60) for task_id in b_ids]
    assert all(t["status"] == "completed" for t in b_done), b_done
    b_last = max(datetime.fromisoformat(t["finished_at"]) for t in b_done)
    engine = create_engine(fleet.environment.postgres)
    try:
        async def a_all_ended() -> int:
            async with engine.connect() as conn:
                row = (await conn.execute(text(
                    "SELECT count(*) FILTER (WHERE status <> 'completed') AS left, "
                    "count(*) FILTER (WHERE finished_at <= :b_last) AS before_b FROM tasks WHERE id = ANY(:ids)"),
                    {"b_last": b_last, "ids": a_ids})).one()
            assert row.left == 0, row
            return int(row.before_b)

        # Waiting for A to end too leaves the queue empty for the next scenario.
        return int(await eventually(a_all_ended, timeout=60, interval=0.5))
    finally:
        await engine.dispose()


async def test_a_small_kb_is_not_held_back_by_a_big_backlog_unless_fairness_is_off(
    fleet_factory: FleetFactory, http: aiohttp.ClientSession
) -> None:
    unfair_port = free_port()
    fleet = await fleet_factory(lambda f: _fleet(f, unfair_port))
    fair = await _a_done_when_b_done(ApiClient(fleet.api_url, http), fleet, fair=True)
    # Window 8 and 4 worker slots: B's last task starts after about 8 + 2 x 10 of A's.
    assert fair < 0.3 * A_TASKS, f"{fair} of A's {A_TASKS} tasks finished before B's {B_TASKS}"
    unfair = await _a_done_when_b_done(ApiClient(f"http://127.0.0.1:{unfair_port}", http), fleet, fair=False)
    # Off, B's tasks queue behind all of A's.
    assert unfair >= 0.9 * A_TASKS, f"fairness off: only {unfair} of A's tasks finished before B's"
