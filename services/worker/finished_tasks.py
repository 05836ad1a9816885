"""What a worker knows of finished task runs (from the dispatcher's broadcasts
on `tm.control`), so it refuses, rather than runs, a message of a run that has
already ended. A later run (a replay) is never refused: runs only grow.

Race-free for legitimate messages: a run is announced finished only after its
terminal state committed, and a run that ends sends no further message of
itself (a retry is published instead of the `failed` event, the next stage
instead of `completed`), so only a copy can meet its own finished run.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from loguru import logger

from shared.amqp.consumer import QueueConsumer
from shared.amqp.rpc_client import ask_dispatcher
from shared.errors import PoisonMessage, Unavailable
from shared.finished_tasks import FinishedRunsQuery, is_finished_broadcast, parse_finished
from shared.topology import CONTROL_EXCHANGE, declare_exclusive_queue


class FinishedRuns:
    def __init__(self, *, remember_seconds: float = 24 * 3600, max_remembered: int = 200_000) -> None:
        self._runs: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._remember_seconds = remember_seconds
        self._max_remembered = max_remembered
        self._control = QueueConsumer(self._on_control, what="finished runs on " + CONTROL_EXCHANGE, no_ack=True)

    async def listen(self, connection: AbstractRobustConnection) -> None:
        await self._control.start(connection, lambda ch: declare_exclusive_queue(ch, CONTROL_EXCHANGE))

    async def sync(self, connection: AbstractRobustConnection, *, wait_seconds: float) -> None:
        """Learn the runs that ended while this worker was not listening (the last
        24 h, newest first, as many as the dispatcher answers)."""
        try:
            answer = await ask_dispatcher(connection, FinishedRunsQuery().model_dump_json().encode(),
                                          wait_seconds=wait_seconds)
            finished = parse_finished(answer)
        except (Unavailable, PoisonMessage) as exc:
            logger.warning("starting without the recently finished runs ({}); broadcasts still teach them", exc)
            return
        for task_id, run in reversed(list(finished.runs.items())):  # oldest first: the newest are kept
            self.remember(task_id, run)
        logger.info("{} recently finished run(s) will be refused if they come back", len(finished.runs))

    def is_finished(self, task_id: str, run: int) -> bool:
        known = self._runs.get(task_id)
        return known is not None and known[1] > time.monotonic() and run <= known[0]

    def remember(self, task_id: str, run: int) -> None:
        known = self._runs.get(task_id)
        self._runs[task_id] = (max(run, known[0] if known else run), time.monotonic() + self._remember_seconds)
        self._runs.move_to_end(task_id)
        while len(self._runs) > self._max_remembered:
            self._runs.popitem(last=False)

    async def _on_control(self, message: AbstractIncomingMessage) -> None:
        if not is_finished_broadcast(message.body):
            return  # a cancel: the cancellation registry's business
        try:
            finished = parse_finished(message.body)
        except PoisonMessage as exc:
            logger.warning("ignored a control message: {}", exc)
            return
        for task_id, run in finished.runs.items():
            self.remember(task_id, run)
