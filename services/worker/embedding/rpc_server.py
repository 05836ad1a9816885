"""The embed worker's side of `tm.rpc.embed`: embeds search queries with the
model already loaded for the pipeline, and answers on `reply_to`.

Requests are small and latency-bound; they share the model's batch slots
with the pipeline, so a query waits at most for the batch being encoded.
"""

from __future__ import annotations

import contextlib

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection
from loguru import logger

from services.worker.embedding.base import Embedder
from shared import metrics
from shared.amqp.connection import connect
from shared.embedding_rpc import EmbedReply, EmbedRequest
from shared.errors import PoisonMessage, TaskError
from shared.settings import AmqpSettings
from shared.topology import EMBED_RPC_QUEUE

PREFETCH = 8


class EmbedRpcServer:
    def __init__(self, amqp: AmqpSettings, embedder: Embedder) -> None:
        self._amqp = amqp
        self._embedder = embedder
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None

    async def start(self) -> None:
        self._connection = await connect(self._amqp, name="embed-rpc")
        self._channel = await self._connection.channel()
        await self._channel.set_qos(prefetch_count=PREFETCH)
        queue = await self._channel.get_queue(EMBED_RPC_QUEUE, ensure=True)
        await queue.consume(self._on_request)
        logger.info("answering query embeddings on {}", EMBED_RPC_QUEUE)

    async def close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()

    async def _on_request(self, message: AbstractIncomingMessage) -> None:
        async with message.process(requeue=False, ignore_processed=True):
            if not message.reply_to:
                return
            try:
                request = EmbedRequest.parse(message.body)
                # An asymmetric model (e5) embeds a search query unlike a passage.
                embed = getattr(self._embedder, "embed_queries", self._embedder.embed)
                batch = await embed(request.texts)
                reply = EmbedReply(ok=True, backend=self._embedder.backend, model=self._embedder.cache_key,
                                   dimension=len(batch.vectors[0]), vectors=batch.vectors)
                metrics.embedding_texts_total.labels(self._embedder.backend, self._embedder.model, "query").inc(
                    len(request.texts))
            except (PoisonMessage, TaskError) as exc:
                reply = EmbedReply(ok=False, error=exc.message)
            except Exception as exc:  # noqa: BLE001 - the caller gets an answer, the consumer lives on
                logger.opt(exception=exc).warning("query embedding failed")
                reply = EmbedReply(ok=False, error=f"{type(exc).__name__}: {exc}")
            assert self._channel is not None
            await self._channel.default_exchange.publish(
                aio_pika.Message(reply.model_dump_json().encode(), correlation_id=message.correlation_id,
                                 content_type="application/json"),
                routing_key=message.reply_to,
            )
