"""The embed worker's side of `tm.rpc.embed`: embeds search queries with the
model already loaded for the pipeline, and answers on `reply_to`.

Requests are small and latency-bound; they share the model's batch slots
with the pipeline, so a query waits at most for the batch being encoded.
"""

from __future__ import annotations

import contextlib

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from loguru import logger

from services.worker.embedding.base import Embedder
from shared import metrics
from shared.amqp.connection import connect
from shared.amqp.rpc import RpcServer
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
        self._server = RpcServer(self._answer, what=EMBED_RPC_QUEUE, prefetch=PREFETCH)

    async def start(self) -> None:
        self._connection = await connect(self._amqp, name="embed-rpc")
        await self._server.start(self._connection, lambda ch: ch.get_queue(EMBED_RPC_QUEUE, ensure=True))
        logger.info("answering query embeddings on {}", EMBED_RPC_QUEUE)

    async def close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()

    async def _answer(self, message: AbstractIncomingMessage) -> bytes:
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
        return reply.model_dump_json().encode()
