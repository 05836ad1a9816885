"""A chaos soak: thousands of mixed tasks while workers are killed and RabbitMQ
restarts; then one line of what became of every accepted task.

    python -m tests.chaos [--tasks 5000] [--workers 3] [--kill-every 3] [--timeout 300]
    make chaos

Loopback only, bounded in time, cleans up after itself (its own RabbitMQ node
and database). Lost, stuck and duplicated must be 0; the exit code says so.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.api import TERMINAL, ApiClient
from tests.support.callback_receiver import CallbackReceiver
from tests.support.dedicated import DedicatedRabbitMQ
from tests.support.environment import create_environment, destroy_environment
from tests.support.fleet import Fleet, Process


@dataclass(frozen=True)
class ChaosConfig:
    tasks: int = 5000
    workers: int = 3
    kill_every_seconds: float = 3.0
    restart_broker: bool = True
    submit_concurrency: int = 20
    timeout_seconds: float = 300.0
    seed: int = 1


@dataclass
class ChaosReport:
    accepted: int = 0
    completed: int = 0
    failed_as_expected: int = 0
    cancelled: int = 0
    lost: int = 0
    stuck: int = 0
    unexpected: int = 0
    duplicated_callbacks: int = 0
    missing_callbacks: int = 0
    workers_killed: int = 0
    broker_restarts: int = 0
    refused_503: int = 0
    elapsed_seconds: float = 0.0
    details: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.stuck or self.unexpected or self.duplicated_callbacks or self.missing_callbacks)

    def line(self) -> str:
        return (
            f"accepted={self.accepted} completed={self.completed} failed_as_expected={self.failed_as_expected} "
            f"cancelled={self.cancelled} lost={self.lost} stuck={self.stuck} "
            f"duplicated_callbacks={self.duplicated_callbacks} missing_callbacks={self.missing_callbacks} "
            f"unexpected={self.unexpected} | workers_killed={self.workers_killed} "
            f"broker_restarts={self.broker_restarts} refused_503={self.refused_503} "
            f"elapsed={self.elapsed_seconds:.0f}s"
        )


# (request body, expected final statuses); cancellable ones are cancelled later.
def _mix(rng: random.Random) -> tuple[dict[str, Any], set[str], bool]:
    roll = rng.random()
    if roll < 0.55:
        return {"task_type": "benchmark"}, {"completed"}, False
    if roll < 0.75:
        return {"task_type": "sleep", "payload": {"seconds": round(rng.uniform(0.05, 0.5), 3)}}, {"completed"}, False
    if roll < 0.85:
        return ({"task_type": "fail", "retry_limit": 3, "payload": {"fail_times": rng.choice([1, 2])}},
                {"completed"}, False)
    if roll < 0.90:
        return {"task_type": "fail", "payload": {"permanent": True}}, {"failed"}, False
    if roll < 0.95:
        return {"task_type": "fail", "retry_limit": 1, "payload": {"fail_times": 5}}, {"failed"}, False
    return {"task_type": "sleep", "payload": {"seconds": 4}}, {"cancelled"}, True


async def run_chaos(config: ChaosConfig, log_dir: Path) -> ChaosReport:
    rng = random.Random(config.seed)
    report = ChaosReport()
    started = time.monotonic()
    broker = DedicatedRabbitMQ()
    await asyncio.to_thread(broker.start)
    environment = await create_environment("chaos", amqp_url=broker.url)
    receiver = CallbackReceiver()
    await receiver.start()
    fleet = Fleet(environment, log_dir)
    fleet.add_api()
    workers = [fleet.add_worker(name=f"worker-{i}") for i in range(config.workers)]
    fleet.add_dispatcher()
    try:
        await fleet.start()
        async with aiohttp.ClientSession() as http:
            api = ApiClient(fleet.api_url, http)
            expected: dict[str, set[str]] = {}
            stop_chaos = asyncio.Event()
            chaos = asyncio.create_task(_chaos(fleet, workers, broker, config, rng, report, stop_chaos))
            await _submit_all(api, config, rng, expected, report, receiver.url("chaos"))
            # Faults go on while the backlog drains, not only while tasks arrive.
            await _wait_for_the_end(api, expected, config, report, started, chaos_running=chaos)
            stop_chaos.set()
            await chaos
            await _count_callbacks(receiver, expected, report)
    finally:
        fleet.stop()
        await receiver.stop()
        await destroy_environment(environment)
        await asyncio.to_thread(broker.stop)
    report.elapsed_seconds = time.monotonic() - started
    return report


async def _submit_all(
    api: ApiClient, config: ChaosConfig, rng: random.Random, expected: dict[str, set[str]], report: ChaosReport,
    callback_url: str,
) -> None:
    plan = [_mix(rng) for _ in range(config.tasks)]
    queue: asyncio.Queue[tuple[dict[str, Any], set[str], bool]] = asyncio.Queue()
    for item in plan:
        queue.put_nowait(item)
    cancels: list[asyncio.Task[None]] = []

    async def submitter() -> None:
        while not queue.empty():
            body, outcomes, cancel = queue.get_nowait()
            body = {**body, "callback_url": callback_url}
            key = uuid.uuid4().hex  # a retried submission never creates a second task
            while True:
                try:
                    status, created = await api.call("POST", "/api/v1/tasks", json=body,
                                                     headers={"Idempotency-Key": key},
                                                     timeout=aiohttp.ClientTimeout(total=20))
                except (aiohttp.ClientError, TimeoutError):
                    await asyncio.sleep(0.2)
                    continue
                if status in (200, 201):
                    expected[created["task_id"]] = outcomes
                    report.accepted += 1
                    if cancel:
                        cancels.append(asyncio.create_task(_cancel_later(api, created["task_id"], rng.uniform(0.2, 1.5))))
                    break
                report.refused_503 += status == 503
                await asyncio.sleep(0.2)

    await asyncio.gather(*(submitter() for _ in range(config.submit_concurrency)))
    await asyncio.gather(*cancels)


async def _cancel_later(api: ApiClient, task_id: str, delay: float) -> None:
    await asyncio.sleep(delay)
    while True:
        try:
            status, _ = await api.call("DELETE", f"/api/v1/tasks/{task_id}", timeout=aiohttp.ClientTimeout(total=20))
        except (aiohttp.ClientError, TimeoutError):
            status = 0
        if status in (200, 202, 409):
            return
        await asyncio.sleep(0.3)


async def _chaos(
    fleet: Fleet, workers: list[Process], broker: DedicatedRabbitMQ, config: ChaosConfig, rng: random.Random,
    report: ChaosReport, stop: asyncio.Event,
) -> None:
    restart_at = time.monotonic() + 4 if config.restart_broker else float("inf")
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), config.kill_every_seconds)
        except TimeoutError:
            pass
        if time.monotonic() >= restart_at:
            restart_at = float("inf")
            await asyncio.to_thread(broker.stop_app)
            await asyncio.sleep(3)
            await asyncio.to_thread(broker.start_app)
            report.broker_restarts += 1
            continue
        victim = rng.choice(workers)
        victim.kill()
        report.workers_killed += 1
        replacement = fleet.add_worker(name=f"{victim.name.split('#')[0]}#{report.workers_killed}")
        workers[workers.index(victim)] = replacement
        await fleet.start(replacement, timeout=60)
    if config.restart_broker and report.broker_restarts == 0:
        await asyncio.to_thread(broker.stop_app)
        await asyncio.sleep(3)
        await asyncio.to_thread(broker.start_app)
        report.broker_restarts += 1


async def _wait_for_the_end(
    api: ApiClient, expected: dict[str, set[str]], config: ChaosConfig, report: ChaosReport, started: float,
    chaos_running: asyncio.Task[None],
) -> None:
    deadline = started + config.timeout_seconds
    pending = set(expected)
    finals: dict[str, dict[str, Any]] = {}
    while (pending or (config.restart_broker and report.broker_restarts == 0)) and time.monotonic() < deadline:
        if chaos_running.done():
            chaos_running.result()  # surface a failure of the fault injector itself
        for task_id in list(pending):
            status, task = await api.call("GET", f"/api/v1/tasks/{task_id}")
            if status == 404:
                report.lost += 1
                report.details.append(f"lost: {task_id}")
                pending.discard(task_id)
            elif status == 200 and task["status"] in TERMINAL:
                finals[task_id] = task
                pending.discard(task_id)
        await asyncio.sleep(0.5)
    report.stuck = len(pending)
    report.details.extend(f"stuck: {t}" for t in sorted(pending)[:20])
    for task_id, task in finals.items():
        status = task["status"]
        if status not in expected[task_id]:
            report.unexpected += 1
            report.details.append(f"unexpected: {task_id} {task['task_type']} ended {status}, expected {expected[task_id]}")
        elif status == "completed":
            report.completed += 1
        elif status == "failed":
            report.failed_as_expected += 1
        else:
            report.cancelled += 1


async def _count_callbacks(receiver: CallbackReceiver, expected: dict[str, set[str]], report: ChaosReport) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        delivered = {r.json["task_id"] for r in receiver.received if r.status == 200}
        if delivered >= set(expected):
            break
        await asyncio.sleep(0.5)
    await asyncio.sleep(2)  # a duplicate would arrive about now
    counts = Counter(r.json["task_id"] for r in receiver.received if r.status == 200)
    report.duplicated_callbacks = sum(1 for n in counts.values() if n > 1)
    report.missing_callbacks = len(set(expected) - set(counts)) - report.stuck
    report.missing_callbacks = max(report.missing_callbacks, 0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--kill-every", type=float, default=3.0, help="seconds between worker kills")
    parser.add_argument("--no-broker-restart", action="store_true")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    config = ChaosConfig(tasks=args.tasks, workers=args.workers, kill_every_seconds=args.kill_every,
                         restart_broker=not args.no_broker_restart, timeout_seconds=args.timeout, seed=args.seed)
    log_dir = Path(tempfile.mkdtemp(prefix="tm-chaos-"))
    report = asyncio.run(run_chaos(config, log_dir))
    print(report.line())
    for detail in report.details[:30]:
        print("  " + detail)
    print(f"(process logs: {log_dir})")
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
