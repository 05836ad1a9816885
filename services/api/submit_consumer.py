"""`tm.submit`: the AMQP way in, for services that publish instead of calling REST.

Each message is validated exactly like a REST body, admitted through the same
path, and answered on `reply_to` (with `correlation_id`) when the publisher
asks. Invalid messages are dead-lettered with the reason and never stop the
consumer. `message_id`, when set, is the idempotency key: a redelivered or
re-sent message never creates a second task.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import orjson
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from loguru import logger

from services.api.admission import Admission, Admitted
from services.api.http import JSON_OPTIONS
from services.api.submission_checks import SubmissionChecks
from services.api.views import task_created_view
from services.api.workflow_intake import WorkflowIntake
from shared import metrics
from shared.amqp.consumer import QueueConsumer, quietly
from shared.amqp.dead_letter import dead_letter_headers
from shared.amqp.publisher import Publisher
from shared.errors import FieldError, InvalidRequest, TaskManagerError, Unavailable
from shared.json_limits import loads_checked
from shared.security.api_keys import Principal, Scope
from shared.task_request import IDEMPOTENCY_KEY_PATTERN, RequestLimits, validate_task_request
from shared.task_types import TaskTypeRegistry
from shared.topology import SUBMIT_QUEUE, Topology, declare_queue

PREFETCH = 64
_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)

# The AMQP `type` property of a workflow submission (docs/decisions/0101); anything else is one task.
WORKFLOW_MESSAGE_TYPE = "workflow"
UNAVAILABLE_PAUSE_SECONDS = 1.0

# tm.submit is authorised by RabbitMQ (who may write to it), not by API keys: a
# publisher that got in acts for every knowledge base, under one idempotency namespace.
AMQP_PRINCIPAL = Principal(owner="amqp", name="tm.submit", scopes=frozenset(Scope), kb_ids=None)


class SubmitConsumer:
    def __init__(
        self,
        channel: AbstractChannel,
        admission: Admission,
        publisher: Publisher,
        registry: TaskTypeRegistry,
        limits: RequestLimits,
        checks: SubmissionChecks,
        topology: Topology,
        workflows: WorkflowIntake | None = None,
    ) -> None:
        self._channel = channel
        self._workflows = workflows
        self._checks = checks
        self._topology = topology
        self._admission = admission
        self._publisher = publisher
        self._registry = registry
        self._limits = limits
        self._consumer = QueueConsumer(self._on_message, what=SUBMIT_QUEUE, prefetch=PREFETCH)

    async def start(self) -> None:
        await self._consumer.start_on(self._channel, lambda ch: declare_queue(ch, self._topology, SUBMIT_QUEUE))

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            await self._handle(message)
        except Exception:  # noqa: BLE001 - never let one message stop the consumer
            logger.exception("tm.submit: unexpected error; message requeued")
            await asyncio.sleep(UNAVAILABLE_PAUSE_SECONDS)
            await quietly(message.nack(requeue=True))

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        try:
            data = loads_checked(message.body)
        except orjson.JSONDecodeError as exc:
            await self._refuse(message, InvalidRequest(f"the message body is not valid JSON: {exc}"))
            return
        except InvalidRequest as exc:  # past a JSON shape limit
            await self._refuse(message, exc)
            return
        key = message.message_id or None
        if key is not None and not _IDEMPOTENCY_KEY.match(key):
            await self._refuse(message, InvalidRequest("invalid message_id", [FieldError(
                "message_id", "must be 1-255 visible ASCII characters (it is the idempotency key)")]))
            return
        if message.type == WORKFLOW_MESSAGE_TYPE and self._workflows is not None:
            await self._handle_workflow(message, data)
            return
        try:
            valid = validate_task_request(data, self._registry, self._limits)
            await self._checks.check(valid, AMQP_PRINCIPAL)
        except InvalidRequest as exc:
            await self._refuse(message, exc)
            return
        except Exception as exc:  # noqa: BLE001 - whatever this message makes validation raise, it is
            # poison: requeued it would fail the same way for ever.
            logger.opt(exception=exc).error("tm.submit: validation raised unexpectedly; dead-lettering")
            await self._refuse(message, InvalidRequest(
                f"the message could not be validated ({type(exc).__name__}); it was dead-lettered"))
            return
        [result] = await self._admission.admit([(valid, key)], via="amqp", owner=AMQP_PRINCIPAL.owner)
        if isinstance(result, Unavailable):
            # Not the message's fault: keep it and try again shortly.
            await asyncio.sleep(UNAVAILABLE_PAUSE_SECONDS)
            await quietly(message.nack(requeue=True))
            return
        if isinstance(result, TaskManagerError):
            await self._refuse(message, result)
            return
        assert isinstance(result, Admitted)
        created = task_created_view(result.task).model_dump(exclude_unset=True)
        await self._reply(message, {"ok": True, "created": result.created, **created})
        await message.ack()

    async def _handle_workflow(self, message: AbstractIncomingMessage, data: Any) -> None:
        """The body of `POST /api/v1/workflows`, with the AMQP `type` property `workflow`."""
        assert self._workflows is not None
        try:
            plan = self._workflows.validate(data)
        except TaskManagerError as exc:
            await self._refuse(message, exc)
            return
        except Exception as exc:  # noqa: BLE001 - poison, as for a single task (decision 0062)
            logger.opt(exception=exc).error("tm.submit: workflow validation raised unexpectedly; dead-lettering")
            await self._refuse(message, InvalidRequest(
                f"the workflow could not be validated ({type(exc).__name__}); it was dead-lettered"))
            return
        try:
            admitted = await self._workflows.admit(plan, AMQP_PRINCIPAL, message.message_id or None)
        except Unavailable:
            await asyncio.sleep(UNAVAILABLE_PAUSE_SECONDS)
            await quietly(message.nack(requeue=True))
            return
        except TaskManagerError as exc:
            await self._refuse(message, exc)
            return
        created = (await self._workflows.created(admitted)).model_dump()
        await self._reply(message, {"ok": True, "created": admitted.created, **created})
        await message.ack()

    async def _refuse(self, message: AbstractIncomingMessage, error: TaskManagerError) -> None:
        details = error.errors if isinstance(error, InvalidRequest) else []
        reason = f"{error.code}: {error.message}"
        logger.warning("tm.submit: refused a message ({})", reason)
        metrics.tasks_rejected_total.labels(error.code, "amqp").inc()
        metrics.tasks_dead_lettered_total.labels("invalid_submission").inc()
        await self._publisher.dead(
            message.body,
            headers=dead_letter_headers(reason, source_queue=SUBMIT_QUEUE),
            routing_key=SUBMIT_QUEUE,
        )
        body: dict[str, Any] = {"ok": False, "error": {"code": error.code, "message": error.message}}
        if details:
            body["error"]["details"] = details
        await self._reply(message, body)
        await message.ack()

    async def _reply(self, message: AbstractIncomingMessage, body: dict[str, Any]) -> None:
        if not message.reply_to:
            return
        try:
            await self._publisher.reply(message.reply_to, message.correlation_id, orjson.dumps(body, option=JSON_OPTIONS))
        except Unavailable:
            logger.warning("tm.submit: could not deliver the reply to {}", message.reply_to)
