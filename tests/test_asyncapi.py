"""/api/v1/asyncapi.json: a valid AsyncAPI 3.0.0 document (checked against the
official JSON Schema, vendored under tests/asyncapi/) that describes what
really travels on tm.submit, its replies and tm.events."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import orjson
from referencing import Registry, Resource

from shared.messages import TaskCompleted, TaskProgress, parse_task_events, task_event_batch_body
from tests.support.api import ApiClient

SPEC_SCHEMA = json.loads((Path(__file__).parent / "asyncapi" / "asyncapi-3.0.0.schema.json").read_text())


async def _document(api: ApiClient) -> dict[str, Any]:
    status, doc = await api.call("GET", "/api/v1/asyncapi.json")
    assert status == 200
    return doc  # type: ignore[no-any-return]


def _payload_validator(doc: dict[str, Any], message: str) -> jsonschema.Validator:
    payload = doc["components"]["messages"][message]["payload"]
    registry = Registry().with_resource("urn:asyncapi", Resource.opaque(doc))
    return jsonschema.Draft202012Validator(
        {"$ref": "urn:asyncapi" + payload["$ref"]}, registry=registry)


async def test_the_document_is_valid_asyncapi_3(api: ApiClient) -> None:
    doc = await _document(api)
    errors = sorted(jsonschema.Draft7Validator(SPEC_SCHEMA).iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors[:10])


async def test_it_names_the_exchanges_and_every_event(api: ApiClient) -> None:
    doc = await _document(api)
    channels = doc["channels"]
    assert channels["submit"]["address"] == "tm.submit"
    assert channels["submit"]["bindings"]["amqp"]["exchange"]["type"] == "fanout"
    addresses = {c["address"] for c in channels.values()}
    assert {"task.queued", "task.started", "task.progress", "task.retrying", "task.stage_completed",
            "task.completed", "task.failed", "task.cancelled", "worker.heartbeat"} <= addresses
    assert doc["operations"]["submitTask"]["reply"]["address"]["location"] == "$message.header#/reply_to"
    assert "guest" not in json.dumps(doc), "never the broker's credentials"


async def test_real_messages_validate_against_their_payloads(api: ApiClient) -> None:
    doc = await _document(api)
    now = datetime.now(UTC)
    completed = TaskCompleted(task_id="t", task_type="echo", result={"a": 1}, finished_at=now)
    _payload_validator(doc, "taskCompleted").validate(completed.model_dump(mode="json"))
    progress = TaskProgress(task_id="t", task_type="sleep", progress=40).model_dump(mode="json")
    _payload_validator(doc, "taskProgress").validate(progress)
    request = {"task_type": "echo", "kb_id": "kb_1", "payload": {"x": 1}, "priority": "high"}
    _payload_validator(doc, "taskRequest").validate(request)
    batch = orjson.loads(task_event_batch_body([completed.model_dump_json().encode()] * 2))
    _payload_validator(doc, "taskCompletedBatch").validate(batch)
    assert len(parse_task_events(orjson.dumps(batch))) == 2
    assert not _payload_validator(doc, "taskCompletedBatch").is_valid({**batch, "events": [progress]}), \
        "a batch carries events of its channel's kind"
    wrong = _payload_validator(doc, "taskProgress")
    assert not wrong.is_valid({**progress, "progress": 101}), "the schema carries the model's bounds"
