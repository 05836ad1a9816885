"""CPU-bound steps run in child processes that are stopped with their attempt."""

from __future__ import annotations

import asyncio
import time

import psutil

from tests.support.api import ApiClient
from tests.support.fleet import Fleet


def _busy_descendants(fleet: Fleet) -> float:
    worker = next(p for p in fleet.processes if p.name == "worker-default")
    children = psutil.Process(worker.pid).children(recursive=True)
    for child in children:
        try:
            child.cpu_percent(None)
        except psutil.NoSuchProcess:  # a child that ended meanwhile burns nothing
            pass
    time.sleep(1.0)
    total = 0.0
    for child in children:
        try:
            total += child.cpu_percent(None)
        except psutil.NoSuchProcess:
            pass
    return total


async def test_a_cpu_step_runs_in_a_child_and_returns(api: ApiClient) -> None:
    task = await api.run({"task_type": "cpu", "payload": {"seconds": 0.2}})
    assert task["status"] == "completed" and task["result"]["loops"] > 1000


async def test_a_timed_out_cpu_step_stops_burning(api: ApiClient, fleet: Fleet) -> None:
    task = await api.run({"task_type": "cpu", "payload": {"seconds": 60}, "timeout_seconds": 0.5, "retry_limit": 0})
    assert task["status"] == "failed" and "time limit" in task["error"]["message"]
    assert await asyncio.to_thread(_busy_descendants, fleet) < 30, "no child keeps the CPU busy"


async def test_a_cancelled_cpu_step_stops_burning(api: ApiClient, fleet: Fleet) -> None:
    created = await api.submit({"task_type": "cpu", "payload": {"seconds": 60}})
    await api.wait_for(created["task_id"], {"processing"}, timeout=10)
    await api.call("DELETE", f"/api/v1/tasks/{created['task_id']}")
    assert (await api.wait_for(created["task_id"], timeout=5))["status"] == "cancelled"
    assert await asyncio.to_thread(_busy_descendants, fleet) < 30
