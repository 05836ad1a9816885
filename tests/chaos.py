"""A chaos soak: thousands of mixed tasks while workers are killed and RabbitMQ
restarts; then one line of what became of every accepted task.

    python -m tests.chaos [--tasks 5000] [--workers 3] [--kill-every 3] [--timeout 300]
    make chaos

Loopback only, bounded in time, cleans up after itself (its own RabbitMQ node
and database). Lost, stuck and duplicated must be 0; the exit code says so.
tests/chaos_cluster.py runs the same soak on a three-node cluster: what differs
between the two is a `ChaosBroker` (how the broker starts, fails and stops) and
the number of replicas.
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
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from tests.support.api import TERMINAL, ApiClient
from tests.support.callback_receiver import CallbackReceiver
from tests.support.dedicated import DedicatedRabbitMQ
from tests.support.environment import create_environment, destroy_environment, free_port
from tests.support.fleet import Fleet, Process


@dataclass(frozen=True)
class ChaosConfig:
    tasks: int = 5000
    workers: int = 3
    apis: int = 1
    dispatchers: int = 1
    kill_every_seconds: float = 3.0
    restart_broker: bool = True
    # Between two broker outages (a cluster has one per node, one at a time).
    broker_fault_every_seconds: float = 20.0
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
    failed_starts: int = 0
    late_cancels: int = 0
    longest_outage_seconds: float = 0.0
    slowest_task_seconds: float = 0.0
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
            f"failed_starts={self.failed_starts} late_cancels={self.late_cancels} "
            f"longest_outage={self.longest_outage_seconds:.0f}s slowest_task={self.slowest_task_seconds:.0f}s "
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


class ChaosBroker(Protocol):
    """What the soak needs of a broker: start it, give each process its AMQP_URL,
    make it fail `faults` times (blocking calls, run in a thread) and stop it."""

    faults: int

    def start(self) -> None: ...

    def url(self, process_index: int) -> str: ...

    def fault(self, number: int) -> float:
        """Fault number `number` (0-based); returns how long the broker (or node) was out."""
        ...

    def stop(self) -> None: ...


class SingleNodeBroker:
    """`make chaos`: one RabbitMQ node of its own, its app stopped once for 3 s."""

    def __init__(self, restart: bool) -> None:
        self.node = DedicatedRabbitMQ()
        self.faults = 1 if restart else 0

    def start(self) -> None:
        self.node.start()

    def url(self, process_index: int) -> str:
        return self.node.url

    def fault(self, number: int) -> float:
        started = time.monotonic()
        self.node.stop_app()
        time.sleep(3)
        self.node.start_app()
        return time.monotonic() - started

    def stop(self) -> None:
        self.node.stop()


async def run_chaos(config: ChaosConfig, log_dir: Path, broker: ChaosBroker | None = None) -> ChaosReport:
    rng = random.Random(config.seed)
    report = ChaosReport()
    started = time.monotonic()
    broker = broker or SingleNodeBroker(config.restart_broker)
    await asyncio.to_thread(broker.start)
    environment = None
    receiver = CallbackReceiver()
    fleet: Fleet | None = None
    try:
        environment = await create_environment("chaos", amqp_url=broker.url(0))
        await receiver.start()
        fleet = Fleet(environment, log_dir)
        apis = [fleet.add_api(name=f"api-{i}", port=None if i == 0 else free_port(), AMQP_URL=broker.url(i))
                for i in range(config.apis)]
        workers = [fleet.add_worker(name=f"worker-{i}", AMQP_URL=broker.url(i)) for i in range(config.workers)]
        for i in range(config.dispatchers):
            fleet.add_dispatcher(name=f"dispatcher-{i}", AMQP_URL=broker.url(i))
        await fleet.start(timeout=60)
        async with aiohttp.ClientSession() as http:
            clients = [ApiClient(p.ready_url.removesuffix("/health/ready"), http) for p in apis if p.ready_url]
            expected: dict[str, set[str]] = {}
            stop_chaos = asyncio.Event()
            chaos = asyncio.gather(_kill_workers(fleet, workers, config, rng, report, stop_chaos),
                                   _break_broker(broker, config, report, stop_chaos))
            await _submit_all(clients, config, rng, expected, report, receiver.url("chaos"),
                              deadline=started + config.timeout_seconds)
            # Faults go on while the backlog drains, not only while tasks arrive.
            await _wait_for_the_end(clients[0], expected, config, report, started, broker.faults, chaos_running=chaos)
            stop_chaos.set()
            await chaos
            await _count_callbacks(receiver, expected, report, deadline=started + config.timeout_seconds)
    finally:
        if fleet is not None:
            fleet.stop()
        await receiver.stop()
        if environment is not None:
            await destroy_environment(environment)
        await asyncio.to_thread(broker.stop)
    report.elapsed_seconds = time.monotonic() - started
    return report


async def _submit_all(
    apis: list[ApiClient], config: ChaosConfig, rng: random.Random, expected: dict[str, set[str]], report: ChaosReport,
    callback_url: str, deadline: float,
) -> None:
    """Submit every task (retrying refusals with one Idempotency-Key) until `deadline`."""
    plan = [_mix(rng) for _ in range(config.tasks)]
    queue: asyncio.Queue[tuple[dict[str, Any], set[str], bool]] = asyncio.Queue()
    for item in plan:
        queue.put_nowait(item)
    cancels: list[asyncio.Task[None]] = []

    async def submitter(api: ApiClient) -> None:
        while not queue.empty() and time.monotonic() < deadline:
            body, outcomes, cancel = queue.get_nowait()
            body = {**body, "callback_url": callback_url}
            key = uuid.uuid4().hex  # a retried submission never creates a second task
            while True:
                try:
                    status, created = await api.call("POST", "/api/v1/tasks", json=body,
                                                     headers={"Idempotency-Key": key},
                                                     timeout=aiohttp.ClientTimeout(total=20))
                except (aiohttp.ClientError, TimeoutError):
                    status = 0
                if status in (200, 201):
                    expected[created["task_id"]] = outcomes
                    report.accepted += 1
                    if cancel:
                        cancels.append(asyncio.create_task(
                            _cancel_later(api, created["task_id"], rng.uniform(0.2, 1.5), expected, report, deadline)))
                    break
                report.refused_503 += status == 503
                if time.monotonic() > deadline:
                    return
                await asyncio.sleep(0.2)

    # Submitters are spread over the api replicas, as a load balancer would.
    await asyncio.gather(*(submitter(apis[i % len(apis)]) for i in range(config.submit_concurrency)))
    await asyncio.gather(*cancels)


async def _cancel_later(
    api: ApiClient, task_id: str, delay: float, expected: dict[str, set[str]], report: ChaosReport, deadline: float,
) -> None:
    await asyncio.sleep(delay)
    while time.monotonic() < deadline:
        try:
            status, _ = await api.call("DELETE", f"/api/v1/tasks/{task_id}", timeout=aiohttp.ClientTimeout(total=20))
        except (aiohttp.ClientError, TimeoutError):
            status = 0
        if status in (200, 202):
            return
        if status == 409:
            # Refused (503) until the task had ended: a 4 s sleep that completed is then right.
            report.late_cancels += 1
            expected[task_id] = {"completed", "cancelled"}
            return
        await asyncio.sleep(0.3)


async def _kill_workers(
    fleet: Fleet, workers: list[Process], config: ChaosConfig, rng: random.Random, report: ChaosReport,
    stop: asyncio.Event,
) -> None:
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), config.kill_every_seconds)
            return
        except TimeoutError:
            pass
        victim = rng.choice(workers)
        victim.kill()
        report.workers_killed += 1
        workers[workers.index(victim)] = await _replace(fleet, victim, report, stop)


async def _replace(fleet: Fleet, victim: Process, report: ChaosReport, stop: asyncio.Event) -> Process:
    """Start a worker in the victim's place and, as a supervisor (k8s, systemd)
    would, start it again while it exits at startup: a worker cannot declare its
    queues while the node that holds them is down."""
    while True:
        replacement = fleet.add_worker(name=f"{victim.name.split('#')[0]}#{report.workers_killed}",
                                       AMQP_URL=victim.env["AMQP_URL"])
        try:
            await fleet.start(replacement, timeout=60)
            return replacement
        except (RuntimeError, TimeoutError):
            replacement.kill()
            report.failed_starts += 1
            if stop.is_set():
                return replacement
            await asyncio.sleep(1)


async def _break_broker(broker: ChaosBroker, config: ChaosConfig, report: ChaosReport, stop: asyncio.Event) -> None:
    """The broker's faults one at a time: the first 4 s in, then one every
    `broker_fault_every_seconds` (the soak waits for all of them, even once the tasks are done)."""
    for number in range(broker.faults):
        try:
            await asyncio.wait_for(stop.wait(), 4 if number == 0 else config.broker_fault_every_seconds)
            return  # out of time
        except TimeoutError:
            pass
        outage = await asyncio.to_thread(broker.fault, number)
        report.broker_restarts += 1
        report.longest_outage_seconds = max(report.longest_outage_seconds, outage)


async def _wait_for_the_end(
    api: ApiClient, expected: dict[str, set[str]], config: ChaosConfig, report: ChaosReport, started: float,
    faults: int, chaos_running: asyncio.Future[Any],
) -> None:
    deadline = started + config.timeout_seconds
    pending = set(expected)
    finals: dict[str, dict[str, Any]] = {}
    while (pending or report.broker_restarts < faults) and time.monotonic() < deadline:
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
    report.slowest_task_seconds = slowest_task_seconds(finals.values())
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


def slowest_task_seconds(tasks: Any) -> float:
    """The longest time from submission to a terminal status: how long a fault delayed a task."""
    spans = [(datetime.fromisoformat(t["finished_at"]) - datetime.fromisoformat(t["created_at"])).total_seconds()
             for t in tasks if t.get("finished_at") and t.get("created_at")]
    return max(spans, default=0.0)


async def _count_callbacks(
    receiver: CallbackReceiver, expected: dict[str, set[str]], report: ChaosReport, deadline: float,
) -> None:
    deadline = max(deadline, time.monotonic() + 5)  # the run's own deadline, and a few seconds for the last ones
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


def parser(prog: str, doc: str | None, workers: int) -> argparse.ArgumentParser:
    """The options both soaks share."""
    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=workers)
    parser.add_argument("--kill-every", type=float, default=3.0, help="seconds between worker kills")
    parser.add_argument("--timeout", type=float, default=300.0, help="the whole run, broker start included")
    parser.add_argument("--seed", type=int, default=1)
    return parser


def run_and_exit(config: ChaosConfig, broker: ChaosBroker | None = None, notes: list[str] | None = None) -> None:
    """Run the soak, print its line (what the broker went through, what went wrong), exit 1 unless all is well."""
    log_dir = Path(tempfile.mkdtemp(prefix="tm-chaos-"))
    report = asyncio.run(run_chaos(config, log_dir, broker))
    print(report.line())
    for note in notes or []:
        print("  " + note)
    for detail in report.details[:30]:
        print("  " + detail)
    print(f"(process logs: {log_dir})")
    sys.exit(0 if report.ok else 1)


def main(argv: list[str] | None = None) -> None:
    options = parser("python -m tests.chaos", __doc__, workers=3)
    options.add_argument("--no-broker-restart", action="store_true")
    args = options.parse_args(argv)
    run_and_exit(ChaosConfig(tasks=args.tasks, workers=args.workers, kill_every_seconds=args.kill_every,
                             restart_broker=not args.no_broker_restart, timeout_seconds=args.timeout,
                             seed=args.seed))


if __name__ == "__main__":
    main()
