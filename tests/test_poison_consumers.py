"""Each consumer treats a message it cannot parse as poison: dead-lettered once
with the reason, never requeued for ever; a task message that still names its
task ends that task `failed`, with its callback, and is found under /dlq/{id}."""

from __future__ import annotations

import uuid

import aio_pika
import orjson

from shared.amqp import headers as h
from shared.topology import DEAD_QUEUE, EVENTS_EXCHANGE, stage_queue
from tests.conftest import FleetFactory
from tests.support.api import ApiClient
from tests.support.callback_receiver import CallbackReceiver
from tests.support.eventually import eventually
from tests.support.fleet import Fleet


def _nested_past_pydantics_limit(body: bytes, depth: int = 240) -> bytes:
    """`body` (a JSON object) with a member nested `depth` levels: orjson parses it, pydantic does not."""
    return body[:-1] + b',"deep":' + b"[" * depth + b"1" + b"]" * depth + b"}"


async def _dead_reasons(fleet: Fleet, marker: str) -> list[str]:
    connection = await aio_pika.connect(fleet.environment.amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(DEAD_QUEUE, passive=True)
        found = []
        while (message := await queue.get(no_ack=False, fail=False)) is not None:
            if marker.encode() in message.body:
                found.append(str((message.headers or {}).get(h.DEAD_REASON)))
        await channel.close()  # what was read goes back unacked
    assert found, "not dead-lettered yet"
    return found


async def test_a_task_message_the_worker_cannot_parse_fails_its_task_with_a_callback(
    fleet_factory: FleetFactory, http, receiver: CallbackReceiver  # type: ignore[no-untyped-def]
) -> None:
    def no_worker_yet(fleet: Fleet) -> None:
        fleet.add_api()
        fleet.add_dispatcher()

    fleet = await fleet_factory(no_worker_yet)
    api = ApiClient(fleet.api_url, http)
    path = f"poison-{uuid.uuid4().hex}"
    status, created = await api.call("POST", "/api/v1/tasks", json={
        "task_type": "echo", "payload": {"m": 1}, "callback_url": receiver.url(path)})
    assert status == 201, created
    task_id = created["task_id"]

    # Swap the queued message for one the worker cannot parse (what a 200-251 deep payload was).
    connection = await aio_pika.connect(fleet.environment.amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(stage_queue("default"), passive=True)

        async def queued() -> aio_pika.abc.AbstractIncomingMessage:
            message = await queue.get(no_ack=False, fail=False)
            assert message is not None, "not queued yet"
            return message

        original = await eventually(queued)
        assert task_id.encode() in original.body
        await channel.default_exchange.publish(
            aio_pika.Message(_nested_past_pydantics_limit(original.body), headers=dict(original.headers or {})),
            routing_key=stage_queue("default"))
        await original.ack()

    await fleet.start(fleet.add_worker())
    task = await api.wait_for(task_id)
    assert task["status"] == "failed", task
    assert task["error"]["type"] == "poison_message" and "not a valid task message" in task["error"]["message"]
    [hit] = await receiver.wait_for(path)
    assert hit.json["status"] == "failed"
    status, letter = await api.call("GET", f"/api/v1/dlq/{task_id}")
    assert status == 200 and letter["items"][0]["replayable"] is False, letter


async def test_an_event_the_dispatcher_cannot_parse_is_dead_lettered_once(fleet: Fleet, api: ApiClient) -> None:
    marker = uuid.uuid4().hex
    body = _nested_past_pydantics_limit(orjson.dumps({"kind": "failed", "task_id": marker}))
    connection = await aio_pika.connect(fleet.environment.amqp_url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(EVENTS_EXCHANGE)
        await exchange.publish(aio_pika.Message(body), routing_key="task.failed")
    reasons = await eventually(lambda: _dead_reasons(fleet, marker))
    assert len(reasons) == 1 and "not a valid task event" in reasons[0], reasons
    good = await api.run({"task_type": "echo"})  # the dispatcher lives on
    assert good["status"] == "completed"
