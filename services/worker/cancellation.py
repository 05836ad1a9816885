"""Cancellation requests from `tm.control`: stop a running attempt, and skip a
task that is delivered after it was cancelled."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable
from typing import Any, TypeVar

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from loguru import logger

from shared.amqp.consumer import QueueConsumer
from shared.amqp.rpc import RpcClient
from shared.errors import PoisonMessage
from shared.finished_tasks import is_finished_broadcast
from shared.messages import CancelledTasksQuery, CancelledTasksReply, parse_control
from shared.topology import CONTROL_EXCHANGE, DISPATCHER_RPC_QUEUE, declare_exclusive_queue

T = TypeVar("T")
LATE_ANSWER_SECONDS = 30.0


class CancelledByRequest(Exception):
    """The running attempt was stopped because its task was cancelled."""


class CancellationRegistry:
    def __init__(self, *, remember_seconds: float = 24 * 3600, max_remembered: int = 100_000) -> None:
        # task id -> (forget after, cancelled run; None: every run)
        self._cancelled: OrderedDict[str, tuple[float, int | None]] = OrderedDict()
        self._running: dict[str, set[asyncio.Task[Any]]] = {}
        self._requested: set[str] = set()
        self._remember_seconds = remember_seconds
        self._max_remembered = max_remembered
        self._control = QueueConsumer(self._on_control, what=CONTROL_EXCHANGE, no_ack=True)

    async def listen(self, connection: AbstractRobustConnection) -> None:
        """Bind an exclusive queue to tm.control (restored with the connection)."""
        await self._control.start(connection, lambda ch: declare_exclusive_queue(ch, CONTROL_EXCHANGE))

    async def sync(self, connection: AbstractRobustConnection, *, wait_seconds: float) -> None:
        """Ask the dispatcher which tasks were cancelled while this worker was not
        listening. Waits up to `wait_seconds`; a later answer is still applied."""
        client = RpcClient(what="cancelled-tasks replies")
        await client.start(connection)
        answer = await client.request(DISPATCHER_RPC_QUEUE, CancelledTasksQuery().model_dump_json().encode(),
                                      CancelledTasksReply.model_validate_json, expiration=10)

        def apply(answer: asyncio.Future[CancelledTasksReply]) -> None:
            if answer.cancelled():
                return
            reply = answer.result()
            runs = reply.runs if reply.runs and len(reply.runs) == len(reply.task_ids) else None
            for i, task_id in enumerate(reply.task_ids):
                self._remember(task_id, runs[i] if runs else None)
            logger.info("{} recently cancelled task(s) will be skipped", len(reply.task_ids))

        answer.add_done_callback(apply)
        try:
            await asyncio.wait_for(asyncio.shield(answer), wait_seconds)
        except TimeoutError:
            logger.warning("the dispatcher did not say which tasks are cancelled within {}s; "
                           "starting anyway (it re-sends cancels for tasks that start)", wait_seconds)
            asyncio.get_running_loop().call_later(LATE_ANSWER_SECONDS, lambda: asyncio.ensure_future(client.close()))
            return
        await client.close()

    async def _on_control(self, message: AbstractIncomingMessage) -> None:
        if is_finished_broadcast(message.body):
            return  # services/worker/finished_tasks.py keeps those
        try:
            command = parse_control(message.body)
        except PoisonMessage as exc:
            logger.warning("ignored a control message: {}", exc)
            return
        if self.cancel(command.task_id, command.run):
            logger.info("cancelling running task {}", command.task_id)

    def cancel(self, task_id: str, run: int | None = None) -> bool:
        """Remember the cancel; stop the attempt if it runs here. True when it was running."""
        self._remember(task_id, run)
        running = [t for t in self._running.get(task_id, ()) if not t.done()]
        if not running:
            return False
        self._requested.add(task_id)
        for attempt in running:
            attempt.cancel("cancelled by request")
        return True

    def is_cancelled(self, task_id: str, run: int = 1) -> bool:
        """True for a cancelled run of the task; a later run (a retry) is not cancelled."""
        entry = self._cancelled.get(task_id)
        if entry is None or entry[0] <= time.monotonic():
            return False
        return entry[1] is None or run <= entry[1]

    async def run(self, task_id: str, work: Awaitable[T]) -> T:
        """Run `work` so that a cancel for `task_id` can stop it.

        A timeout or shutdown cancelling the caller propagates as CancelledError;
        a cancel request surfaces as CancelledByRequest."""
        inner: asyncio.Task[T] = asyncio.ensure_future(work)
        # Several shards of one task may run in this worker at once: a cancel stops them all.
        self._running.setdefault(task_id, set()).add(inner)
        try:
            return await inner
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task_id in self._requested and current is not None and not current.cancelling():
                raise CancelledByRequest() from None
            raise
        finally:
            running = self._running.get(task_id, set())
            running.discard(inner)
            if not running:
                self._running.pop(task_id, None)
                self._requested.discard(task_id)

    def _remember(self, task_id: str, run: int | None) -> None:
        now = time.monotonic()
        self._cancelled[task_id] = (now + self._remember_seconds, run)
        self._cancelled.move_to_end(task_id)
        while len(self._cancelled) > self._max_remembered:
            self._cancelled.popitem(last=False)
