"""Bad input gets a clear 4xx naming what is wrong, and nothing is half-created."""

from __future__ import annotations

import uuid

import pytest

from tests.support.api import ApiClient


def _fields(body: dict) -> set[str]:
    return {d["field"] for d in body["error"].get("details", [])}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"task_type": "nope"}, "task_type"),
        ({"task_type": "echo", "priority": "urgent"}, "priority"),
        ({"task_type": "echo", "retry_limit": 999}, "retry_limit"),
        ({"task_type": "echo", "retry_limit": -1}, "retry_limit"),
        ({"task_type": "echo", "timeout_seconds": 3600}, "timeout_seconds"),
        ({"task_type": "echo", "timeout_seconds": 0}, "timeout_seconds"),
        ({"task_type": "sleep", "payload": {"seconds": "soon"}}, "payload.seconds"),
        ({"task_type": "sleep", "payload": {"seconds": 1, "extra": 1}}, "payload.extra"),
        ({"task_type": "echo", "kb_id": "has spaces"}, "kb_id"),
        ({"task_type": "echo", "callback_url": "ftp://example.com"}, "callback_url"),
        ({"task_type": "echo", "colour": "blue"}, "colour"),
        ({"task_type": "echo", "status": "completed"}, "status"),
        ({"task_type": "echo", "task_id": "mine"}, "task_id"),
        ({"payload": {}}, "task_type"),
    ],
)
async def test_an_invalid_task_is_refused_naming_the_field(api: ApiClient, body: dict, field: str) -> None:
    kb = f"kb_{uuid.uuid4().hex[:8]}"
    status, error = await api.call("POST", "/api/v1/tasks", json=body)
    assert status == 422, error
    assert error["error"]["code"] == "validation_error"
    assert field in _fields(error), error
    _, listed = await api.call("GET", f"/api/v1/tasks?kb_id={kb}")
    assert listed["items"] == []


async def test_a_body_that_is_not_json_is_a_400(api: ApiClient) -> None:
    status, error = await api.call("POST", "/api/v1/tasks", data=b"{not json", headers={"Content-Type": "application/json"})
    assert status == 400 and error["error"]["code"] == "malformed_json"


async def test_a_body_that_is_not_an_object_is_a_422(api: ApiClient) -> None:
    status, error = await api.call("POST", "/api/v1/tasks", json=[1, 2])
    assert status == 422 and "body" in _fields(error)


async def test_a_body_over_the_size_limit_is_a_413(api: ApiClient) -> None:
    big = {"task_type": "echo", "payload": {"blob": "x" * 2_000_000}}
    status, error = await api.call("POST", "/api/v1/tasks", json=big)
    assert status == 413 and error["error"]["code"] == "payload_too_large"


@pytest.mark.parametrize("task_id", [str(uuid.uuid4()), "not-a-uuid", "task_456"])
async def test_an_unknown_task_is_a_404(api: ApiClient, task_id: str) -> None:
    for method in ("GET", "DELETE"):
        status, error = await api.call(method, f"/api/v1/tasks/{task_id}")
        assert status == 404 and error["error"]["code"] == "not_found"


@pytest.mark.parametrize("query", ["status=done", "limit=0", "limit=abc", "cursor=xyz", "colour=blue"])
async def test_a_bad_list_query_is_a_422(api: ApiClient, query: str) -> None:
    status, error = await api.call("GET", f"/api/v1/tasks?{query}")
    assert status == 422, error


async def test_an_unknown_route_answers_json(api: ApiClient) -> None:
    status, error = await api.call("GET", "/api/v1/nothing-here")
    assert status == 404 and "error" in error


async def test_a_batch_over_the_limit_is_refused(api: ApiClient) -> None:
    status, error = await api.call("POST", "/api/v1/tasks/batch", json={"tasks": [{"task_type": "echo"}] * 501})
    assert status == 422 and "tasks" in _fields(error)
