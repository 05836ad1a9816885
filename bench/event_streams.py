"""Open event streams while the fleet works: the api's RSS and what each stream
received. `python -m bench.event_streams [--streams 200] [--tasks 20000]`.

Half the streams follow one of ten knowledge bases, half follow everything;
tasks are `echo` spread over those kbs, submitted in batches as fast as the
api takes them. Reported: task throughput, api RSS before and at its peak,
events per stream (every stream must get every event it asked for) and the
delay from a task's finish to its event reaching an unfiltered stream.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from datetime import UTC, datetime

import aiohttp
import psutil

from tests.support.environment import create_environment, destroy_environment
from tests.support.fleet import Fleet, log_dir
from tests.support.sse import read_sse

KBS = [f"kb_stream_{i}" for i in range(10)]


async def _stream(http: aiohttp.ClientSession, url: str, counts: dict[str, int], key: str,
                  delays: list[float] | None) -> None:
    async with http.get(url, timeout=aiohttp.ClientTimeout(total=None)) as response:
        async for message in read_sse(response):
            if message.event == "task.completed":
                counts[key] += 1
                if delays is not None and len(delays) < 100_000:
                    finished = datetime.fromisoformat(json.loads(message.data)["finished_at"])
                    delays.append((datetime.now(UTC) - finished).total_seconds())
            elif message.event == "stream.closed":
                counts[key + ":closed"] = 1
                return


async def main(streams: int, tasks: int, workers: int) -> None:
    import tempfile
    from pathlib import Path

    env = await create_environment("es")
    fleet = Fleet(env, log_dir(Path(tempfile.mkdtemp())))
    fleet.add_api(RATE_LIMIT_PER_SECOND="0", KB_RATE_LIMIT_PER_SECOND="0")
    for i in range(workers):
        fleet.add_worker(name=f"worker-{i}", WORKER_POOL_SIZE="50", STARTED_EVENT_DELAY="10")
    fleet.add_dispatcher()
    await fleet.start()
    api = psutil.Process(fleet.process("api").pid)
    try:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            counts: dict[str, int] = {}
            delays: list[float] = []
            readers = []
            for i in range(streams):
                if i % 2:
                    key, url = f"all:{i}", f"{fleet.api_url}/api/v1/events"
                else:
                    kb = KBS[i // 2 % len(KBS)]
                    key, url = f"{kb}:{i}", f"{fleet.api_url}/api/v1/events?kb_id={kb}"
                counts[key] = 0
                readers.append(asyncio.create_task(_stream(http, url, counts, key, delays if i == 1 else None)))
            await asyncio.sleep(2)
            idle_rss = api.memory_info().rss
            peak = [idle_rss]

            async def sample() -> None:
                while True:
                    peak[0] = max(peak[0], api.memory_info().rss)
                    await asyncio.sleep(0.2)

            sampler = asyncio.create_task(sample())
            started = time.perf_counter()
            per_batch = 500
            batches = [[{"task_type": "echo", "kb_id": KBS[(b * per_batch + j) % len(KBS)], "payload": {"j": j}}
                        for j in range(per_batch)] for b in range(tasks // per_batch)]
            queue: asyncio.Queue[list[dict[str, object]]] = asyncio.Queue()
            for batch in batches:
                queue.put_nowait(batch)

            created: dict[str, int] = dict.fromkeys(KBS, 0)

            async def submitter() -> None:
                while not queue.empty():
                    batch = queue.get_nowait()
                    async with http.post(f"{fleet.api_url}/api/v1/tasks/batch", json={"tasks": batch}) as r:
                        body = await r.json() if r.status in (201, 207) else None
                    if body is None:  # nothing created (503): send the batch again
                        queue.put_nowait(batch)
                        await asyncio.sleep(0.2)
                        continue
                    for result in body["results"]:
                        if result["ok"]:
                            created[str(batch[result["index"]]["kb_id"])] += 1

            await asyncio.gather(*(submitter() for _ in range(4)))
            submitted_in = time.perf_counter() - started
            expected_all = sum(created.values())

            def behind() -> int:
                return sum(1 for k, v in counts.items() if ":closed" not in k
                           and v < (expected_all if k.startswith("all:") else created[k.split(":")[0]]))

            while behind() and time.perf_counter() - started < 600:
                await asyncio.sleep(0.5)
            elapsed = time.perf_counter() - started
            sampler.cancel()
            for reader in readers:
                reader.cancel()
            with contextlib.suppress(Exception):
                await asyncio.gather(*readers, return_exceptions=True)
        complete = streams - behind()
        closed = sum(1 for k in counts if k.endswith(":closed"))
        delays.sort()
        print(json.dumps({
            "streams": streams, "tasks": expected_all, "workers": workers,
            "submitted_in_s": round(submitted_in, 1), "all_events_in_s": round(elapsed, 1),
            "tasks_per_s": round(expected_all / elapsed, 1),
            "api_rss_idle_mb": round(idle_rss / 2**20, 1), "api_rss_peak_mb": round(peak[0] / 2**20, 1),
            "streams_with_every_event": complete, "streams_closed_by_server": closed,
            "finish_to_stream_p50_s": round(delays[len(delays) // 2], 3) if delays else None,
            "finish_to_stream_p99_s": round(delays[int(len(delays) * 0.99)], 3) if delays else None,
        }, indent=2))
    finally:
        fleet.stop()
        await destroy_environment(env)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    asyncio.run(main(args.streams, args.tasks, args.workers))
