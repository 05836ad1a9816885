"""`taskmgr up`: the whole fleet as supervised children; graceful shutdown loses nothing."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator

import aiohttp
import pytest_asyncio

from tests.support.api import ApiClient
from tests.support.environment import (
    TestEnvironment,
    create_environment,
    destroy_environment,
    free_port,
)
from tests.support.fleet import Process, wait_ready


@pytest_asyncio.fixture(loop_scope="session")
async def up_environment() -> AsyncIterator[TestEnvironment]:
    env = await create_environment("up")
    yield env
    await destroy_environment(env)


def _up_process(env: TestEnvironment, tmp_path, port: int, *, grace: str) -> Process:  # type: ignore[no-untyped-def]
    taskmgr = os.path.join(os.path.dirname(sys.executable), "taskmgr")
    return Process(
        "taskmgr-up",
        [taskmgr, "up"],
        env.with_env(PORT=str(port), API_URL=f"http://127.0.0.1:{port}", METRICS_PORT=str(free_port()),
                     SHUTDOWN_GRACE_SECONDS=grace),
        tmp_path / "up.log",
        f"http://127.0.0.1:{port}/health/ready",
    )


async def test_sigterm_with_tasks_in_flight_loses_none(up_environment: TestEnvironment, tmp_path) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    up = _up_process(up_environment, tmp_path, port, grace="1.5")
    up.start()
    await wait_ready(up, 30)
    async with aiohttp.ClientSession() as http:
        api = ApiClient(f"http://127.0.0.1:{port}", http)
        short = [(await api.submit({"task_type": "sleep", "payload": {"seconds": 0.2 + (i % 3) / 10}}))["task_id"]
                 for i in range(10)]
        long = (await api.submit({"task_type": "sleep", "payload": {"seconds": 6}}))["task_id"]  # outlives the grace
        ids = [*short, long]
        for _ in range(100):
            ids.append((await api.submit({"task_type": "benchmark"}))["task_id"])
        # SIGTERM once the long task is running and the short ones are done, whatever the
        # machine's speed: then exactly one task is unfinished when the grace runs out.
        await api.wait_for(long, {"processing"}, timeout=30)
        for task_id in short:
            await api.wait_for(task_id, timeout=30)

        up.signal(signal.SIGTERM)
        code = await asyncio.to_thread(up.popen.wait, 40)  # type: ignore[union-attr]
        assert code == 0, up.log_tail()
        log = up.log_tail(200)
        assert "stopping the fleet gracefully" in log
        assert "requeued 1 unfinished task(s)" in log

        again = _up_process(up_environment, tmp_path, port, grace="5")
        again.start()
        try:
            await wait_ready(again, 30)
            finals = [await api.wait_for(task_id, timeout=60) for task_id in ids]
        finally:
            again.stop()
    assert [t["status"] for t in finals] == ["completed"] * len(ids)


async def test_a_killed_child_is_restarted(up_environment: TestEnvironment, tmp_path) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    up = _up_process(up_environment, tmp_path, port, grace="5")
    up.start()
    try:
        await wait_ready(up, 30)
        while not re.search(r"worker default@\S+ ready", up.log_tail(100)):
            await asyncio.sleep(0.1)
        worker_pid = int(re.findall(r"started worker:default \(pid (\d+)\)", up.log_tail(100))[-1])
        os.kill(worker_pid, signal.SIGKILL)
        async with aiohttp.ClientSession() as http:
            api = ApiClient(f"http://127.0.0.1:{port}", http)
            task = await api.run({"task_type": "echo", "payload": {"after": "restart"}}, timeout=30)
        assert task["status"] == "completed"
        log = up.log_tail(200)
        assert re.search(r"worker:default exited with code -9; restarting in", log), log
        assert len(re.findall(r"started worker:default", log)) == 2
    finally:
        assert up.stop(timeout=30) == 0
