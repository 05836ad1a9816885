"""Production logs of the real processes: one JSON object per line, every line
about a task carrying its fields, and no secret anywhere."""

from __future__ import annotations

import orjson

from shared.logging import TASK_FIELDS
from tests.conftest import FleetFactory
from tests.support.api import ApiClient
from tests.support.environment import free_port
from tests.support.fleet import Fleet

CALLBACK_SECRET = "whsec-test-do-not-print-4711"
URL_PASSWORD = "url-pass-0815"


def _lines(fleet: Fleet, name: str) -> list[dict]:  # type: ignore[type-arg]
    text = fleet.process(name).log_path.read_text()
    lines = [line for line in text.splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            raise AssertionError(f"{name} wrote a line that is not JSON: {line!r}") from None
    return parsed


async def test_production_logs_are_json_lines_with_task_fields_and_no_secrets(
    fleet_factory: FleetFactory, http  # type: ignore[no-untyped-def]
) -> None:
    # The production log format; a full production start (TLS-less refusals, API keys,
    # role users) is covered by tests/test_least_privilege_and_secrets.py.
    # A callback URL with credentials (operator configuration: clients may not send
    # those), to a port where nothing listens: the dispatcher logs the failed
    # delivery, URL included.
    hook = f"http://kb:{URL_PASSWORD}@127.0.0.1:{free_port()}/hook"
    # DEBUG: the api's and worker's lines about a successful task are debug lines.
    production = {"LOG_FORMAT": "json", "LOG_LEVEL": "debug", "CALLBACK_SECRET": CALLBACK_SECRET, "CALLBACK_MAX_ATTEMPTS": "1",
                  "KB_CALLBACK_URL": hook}

    def configure(fleet: Fleet) -> None:
        fleet.add_api(**production)
        fleet.add_worker(**production)
        fleet.add_dispatcher(**production)

    fleet = await fleet_factory(configure)
    api = ApiClient(fleet.api_url, http)
    task = await api.run({"task_type": "echo", "kb_id": "kb_42", "payload": {"x": 1}})
    failed = await api.run({"task_type": "fail", "kb_id": "kb_42", "payload": {"permanent": True}})
    await api.wait_for_callback(task["task_id"], "failed")
    fleet.stop()  # flush and close every log

    everything = "".join(fleet.process(n).log_path.read_text() for n in ("api", "worker-default", "dispatcher"))
    assert CALLBACK_SECRET not in everything and URL_PASSWORD not in everything

    about = {n: [line for line in _lines(fleet, n) if line.get("task_id") == task["task_id"]]
             for n in ("api", "worker-default", "dispatcher")}
    assert [line["message"] for line in about["api"]] == ["task accepted via rest (priority normal)"]
    assert about["worker-default"] and about["dispatcher"], about
    for line in (line for lines in about.values() for line in lines):
        assert {k: line[k] for k in ("task_id", "kb_id", "task_type", "stage")} == {
            "task_id": task["task_id"], "kb_id": "kb_42", "task_type": "echo", "stage": "default"}, line
        assert set(TASK_FIELDS) <= set(line) and {"ts", "level", "process", "message"} <= set(line)
    [attempt] = about["worker-default"]
    assert attempt["attempt"] == 1 and attempt["message"].startswith("attempt succeeded")
    [gave_up] = [line for line in about["dispatcher"] if "failed for good" in line["message"]]
    assert gave_up["level"] == "error" and "127.0.0.1" in gave_up["message"]
    assert URL_PASSWORD not in gave_up["message"]

    [failed_attempt] = [line for line in _lines(fleet, "worker-default") if line.get("task_id") == failed["task_id"]]
    assert failed_attempt["task_type"] == "fail" and failed_attempt["attempt"] == 1
    assert "attempt failed" in failed_attempt["message"]
