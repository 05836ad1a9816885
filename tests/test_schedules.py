"""Periodic schedules on the real fleet: the REST surface, exactly one task per
firing under two dispatchers, and the catch-up modes after the dispatchers were
down for 12 s. Times are the database's (fire_time, fired_at), never wall-clock
assertions."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy import text

from shared.db.engine import create_engine
from tests.conftest import FleetFactory
from tests.support.api import ApiClient
from tests.support.eventually import eventually
from tests.support.fleet import Fleet, Process, standard

EVERY_2_S = "*/2 * * * * *"  # seconds first
PERIOD = timedelta(seconds=2)


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
    body = {"cron": EVERY_2_S, "task": {"task_type": "echo", "payload": {"from": "schedule"}}, **fields}
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

    async def six_firings() -> None:
        assert len(await _firings(fleet, sid)) >= 6

    await eventually(six_firings, timeout=30, interval=0.5)
    # Pause, then let the api admit what the last pass published: a firing commits
    # before its tm.submit message is admitted, so a newest firing may briefly have no task.
    status, _ = await api.call("POST", f"/api/v1/schedules/{sid}/pause")
    assert status == 200

    async def every_firing_admitted() -> list[Any]:
        firings = await _firings(fleet, sid)
        assert all(f.tasks >= 1 for f in firings), [(f.fire_time, f.tasks) for f in firings]
        return firings

    firings = await eventually(every_firing_admitted, timeout=30, interval=0.5)
    times = [f.fire_time for f in firings]
    assert all(b - a == PERIOD for a, b in itertools.pairwise(times)), times  # none skipped, none twice
    assert all(f.tasks == 1 for f in firings), [(f.fire_time, f.tasks) for f in firings]
    assert all(f.fired_at >= f.fire_time for f in firings)
    assert await _tasks_of(fleet, sid) == len(firings)
    status, one = await api.call("GET", f"/api/v1/schedules/{sid}")
    assert status == 200 and one["recent_firings"][0]["task_id"] is not None


async def test_catch_up_modes_after_the_dispatcher_was_down_for_12_seconds(
    fleet_factory: FleetFactory, http: aiohttp.ClientSession
) -> None:
    dispatchers: list[Process] = []

    def fleet_with_grace(fleet: Fleet) -> None:
        fleet.add_api()
        fleet.add_worker()
        # A firing more than 2 s old when a dispatcher gets to it was missed.
        dispatchers.append(fleet.add_dispatcher(SCHEDULE_MISFIRE_GRACE_SECONDS="2"))

    fleet = await fleet_factory(fleet_with_grace)
    api = ApiClient(fleet.api_url, http)
    dispatchers[0].stop()
    down_at = datetime.now(UTC).replace(microsecond=0)
    outage = timedelta(seconds=12)
    # Three firings inside the outage (then none for a minute): every one is missed.
    missed = [down_at + timedelta(seconds=s) for s in (4, 6, 8)]
    cron = ",".join(str(t.second) for t in sorted(missed, key=lambda t: t.second)) + " * * * * *"
    ids = {mode: (await _create(api, cron=cron, catch_up=mode))["schedule_id"] for mode in ("all", "latest", "none")}
    await asyncio.sleep(max(0.0, (down_at + outage - datetime.now(UTC)).total_seconds()))
    await fleet.start(dispatchers[0])

    async def caught_up(sid: str) -> list[Any]:
        status, schedule = await api.call("GET", f"/api/v1/schedules/{sid}")
        assert status == 200 and datetime.fromisoformat(schedule["next_fire_at"]) > missed[-1], schedule
        firings = await _firings(fleet, sid)  # each firing's task admitted (it commits before its tm.submit)
        assert all(f.tasks >= 1 for f in firings), firings
        return firings

    fired = {mode: await eventually(lambda sid=sid: caught_up(sid), timeout=30, interval=0.2)  # type: ignore[misc]
             for mode, sid in ids.items()}
    assert [f.fire_time for f in fired["all"]] == missed
    assert [f.fire_time for f in fired["latest"]] == missed[-1:]
    assert fired["none"] == []
    assert all(f.tasks == 1 and f.fired_at > down_at + outage for firings in fired.values() for f in firings)
    assert await _tasks_of(fleet, ids["all"]) == 3


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


async def test_an_upload_named_by_a_schedule_or_a_scheduled_task_is_kept(
    fleet_factory: FleetFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    from tests.test_uploads import _files_fleet, _upload

    root = (tmp_path / "uploads").resolve()
    root.mkdir()
    fleet = await fleet_factory(_files_fleet(root, UPLOAD_RETENTION_SECONDS="0", RETENTION_SWEEP_INTERVAL="0.2",
                                             UPLOAD_UNUSED_TTL_SECONDS="1"))
    api = ApiClient(fleet.api_url, http)
    refs = {}
    for name in ("schedule", "scheduled", "unused"):
        status, upload = await _upload(api, "kb_s", name.encode())
        assert status == 201, upload
        refs[name] = upload["file_ref"]
    await _create(api, cron="0 3 * * *", task={"task_type": "file_digest", "kb_id": "kb_s",
                                                "payload": {"file_ref": refs["schedule"]}})
    await api.submit({"task_type": "file_digest", "kb_id": "kb_s", "payload": {"file_ref": refs["scheduled"]},
                      "delay_seconds": 3600})
    store = root / ".uploads"

    async def unused_one_swept() -> None:
        assert not (store / refs["unused"]).exists()

    await eventually(unused_one_swept, timeout=20)  # the sweeper ran after the TTL passed
    assert (store / refs["schedule"] / "content").exists()
    assert (store / refs["scheduled"] / "content").exists()
