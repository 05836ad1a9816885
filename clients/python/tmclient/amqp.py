"""Submitting over AMQP: publish to the `tm.submit` exchange with publisher
confirms and wait for the api's answer on an exclusive `reply_to` queue.

Needs the `amqp` extra (aio-pika). The message body is a task request, exactly
as for `POST /api/v1/tasks`; `message_id` is its idempotency key, so sending
the same message again never creates a second task.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Mapping
from typing import Any, Self

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)

from tmclient.errors import SubmitRefused
from tmclient.models import TaskCreated

SUBMIT_EXCHANGE = "tm.submit"


class AmqpSubmitter:
    """`async with AmqpSubmitter("amqp://...") as amqp: created = await amqp.submit({...})`."""

    def __init__(self, url: str, *, reply_timeout: float = 30.0) -> None:
        self._url = url
        self._reply_timeout = reply_timeout
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._replies: AbstractQueue | None = None
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        self._connection = await aio_pika.connect_robust(self._url, client_properties={"connection_name": "tmclient"})
        self._channel = await self._connection.channel(publisher_confirms=True)
        self._replies = await self._channel.declare_queue(exclusive=True, auto_delete=True)
        await self._replies.consume(self._on_reply, no_ack=True)

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
        self._connection = None

    async def submit(self, request: Mapping[str, Any], *, idempotency_key: str | None = None) -> TaskCreated:
        """Publish one task request (confirmed by the broker) and return the api's
        answer; `SubmitRefused` when the api refused it (with the reason)."""
        assert self._channel is not None and self._replies is not None, "use `async with` or open() first"
        correlation_id = uuid.uuid4().hex
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[correlation_id] = answer
        try:
            exchange = await self._channel.get_exchange(SUBMIT_EXCHANGE, ensure=False)
            await exchange.publish(
                aio_pika.Message(json.dumps(dict(request)).encode(), content_type="application/json",
                                 delivery_mode=aio_pika.DeliveryMode.PERSISTENT, correlation_id=correlation_id,
                                 reply_to=self._replies.name, message_id=idempotency_key),
                routing_key="", mandatory=True,
            )
            reply = await asyncio.wait_for(answer, self._reply_timeout)
        finally:
            self._waiting.pop(correlation_id, None)
        if not reply.get("ok"):
            error = reply.get("error") or {}
            raise SubmitRefused(error.get("code", "refused"), error.get("message", ""), error.get("details"))
        return TaskCreated.model_validate(reply)

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        waiter = self._waiting.get(message.correlation_id or "")
        if waiter is None or waiter.done():
            return  # an answer nobody waits for any more
        try:
            waiter.set_result(json.loads(message.body))
        except ValueError as exc:
            waiter.set_exception(exc)
