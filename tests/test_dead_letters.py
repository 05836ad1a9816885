"""Operators see, replay and purge dead letters (REST and `taskmgr dlq`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import aio_pika

from tests.conftest import FleetFactory
from tests.support.api import ApiClient
from tests.support.eventually import eventually
from tests.support.fleet import Fleet, standard


def _taskmgr(fleet: Fleet, *args: str) -> dict:  # type: ignore[type-arg]
    taskmgr = os.path.join(os.path.dirname(sys.executable), "taskmgr")
    out = subprocess.run([taskmgr, *args], env=fleet.env(), capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)  # type: ignore[no-any-return]


async def test_a_dead_task_is_listed_shown_and_replayed_once(fleet_factory: FleetFactory, http) -> None:  # type: ignore[no-untyped-def]
    fleet = await fleet_factory(standard)
    api = ApiClient(fleet.api_url, http)
    task = await api.run({"task_type": "fail", "retry_limit": 0, "payload": {"fail_times": 1}})
    assert task["status"] == "failed"

    listed = _taskmgr(fleet, "dlq", "list")
    assert listed["depth"] == 1
    [item] = listed["items"]
    assert item["task_id"] == task["task_id"] and item["replayable"] is True
    assert "retries exhausted" in item["reason"] and item["stage"] == "default" and item["attempts"] == 1
    assert _taskmgr(fleet, "dlq", "show", task["task_id"])["items"][0]["task_id"] == task["task_id"]

    status, report = await api.call("POST", "/api/v1/dlq/replay", json={"task_ids": [task["task_id"]]})
    assert status == 200 and report["replayed"] == [task["task_id"]]
    # `fail` counts attempts within a series, so the replayed series fails its first attempt too.
    again = await api.wait_for(task["task_id"], timeout=30)
    assert again["status"] == "failed" and again["attempts"] == 1
    status, listed = await api.call("GET", "/api/v1/dlq")
    assert listed["depth"] == 1, "dead again, once"


async def test_replay_moves_the_task_back_to_queued_with_a_fresh_series(fleet_factory: FleetFactory, http) -> None:  # type: ignore[no-untyped-def]
    fleet = await fleet_factory(standard)
    api = ApiClient(fleet.api_url, http)
    task = await api.run({"task_type": "fail", "retry_limit": 1, "payload": {"fail_times": 2}}, timeout=30)
    assert task["status"] == "failed" and task["attempts"] == 2
    worker = next(p for p in fleet.processes if p.name.startswith("worker"))
    worker.stop()  # nothing consumes: the replayed task must show as queued
    status, report = await api.call("POST", "/api/v1/dlq/replay", json={"all": True})
    assert status == 200, report
    assert report == {"replayed": [task["task_id"]], "skipped": []}
    queued = await api.wait_for(task["task_id"], {"queued"}, timeout=10)
    assert queued["attempts"] == 0 and queued["error"] is None and queued["finished_at"] is None
    fresh = fleet.add_worker(name="worker-2")
    await fleet.start(fresh)
    final = await api.wait_for(task["task_id"], timeout=30)
    assert final["status"] == "failed" and final["attempts"] == 2  # same payload, same fate, new series


async def test_poison_and_unknown_letters_are_listed_but_not_replayed(fleet_factory: FleetFactory, http) -> None:  # type: ignore[no-untyped-def]
    fleet = await fleet_factory(standard)
    api = ApiClient(fleet.api_url, http)
    marker = uuid.uuid4().hex
    connection = await aio_pika.connect(fleet.environment.amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.default_exchange.publish(aio_pika.Message(f"garbage {marker}".encode()), "tm.stage.default")
    async def dead_lettered() -> dict:  # type: ignore[type-arg]
        _, listed = await api.call("GET", "/api/v1/dlq")
        assert listed["depth"], "the garbage message is not in tm.dead yet"
        return listed  # type: ignore[no-any-return]

    listed = await eventually(dead_lettered, timeout=30)
    [item] = listed["items"]
    assert item["replayable"] is False and marker in item["body_preview"] and "not a valid task message" in item["reason"]
    _, report = await api.call("POST", "/api/v1/dlq/replay", json={"all": True})
    assert report["replayed"] == [] and report["skipped"][0]["reason"] == "not a task message"
    _, report = await api.call("POST", "/api/v1/dlq/replay", json={"task_ids": [str(uuid.uuid4())]})
    assert report["skipped"][0]["reason"] == "not in the dead-letter queue"
    assert _taskmgr(fleet, "dlq", "purge", "--all") == {"purged": 1}
    _, listed = await api.call("GET", "/api/v1/dlq")
    assert listed["depth"] == 0


async def test_bad_dlq_requests_are_refused(fleet: Fleet, api: ApiClient) -> None:
    for body in ({}, {"all": True, "task_ids": ["x"]}, {"task_ids": "x"}, {"all": True, "limit": 0}, {"colour": 1}):
        status, error = await api.call("POST", "/api/v1/dlq/replay", json=body)
        assert status == 422, (body, error)
    status, _ = await api.call("GET", f"/api/v1/dlq/{uuid.uuid4()}")
    assert status == 404
