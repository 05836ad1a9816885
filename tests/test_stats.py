"""GET /api/v1/stats/workers and /api/v1/stats/queues against a real fleet."""

from __future__ import annotations

import time
from typing import Any

import aiohttp

from tests.conftest import FleetFactory
from tests.support.api import ApiClient
from tests.support.environment import free_port
from tests.support.eventually import eventually
from tests.support.fleet import Fleet
from tests.support.metrics import metrics_url, scrape

INTERVAL = 0.5  # WORKER_HEARTBEAT_INTERVAL for these tests


async def test_workers_appear_with_their_figures_and_disappear_when_killed_or_stopped(
    fleet_factory: FleetFactory, http: aiohttp.ClientSession
) -> None:
    def configure(fleet: Fleet) -> None:
        fleet.add_api()
        fleet.add_dispatcher()
        fleet.add_worker(name="worker-a", WORKER_POOL_SIZE="3", WORKER_HEARTBEAT_INTERVAL=str(INTERVAL))

    fleet = await fleet_factory(configure)
    api = ApiClient(fleet.api_url, http)
    worker_a = fleet.process("worker-a")

    async def listed(*pids: int) -> dict[str, Any]:
        status, body = await api.call("GET", "/api/v1/stats/workers")
        assert status == 200, body
        assert sorted(w["pid"] for w in body["workers"]) == sorted(pids), body
        return body  # type: ignore[no-any-return]

    body = await eventually(lambda: listed(worker_a.pid))
    [a] = body["workers"]
    assert a["stage"] == "default" and a["pool_size"] == 3 and a["state"] == "running"
    assert a["active"] + a["idle"] == 3 and a["host"] and a["worker_id"].endswith(f":{worker_a.pid}")
    assert a["heartbeat_interval_seconds"] == INTERVAL and a["last_heartbeat_age_seconds"] < 10
    assert {"processed", "failed", "started_at", "last_heartbeat"} <= set(a)

    worker_b = fleet.add_worker(name="worker-b", WORKER_POOL_SIZE="2", WORKER_HEARTBEAT_INTERVAL=str(INTERVAL))
    await fleet.start(worker_b)
    body = await eventually(lambda: listed(worker_a.pid, worker_b.pid))
    [default] = [s for s in body["stages"] if s["stage"] == "default"]
    assert default["workers"] == 2 and default["pool_size"] == 5

    for i in range(4):
        await api.run({"task_type": "echo", "payload": {"i": i}})
    await api.run({"task_type": "fail", "payload": {"permanent": True}})

    async def counted() -> None:
        body = await listed(worker_a.pid, worker_b.pid)
        assert sum(w["processed"] for w in body["workers"]) == 4, body
        assert sum(w["failed"] for w in body["workers"]) == 1, body

    await eventually(counted)

    killed_at = time.monotonic()
    worker_b.kill()  # SIGKILL: no goodbye, it just goes quiet
    await eventually(lambda: listed(worker_a.pid))
    # Dropped after 3 missed intervals (plus scheduling slack on a busy machine).
    assert time.monotonic() - killed_at < 3 * INTERVAL + 8

    worker_a.stop()  # SIGTERM: a last heartbeat says "stopped"
    body = await eventually(lambda: listed(), timeout=5)
    [default] = [s for s in body["stages"] if s["stage"] == "default"]
    assert default["workers"] == 0, "a stage without workers is still listed, with zero"
    api_metrics = await scrape(http, metrics_url(fleet.process("api")))
    assert api_metrics.value("worker_processes_live", stage="default") == 0


async def test_queue_stats_from_passive_declares(fleet_factory: FleetFactory, http: aiohttp.ClientSession) -> None:
    closed_port = free_port()

    def configure(fleet: Fleet) -> None:
        # No worker: submitted tasks wait in the stage queue. The management API
        # is configured but unreachable: the answer falls back to AMQP and says so.
        fleet.add_api(RABBITMQ_MANAGEMENT_URL=f"http://127.0.0.1:{closed_port}")
        fleet.add_dispatcher()

    fleet = await fleet_factory(configure)
    api = ApiClient(fleet.api_url, http)
    for i in range(3):
        await api.submit({"task_type": "echo", "payload": {"i": i}})

    status, body = await api.call("GET", "/api/v1/stats/queues")
    assert status == 200, body
    assert body["source"] == "amqp"
    assert any("management API" in n and "unreachable" in n for n in body["notes"]), body["notes"]
    [default] = [s for s in body["stages"] if s["stage"] == "default"]
    assert default["stage"] == "default" and default["queue"] == "tm.stage.default"
    assert default["ready"] == 3 and default["consumers"] == 0 and default["exists"] is True
    assert default["max_length"] == 1_000_000
    assert default["unacked"] is None and default["publish_rate"] is None, "AMQP cannot tell these"
    assert [r["tier"] for r in body["retry"]] == ["1s", "5s", "30s", "2m", "10m", "1h"]
    assert all(r["ready"] == 0 for r in body["retry"])
    assert body["dead_letter"]["queue"] == "tm.dead" and body["dead_letter"]["ready"] == 0
    others = {q["queue"]: q for q in body["other"]}
    assert set(others) == {"tm.submit", "tm.dispatcher.events", "tm.dispatcher.rpc", "tm.rpc.embed"}
    assert all(others[q]["consumers"] == 1 for q in ("tm.submit", "tm.dispatcher.events", "tm.dispatcher.rpc"))
    assert others["tm.rpc.embed"]["consumers"] == 0, "no embed worker in this fleet"

    worker = fleet.add_worker()
    await fleet.start(worker)

    async def drained() -> None:
        _, body = await api.call("GET", "/api/v1/stats/queues")
        [default] = [s for s in body["stages"] if s["stage"] == "default"]
        assert default["ready"] == 0 and default["consumers"] == 1, default

    await eventually(drained)
