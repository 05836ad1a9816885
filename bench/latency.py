"""3. Latency at low load: one task at a time, from just before `POST` to the
moment PostgreSQL shows it `completed` (polled every millisecond by id)."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from bench.context import BENCH_BODY, BenchContext, run_tag
from bench.measures import Throughput

POLL_SECONDS = 0.001
PAUSE_SECONDS = 0.02  # between tasks: low load means the fleet is idle when each arrives
TASK_TIMEOUT = 10.0


async def measure(ctx: BenchContext) -> tuple[Throughput, Throughput]:
    """Answers (submit to completed, submit to 201)."""
    body = {**BENCH_BODY, "kb_id": run_tag("latency")}
    completed: list[float] = []
    accepted: list[float] = []
    failures = 0
    async with ctx.pg.acquire() as conn, aiohttp.ClientSession() as http:
        status_of = await conn.prepare("SELECT status FROM tasks WHERE id = $1::uuid")
        started_all = time.perf_counter()
        for _ in range(ctx.sizes.latency_tasks):
            if ctx.time_left() < 30:
                break
            started = time.perf_counter()
            async with http.post(f"{ctx.fleet.api_url}/api/v1/tasks", json=body) as response:
                created = await response.json()
            accepted.append(time.perf_counter() - started)
            if response.status != 201:
                failures += 1
                continue
            while (status := await status_of.fetchval(created["task_id"])) not in ("completed", "failed"):
                if time.perf_counter() - started > TASK_TIMEOUT:
                    break
                await asyncio.sleep(POLL_SECONDS)
            if status != "completed":
                failures += 1
                continue
            completed.append(time.perf_counter() - started)
            await asyncio.sleep(PAUSE_SECONDS)
        elapsed = time.perf_counter() - started_all
    return (Throughput(count=len(completed), seconds=elapsed, errors=failures, latencies=completed),
            Throughput(count=len(accepted), seconds=elapsed, latencies=accepted))
