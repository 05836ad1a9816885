"""Request/reply over AMQP, both ends, for the two RPC pairs: search-query
embeddings (api → `tm.rpc.embed` → embed worker) and the cancelled-tasks
question (worker → `tm.dispatcher.rpc` → dispatcher).

The client sends on the default exchange with `reply_to` set to its own
exclusive, server-named queue and a fresh `correlation_id`; the server answers
there and acks the request (never requeued: the asker has moved on). Why not
`aio_pika.patterns.RPC`: docs/decisions/0084-one-rpc-helper.md.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection
from loguru import logger

from shared.amqp.consumer import Declare, QueueConsumer

T = TypeVar("T")
# The answer to a request, or None to send none (the asker times out).
Answer = Callable[[AbstractIncomingMessage], Awaitable[bytes | None]]
Reply = Callable[[str, str | None, bytes], Awaitable[None]]
JSON = "application/json"


class RpcServer:
    def __init__(self, answer: Answer, *, what: str, prefetch: int, reply: Reply | None = None) -> None:
        """`reply` sends the answer (default: on this server's own channel)."""
        self._answer = answer
        self._reply = reply or self._reply_on_channel
        self._consumer = QueueConsumer(self._on_request, what=what, prefetch=prefetch)

    @property
    def queue_name(self) -> str:
        return self._consumer.queue.name

    async def start(self, connection: AbstractRobustConnection, declare: Declare) -> None:
        await self._consumer.start(connection, declare)

    async def stop(self) -> None:
        await self._consumer.close()

    async def _on_request(self, message: AbstractIncomingMessage) -> None:
        async with message.process(requeue=False, ignore_processed=True):
            if not message.reply_to:
                return
            body = await self._answer(message)
            if body is not None:
                await self._reply(message.reply_to, message.correlation_id, body)

    async def _reply_on_channel(self, reply_to: str, correlation_id: str | None, body: bytes) -> None:
        await self._consumer.channel.default_exchange.publish(
            aio_pika.Message(body, correlation_id=correlation_id, content_type=JSON), routing_key=reply_to
        )


class RpcClient:
    def __init__(self, *, what: str) -> None:
        self._consumer = QueueConsumer(self._on_reply, what=what, no_ack=True)
        self._waiting: dict[str, tuple[asyncio.Future[Any], Callable[[bytes], Any]]] = {}

    async def start(self, connection: AbstractRobustConnection) -> None:
        # aio-pika names the queue (amq_<hex>) on the client side, so the robust channel
        # re-declares the same name after a reconnect; the api's RabbitMQ role may create
        # exactly such queues.
        await self._consumer.start(connection, _reply_queue)

    async def close(self) -> None:
        await self._consumer.close()

    async def request(
        self, routing_key: str, body: bytes, parse: Callable[[bytes], T], *, expiration: float | None = None
    ) -> asyncio.Future[T]:
        """Send a request; the future gets the first reply that `parse` accepts
        (one it rejects with ValueError is logged and ignored)."""
        correlation_id = uuid.uuid4().hex
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._waiting[correlation_id] = (future, parse)
        future.add_done_callback(lambda _: self._waiting.pop(correlation_id, None))
        try:
            await self._consumer.channel.default_exchange.publish(
                aio_pika.Message(body, content_type=JSON, correlation_id=correlation_id,
                                 reply_to=self._consumer.queue.name, expiration=expiration),
                routing_key=routing_key,
            )
        except BaseException:
            future.cancel()
            raise
        return future

    async def call(
        self, routing_key: str, body: bytes, parse: Callable[[bytes], T], *, timeout: float,
        expiration: float | None = None,
    ) -> T:
        """The parsed reply; TimeoutError when none came within `timeout`."""
        future = await self.request(routing_key, body, parse, expiration=expiration)
        return await asyncio.wait_for(future, timeout)

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        waiting = self._waiting.get(message.correlation_id or "")
        if waiting is None or waiting[0].done():
            return  # a reply to a request that already timed out
        future, parse = waiting
        try:
            future.set_result(parse(message.body))
        except ValueError as exc:
            logger.warning("ignored a malformed reply on {}: {}", self._consumer.what, exc)


async def _reply_queue(channel: AbstractChannel) -> aio_pika.abc.AbstractQueue:
    return await channel.declare_queue(exclusive=True, auto_delete=True)
