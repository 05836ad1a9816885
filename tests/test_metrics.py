"""Every process's /metrics after real traffic: the seed's names are there and
each counter moved by exactly what happened (a duplicate event moves nothing)."""

from __future__ import annotations

import aio_pika
import aiohttp

from shared.amqp.publisher import Publisher
from shared.messages import TaskCompleted, utcnow
from tests.conftest import FleetFactory
from tests.support.api import ApiClient
from tests.support.callback_receiver import CallbackReceiver
from tests.support.eventually import eventually
from tests.support.fleet import Fleet
from tests.support.metrics import Scrape, metrics_url, scrape

SEED_NAMES = {
    "api": ["task_queue_size"],
    "worker-default": ["task_processing_duration_seconds_bucket", "worker_pool_active_count", "worker_pool_idle_count"],
    "dispatcher": ["task_success_total", "task_failure_total"],
}
POOL_SIZE = 4
ECHO_TASKS = 5


async def _scrape_all(http: aiohttp.ClientSession, fleet: Fleet) -> dict[str, Scrape]:
    return {p.name: await scrape(http, metrics_url(p)) for p in fleet.processes}


async def test_counters_move_by_exactly_what_happened_on_each_process(
    fleet_factory: FleetFactory, http: aiohttp.ClientSession, receiver: CallbackReceiver
) -> None:
    def configure(fleet: Fleet) -> None:
        fleet.add_api()
        fleet.add_worker(WORKER_POOL_SIZE=str(POOL_SIZE), RETRY_BACKOFF_BASE="0.5")
        fleet.add_dispatcher()

    fleet = await fleet_factory(configure)
    api = ApiClient(fleet.api_url, http)
    before = await _scrape_all(http, fleet)

    echo = [await api.submit({"task_type": "echo", "payload": {"i": i}, "callback_url": receiver.url("m")})
            for i in range(ECHO_TASKS)]
    permanent = await api.submit({"task_type": "fail", "payload": {"permanent": True}})
    retried_once = await api.submit({"task_type": "fail", "payload": {"fail_times": 1}, "retry_limit": 2})
    exhausted = await api.submit({"task_type": "fail", "payload": {"fail_times": 5}, "retry_limit": 0})
    cancelled = await api.submit({"task_type": "sleep", "payload": {"seconds": 60}})
    await api.wait_for(cancelled["task_id"], {"processing"})
    status, _ = await api.call("DELETE", f"/api/v1/tasks/{cancelled['task_id']}")
    assert status in (200, 202)

    outcomes = {t["task_id"]: (await api.wait_for(t["task_id"]))["status"]
                for t in (*echo, permanent, retried_once, exhausted, cancelled)}
    assert [outcomes[t["task_id"]] for t in echo] == ["completed"] * ECHO_TASKS
    assert outcomes[permanent["task_id"]] == "failed" and outcomes[exhausted["task_id"]] == "failed"
    assert outcomes[retried_once["task_id"]] == "completed" and outcomes[cancelled["task_id"]] == "cancelled"
    await receiver.wait_for("m", count=ECHO_TASKS)

    async def settled() -> dict[str, Scrape]:
        after = await _scrape_all(http, fleet)
        d = after["dispatcher"]
        delivered = d.value("callback_attempts_total", outcome="delivered") - before["dispatcher"].value(
            "callback_attempts_total", outcome="delivered")
        assert delivered == ECHO_TASKS, delivered
        assert after["worker-default"].value("worker_pool_active_count", stage="default") == 0
        return after

    after = await eventually(settled)

    def delta(process: str, name: str, **labels: str) -> float:
        return after[process].value(name, **labels) - before[process].value(name, **labels)

    for process, names in SEED_NAMES.items():
        for name in names:
            assert after[process].has(name), f"{name} missing on {process}"

    # dispatcher: outcomes counted once per task, by task type
    assert delta("dispatcher", "task_success_total", task_type="echo") == ECHO_TASKS
    assert delta("dispatcher", "task_success_total", task_type="fail") == 1
    assert delta("dispatcher", "task_failure_total", task_type="fail") == 2
    assert delta("dispatcher", "tasks_cancelled_total", task_type="sleep") == 1
    assert delta("dispatcher", "callback_failures_total") == 0
    assert after["dispatcher"].has("dispatcher_event_lag_seconds_count")

    # worker: attempts, durations per task type and stage, retries, dead letters, pool gauges
    assert delta("worker-default", "task_processing_duration_seconds_count", task_type="echo",
                 stage="default") == ECHO_TASKS
    assert delta("worker-default", "task_attempts_total", task_type="fail", outcome="failed") == 3
    assert delta("worker-default", "task_attempts_total", task_type="fail", outcome="succeeded") == 1
    assert delta("worker-default", "task_attempts_total", task_type="sleep", outcome="cancelled") == 1
    assert delta("worker-default", "tasks_retried_total", task_type="fail", stage="default") == 1
    assert delta("worker-default", "tasks_dead_lettered_total", reason="retries_exhausted") == 1
    assert after["worker-default"].value("worker_pool_idle_count", stage="default") == POOL_SIZE

    # api: submissions, request latency by route and status, queue gauges
    assert delta("api", "tasks_submitted_total", task_type="echo", via="rest") == ECHO_TASKS
    assert delta("api", "tasks_submitted_total", task_type="fail", via="rest") == 3
    assert delta("api", "http_request_duration_seconds_count", method="POST", route="/api/v1/tasks",
                 status="201") == ECHO_TASKS + 4
    assert delta("api", "http_request_duration_seconds_count", method="DELETE",
                 route="/api/v1/tasks/{task_id}") == 1

    async def queue_gauges() -> None:
        api_metrics = await scrape(http, metrics_url(fleet.process("api")))
        assert api_metrics.has("task_queue_size", queue="tm.stage.default")
        assert api_metrics.has("task_queue_size", queue="tm.dead")
        assert api_metrics.value("task_queue_consumers", queue="tm.stage.default") == 1
        assert api_metrics.value("task_queue_size", queue="tm.dead") == 1  # the exhausted task
        assert api_metrics.value("worker_processes_live", stage="default") == 1

    await eventually(queue_gauges)

    # A duplicate terminal event (a redelivery, a replayed publish) changes nothing.
    duplicate = TaskCompleted(task_id=echo[0]["task_id"], task_type="echo", result={"i": 0}, finished_at=utcnow())
    connection = await aio_pika.connect(fleet.environment.amqp_url)
    try:
        publisher = await Publisher.open(connection)
        await publisher.event(duplicate)
        await publisher.event(duplicate)
    finally:
        await connection.close()
    # The dispatcher consumes its queue in order: once a task submitted after
    # the duplicates has completed, the duplicates have been applied.
    await api.run({"task_type": "echo", "payload": {"after": "duplicates"}})

    async def one_more_success() -> None:
        dispatcher = await scrape(http, metrics_url(fleet.process("dispatcher")))
        assert dispatcher.value("dispatcher_event_lag_seconds_count") - after["dispatcher"].value(
            "dispatcher_event_lag_seconds_count") >= 3, "the duplicates and the new task's event were applied"
        assert dispatcher.value("task_success_total", task_type="echo") - after["dispatcher"].value(
            "task_success_total", task_type="echo") == 1, "only the new task counts"

    await eventually(one_more_success)
