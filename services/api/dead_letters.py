"""Operator access to `tm.dead`: list, show, replay, purge.

Reading never loses a message: messages are fetched unacked on a private
channel and return to the queue when it closes. A replay publishes a
`task.queued` event for a new run (the dispatcher resets the task to `queued`
with a fresh attempt series) and then the task itself to its first stage, and
only then acks the dead copy.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.api.schemas import DeadLetterView
from services.api.task_retry import start_run
from shared import metrics
from shared.amqp import headers as h
from shared.amqp.publisher import Publisher
from shared.db.models import tasks
from shared.errors import PoisonMessage
from shared.messages import TaskMessage
from shared.status import TaskStatus
from shared.task_identity import recover_identity
from shared.topology import DEAD_QUEUE

# What an operator sees of one dead letter (the same model the api answers with).
DeadLetter = DeadLetterView


@dataclass(frozen=True)
class ReplayReport:
    replayed: list[str]
    skipped: list[dict[str, str]]


class DeadLetterQueue:
    def __init__(self, connection: AbstractRobustConnection, publisher: Publisher, engine: AsyncEngine) -> None:
        self._connection = connection
        self._publisher = publisher
        self._engine = engine

    async def depth(self) -> int:
        channel = await self._connection.channel()
        try:
            queue = await channel.declare_queue(DEAD_QUEUE, passive=True)
            return queue.declaration_result.message_count or 0
        finally:
            await channel.close()

    async def peek(self, *, limit: int, task_id: str | None = None) -> list[DeadLetter]:
        channel = await self._connection.channel()
        try:
            found = []
            async for message, letter in _scan(channel, limit=None if task_id else limit):
                if task_id is None or letter.task_id == task_id:
                    found.append(letter)
                if len(found) >= limit:
                    break
            return found
        finally:
            await channel.close()  # everything read returns to the queue

    async def replay(self, task_ids: Iterable[str] | None, *, limit: int) -> ReplayReport:
        wanted = set(task_ids) if task_ids is not None else None
        replayed: list[str] = []
        skipped: list[dict[str, str]] = []
        # Only what is dead now: a replayed task that fails again meanwhile is a new
        # dead letter, and scanning to the end would replay it again (and again).
        present = await self.depth()
        channel = await self._connection.channel()
        try:
            async for message, letter in _scan(channel, limit=present):
                if len(replayed) >= limit:
                    break
                if wanted is not None and letter.task_id not in wanted:
                    continue
                if not letter.replayable or letter.task_id is None:
                    skipped.append({"task_id": letter.task_id or "", "reason": "not a task message"})
                    continue
                problem = await self._replay_one(message)
                if problem:
                    skipped.append({"task_id": letter.task_id, "reason": problem})
                else:
                    replayed.append(letter.task_id)
                    await message.ack()
        finally:
            await channel.close()
        if wanted is not None:
            missing = wanted - set(replayed) - {s["task_id"] for s in skipped}
            skipped.extend({"task_id": t, "reason": "not in the dead-letter queue"} for t in sorted(missing))
        metrics.tasks_replayed_total.inc(len(replayed))
        return ReplayReport(replayed, skipped)

    async def purge(self, task_ids: Iterable[str] | None) -> int:
        channel = await self._connection.channel()
        try:
            queue = await channel.declare_queue(DEAD_QUEUE, passive=True)
            if task_ids is None:
                result = await queue.purge()
                return int(result.message_count or 0)
            wanted, purged = set(task_ids), 0
            async for message, letter in _scan(channel, limit=None):
                if letter.task_id in wanted:
                    await message.ack()
                    purged += 1
            return purged
        finally:
            await channel.close()

    async def _replay_one(self, message: AbstractIncomingMessage) -> str | None:
        task = TaskMessage.parse(message.body)
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(tasks.c.run, tasks.c.status).where(tasks.c.id == task.task_id))).first()
        if row is None:
            return "the task is unknown to the database"
        if row.status != TaskStatus.FAILED:
            return f"the task is {row.status}, not failed"
        await start_run(self._publisher, task.for_run(row.run + 1))
        return None


async def _scan(channel: AbstractChannel, *, limit: int | None):  # type: ignore[no-untyped-def]
    """Yield (message, DeadLetter) for each message, fetched unacked, at most
    `limit`, and never more than the queue held when the scan began: a replayed
    task that dies again must not be met (and replayed) again in the same scan."""
    queue = await channel.declare_queue(DEAD_QUEUE, passive=True)
    present = queue.declaration_result.message_count or 0
    limit = present if limit is None else min(limit, present)
    seen = 0
    while seen < limit:
        message = await queue.get(no_ack=False, fail=False)
        if message is None:
            return
        seen += 1
        yield message, _describe(message)


def _describe(message: AbstractIncomingMessage) -> DeadLetter:
    headers = message.headers or {}
    try:
        task: TaskMessage | None = TaskMessage.parse(message.body)
    except PoisonMessage:
        task = None
    # A poison message that still names its task is found by that task's id (not replayable).
    who = task or recover_identity(message.body)

    def text(key: str) -> str | None:
        value = headers.get(key)
        return None if value is None else str(value)

    attempts = headers.get(h.ATTEMPT)
    return DeadLetter(
        task_id=who.task_id if who else None,
        task_type=who.task_type if who else None,
        kb_id=who.kb_id if who else None,
        reason=text(h.DEAD_REASON),
        stage=text(h.DEAD_STAGE),
        source_queue=text(h.DEAD_SOURCE_QUEUE),
        attempts=int(attempts) if isinstance(attempts, int) else None,
        last_error=text(h.LAST_ERROR),
        first_failure_at=text(h.FIRST_FAILURE_AT),
        last_failure_at=text(h.LAST_FAILURE_AT),
        dead_at=text(h.DEAD_AT),
        replayable=task is not None,
        body_preview=None if task else message.body[:200].decode(errors="replace"),
    )
