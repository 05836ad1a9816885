"""The AsyncAPI 3.0 document of what outside services may do over AMQP:
publish to `tm.submit` (and get the answer on `reply_to`), and bind their own
queues to `tm.events` for task events and worker heartbeats.

Built from the same pydantic models the processes parse and publish, so it
cannot drift from the wire; the suite validates it against the official
AsyncAPI 3.0.0 JSON Schema.
"""

from __future__ import annotations

from typing import Any, get_args
from urllib.parse import urlsplit

from pydantic import BaseModel

from shared.messages import TaskEvent, WorkerHeartbeat
from shared.settings import Settings
from shared.task_request import TaskRequest
from shared.topology import EVENTS_EXCHANGE, SUBMIT_EXCHANGE

REF = "#/components/schemas/{model}"


class SubmitAccepted(BaseModel):
    """The answer on `reply_to` to an accepted submission."""

    ok: bool = True
    created: bool
    task_id: str
    status: str
    created_at: str


class SubmitRefusedError(BaseModel):
    code: str
    message: str
    details: list[dict[str, str]] | None = None


class SubmitRefused(BaseModel):
    """The answer on `reply_to` to a refused submission (it was also dead-lettered with the reason)."""

    ok: bool = False
    error: SubmitRefusedError


def _schema(model: type[BaseModel], schemas: dict[str, Any]) -> dict[str, Any]:
    """`model`'s JSON schema in components.schemas (its nested models too); a $ref to it."""
    schema = model.model_json_schema(ref_template=REF, mode="serialization")
    for name, nested in schema.pop("$defs", {}).items():
        schemas.setdefault(name, nested)
    schemas[model.__name__] = schema
    return {"$ref": REF.format(model=model.__name__)}


def _batch_schema(event_name: str, event: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    """A `TaskEventBatch` of one event kind (its items are that kind's events); a $ref to it."""
    schemas[f"{event_name}Batch"] = {
        "type": "object", "required": ["v", "kind", "events"], "additionalProperties": False,
        "properties": {"v": {"const": 2}, "kind": {"const": "batch"},
                       "events": {"type": "array", "minItems": 1, "items": event}}}
    return {"$ref": REF.format(model=f"{event_name}Batch")}


def _exchange(name: str, kind: str, vhost: str) -> dict[str, Any]:
    return {"amqp": {"is": "routingKey", "bindingVersion": "0.3.0",
                     "exchange": {"name": name, "type": kind, "durable": True, "autoDelete": False, "vhost": vhost}}}


def build_asyncapi(settings: Settings) -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    url = urlsplit(settings.amqp.url.get_secret_value())  # host and port only: never the credentials
    host = f"{url.hostname or 'localhost'}:{url.port or (5671 if settings.amqp.uses_tls else 5672)}"
    vhost = settings.amqp.vhost
    json_message = {"contentType": "application/json"}
    correlation = {"location": "$message.header#/correlation_id"}

    messages: dict[str, Any] = {
        "taskRequest": {**json_message, "name": "taskRequest", "title": "A task request",
                        "summary": "The body of POST /api/v1/tasks; `payload` follows the task type's schema in "
                                   "the OpenAPI document. `message_id` is the idempotency key.",
                        "payload": _schema(TaskRequest, schemas), "correlationId": correlation},
        "submitAccepted": {**json_message, "name": "submitAccepted", "payload": _schema(SubmitAccepted, schemas),
                           "correlationId": correlation},
        "submitRefused": {**json_message, "name": "submitRefused", "payload": _schema(SubmitRefused, schemas),
                          "correlationId": correlation},
        "workerHeartbeat": {**json_message, "name": "workerHeartbeat",
                            "payload": _schema(WorkerHeartbeat, schemas)},
    }
    channels: dict[str, Any] = {
        "submit": {"address": SUBMIT_EXCHANGE, "title": "tm.submit (fanout exchange)",
                   "description": "Publish task requests here (persistent, with publisher confirms). The api "
                                  "validates exactly as for REST; an invalid message is dead-lettered with the reason.",
                   "messages": {"taskRequest": {"$ref": "#/components/messages/taskRequest"}},
                   "bindings": _exchange(SUBMIT_EXCHANGE, "fanout", vhost)},
        "submitReply": {"address": None, "title": "The publisher's reply_to queue",
                        "messages": {"submitAccepted": {"$ref": "#/components/messages/submitAccepted"},
                                     "submitRefused": {"$ref": "#/components/messages/submitRefused"}}},
        "workerHeartbeat": {"address": "worker.heartbeat", "title": "tm.events: worker.heartbeat",
                            "messages": {"workerHeartbeat": {"$ref": "#/components/messages/workerHeartbeat"}},
                            "bindings": _exchange(EVENTS_EXCHANGE, "topic", vhost)},
    }
    operations: dict[str, Any] = {
        "submitTask": {"action": "send", "channel": {"$ref": "#/channels/submit"},
                       "summary": "Submit a task; the answer comes on reply_to with the same correlation_id.",
                       "reply": {"channel": {"$ref": "#/channels/submitReply"},
                                 "address": {"location": "$message.header#/reply_to"}}},
        "onWorkerHeartbeat": {"action": "receive", "channel": {"$ref": "#/channels/workerHeartbeat"},
                              "summary": "Bind a queue to tm.events with `worker.heartbeat`."},
    }
    for event_model in get_args(get_args(TaskEvent)[0]):
        kind = event_model.model_fields["kind"].default
        name = f"task{''.join(p.title() for p in kind.split('_'))}"
        one = _schema(event_model, schemas)
        messages[name] = {**json_message, "name": name, "title": f"task.{kind}", "payload": one}
        messages[f"{name}Batch"] = {
            **json_message, "name": f"{name}Batch", "title": f"task.{kind}, several at once",
            "summary": f"Events of kind {kind} that a worker finished together: one message, "
                       "`v` 2 (decision 0180). A consumer reads both forms.",
            "payload": _batch_schema(event_model.__name__, one, schemas)}
        channels[name] = {"address": f"task.{kind}", "title": f"tm.events: task.{kind}",
                          "messages": {name: {"$ref": f"#/components/messages/{name}"},
                                       f"{name}Batch": {"$ref": f"#/components/messages/{name}Batch"}},
                          "bindings": _exchange(EVENTS_EXCHANGE, "topic", vhost)}
        operations[f"on{name[0].upper()}{name[1:]}"] = {
            "action": "receive", "channel": {"$ref": f"#/channels/{name}"},
            "summary": f"Bind a queue to tm.events with `task.{kind}` (or `task.#` for every task event)."}
    return {
        "asyncapi": "3.0.0",
        "info": {"title": "Task manager over AMQP", "version": "1.0.0",
                 "description": "Submitting tasks over tm.submit and following task events on tm.events. "
                                "The REST API is described by /api/v1/openapi.json."},
        "defaultContentType": "application/json",
        "servers": {"rabbitmq": {"host": host, "protocol": "amqps" if settings.amqp.uses_tls else "amqp",
                                 "protocolVersion": "0.9.1"}},
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }
