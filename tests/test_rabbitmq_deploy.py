"""The RabbitMQ deploy files on a real node: it boots from rabbitmq.conf,
enabled_plugins and definitions.json, the policies land on our queues without
contradicting the arguments the code declares, the Prometheus endpoint serves
what the dashboard and alerts query, and /api/v1/stats/queues reads the
management API. (A node of our own: the shared broker runs no plugins.)"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aio_pika
import aiohttp
import pytest
import pytest_asyncio

from shared.fleet import STAGES
from shared.settings import AmqpSettings
from shared.topology import Topology, declare_topology
from tests.conftest import FleetFactory
from tests.support.api import ApiClient
from tests.support.fleet import Fleet
from tests.support.private_rabbitmq import PrivateRabbitMQ, available, boot_from_deploy_files

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not available(), reason="RabbitMQ server binaries not installed")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRabbitMQ]:
    node = boot_from_deploy_files(tmp_path_factory.mktemp("rabbitmq"))
    yield node
    node.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def management(node: PrivateRabbitMQ) -> AsyncIterator[aiohttp.ClientSession]:
    auth = {"Authorization": "Basic " + base64.b64encode(b"taskmgr-admin:taskmgr-admin").decode()}
    async with aiohttp.ClientSession(f"http://127.0.0.1:{node.management_port}", headers=auth) as session:
        yield session


async def test_the_node_runs_with_our_settings_users_and_plugins(
    node: PrivateRabbitMQ, management: aiohttp.ClientSession
) -> None:
    assert node.ctl("eval", "application:get_env(rabbit, consumer_timeout).").strip() == "{ok,90000000}"
    async with management.get("/api/users") as response:
        users = await response.json()
    names = {u["name"] for u in users}
    assert names == {"taskmgr-admin", "taskmgr-api", "taskmgr-worker", "taskmgr-dispatcher", "kb-service"}, \
        "one user per role; definitions replace the default guest user"
    async with management.get("/api/overview") as response:
        overview = await response.json()
    protocols = {listener["protocol"] for listener in overview["listeners"]}
    assert {"amqp", "http", "http/prometheus"} <= protocols, "AMQP, the management API and Prometheus"
    connection = await aio_pika.connect(node.amqp_url())  # the password hash in definitions.json is right
    await connection.close()


async def test_policies_apply_to_every_queue_and_agree_with_the_declared_arguments(
    node: PrivateRabbitMQ, management: aiohttp.ClientSession
) -> None:
    connection = await aio_pika.connect(node.amqp_url())
    async with connection:
        topology = Topology(STAGES, AmqpSettings().stage_queue_max_length)
        await declare_topology(await connection.channel(), topology)

    params = {"columns": "name,policy,effective_policy_definition,arguments"}
    deadline = time.monotonic() + 20
    while True:  # the management database catches up within a stats interval
        async with management.get("/api/queues/taskmgr", params=params) as response:
            queues = {q["name"]: q for q in await response.json()}
        if all(q.name in queues and queues[q.name].get("policy") for q in topology.queues):
            break
        assert time.monotonic() < deadline, {n: q.get("policy") for n, q in queues.items()}
        await asyncio.sleep(0.5)

    for spec in topology.queues:
        queue = queues[spec.name]
        policy = queue["effective_policy_definition"]
        arguments = dict(spec.arguments)
        for key, value in policy.items():
            argument = arguments.get(f"x-{key}")
            if argument is not None:
                assert argument == value, f"{spec.name}: policy {key}={value} but the code declares {argument}"
        assert "max-priority" not in policy, "x-max-priority can only be a queue argument"
    assert queues["tm.stage.default"]["arguments"]["x-max-priority"] == 10


async def test_the_prometheus_endpoint_serves_every_rabbitmq_metric_the_dashboard_and_alerts_use(
    node: PrivateRabbitMQ,
) -> None:
    connection = await aio_pika.connect(node.amqp_url())
    async with connection:
        await declare_topology(await connection.channel(), Topology(STAGES))
    base = f"http://127.0.0.1:{node.prometheus_port}"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/metrics") as response:
            aggregated = await response.text()
        async with session.get(f"{base}/metrics/detailed",
                               params=[("family", "queue_coarse_metrics"), ("family", "queue_consumer_count")]) as r:
            detailed = await r.text()
    exposed = set(re.findall(r"^(rabbitmq_\w+)", aggregated + detailed, re.MULTILINE))
    assert 'rabbitmq_detailed_queue_messages_ready{vhost="taskmgr",queue="tm.stage.default"}' in detailed

    used = set()
    for path in [ROOT / "deploy/grafana/dashboards/taskmgr.json", ROOT / "deploy/prometheus/alerts.yml"]:
        used |= set(re.findall(r"\b(rabbitmq_\w+)", path.read_text()))
    assert used, "the dashboard shows RabbitMQ's own figures"
    assert used <= exposed, f"not served by RabbitMQ 3.10: {sorted(used - exposed)}"


async def test_queue_stats_read_unacked_counts_rates_and_policies_from_the_management_api(
    node: PrivateRabbitMQ, fleet_factory: FleetFactory, http: aiohttp.ClientSession
) -> None:
    def configure(fleet: Fleet) -> None:
        on_node: dict[str, str] = {"AMQP_URL": node.amqp_url()}
        fleet.add_api(RABBITMQ_MANAGEMENT_URL=node.management_url(), **on_node)
        fleet.add_dispatcher(**on_node)
        fleet.add_worker(WORKER_POOL_SIZE="2", **on_node)

    fleet = await fleet_factory(configure)
    api = ApiClient(fleet.api_url, http)
    tasks = [await api.submit({"task_type": "sleep", "payload": {"seconds": 60}}) for _ in range(3)]

    deadline = time.monotonic() + 30
    while True:  # management figures refresh every collect_statistics_interval (5 s)
        status, body = await api.call("GET", "/api/v1/stats/queues")
        assert status == 200, body
        [stage] = [s for s in body["stages"] if s["stage"] == "default"]
        if stage["unacked"] == 2 and stage["ready"] == 1:
            break
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.5)
    assert body["source"] == "management" and body["notes"] == []
    assert stage["consumers"] == 1 and stage["messages"] == 3 and stage["policy"] == "tm-stage-queues"
    assert all(isinstance(stage[k], float) for k in ("publish_rate", "deliver_rate", "ack_rate"))
    assert [r["policy"] for r in body["retry"]] == [f"tm-retry-{t}" for t in ("1s", "5s", "30s", "2m", "10m", "1h")]
    assert body["dead_letter"]["policy"] == "tm-dead"

    for task in tasks:
        await api.call("DELETE", f"/api/v1/tasks/{task['task_id']}")
    for task in tasks:
        assert (await api.wait_for(task["task_id"]))["status"] == "cancelled"
