"""Health endpoints and the seed's metric names on every process."""

from __future__ import annotations

import aiohttp

from tests.support.api import ApiClient
from tests.support.fleet import Fleet

SEED_METRICS_BY_PROCESS = {
    "api": ["task_queue_size", "http_request_duration_seconds", "tasks_submitted_total"],
    "worker-default": ["task_processing_duration_seconds", "worker_pool_active_count", "worker_pool_idle_count"],
    "dispatcher": ["task_success_total", "task_failure_total", "dispatcher_event_lag_seconds"],
}


async def test_health_reports_live_and_ready_with_its_checks(api: ApiClient) -> None:
    for path in ("/health", "/health/live", "/health/ready"):
        status, body = await api.call("GET", path)
        assert status == 200, body
    _, summary = await api.call("GET", "/health")
    assert summary["ready"] is True and set(summary["checks"]) == {"database", "broker"}


async def test_every_process_exposes_its_metrics(api: ApiClient, fleet: Fleet, http: aiohttp.ClientSession) -> None:
    await api.run({"task_type": "echo"})
    await api.run({"task_type": "fail", "payload": {"permanent": True}})
    for process in fleet.processes:
        url = process.ready_url.replace("/health/ready", "/metrics")  # type: ignore[union-attr]
        async with http.get(url) as response:
            text = await response.text()
        for name in SEED_METRICS_BY_PROCESS[process.name]:
            assert f"\n{name}" in text or text.startswith(name) or f"# TYPE {name}" in text, (process.name, name)
    async with http.get(fleet.api_url + "/metrics") as response:
        assert 'task_queue_size{queue="tm.stage.default"}' in await response.text()
