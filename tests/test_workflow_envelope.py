"""The workflow envelope (`{"tasks": [...], "callback_url": ...}`) is one pydantic
model (services/api/workflow_request.py, decision 0192): it validates requests with
the answers the handler always gave, and the OpenAPI document is generated from it."""

from __future__ import annotations

from typing import Any

import pytest

from services.api.app import create_app
from services.api.openapi import DocContext, build_openapi
from services.api.resources import REGISTRY, SETTINGS
from services.api.workflow_request import MAX_WORKFLOW_TASKS, parse_envelope
from shared.errors import InvalidRequest
from shared.settings import Settings

pytestmark = pytest.mark.fast

TASK = {"ref": "a", "task_type": "echo"}
SHAPE = ('send {"tasks": [{"ref": "a", ...}, ...]}', [("tasks", "must be an array")])
URL_SCHEME = "URL scheme should be 'http' or 'https'"
NOT_URL = "URL input should be a string or URL"
NONE = f"holds 0 tasks; allowed 1..{MAX_WORKFLOW_TASKS}"
TOO_MANY = f"holds {MAX_WORKFLOW_TASKS + 1} tasks; allowed 1..{MAX_WORKFLOW_TASKS}"


@pytest.mark.parametrize(("body", "message", "fields"), [
    ([TASK], *SHAPE),
    (None, *SHAPE),
    ({}, *SHAPE),
    ({"tasks": None, "callback_url": "ftp://x"}, *SHAPE),
    ({"tasks": {"0": TASK}}, *SHAPE),
    ({"tasks": "x", "extra": 1}, *SHAPE),  # the shape first, as before
    ({"tasks": [], "zeta": 1, "alpha": 2}, f"alpha: unknown field; zeta: unknown field; tasks: {NONE}",
     [("alpha", "unknown field"), ("zeta", "unknown field"), ("tasks", NONE)]),
    # A size out of bounds is answered at once: the callback URL is not looked at.
    ({"tasks": [TASK] * (MAX_WORKFLOW_TASKS + 1), "callback_url": 5}, f"tasks: {TOO_MANY}", [("tasks", TOO_MANY)]),
])
def test_a_bad_envelope_is_refused_at_once_as_the_handler_always_answered(
    body: Any, message: str, fields: list[tuple[str, str]]
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        parse_envelope(body)
    assert refused.value.message == message
    assert [(e["field"], e["message"]) for e in refused.value.errors] == fields


@pytest.mark.parametrize(("body", "fields"), [
    ({"tasks": [TASK], "zeta": 1, "": 2}, [("", "unknown field"), ("zeta", "unknown field")]),
    ({"tasks": [TASK], "callback_url": "ftp://x"}, [("callback_url", URL_SCHEME)]),
    ({"tasks": [TASK], "callback_url": 5, "atomic": False}, [("atomic", "unknown field"), ("callback_url", NOT_URL)]),
    ({"tasks": [TASK], "callback_url": ""}, [("callback_url", "Input should be a valid URL, input is empty")]),
])
def test_other_envelope_problems_are_listed_with_the_tasks_own(body: Any, fields: list[tuple[str, str]]) -> None:
    tasks, callback_url, problems = parse_envelope(body)
    assert tasks == body["tasks"] and callback_url is None
    assert [(e["field"], e["message"]) for e in problems] == fields


def test_a_good_envelope_keeps_its_raw_tasks_and_normalises_the_callback_url() -> None:
    tasks: list[Any] = [TASK, "not an object"]
    assert parse_envelope({"tasks": tasks, "callback_url": "https://h:8443/a?b=c"}) == (
        tasks, "https://h:8443/a?b=c", [])
    assert parse_envelope({"tasks": tasks, "callback_url": None}) == (tasks, None, [])
    assert parse_envelope({"tasks": tasks, "callback_url": "http://example.com"})[1] == "http://example.com/"


def test_the_document_describes_the_envelope_from_the_same_model() -> None:
    app = create_app(Settings())
    doc = build_openapi(app, DocContext(app[SETTINGS], app[REGISTRY]))
    body = doc["paths"]["/api/v1/workflows"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/WorkflowRequest"}
    envelope = doc["components"]["schemas"]["WorkflowRequest"]
    assert envelope["additionalProperties"] is False and envelope["required"] == ["tasks"]
    tasks = envelope["properties"]["tasks"]
    assert (tasks["minItems"], tasks["maxItems"]) == (1, MAX_WORKFLOW_TASKS)
    assert tasks["items"]["discriminator"]["mapping"]["echo"] == "#/components/schemas/EchoWorkflowTask"
    assert "ref" in doc["components"]["schemas"]["EchoWorkflowTask"]["required"]
    # The task body is pydantic's discriminated union too, inline, its variants as components.
    single = doc["paths"]["/api/v1/tasks"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert single["discriminator"]["mapping"]["echo"] == "#/components/schemas/EchoTaskRequest"
    assert {"$ref": "#/components/schemas/EchoTaskRequest"} in single["oneOf"] and "$defs" not in single
