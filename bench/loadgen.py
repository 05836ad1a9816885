"""Closed-loop HTTP load: `concurrency` clients, each sending its next request
when the previous answer arrived, until `n` were sent (`hey -n N -c C`).

Two generators with the same result:

- `hey` (Debian package `hey`, Go): preferred, because a load generator on a
  2-core machine takes CPU from what it measures, and hey needs less than
  half of what a Python client does for the same load (measured: 10k req/s
  against the bare aiohttp handler, where the aiohttp client saturates at 4.4k).
- an aiohttp client in this process, when hey is not installed (the table
  says which one ran). A few requests per client warm it up, uncounted.

`python -m bench.loadgen URL -n 5000 -c 10 -d '{"task_type": "benchmark"}'`
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import shutil
import time
from typing import Any

import aiohttp
import orjson

from bench.measures import Throughput

WARMUP_PER_CLIENT = 3
OK_STATUSES = (200, 201)


def generator_name() -> str:
    return "hey" if shutil.which("hey") else "aiohttp"


async def run_load(url: str, *, n: int, concurrency: int, body: Any = None, generator: str | None = None) -> Throughput:
    if (generator or generator_name()) == "hey":
        return await _hey(url, n=n, concurrency=concurrency, body=body)
    return await _aiohttp(url, n=n, concurrency=concurrency, body=body)


async def _hey(url: str, *, n: int, concurrency: int, body: Any) -> Throughput:
    argv = ["hey", "-n", str(n), "-c", str(concurrency), "-o", "csv"]
    if body is not None:
        argv += ["-m", "POST", "-T", "application/json", "-d", orjson.dumps(body).decode()]
    proc = await asyncio.create_subprocess_exec(*argv, url, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"hey failed ({proc.returncode}): {err.decode(errors='replace')[-500:]}")
    # One row per answered request; requests that got no answer are missing (errors).
    rows = list(csv.DictReader(io.StringIO(out.decode())))
    latencies = [float(r["response-time"]) for r in rows]
    bad_status = sum(1 for r in rows if int(r["status-code"]) not in OK_STATUSES)
    elapsed = max((float(r["offset"]) + float(r["response-time"]) for r in rows), default=0.0)
    return Throughput(count=n, seconds=elapsed, errors=bad_status + n - len(rows), latencies=latencies)


async def _aiohttp(url: str, *, n: int, concurrency: int, body: Any) -> Throughput:
    data = orjson.dumps(body) if body is not None else None
    method = "POST" if data is not None else "GET"
    headers = {"Content-Type": "application/json"} if data is not None else {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def one() -> tuple[bool, float]:
            started = time.perf_counter()
            try:
                async with session.request(method, url, data=data, headers=headers) as response:
                    await response.read()
                    return response.status in OK_STATUSES, time.perf_counter() - started
            except (aiohttp.ClientError, OSError, TimeoutError):
                return False, time.perf_counter() - started

        await asyncio.gather(*(one() for _ in range(concurrency * WARMUP_PER_CLIENT)))
        remaining, errors = n, 0
        latencies: list[float] = []

        async def client() -> None:
            nonlocal remaining, errors
            while remaining > 0:
                remaining -= 1
                ok, seconds = await one()
                latencies.append(seconds)
                errors += not ok

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return Throughput(count=n, seconds=elapsed, errors=errors, latencies=latencies)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    parser.add_argument("-n", type=int, default=5000)
    parser.add_argument("-c", type=int, default=10)
    parser.add_argument("-d", "--data", default=None, help="JSON body (sent with POST)")
    parser.add_argument("--generator", choices=("hey", "aiohttp"), default=None)
    args = parser.parse_args()
    import uvloop

    body = orjson.loads(args.data) if args.data else None
    result = uvloop.run(run_load(args.url, n=args.n, concurrency=args.c, body=body, generator=args.generator))
    print(f"{result.rate:.0f} req/s  p50 {result.p50_ms:.2f} ms  p99 {result.p99_ms:.2f} ms  errors {result.errors}")


if __name__ == "__main__":
    main()
