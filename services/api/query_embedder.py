"""Embedding a search query without loading a model in the api: an RPC over
`tm.rpc.embed`, answered by any embed worker (the model that embedded the
documents). Replies come back on one exclusive queue per api process,
matched by correlation id (shared/amqp/rpc.py)."""

from __future__ import annotations

import aio_pika
from aio_pika.abc import AbstractRobustConnection

from shared.amqp.rpc import RpcClient
from shared.embedding_rpc import EmbedReply, EmbedRequest
from shared.errors import Unavailable
from shared.topology import EMBED_RPC_QUEUE


class QueryEmbedder:
    def __init__(self, connection: AbstractRobustConnection, *, timeout_seconds: float) -> None:
        self._connection = connection
        self._timeout = timeout_seconds
        self._client = RpcClient(what="embedding replies")

    async def start(self) -> None:
        await self._client.start(self._connection)

    async def close(self) -> None:
        await self._client.close()

    async def embed(self, text: str) -> EmbedReply:
        """The query's vector; `Unavailable` when no embed worker answers in time."""
        try:
            reply = await self._client.call(
                EMBED_RPC_QUEUE, EmbedRequest(texts=[text]).model_dump_json().encode(),
                EmbedReply.model_validate_json, timeout=self._timeout,
                expiration=self._timeout,  # no worker should start on a query nobody waits for
            )
        except TimeoutError:
            raise Unavailable(f"no embedding worker answered within {self._timeout:g}s") from None
        except aio_pika.exceptions.AMQPError as exc:
            raise Unavailable(f"the broker is unreachable ({type(exc).__name__})") from None
        if not reply.ok:
            raise Unavailable(f"the embedding worker could not embed the query: {reply.error}")
        return reply
