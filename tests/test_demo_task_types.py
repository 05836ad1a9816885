"""The demonstration task types (`test`, `echo`, `sleep`, `fail`, `benchmark`, `cpu`) are
registered only when DEMO_TASK_TYPES is on: by default in development, never by default
in production, where `sleep` or `cpu` would let any client hold slots or burn cores."""

from __future__ import annotations

import pytest

from shared.errors import InvalidRequest
from shared.settings import ServiceSettings
from shared.task_request import RequestLimits, validate_task_request
from shared.task_types import default_registry
from tests.support.api import ApiClient
from tests.support.fleet import Fleet

DEMO = {"test", "echo", "sleep", "fail", "benchmark", "cpu"}
PRODUCT = {"file_digest", "document_processing", "document_deletion", "gather"}


@pytest.mark.parametrize(("env", "enabled"), [
    ({}, True),  # development is the default environment
    ({"ENVIRONMENT": "production"}, False),
    ({"ENVIRONMENT": "production", "DEMO_TASK_TYPES": "true"}, True),
    ({"ENVIRONMENT": "development", "DEMO_TASK_TYPES": "false"}, False),
])
def test_demo_task_types_are_on_in_development_and_off_in_production(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], enabled: bool
) -> None:
    for name in ("ENVIRONMENT", "DEMO_TASK_TYPES"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert ServiceSettings().demo_task_types_enabled is enabled


def test_the_registry_holds_the_demo_types_only_when_asked() -> None:
    assert set(default_registry(demo=False)) == PRODUCT
    assert set(default_registry(demo=True)) == PRODUCT | DEMO
    # The demo types run on the default stage, which file_digest needs anyway: same topology.
    assert set(default_registry(demo=False).stages()) == set(default_registry(demo=True).stages())


def test_production_settings_reject_sleep_naming_the_task_type(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEMO_TASK_TYPES", raising=False)
    monkeypatch.setenv("ENVIRONMENT", "production")
    registry = default_registry(demo=ServiceSettings().demo_task_types_enabled)
    with pytest.raises(InvalidRequest) as caught:
        validate_task_request({"task_type": "sleep", "payload": {"seconds": 1}}, registry, RequestLimits(3, 20))
    [error] = caught.value.errors
    assert error["field"] == "task_type"
    assert "unknown task type 'sleep'" in error["message"] and "document_processing" in error["message"]


async def test_an_api_without_demo_types_answers_422_for_sleep(fleet_factory, http) -> None:  # type: ignore[no-untyped-def]
    fleet: Fleet = await fleet_factory(lambda f: f.add_api(DEMO_TASK_TYPES="false"))
    api = ApiClient(fleet.api_url, http)
    status, body = await api.call("POST", "/api/v1/tasks", json={"task_type": "sleep", "payload": {"seconds": 1}})
    assert status == 422, body
    assert body["error"]["code"] == "validation_error"
    [detail] = body["error"]["details"]
    assert detail["field"] == "task_type" and "unknown task type 'sleep'" in detail["message"]
    # Nothing was created, and the contract does not offer what the api refuses.
    _, listed = await api.call("GET", "/api/v1/tasks?task_type=sleep")
    assert listed["items"] == []
    _, document = await api.call("GET", "/api/v1/openapi.json")
    assert "SleepTaskRequest" not in document["components"]["schemas"]
    assert "DocumentProcessingTaskRequest" in document["components"]["schemas"]
