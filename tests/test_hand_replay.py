"""A dead letter moved back by hand (management UI "Move messages", get +
publish, a shovel) becomes a proper replay: a new run in the record, its
events and its callback; a second copy of the same dead letter starts nothing."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from shared.messages import parse_task_events
from tests.conftest import CALLBACK_SECRET, FleetFactory
from tests.support.api import ApiClient
from tests.support.callback_receiver import CallbackReceiver
from tests.support.eventually import eventually
from tests.support.fleet import Fleet


def _with_callbacks(fleet: Fleet) -> None:
    fleet.add_api()
    fleet.add_worker()
    fleet.add_dispatcher(CALLBACK_SECRET=CALLBACK_SECRET)


class Broker:
    """The operator's hands in the management UI, and an ear on tm.events."""

    def __init__(self, connection: aio_pika.abc.AbstractRobustConnection, channel: Any, events: Any) -> None:
        self.connection, self.channel, self.events = connection, channel, events
        self.seen: list[dict[str, Any]] = []

    async def take_dead(self, task_id: str) -> AbstractIncomingMessage:
        """Get the dead letter of `task_id` from tm.dead (unacked, like "Get messages")."""
        queue = await self.channel.declare_queue("tm.dead", passive=True)

        async def found() -> AbstractIncomingMessage | None:
            message = await queue.get(no_ack=False, fail=False)
            assert message is not None, "tm.dead is empty"
            if json.loads(message.body)["task_id"] == task_id:
                return message
            await message.nack(requeue=True)
            raise AssertionError("another task's dead letter")

        return await eventually(found)  # type: ignore[no-any-return]

    async def publish_copy(self, message: AbstractIncomingMessage, exchange: str, routing_key: str) -> None:
        """Publish body and properties unchanged, as "Move messages" and get + publish do."""
        copy = aio_pika.Message(message.body, headers=dict(message.headers or {}), priority=message.priority,
                                content_type=message.content_type, message_id=message.message_id,
                                delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        target = self.channel.default_exchange if exchange == "" else await self.channel.get_exchange(exchange)
        await target.publish(copy, routing_key=routing_key)

    async def events_of(self, task_id: str) -> list[tuple[str, int]]:
        while (message := await self.events.get(no_ack=True, fail=False)) is not None:
            self.seen.extend(e.model_dump() for e in parse_task_events(message.body))
        return [(e["kind"], e["run"]) for e in self.seen if e.get("task_id") == task_id]


@asynccontextmanager
async def _broker(fleet: Fleet) -> AsyncIterator[Broker]:
    connection = await aio_pika.connect_robust(fleet.environment.amqp_url)
    async with connection:
        channel = await connection.channel()
        events = await channel.declare_queue(exclusive=True)
        await events.bind("tm.events", "task.#")
        yield Broker(connection, channel, events)


async def _failed_and_dead(api: ApiClient, receiver: CallbackReceiver, path: str, body: dict[str, Any]) -> str:
    task = await api.run({**body, "callback_url": receiver.url(path)})
    assert task["status"] == "failed"
    await receiver.wait_for(path)
    return str(task["task_id"])


async def _replayed_once(api: ApiClient, broker: Broker, receiver: CallbackReceiver, path: str, task_id: str,
                         attempts: int) -> None:
    """The record, the events and the callbacks all tell of exactly one new run."""
    async def second_callback() -> None:
        assert len(receiver.for_path(path)) >= 2
    await eventually(second_callback, timeout=30)
    final = await api.wait_for(task_id)
    assert final["status"] == "failed" and final["attempts"] == attempts  # same payload, same fate, new run

    seen = await eventually(lambda: _ended(broker, task_id))
    assert seen.index(("queued", 2)) < seen.index(("failed", 2)), seen
    assert not [e for e in seen if e[1] > 2], seen
    hits = receiver.for_path(path)
    assert len(hits) == 2 and [h.json["status"] for h in hits] == ["failed", "failed"]
    _, dlq = await api.call("GET", "/api/v1/dlq")
    assert [i["task_id"] for i in dlq["items"]] == [task_id], "dead again, once"


async def test_a_failed_task_moved_back_to_its_stage_queue_is_replayed(
    fleet_factory: FleetFactory, http: Any, receiver: CallbackReceiver
) -> None:
    fleet = await fleet_factory(_with_callbacks)
    api = ApiClient(fleet.api_url, http)
    path = f"moved-{uuid.uuid4().hex[:6]}"
    task_id = await _failed_and_dead(api, receiver, path,
                                     {"task_type": "fail", "retry_limit": 0, "payload": {"fail_times": 1}})
    async with _broker(fleet) as broker:
        dead = await broker.take_dead(task_id)
        await broker.publish_copy(dead, "", "tm.stage.default")
        await dead.ack()  # "Move messages": the copy leaves tm.dead
        await _replayed_once(api, broker, receiver, path, task_id, attempts=1)


async def test_a_retries_exhausted_task_copied_twice_into_tm_tasks_runs_once(
    fleet_factory: FleetFactory, http: Any, receiver: CallbackReceiver
) -> None:
    fleet = await fleet_factory(_with_callbacks)
    api = ApiClient(fleet.api_url, http)
    path = f"copied-{uuid.uuid4().hex[:6]}"
    task_id = await _failed_and_dead(api, receiver, path,
                                     {"task_type": "fail", "retry_limit": 1, "payload": {"fail_times": 2}})
    async with _broker(fleet) as broker:
        dead = await broker.take_dead(task_id)
        # Copied (not moved) into tm.tasks, twice: one new run, the second copy goes back to tm.dead.
        await broker.publish_copy(dead, "tm.tasks", "default")
        await broker.publish_copy(dead, "tm.tasks", "default")
        await dead.ack()

        async def second_callback() -> None:
            assert len(receiver.for_path(path)) >= 2
        await eventually(second_callback, timeout=30)
        final = await api.wait_for(task_id)
        assert final["status"] == "failed" and final["attempts"] == 2
        seen = await eventually(lambda: _ended(broker, task_id))
        assert seen.count(("queued", 2)) == 1 and not [e for e in seen if e[1] > 2], seen
        assert [h.json["status"] for h in receiver.for_path(path)] == ["failed", "failed"]

        async def two_dead_letters() -> list[dict[str, Any]]:
            _, dlq = await api.call("GET", "/api/v1/dlq")
            assert dlq["depth"] == 2, dlq
            return dlq["items"]  # type: ignore[no-any-return]
        items = await eventually(two_dead_letters, timeout=30)
        refused = [i for i in items if "arrived by hand" in (i["reason"] or "")]
        assert len(refused) == 1 and "already replayed" in refused[0]["reason"], items


async def _ended(broker: Broker, task_id: str) -> list[tuple[str, int]]:
    seen = await broker.events_of(task_id)
    assert ("failed", 2) in seen, seen
    return seen


async def test_a_completed_tasks_message_published_by_hand_is_refused_not_run(
    fleet_factory: FleetFactory, http: Any, receiver: CallbackReceiver
) -> None:
    fleet = await fleet_factory(_with_callbacks)
    api = ApiClient(fleet.api_url, http)
    path = f"done-{uuid.uuid4().hex[:6]}"
    async with _broker(fleet) as broker:
        # What an operator might have kept from an earlier "Get messages": the task as admitted.
        copies = await broker.channel.declare_queue(exclusive=True)
        await copies.bind("tm.tasks", "default")
        control = await broker.channel.declare_queue(exclusive=True)
        await control.bind("tm.control")
        task = await api.run({"task_type": "echo", "payload": {"n": 1}, "callback_url": receiver.url(path)})
        assert task["status"] == "completed"
        await receiver.wait_for(path)
        kept = await copies.get(no_ack=True)

        async def announced() -> None:  # workers hear of the finished run on the same broadcast
            message = await control.get(no_ack=True, fail=False)
            assert message is not None and task["task_id"] in json.loads(message.body).get("runs", {})
        await eventually(announced)

        await broker.publish_copy(kept, "", "tm.stage.default")

        async def refused() -> dict[str, Any]:
            _, dlq = await api.call("GET", "/api/v1/dlq")
            assert dlq["depth"] == 1, dlq
            return dlq["items"][0]  # type: ignore[no-any-return]
        item = await eventually(refused)
        assert item["task_id"] == task["task_id"] and item["reason"] == "task already finished; use replay"
        seen = await broker.events_of(task["task_id"])
        assert [kind for kind, _ in seen].count("completed") == 1, seen
        after = await api.get(task["task_id"])
        assert after["status"] == "completed" and after["finished_at"] == task["finished_at"]
        assert len(receiver.for_path(path)) == 1

        # A worker started after the run ended learns it from the dispatcher at start-up.
        first = next(p for p in fleet.processes if p.name.startswith("worker"))
        first.stop()
        fleet.processes.remove(first)
        await fleet.start(fleet.add_worker(name="worker-later"))
        await broker.publish_copy(kept, "tm.tasks", "default")

        async def refused_again() -> None:
            _, dlq = await api.call("GET", "/api/v1/dlq")
            assert dlq["depth"] == 2, dlq
            assert {i["reason"] for i in dlq["items"]} == {"task already finished; use replay"}
        await eventually(refused_again)
        assert (await api.get(task["task_id"]))["finished_at"] == task["finished_at"]
        assert len(receiver.for_path(path)) == 1


def _reconciling(fleet: Fleet) -> None:
    fleet.add_api()
    fleet.add_dispatcher(CALLBACK_SECRET=CALLBACK_SECRET, RECONCILER_STALE_SECONDS="2",
                         RECONCILER_INTERVAL_SECONDS="0.5")


async def test_a_task_whose_stage_queue_was_purged_is_failed_then_replayable(
    fleet_factory: FleetFactory, http: Any, receiver: CallbackReceiver
) -> None:
    fleet = await fleet_factory(_reconciling)  # no worker yet: the task waits in its queue
    api = ApiClient(fleet.api_url, http)
    path = f"purged-{uuid.uuid4().hex[:6]}"
    async with _broker(fleet) as broker:
        created = await api.submit({"task_type": "echo", "payload": {"n": 2}, "callback_url": receiver.url(path)})
        task_id = created["task_id"]
        queue = await broker.channel.declare_queue("tm.stage.default", passive=True)

        async def waiting() -> None:
            assert (await broker.channel.declare_queue("tm.stage.default", passive=True)
                    ).declaration_result.message_count == 1
        await eventually(waiting)
        assert (await api.get(task_id))["status"] == "queued", "a waiting task is left alone"
        await queue.purge()  # the operator's "Purge messages"

        failed = await api.wait_for(task_id, timeout=30)
        assert failed["status"] == "failed" and failed["error"]["type"] == "message_lost"
        assert "taskmgr dlq replay" in failed["error"]["message"]
        [hit] = await receiver.wait_for(path)
        assert hit.json["status"] == "failed"

        worker = fleet.add_worker(name="worker-late")
        await fleet.start(worker)
        status, report = await api.call("POST", "/api/v1/dlq/replay", json={"task_ids": [task_id]})
        assert status == 200 and report["replayed"] == [task_id], report
        done = await api.wait_for(task_id, {"completed"}, timeout=30)
        assert done["result"] == {"n": 2}
        hits = await receiver.wait_for(path, count=2)
        assert [h.json["status"] for h in hits] == ["failed", "completed"]
        seen = await broker.events_of(task_id)
        assert ("queued", 2) in seen and ("completed", 2) in seen, seen
