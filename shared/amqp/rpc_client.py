"""Asking the dispatcher a question over `tm.dispatcher.rpc` and waiting for
its answer on a private reply queue (closed with the question's channel)."""

from __future__ import annotations

import asyncio
import uuid

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from shared.errors import Unavailable
from shared.topology import DISPATCHER_RPC_QUEUE

# The rpc queue drops a question unanswered after 10 s (its message TTL).
QUESTION_TTL_SECONDS = 10


async def ask_dispatcher(connection: AbstractRobustConnection, question: bytes, *, wait_seconds: float) -> bytes:
    """The dispatcher's answer to `question`; Unavailable when none came in time."""
    channel = await connection.channel()
    try:
        replies = await channel.declare_queue(exclusive=True, auto_delete=True)
        answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        correlation = uuid.uuid4().hex

        async def on_reply(message: AbstractIncomingMessage) -> None:
            if message.correlation_id == correlation and not answer.done():
                answer.set_result(message.body)

        await replies.consume(on_reply, no_ack=True)
        await channel.default_exchange.publish(
            aio_pika.Message(question, reply_to=replies.name, correlation_id=correlation,
                             content_type="application/json", expiration=QUESTION_TTL_SECONDS),
            routing_key=DISPATCHER_RPC_QUEUE,
        )
        try:
            return await asyncio.wait_for(answer, wait_seconds)
        except TimeoutError:
            raise Unavailable(f"the dispatcher did not answer within {wait_seconds:g}s") from None
    finally:
        await channel.close()
