"""Answers questions other processes ask the owner of task state, over
`tm.dispatcher.rpc` (request/reply): today, which tasks were cancelled
recently, so a worker that starts after a cancel still skips those tasks; and
whether a dead letter moved back by hand may start a new run (`hand_replay.py`)."""

from __future__ import annotations

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from loguru import logger
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.dispatcher.hand_replay import claim_hand_replay
from shared.amqp.publisher import Publisher
from shared.amqp.rpc import RpcServer
from shared.errors import Unavailable
from shared.finished_tasks import FinishedRuns, FinishedRunsQuery
from shared.hand_replay import HandReplayRequest
from shared.messages import CancelledTasksQuery, CancelledTasksReply
from shared.topology import DISPATCHER_RPC_QUEUE, Topology, declare_queue

MAX_IDS = 100_000

_CANCELLED = text("""
SELECT CAST(id AS text) AS id, run FROM tasks
WHERE status = 'cancelled' AND finished_at > now() - make_interval(secs => :within)
ORDER BY finished_at DESC LIMIT :limit
""")

# Newest first (ids are time-ordered), so the index on (status, id) serves it.
_FINISHED = text("""
SELECT CAST(id AS text) AS id, run FROM tasks
WHERE status IN ('completed', 'failed') AND finished_at > now() - make_interval(secs => :within)
ORDER BY id DESC LIMIT :limit
""")


class DispatcherRpc:
    def __init__(self, engine: AsyncEngine, publisher: Publisher) -> None:
        self._engine = engine
        self._publisher = publisher
        self._server = RpcServer(self._answer, what=DISPATCHER_RPC_QUEUE, prefetch=4, reply=self._reply)

    async def start(self, connection: AbstractRobustConnection, topology: Topology) -> None:
        await self._server.start(connection, lambda ch: declare_queue(ch, topology, DISPATCHER_RPC_QUEUE))

    async def stop(self) -> None:
        await self._server.stop()

    async def _answer(self, message: AbstractIncomingMessage) -> bytes | None:
        if b'"hand_replay"' in message.body:
            return await self._answer_hand_replay(message)
        if b'"finished_runs"' in message.body:
            return await self._answer_finished_runs(message)
        try:
            query = CancelledTasksQuery.model_validate_json(message.body)
        except ValueError as exc:
            logger.warning("ignored an invalid rpc request: {}", exc)
            return None
        try:
            async with self._engine.connect() as conn:
                rows = await conn.execute(_CANCELLED, {"within": query.within_seconds, "limit": MAX_IDS})
                found = [(r.id, r.run) for r in rows]
        except Exception as exc:  # noqa: BLE001 - the asker times out and carries on
            logger.warning("could not answer which tasks are cancelled: {}", exc)
            return None
        return CancelledTasksReply(task_ids=[i for i, _ in found],
                                   runs=[r for _, r in found]).model_dump_json().encode()

    async def _answer_hand_replay(self, message: AbstractIncomingMessage) -> bytes | None:
        try:
            request = HandReplayRequest.model_validate_json(message.body)
        except ValueError as exc:
            logger.warning("ignored an invalid hand replay request: {}", exc)
            return None
        try:
            reply = await claim_hand_replay(self._engine, request)
        except Exception as exc:  # noqa: BLE001 - the worker times out and requeues the dead letter
            logger.warning("could not answer a hand replay of {}: {}", request.task_id, exc)
            return None
        return reply.model_dump_json().encode()

    async def _answer_finished_runs(self, message: AbstractIncomingMessage) -> bytes | None:
        try:
            query = FinishedRunsQuery.model_validate_json(message.body)
            async with self._engine.connect() as conn:
                rows = await conn.execute(_FINISHED, {"within": query.within_seconds, "limit": MAX_IDS})
                runs = {r.id: r.run for r in rows}
        except Exception as exc:  # noqa: BLE001 - the worker starts without it and learns from broadcasts
            logger.warning("could not answer which runs finished: {}", exc)
            return None
        return FinishedRuns(runs=runs).model_dump_json().encode()

    async def _reply(self, reply_to: str, correlation_id: str | None, body: bytes) -> None:
        try:
            await self._publisher.reply(reply_to, correlation_id, body)
        except Unavailable:
            logger.warning("could not deliver an rpc answer to {}", reply_to)
