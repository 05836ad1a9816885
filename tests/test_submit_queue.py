"""The AMQP way in: publishing to tm.submit instead of calling REST."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import orjson
import pytest_asyncio

from shared.amqp import headers as h
from shared.topology import DEAD_QUEUE, SUBMIT_QUEUE
from tests.support.api import ApiClient
from tests.support.fleet import Fleet


class SubmitClient:
    """What another service does: publish with reply_to and correlation_id, await the answer."""

    def __init__(self, channel: aio_pika.abc.AbstractChannel, reply_queue: aio_pika.abc.AbstractQueue) -> None:
        self.channel = channel
        self.reply_queue = reply_queue
        self.replies: dict[str, asyncio.Future[Any]] = {}

    async def start(self) -> None:
        await self.reply_queue.consume(self._on_reply, no_ack=True)

    async def _on_reply(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        future = self.replies.pop(message.correlation_id or "", None)
        if future is not None:
            future.set_result(orjson.loads(message.body))

    async def submit(self, body: bytes, *, message_id: str | None = None) -> Any:
        correlation_id = uuid.uuid4().hex
        future = asyncio.get_running_loop().create_future()
        self.replies[correlation_id] = future
        await self.channel.default_exchange.publish(
            aio_pika.Message(body, reply_to=self.reply_queue.name, correlation_id=correlation_id,
                             message_id=message_id, content_type="application/json"),
            routing_key=SUBMIT_QUEUE,
        )
        return await asyncio.wait_for(future, 10)


@pytest_asyncio.fixture(loop_scope="session")
async def submitter(fleet: Fleet) -> AsyncIterator[SubmitClient]:
    connection = await aio_pika.connect(fleet.environment.amqp_url)
    async with connection:
        channel = await connection.channel()
        reply_queue = await channel.declare_queue(exclusive=True)
        client = SubmitClient(channel, reply_queue)
        await client.start()
        yield client


async def test_a_published_task_is_answered_with_its_id_and_completes(submitter: SubmitClient, api: ApiClient) -> None:
    reply = await submitter.submit(orjson.dumps({"task_type": "test", "payload": {"message": "via amqp"}}))
    assert reply["ok"] is True and reply["status"] == "queued"
    task = await api.wait_for(reply["task_id"])
    assert task["status"] == "completed" and task["result"] == {"message": "via amqp"}


async def test_message_id_makes_a_resent_message_idempotent(submitter: SubmitClient) -> None:
    message_id = uuid.uuid4().hex
    body = orjson.dumps({"task_type": "echo"})
    first = await submitter.submit(body, message_id=message_id)
    second = await submitter.submit(body, message_id=message_id)
    assert first["task_id"] == second["task_id"] and second["created"] is False


async def test_an_invalid_message_is_answered_and_dead_lettered(submitter: SubmitClient, fleet: Fleet) -> None:
    marker = uuid.uuid4().hex
    reply = await submitter.submit(orjson.dumps({"task_type": "echo", "priority": "urgent", "payload": {"m": marker}}))
    assert reply["ok"] is False
    assert reply["error"]["details"][0]["field"] == "priority"
    not_json = await submitter.submit(b"this is not json " + marker.encode())
    assert not_json["ok"] is False and "not valid JSON" in not_json["error"]["message"]

    dead = await _dead_letters_containing(fleet, marker)
    assert len(dead) == 2
    assert all(m.headers[h.DEAD_SOURCE_QUEUE] == SUBMIT_QUEUE for m in dead)
    assert any("priority" in m.headers[h.DEAD_REASON] for m in dead)
    # ...and the consumer is still working:
    good = await submitter.submit(orjson.dumps({"task_type": "echo"}))
    assert good["ok"] is True


async def _dead_letters_containing(fleet: Fleet, marker: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
    connection = await aio_pika.connect(fleet.environment.amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(DEAD_QUEUE, passive=True)
        found = []
        while (message := await queue.get(no_ack=False, fail=False)) is not None:
            if marker.encode() in message.body:
                found.append(message)
        return found
