"""What a worker does with a dead letter that came back from `tm.dead` by hand
(moved, copied or shovelled into a stage queue or `tm.tasks`): never run it as
it is. It asks the dispatcher, the owner of task state, to claim a new run; on
yes it starts that run as `taskmgr dlq replay` does (`task.queued`, then the
task from its first stage), on no it returns the message to `tm.dead` saying why.

See docs/decisions/0070-hand-moved-dead-letters.md.
"""

from __future__ import annotations

from typing import Any

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from loguru import logger

from services.worker.outcome_plan import DeadLetter, ForwardTask, PublishEvent, Step
from shared import metrics
from shared.amqp.dead_letter import dead_letter_headers
from shared.amqp.publisher import Publisher
from shared.amqp.rpc_client import ask_dispatcher
from shared.hand_replay import HandReplayReply, HandReplayRequest
from shared.messages import TaskMessage, TaskQueued
from shared.topology import stage_queue


class HandReplayGate:
    def __init__(self, connection: AbstractRobustConnection, publisher: Publisher, *, answer_seconds: float) -> None:
        self._connection = connection
        self._publisher = publisher
        self._answer_seconds = answer_seconds

    async def steps_for(self, message: AbstractIncomingMessage, task: TaskMessage, mark: str,
                        headers: dict[str, Any]) -> list[Step]:
        """What to publish, before acking `message`, instead of running it."""
        reply = await self._ask(HandReplayRequest(task_id=task.task_id, run=task.run, stage=task.stages[0],
                                                  mark=mark[:500]))
        if reply.run is not None:
            fresh = task.for_run(reply.run)
            logger.warning("audit: a dead letter of run {} arrived by hand ({}); replaying it as run {}",
                           task.run, mark, fresh.run)
            metrics.tasks_replayed_total.inc()
            queued = TaskQueued(task_id=fresh.task_id, run=fresh.run, task_type=fresh.task_type,
                                kb_id=fresh.kb_id, stage=fresh.stage, attempt=1)
            return [PublishEvent(queued), ForwardTask(fresh)]
        reason = f"arrived by hand from tm.dead and was not replayed: {reply.refused}"
        logger.warning("audit: {} ({})", reason, mark)
        dead = dead_letter_headers(reason, source_queue=stage_queue(task.stage), original=headers,
                                   stage=task.stage)
        return [DeadLetter(message.body, dead, "hand_replay_refused", task.stage)]

    async def _ask(self, request: HandReplayRequest) -> HandReplayReply:
        answer = await ask_dispatcher(self._connection, request.model_dump_json().encode(),
                                      wait_seconds=self._answer_seconds)
        return HandReplayReply.model_validate_json(answer)
