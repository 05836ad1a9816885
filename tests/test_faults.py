"""Faults survived: every accepted task reaches exactly one terminal state and
one callback, whatever dies on the way."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import aiohttp
import pytest_asyncio

from shared.messages import TaskCompleted, TaskMessage, utcnow
from shared.topology import EVENTS_EXCHANGE, TASKS_EXCHANGE
from tests.conftest import FleetFactory
from tests.support.api import ApiClient
from tests.support.callback_receiver import CallbackReceiver
from tests.support.dedicated import DedicatedPostgres, DedicatedRabbitMQ
from tests.support.fleet import Fleet, standard


def _process(fleet: Fleet, prefix: str):  # type: ignore[no-untyped-def]
    return next(p for p in fleet.processes if p.name.startswith(prefix))


async def _all_final(api: ApiClient, ids: list[str], timeout: float = 90) -> list[dict[str, Any]]:
    return list(await asyncio.gather(*(api.wait_for(t, timeout=timeout) for t in ids)))


def _assert_one_callback_each(receiver: CallbackReceiver, path: str, finals: list[dict[str, Any]]) -> None:
    delivered = Counter(r.json["task_id"] for r in receiver.for_path(path) if r.status == 200)
    assert set(delivered) == {t["task_id"] for t in finals}, "every task called back"
    assert max(delivered.values()) == 1, "no task called back twice"
    for task in finals:
        sent = next(r.json for r in receiver.for_path(path) if r.json["task_id"] == task["task_id"])
        assert sent["status"] == task["status"], "the callback agrees with the database"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def dedicated_broker() -> AsyncIterator[DedicatedRabbitMQ]:
    broker = DedicatedRabbitMQ()
    await asyncio.to_thread(broker.start)
    yield broker
    await asyncio.to_thread(broker.stop)


@pytest_asyncio.fixture(loop_scope="session")
async def dedicated_postgres() -> AsyncIterator[DedicatedPostgres]:
    postgres = DedicatedPostgres()
    await asyncio.to_thread(postgres.start)
    yield postgres
    await asyncio.to_thread(postgres.destroy)


async def test_a_worker_killed_mid_tasks_loses_none_and_completes_none_twice(
    fleet_factory: FleetFactory, http: aiohttp.ClientSession, receiver: CallbackReceiver
) -> None:
    fleet = await fleet_factory(lambda f: standard(f, WORKER_POOL_SIZE="6"))
    api = ApiClient(fleet.api_url, http)
    ids = [(await api.submit({"task_type": "sleep", "payload": {"seconds": random.uniform(0.2, 1.0)},
                              "callback_url": receiver.url("kill")}))["task_id"] for _ in range(40)]
    ids += [(await api.submit({"task_type": "benchmark", "callback_url": receiver.url("kill")}))["task_id"]
            for _ in range(100)]
    worker = _process(fleet, "worker")
    for round_ in range(2):
        await asyncio.sleep(0.8)
        worker.kill()
        replacement = fleet.add_worker(name=f"worker-again-{round_}", WORKER_POOL_SIZE="6")
        await fleet.start(replacement)
        worker = replacement
    finals = await _all_final(api, ids)
    assert Counter(t["status"] for t in finals) == {"completed": len(ids)}
    await receiver.wait_for("kill", count=len(ids))
    await asyncio.sleep(1)
    _assert_one_callback_each(receiver, "kill", finals)


async def test_a_rabbitmq_restart_is_survived_and_no_unconfirmed_task_is_accepted(
    dedicated_broker: DedicatedRabbitMQ, fleet_factory: FleetFactory, http: aiohttp.ClientSession
) -> None:
    fleet = await fleet_factory(standard, amqp_url=dedicated_broker.url)
    api = ApiClient(fleet.api_url, http)
    accepted: list[str] = []
    answers: Counter[int] = Counter()
    stop = asyncio.Event()

    async def submit_continuously() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            body = {"task_type": "sleep" if i % 5 == 0 else "benchmark", "payload": {"seconds": 0.3} if i % 5 == 0 else {}}
            try:
                status, created = await api.call("POST", "/api/v1/tasks", json=body,
                                                  timeout=aiohttp.ClientTimeout(total=15))
            except (aiohttp.ClientError, TimeoutError):
                answers[0] += 1
                continue
            answers[status] += 1
            if status == 201:
                accepted.append(created["task_id"])
            else:
                assert status == 503, created
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.01)

    submitter = asyncio.create_task(submit_continuously())
    await asyncio.sleep(2)
    await asyncio.to_thread(dedicated_broker.stop_app)
    await asyncio.sleep(3)
    await asyncio.to_thread(dedicated_broker.start_app)
    await asyncio.sleep(4)
    stop.set()
    await submitter

    assert answers[503] > 0, f"the outage was visible as 503s: {answers}"
    assert all(p.alive() for p in fleet.processes), fleet.logs()
    finals = await _all_final(api, accepted, timeout=120)
    assert Counter(t["status"] for t in finals) == {"completed": len(accepted)}, "every 201 was a real task"
    after = await api.run({"task_type": "echo", "payload": {"after": "restart"}}, timeout=30)
    assert after["status"] == "completed", "consumers were restored"


async def test_every_process_exits_promptly_on_sigterm_while_the_broker_is_down(
    dedicated_broker: DedicatedRabbitMQ, fleet_factory: FleetFactory
) -> None:
    fleet = await fleet_factory(standard, amqp_url=dedicated_broker.url)
    await asyncio.to_thread(dedicated_broker.stop_app)
    try:
        for process in list(fleet.processes):
            started = time.monotonic()
            process.signal(signal.SIGTERM)
            code = await asyncio.to_thread(process.popen.wait, 30)  # type: ignore[union-attr]
            assert code == 0 and time.monotonic() - started < 20, (process.name, process.log_tail())
    finally:
        await asyncio.to_thread(dedicated_broker.start_app)


async def test_a_postgres_outage_is_survived(
    dedicated_postgres: DedicatedPostgres, fleet_factory: FleetFactory, http: aiohttp.ClientSession
) -> None:
    fleet = await fleet_factory(standard, postgres=dedicated_postgres.settings)
    api = ApiClient(fleet.api_url, http)
    in_flight = [(await api.submit({"task_type": "sleep", "payload": {"seconds": 2}}))["task_id"] for _ in range(10)]
    await asyncio.sleep(0.5)
    await asyncio.to_thread(dedicated_postgres.stop)
    status, error = await api.call("POST", "/api/v1/tasks", json={"task_type": "echo"})
    assert status == 503 and error["error"]["code"] == "unavailable"
    status, _ = await api.call("GET", "/health/ready")
    assert status == 503
    await asyncio.sleep(3)  # the sleeps finish while the database is down: their events must wait
    await asyncio.to_thread(dedicated_postgres.start)
    deadline = time.monotonic() + 30
    while (await api.call("POST", "/api/v1/tasks", json={"task_type": "echo"}))[0] != 201:
        assert time.monotonic() < deadline, "the api recovers"
        await asyncio.sleep(0.2)
    finals = await _all_final(api, in_flight, timeout=60)
    assert Counter(t["status"] for t in finals) == {"completed": len(in_flight)}
    assert "database writes recovered" in _process(fleet, "dispatcher").log_tail(200)


async def test_callbacks_wait_out_a_receiver_outage(api: ApiClient) -> None:
    receiver = CallbackReceiver()  # not started yet: the port refuses connections
    task = await api.run({"task_type": "echo", "callback_url": receiver.url("late")})
    await asyncio.sleep(1.5)
    view = await api.get(task["task_id"])
    assert view["callback"]["state"] == "pending" and view["callback"]["attempts"] >= 2
    assert "ClientConnectorError" in view["callback"]["last_error"]
    await receiver.start()
    try:
        await receiver.wait_for("late", timeout=30)
        delivered = await api.wait_for_callback(task["task_id"], "delivered")
        assert delivered["callback"]["attempts"] >= 3
    finally:
        await receiver.stop()


async def test_a_callback_gives_up_after_its_budget_and_says_so(fleet_factory: FleetFactory, http) -> None:  # type: ignore[no-untyped-def]
    def small_budget(fleet: Fleet) -> None:
        fleet.add_api()
        fleet.add_worker()
        fleet.add_dispatcher(CALLBACK_MAX_ATTEMPTS="3", CALLBACK_BACKOFF_BASE="0.1", CALLBACK_BACKOFF_MAX="0.2")

    fleet = await fleet_factory(small_budget)
    api = ApiClient(fleet.api_url, http)
    receiver = CallbackReceiver()
    task = await api.run({"task_type": "echo", "callback_url": receiver.url("never")})
    failed = await api.wait_for_callback(task["task_id"], "failed", timeout=30)
    assert failed["callback"]["attempts"] == 3
    async with http.get(_process(fleet, "dispatcher").ready_url.replace("/health/ready", "/metrics")) as r:
        assert "callback_failures_total 1.0" in await r.text()


async def test_sigterm_on_each_process_with_work_in_flight_leaves_nothing_stuck(
    fleet_factory: FleetFactory, http: aiohttp.ClientSession
) -> None:
    fleet = await fleet_factory(lambda f: standard(f, SHUTDOWN_GRACE_SECONDS="1"))
    api = ApiClient(fleet.api_url, http)
    ids = [(await api.submit({"task_type": "sleep", "payload": {"seconds": s}}))["task_id"]
           for s in (0.2, 0.5, 3, 3, 5)]
    await asyncio.sleep(0.4)
    for prefix in ("worker", "dispatcher", "api"):
        process = _process(fleet, prefix)
        process.signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.popen.wait, 30) == 0, process.log_tail()  # type: ignore[union-attr]
        fleet.processes.remove(process)
        restarted = {"worker": fleet.add_worker, "dispatcher": fleet.add_dispatcher, "api": fleet.add_api}[prefix]()
        await fleet.start(restarted)
    finals = await _all_final(api, ids, timeout=60)
    assert Counter(t["status"] for t in finals) == {"completed": len(ids)}


async def test_duplicate_deliveries_end_in_one_state_and_one_callback(
    fleet: Fleet, api: ApiClient, receiver: CallbackReceiver
) -> None:
    created = await api.submit({"task_type": "sleep", "payload": {"seconds": 0.5}, "callback_url": receiver.url("dup")})
    task = await api.get(created["task_id"])
    message = TaskMessage(task_id=task["task_id"], task_type="sleep", payload={"seconds": 0.5}, retry_limit=3,
                          created_at=utcnow())
    connection = await aio_pika.connect(fleet.environment.amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        tasks_exchange = await channel.get_exchange(TASKS_EXCHANGE)
        events = await channel.get_exchange(EVENTS_EXCHANGE)
        for _ in range(2):  # the same task delivered twice more
            await tasks_exchange.publish(aio_pika.Message(message.model_dump_json().encode()), "default")
        final = await api.wait_for(created["task_id"])
        duplicate_end = TaskCompleted(task_id=task["task_id"], task_type="sleep", result="late duplicate",
                                      finished_at=utcnow())
        for _ in range(2):  # and its final event twice more
            await events.publish(aio_pika.Message(duplicate_end.model_dump_json().encode()), duplicate_end.routing_key)
    await asyncio.sleep(2)
    assert (await api.get(created["task_id"]))["result"] == final["result"] == {"slept_seconds": final["result"]["slept_seconds"]}
    assert len(receiver.for_path("dup")) == 1


async def test_a_message_whose_worker_keeps_dying_is_dead_lettered_not_looped(
    fleet_factory: FleetFactory, http: aiohttp.ClientSession
) -> None:
    fleet = await fleet_factory(standard, extra_env={"MAX_REDELIVERIES": "2"})
    api = ApiClient(fleet.api_url, http)
    created = await api.submit({"task_type": "sleep", "payload": {"seconds": 30}})
    await api.wait_for(created["task_id"], {"processing"}, timeout=30)
    for round_ in range(3):
        await asyncio.sleep(1.5)  # the (re)delivered message is being worked on
        worker = _process(fleet, "worker")
        worker.kill()
        fleet.processes.remove(worker)
        await fleet.start(fleet.add_worker(name=f"worker-{round_}"))
    task = await api.wait_for(created["task_id"], timeout=30)
    assert task["status"] == "failed"
    assert task["error"]["type"] == "redelivery_limit" and "redelivered 3 times" in task["error"]["message"]
    status, dead = await api.call("GET", f"/api/v1/dlq/{created['task_id']}")
    assert status == 200 and "redelivered 3 times" in dead["items"][0]["reason"]


async def test_cancel_racing_completion_agrees_everywhere(
    api: ApiClient, receiver: CallbackReceiver
) -> None:
    ids = [(await api.submit({"task_type": "sleep", "payload": {"seconds": 0.3}, "callback_url": receiver.url("race")}))
           ["task_id"] for _ in range(30)]
    await asyncio.sleep(0.25)
    await asyncio.gather(*(api.call("DELETE", f"/api/v1/tasks/{t}") for t in ids))
    finals = await _all_final(api, ids)
    statuses = Counter(t["status"] for t in finals)
    assert set(statuses) <= {"completed", "cancelled"} and sum(statuses.values()) == len(ids)
    await receiver.wait_for("race", count=len(ids))
    await asyncio.sleep(1)
    _assert_one_callback_each(receiver, "race", finals)
