"""Asking the dispatcher a question over `tm.dispatcher.rpc` and waiting for
its answer on a private reply queue (closed with the question's channel).
One question, one short-lived `RpcClient` (shared/amqp/rpc.py)."""

from __future__ import annotations

from aio_pika.abc import AbstractRobustConnection

from shared.amqp.rpc import RpcClient
from shared.errors import Unavailable
from shared.topology import DISPATCHER_RPC_QUEUE

# The rpc queue drops a question unanswered after 10 s (its message TTL).
QUESTION_TTL_SECONDS = 10


async def ask_dispatcher(connection: AbstractRobustConnection, question: bytes, *, wait_seconds: float) -> bytes:
    """The dispatcher's answer to `question`; Unavailable when none came in time."""
    client = RpcClient(what="the dispatcher's answers")
    await client.start(connection)
    try:
        return await client.call(DISPATCHER_RPC_QUEUE, question, bytes, timeout=wait_seconds,
                                 expiration=QUESTION_TTL_SECONDS)
    except TimeoutError:
        raise Unavailable(f"the dispatcher did not answer within {wait_seconds:g}s") from None
    finally:
        await client.close()
