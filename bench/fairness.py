"""Fairness between knowledge bases (decision 0161), the issue's scenario as a table.

kb A submits a backlog of `sleep` tasks (batches of 500), then kb B a few; the
table says, for fairness on and off, when B's last task finished (seconds after
B's submission) and how much of A's backlog had finished by then. Each side runs
on a fleet of its own (api, one worker, dispatcher; the defaults of `.env`
otherwise), one after the other:

    .venv/bin/python -m bench.fairness [--a-tasks 2000] [--b-tasks 20] [--seconds 0.2] [--slots 8]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import asyncpg

from bench.environment import create_environment, destroy_environment
from bench.fleet import Fleet
from shared.db.local_server import connect_kwargs

BATCH = 500
POLL_SECONDS = 0.1

_PROGRESS = """
SELECT count(*) FILTER (WHERE kb_id = $1 AND status = 'completed') AS a_done,
       count(*) FILTER (WHERE kb_id = $2 AND status IN ('completed', 'failed', 'cancelled')) AS b_ended
FROM tasks WHERE kb_id IN ($1, $2)
"""


async def _submit(http: aiohttp.ClientSession, url: str, kb_id: str, count: int, seconds: float) -> None:
    for start in range(0, count, BATCH):
        body = {"tasks": [{"task_type": "sleep", "kb_id": kb_id, "payload": {"seconds": seconds}}
                          for _ in range(min(BATCH, count - start))]}
        async with http.post(f"{url}/api/v1/tasks/batch", json=body) as response:
            assert response.status == 201, await response.text()


async def scenario(fair: bool, a_tasks: int, b_tasks: int, seconds: float, slots: int) -> tuple[float, int]:
    """(seconds from B's submission to its last task's end, A's tasks completed by then)."""
    env = await create_environment()
    fleet = Fleet(env, Path(tempfile.mkdtemp(prefix="tm-bench-fairness-")))
    try:
        for process in (fleet.api(FAIR_SCHEDULING=str(fair).lower()), fleet.dispatcher(),
                        fleet.worker(WORKER_POOL_SIZE=str(slots))):
            await process.start()
        kb_a, kb_b = f"kb-a-{uuid.uuid4().hex[:6]}", f"kb-b-{uuid.uuid4().hex[:6]}"
        pg = await asyncpg.connect(**connect_kwargs(env.postgres))
        try:
            async with aiohttp.ClientSession() as http:
                await _submit(http, fleet.api_url, kb_a, a_tasks, seconds)
                started = time.perf_counter()
                await _submit(http, fleet.api_url, kb_b, b_tasks, seconds)
                while True:
                    row = await pg.fetchrow(_PROGRESS, kb_a, kb_b)
                    if row["b_ended"] >= b_tasks:
                        return time.perf_counter() - started, int(row["a_done"])
                    await asyncio.sleep(POLL_SECONDS)
        finally:
            await pg.close()
    finally:
        fleet.stop()
        await destroy_environment(env)


async def main(a_tasks: int, b_tasks: int, seconds: float, slots: int) -> None:
    print(f"kb A: {a_tasks:,} sleep tasks of {seconds} s, then kb B: {b_tasks}; one worker of {slots} slots")
    print("| fairness | B's last task ended after | A's tasks completed by then |")
    print("|---|---:|---:|")
    for fair in (True, False):
        took, a_done = await scenario(fair, a_tasks, b_tasks, seconds, slots)
        print(f"| {'on' if fair else 'off'} | {took:.1f} s | {a_done:,} ({a_done / a_tasks:.1%}) |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a-tasks", type=int, default=2000)
    parser.add_argument("--b-tasks", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=0.2)
    parser.add_argument("--slots", type=int, default=8)
    args = parser.parse_args()
    asyncio.run(main(args.a_tasks, args.b_tasks, args.seconds, args.slots))
