"""The batch envelope (`{"tasks": [...], "atomic": false}`) is one pydantic model
(services/api/batch_envelope.py): it validates requests with the answers the
handler always gave, and the OpenAPI document is generated from it."""

from __future__ import annotations

from typing import Any

import pytest

from services.api.app import create_app
from services.api.batch_envelope import parse_envelope
from services.api.openapi import DocContext, build_openapi
from services.api.resources import REGISTRY, SETTINGS
from shared.errors import InvalidRequest
from shared.settings import Settings

pytestmark = pytest.mark.fast

LIMIT = 3
ITEM = {"task_type": "echo"}
SHAPE = ("send {\"tasks\": [...], \"atomic\": false}", [("tasks", "must be an array")])


@pytest.mark.parametrize(("body", "message", "fields"), [
    ([ITEM], *SHAPE),
    (None, *SHAPE),
    ({}, *SHAPE),
    ({"tasks": {"0": ITEM}}, *SHAPE),
    ({"tasks": "x", "extra": 1}, *SHAPE),  # the shape first, as before
    ({"tasks": [ITEM], "zeta": 1, "alpha": 2}, "unknown fields", [("alpha", "unknown field"), ("zeta", "unknown field")]),
    ({"tasks": [], "atomic": "yes", "x": 1}, "unknown fields", [("x", "unknown field")]),
    ({"tasks": [ITEM], "": 1}, "unknown fields", [("", "unknown field")]),
    ({"tasks": [], "atomic": 1}, "atomic must be a boolean", [("atomic", "must be true or false")]),
    ({"tasks": []}, "a batch holds 1 to 3 tasks", [("tasks", "holds 0 items; allowed 1..3")]),
    ({"tasks": [ITEM] * 4, "atomic": True}, "a batch holds 1 to 3 tasks", [("tasks", "holds 4 items; allowed 1..3")]),
])
def test_a_bad_envelope_is_refused_as_the_handler_always_answered(
    body: Any, message: str, fields: list[tuple[str, str]]
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        parse_envelope(body, LIMIT)
    assert refused.value.message == message
    assert [(e["field"], e["message"]) for e in refused.value.errors] == fields


def test_a_good_envelope_keeps_its_raw_items_for_per_item_answers() -> None:
    items: list[Any] = [ITEM, "not an object", {"task_type": "nope"}]
    envelope = parse_envelope({"tasks": items, "atomic": True}, LIMIT)
    assert envelope.tasks == items and envelope.atomic is True
    assert parse_envelope({"tasks": [ITEM]}, LIMIT).atomic is False


def test_the_document_describes_the_envelope_from_the_same_model() -> None:
    app = create_app(Settings())
    doc = build_openapi(app, DocContext(app[SETTINGS], app[REGISTRY]))
    body = doc["paths"]["/api/v1/tasks/batch"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/BatchRequest"}
    envelope = doc["components"]["schemas"]["BatchRequest"]
    assert envelope["additionalProperties"] is False and envelope["required"] == ["tasks"]
    tasks = envelope["properties"]["tasks"]
    assert (tasks["minItems"], tasks["maxItems"]) == (1, app[SETTINGS].api.max_batch_size)
    assert tasks["items"]["discriminator"]["mapping"]["echo"] == "#/components/schemas/EchoBatchItem"
    assert "EchoBatchItem" in doc["components"]["schemas"]
    assert envelope["properties"]["atomic"]["type"] == "boolean"
