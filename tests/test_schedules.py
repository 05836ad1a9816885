"""Periodic schedules on the real fleet: the REST surface, exactly one task per
firing under two dispatchers, and the catch-up modes after the dispatchers were
down for 20 s. Times are the database's (fire_time, fired_at), never wall-clock
assertions."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from sqlalchemy import text

from shared.db.engine import create_engine
from tests.conftest import FleetFactory
from tests.support.api import ApiClient
from tests.support.eventually import eventually
from tests.support.fleet import Fleet, Process, standard

EVERY_5_S = "*/5 * * * * *"  # seconds first
PERIOD = timedelta(seconds=5)


async def _firings(fleet: Fleet, schedule_id: str) -> list[Any]:
    """Each firing with the tasks its idempotency key produced (one, if all is well)."""
    engine = create_engine(fleet.environment.postgres)
    try:
        async with engine.connect() as conn:
            return list((await conn.execute(text("""
                SELECT f.fire_time, f.fired_at, f.idempotency_key,
                       (SELECT count(*) FROM tasks t WHERE t.idempotency_key = f.idempotency_key) AS tasks
                FROM schedule_firings f WHERE f.schedule_id = CAST(:id AS uuid) ORDER BY f.fire_time
            """), {"id": schedule_id})).all())
    finally:
        await engine.dispose()


async def _tasks_of(fleet: Fleet, schedule_id: str) -> int:
    engine = create_engine(fleet.environment.postgres)
    try:
        async with engine.connect() as conn:
            return int((await conn.execute(text(
                "SELECT count(*) FROM tasks WHERE idempotency_key LIKE :prefix"),
                {"prefix": f"schedule:{schedule_id}:%"})).scalar_one())
    finally:
        await engine.dispose()


async def _create(api: ApiClient, **fields: Any) -> dict[str, Any]:
    body = {"cron": EVERY_5_S, "task": {"task_type": "echo", "payload": {"from": "schedule"}}, **fields}
    status, schedule = await api.call("POST", "/api/v1/schedules", json=body)
    assert status == 201, schedule
    return schedule  # type: ignore[no-any-return]


async def test_schedules_can_be_created_listed_read_paused_resumed_and_deleted(api: ApiClient) -> None:
    schedule = await _create(api, cron="0 2 * * *", timezone="Europe/Paris", name="nightly re-index",
                             catch_up="latest")
    sid = schedule["schedule_id"]
    assert schedule["paused"] is False and schedule["catch_up"] == "latest"
    assert datetime.fromisoformat(schedule["next_fire_at"]).astimezone(UTC).hour == 1  # 02:00 Paris, winter
    status, page = await api.call("GET", "/api/v1/schedules")
    assert status == 200 and sid in [s["schedule_id"] for s in page["items"]]
    status, one = await api.call("GET", f"/api/v1/schedules/{sid}")
    assert status == 200 and one["recent_firings"] == [] and one["task"]["task_type"] == "echo"

    status, paused = await api.call("POST", f"/api/v1/schedules/{sid}/pause")
    assert status == 200 and paused["paused"] is True
    status, resumed = await api.call("POST", f"/api/v1/schedules/{sid}/resume")
    assert status == 200 and resumed["paused"] is False
    status, _ = await api.call("DELETE", f"/api/v1/schedules/{sid}")
    assert status == 204
    status, _ = await api.call("GET", f"/api/v1/schedules/{sid}")
    assert status == 404


async def test_a_bad_schedule_is_refused_naming_every_field(api: ApiClient) -> None:
    status, answer = await api.call("POST", "/api/v1/schedules", json={
        "cron": "every night", "timezone": "Mars/Olympus",
        "task": {"task_type": "echo"}})
    assert status == 422
    assert {d["field"] for d in answer["error"]["details"]} == {"cron", "timezone"}
    status, answer = await api.call("POST", "/api/v1/schedules", json={
        "cron": "0 2 * * *", "task": {"task_type": "nope", "delay_seconds": 5}})
    assert status == 422
    assert {d["field"] for d in answer["error"]["details"]} == {"task.task_type", "task.delay_seconds"}


async def test_every_firing_makes_exactly_one_task_with_two_dispatchers(
    fleet_factory: FleetFactory, http: aiohttp.ClientSession
) -> None:
    def two_dispatchers(fleet: Fleet) -> None:
        standard(fleet)
        fleet.add_dispatcher()

    fleet = await fleet_factory(two_dispatchers)
    api = ApiClient(fleet.api_url, http)
    sid = (await _create(api))["schedule_id"]

    async def six_firings() -> list[Any]:
        firings = await _firings(fleet, sid)
        assert len(firings) >= 6, len(firings)
        return firings

    firings = await eventually(six_firings, timeout=60, interval=1)
    times = [f.fire_time for f in firings]
    assert all(b - a == PERIOD for a, b in itertools.pairwise(times)), times  # none skipped, none twice
    assert all(f.tasks == 1 for f in firings), [(f.fire_time, f.tasks) for f in firings]
    assert all(f.fired_at >= f.fire_time for f in firings)
    assert await _tasks_of(fleet, sid) == len(firings)
    status, one = await api.call("GET", f"/api/v1/schedules/{sid}")
    assert status == 200 and one["recent_firings"][0]["task_id"] is not None


async def test_catch_up_modes_after_the_dispatcher_was_down_for_20_seconds(
    fleet_factory: FleetFactory, http: aiohttp.ClientSession
) -> None:
    grace = 2.0
    dispatchers: list[Process] = []

    def fleet_with_grace(fleet: Fleet) -> None:
        fleet.add_api()
        fleet.add_worker()
        dispatchers.append(fleet.add_dispatcher(SCHEDULE_MISFIRE_GRACE_SECONDS=str(grace)))

    fleet = await fleet_factory(fleet_with_grace)
    api = ApiClient(fleet.api_url, http)
    ids = {mode: (await _create(api, catch_up=mode))["schedule_id"] for mode in ("all", "latest", "none")}

    async def fired_once_each() -> None:
        for sid in ids.values():
            assert await _firings(fleet, sid)

    await eventually(fired_once_each, timeout=20, interval=0.5)
    dispatchers[0].stop()
    await asyncio.sleep(20)
    # Restart mid-period, so the first pass finds the last missed firing already late
    # (more than `grace` old) unless the dispatcher takes over 2.5 s to start.
    await asyncio.sleep((2.5 - time.time() % 5) % 5)
    restarted = datetime.now(UTC)
    await fleet.start(dispatchers[0])

    async def two_firings_after_the_restart() -> None:
        for sid in ids.values():
            assert len([f for f in await _firings(fleet, sid) if f.fire_time > restarted]) >= 2

    await eventually(two_firings_after_the_restart, timeout=40, interval=0.5)
    late_after = timedelta(seconds=grace)
    for mode, sid in ids.items():
        firings = await _firings(fleet, sid)
        assert all(f.tasks == 1 for f in firings), mode
        times = [f.fire_time for f in firings]
        expected = int((times[-1] - times[0]) / PERIOD) + 1
        missing = expected - len(times)
        late = [f.fire_time for f in firings if f.fired_at - f.fire_time > late_after]
        if mode == "all":
            assert missing == 0 and len(late) >= 3, (mode, times, late)
        elif mode == "latest":
            assert missing >= 2 and len(late) == 1, (mode, times, late)
        else:
            assert missing >= 3 and late == [], (mode, times, late)


def _taskmgr(fleet: Fleet, *args: str) -> Any:
    taskmgr = os.path.join(os.path.dirname(sys.executable), "taskmgr")
    out = subprocess.run([taskmgr, *args], env=fleet.env(), capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout)


async def test_taskmgr_schedules_drives_the_same_api(fleet: Fleet) -> None:
    created = _taskmgr(fleet, "schedules", "create", "--cron", "0 3 * * *", "--timezone", "Asia/Tokyo",
                       "--catch-up", "latest", "--name", "cli", "--task", '{"task_type": "echo"}')
    sid = created["schedule_id"]
    assert created["catch_up"] == "latest" and created["timezone"] == "Asia/Tokyo"
    assert sid in [s["schedule_id"] for s in _taskmgr(fleet, "schedules", "list")["items"]]
    assert _taskmgr(fleet, "schedules", "pause", sid)["paused"] is True
    assert _taskmgr(fleet, "schedules", "resume", sid)["paused"] is False
    assert _taskmgr(fleet, "schedules", "show", sid)["recent_firings"] == []
    assert _taskmgr(fleet, "schedules", "delete", sid) == {"deleted": sid}
