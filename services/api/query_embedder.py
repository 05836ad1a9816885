"""Embedding a search query without loading a model in the api: an RPC over
`tm.rpc.embed`, answered by any embed worker (the model that embedded the
documents). Replies come back on one exclusive queue per api process,
matched by correlation id."""

from __future__ import annotations

import asyncio
import uuid

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection
from loguru import logger

from shared.embedding_rpc import EmbedReply, EmbedRequest
from shared.errors import Unavailable
from shared.topology import EMBED_RPC_QUEUE


class QueryEmbedder:
    def __init__(self, connection: AbstractRobustConnection, *, timeout_seconds: float) -> None:
        self._connection = connection
        self._timeout = timeout_seconds
        self._channel: AbstractChannel | None = None
        self._reply_queue = ""
        self._waiting: dict[str, asyncio.Future[EmbedReply]] = {}

    async def start(self) -> None:
        self._channel = await self._connection.channel()
        # aio-pika names it (amq_<hex>) on the client side, so the robust channel
        # re-declares the same name after a reconnect; the api's RabbitMQ role
        # may create exactly such queues.
        queue = await self._channel.declare_queue(exclusive=True, auto_delete=True)
        self._reply_queue = queue.name
        await queue.consume(self._on_reply, no_ack=True)

    async def close(self) -> None:
        if self._channel is not None and not self._channel.is_closed:
            await self._channel.close()

    async def embed(self, text: str) -> EmbedReply:
        """The query's vector; `Unavailable` when no embed worker answers in time."""
        assert self._channel is not None
        correlation_id = uuid.uuid4().hex
        future: asyncio.Future[EmbedReply] = asyncio.get_running_loop().create_future()
        self._waiting[correlation_id] = future
        try:
            await self._channel.default_exchange.publish(
                aio_pika.Message(
                    EmbedRequest(texts=[text]).model_dump_json().encode(), content_type="application/json",
                    correlation_id=correlation_id, reply_to=self._reply_queue,
                    expiration=self._timeout,  # no worker should start on a query nobody waits for
                ),
                routing_key=EMBED_RPC_QUEUE,
            )
            reply = await asyncio.wait_for(future, self._timeout)
        except TimeoutError:
            raise Unavailable(f"no embedding worker answered within {self._timeout:g}s") from None
        except aio_pika.exceptions.AMQPError as exc:
            raise Unavailable(f"the broker is unreachable ({type(exc).__name__})") from None
        finally:
            self._waiting.pop(correlation_id, None)
        if not reply.ok:
            raise Unavailable(f"the embedding worker could not embed the query: {reply.error}")
        return reply

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        future = self._waiting.get(message.correlation_id or "")
        if future is None or future.done():
            return  # a reply to a query that already timed out
        try:
            future.set_result(EmbedReply.model_validate_json(message.body))
        except ValueError as exc:
            logger.warning("ignored a malformed embedding reply: {}", exc)
