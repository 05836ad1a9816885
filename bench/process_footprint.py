"""Memory and CPU of each process, idle and under load: the figures behind the
resource requests and limits in deploy/k8s (see docs/decisions/0022).

    .venv/bin/python -m bench.process_footprint [--tasks 3000] [--pool 10] [--task-type cpu]

Starts the real api, a `default` worker and the dispatcher (own vhost and
database, as the tests do), samples each process with psutil while it is idle,
then while `--tasks` tasks of type `benchmark` go through (submitted in batches
of 500 by `--clients` concurrent clients), and prints a table. CPU figures on a
shared machine are noisy; memory figures are not.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from dataclasses import dataclass, field

import aiohttp
import psutil

from tests.support.environment import create_environment, destroy_environment
from tests.support.fleet import Fleet, log_dir

SAMPLE_SECONDS = 0.5
BATCH = 500


@dataclass
class Samples:
    rss_mib: list[float] = field(default_factory=list)
    cpu_cores: list[float] = field(default_factory=list)


async def sample(processes: dict[str, psutil.Process], into: dict[str, Samples], stop: asyncio.Event) -> None:
    for proc in processes.values():
        proc.cpu_percent(None)  # start the CPU clock
    while not stop.is_set():
        await asyncio.sleep(SAMPLE_SECONDS)
        for name, proc in processes.items():
            if not proc.is_running():
                raise RuntimeError(f"{name} exited during the measurement")
            # A worker's CPU-step children (pebble pool) count towards its pod.
            tree = [proc, *_children(proc)]
            into[name].rss_mib.append(sum(_rss(p) for p in tree) / 2**20)
            into[name].cpu_cores.append(proc.cpu_percent(None) / 100)


def _children(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return list(proc.children(recursive=True))
    except psutil.NoSuchProcess:
        return []


def _rss(proc: psutil.Process) -> int:
    try:
        return int(proc.memory_info().rss)
    except psutil.NoSuchProcess:
        return 0


async def wait_all_done(session: aiohttp.ClientSession, api_url: str) -> None:
    while True:
        async with session.get(f"{api_url}/api/v1/tasks", params={"status": "queued,processing", "limit": "1"}) as r:
            body = await r.json()
        if not body["items"]:
            return
        await asyncio.sleep(0.2)


async def main(tasks: int, pool: int, clients: int, task_type: str) -> None:
    import tempfile
    from pathlib import Path

    env = await create_environment("bench")
    fleet = Fleet(env, log_dir(Path(tempfile.mkdtemp())))
    fleet.add_api(LOG_LEVEL="warning")
    fleet.add_worker(WORKER_POOL_SIZE=str(pool), LOG_LEVEL="warning")
    fleet.add_dispatcher(LOG_LEVEL="warning")
    stop = asyncio.Event()
    try:
        await fleet.start()
        processes = {p.name: psutil.Process(p.pid) for p in fleet.processes}
        idle = {n: Samples() for n in processes}
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample(processes, idle, stop))
        await asyncio.sleep(5)
        stop.set()
        await sampler

        load = {n: Samples() for n in processes}
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample(processes, load, stop))
        started = time.monotonic()
        async with aiohttp.ClientSession() as session:
            body = {"task_type": task_type, **({"payload": {"seconds": 0.05}} if task_type == "cpu" else {})}
            batches = [[body] * min(BATCH, tasks - i) for i in range(0, tasks, BATCH)]
            queue: asyncio.Queue[list[dict[str, str]]] = asyncio.Queue()
            for batch in batches:
                queue.put_nowait(batch)

            refused = 0

            async def client() -> None:
                # A well-behaved client: on 503 it waits Retry-After and sends the batch again.
                nonlocal refused
                while not queue.empty():
                    batch = queue.get_nowait()
                    while True:
                        async with session.post(f"{fleet.api_url}/api/v1/tasks/batch", json={"tasks": batch}) as r:
                            if r.status == 201:
                                break
                            assert r.status == 503, (r.status, (await r.text())[:300])
                            refused += 1
                            await asyncio.sleep(float(r.headers.get("Retry-After", "1")))

            await asyncio.gather(*(client() for _ in range(clients)))
            submitted = time.monotonic() - started
            await wait_all_done(session, fleet.api_url)
        elapsed = time.monotonic() - started
        stop.set()
        await sampler

        print(f"{tasks} tasks: submitted in {submitted:.1f}s, all completed in {elapsed:.1f}s "
              f"({tasks / elapsed:.0f} {task_type} tasks/s end to end), worker pool {pool}, {refused} batch(es) refused with 503")
        print(f"{'process':<16}{'idle RSS MiB':>14}{'peak RSS MiB':>14}{'idle CPU':>10}{'mean CPU':>10}{'peak CPU':>10}")
        for name in processes:
            i, lo = idle[name], load[name]
            print(f"{name:<16}{statistics.median(i.rss_mib):>14.0f}{max(lo.rss_mib):>14.0f}"
                  f"{statistics.mean(i.cpu_cores):>10.2f}{statistics.mean(lo.cpu_cores):>10.2f}"
                  f"{max(lo.cpu_cores):>10.2f}")
    finally:
        stop.set()
        try:
            fleet.stop()
        finally:
            await destroy_environment(env)
            print(f"process logs: {fleet.log_dir}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--pool", type=int, default=10)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--task-type", default="benchmark", choices=["benchmark", "echo", "cpu"],
                        help="cpu: 50 ms of CPU each, in the worker's child processes")
    args = parser.parse_args()
    asyncio.run(main(args.tasks, args.pool, args.clients, args.task_type))
