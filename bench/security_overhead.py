"""What the security layer costs per request: the same api with AUTH_REQUIRED
off and on (key verified from cache; rate limits off so they do not throttle
the measurement). Real processes, real RabbitMQ and PostgreSQL, loopback.

    .venv/bin/python -m bench.security_overhead [--requests 2000] [--concurrency 10]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from shared.security.api_keys import Scope
from tests.support.environment import create_environment, destroy_environment
from tests.support.fleet import Fleet
from tests.support.keys import bearer, create_key


async def _measure(url: str, method: str, body: object, headers: dict[str, str], n: int, concurrency: int) -> dict:  # type: ignore[type-arg]
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    async with aiohttp.ClientSession() as http:
        async def worker() -> None:
            while not queue.empty():
                queue.get_nowait()
                started = time.perf_counter()
                async with http.request(method, url, json=body, headers=headers) as response:
                    await response.read()
                    assert response.status < 300, response.status
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {"rps": n / elapsed, "p50_ms": statistics.median(latencies) * 1000,
            "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000}


async def main(requests: int, concurrency: int) -> None:
    env = await create_environment("bench_sec")
    key = await create_key(env, "bench", [Scope.TASKS_READ, Scope.TASKS_WRITE])
    try:
        for auth in ("false", "true"):
            fleet = Fleet(env, Path(tempfile.mkdtemp()))
            fleet.add_api(AUTH_REQUIRED=auth, RATE_LIMIT_PER_SECOND="0", KB_RATE_LIMIT_PER_SECOND="0",
                          LOG_LEVEL="warning")
            await fleet.start()
            headers = bearer(key) if auth == "true" else {}
            try:
                async with aiohttp.ClientSession() as http, http.post(
                    fleet.api_url + "/api/v1/tasks", json={"task_type": "benchmark"}, headers=headers
                ) as response:
                    task_id = (await response.json())["task_id"]
                read = await _measure(f"{fleet.api_url}/api/v1/tasks/{task_id}", "GET", None, headers,
                                      requests, concurrency)
                write = await _measure(f"{fleet.api_url}/api/v1/tasks", "POST", {"task_type": "benchmark"},
                                       headers, requests // 2, concurrency)
            finally:
                fleet.stop()
            for name, result in (("GET  /api/v1/tasks/{id}", read), ("POST /api/v1/tasks     ", write)):
                print(f"AUTH_REQUIRED={auth:<5} {name}  {result['rps']:7.0f} req/s  "
                      f"p50 {result['p50_ms']:6.2f} ms  p99 {result['p99_ms']:6.2f} ms", flush=True)
    finally:
        await destroy_environment(env)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=10)
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.concurrency))
