"""Clients of a RabbitMQ cluster: AMQP_URL lists several nodes, every process
connects to the first that answers and, when its node dies (kill -9), reconnects
to a live one and carries on. A real three-node cluster (tests/support/rabbitmq_cluster.py).

The queues live on node 1 (classic queues are not replicated: losing their node
is the quorum-queue case); the processes are connected to node 2, which is killed
while tasks run: nothing is lost and no task gets two terminal callbacks."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import aiohttp
import pytest

from shared.fleet import STAGES
from shared.settings import AmqpSettings
from shared.topology import Topology, declare_topology
from tests.conftest import FleetFactory
from tests.support.api import ApiClient
from tests.support.callback_receiver import CallbackReceiver
from tests.support.eventually import eventually
from tests.support.fleet import Fleet
from tests.support.rabbitmq_cluster import RabbitMQCluster, available, start_cluster


def test_amqp_url_lists_a_clusters_nodes_in_order() -> None:
    settings = AmqpSettings(AMQP_URL="amqps://u:p%40w@h1:5671,h2:5672, h3/kb?cafile=/ca.pem")
    assert settings.node_urls() == [
        "amqps://u:p%40w@h1:5671/kb?cafile=/ca.pem&heartbeat=30",
        "amqps://u:p%40w@h2:5672/kb?cafile=/ca.pem&heartbeat=30",
        "amqps://u:p%40w@h3/kb?cafile=/ca.pem&heartbeat=30",
    ]
    assert settings.vhost == "kb" and settings.uses_tls
    assert AmqpSettings(AMQP_URL="amqp://g:g@one:5672/").node_urls() == ["amqp://g:g@one:5672/?heartbeat=30"]
    with pytest.raises(ValueError, match="AMQP_URL lists an empty host") as error:
        AmqpSettings(AMQP_URL="amqp://u:secret-pw@h1,,h3/").node_urls()
    assert "secret-pw" not in str(error.value)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQCluster]:
    if not available():
        pytest.skip("RabbitMQ server binaries not installed")
    cluster = start_cluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield cluster
    finally:
        cluster.stop()


async def _submit(api: ApiClient, body: dict[str, object]) -> str:
    """Submit until accepted (503 while the api reconnects), with one Idempotency-Key:
    a retried submission never makes a second task."""
    key = {"Idempotency-Key": f"cluster-{uuid.uuid4()}"}

    async def accepted() -> str:
        status, created = await api.call("POST", "/api/v1/tasks", json=body, headers=key)
        assert status in (200, 201), (status, created)
        return str(created["task_id"])

    return await eventually(accepted, timeout=60, interval=0.2)  # type: ignore[no-any-return]


async def test_processes_reconnect_to_a_live_node_when_theirs_is_killed(
    cluster: RabbitMQCluster, fleet_factory: FleetFactory, http: aiohttp.ClientSession,
    receiver: CallbackReceiver, tmp_path: Path,
) -> None:
    vhost = f"tm_cl_{uuid.uuid4().hex[:8]}"
    cluster.ctl("add_vhost", vhost)
    cluster.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    # The queues are declared through node 1, so they live there.
    connection = await aio_pika.connect(cluster.node_url(0, vhost))
    async with connection:
        await declare_topology(await connection.channel(), Topology(STAGES))

    url = cluster.url(vhost, order=[1, 2, 0])  # node 2 first: every process connects there

    def configure(fleet: Fleet) -> None:
        fleet.add_api(AMQP_URL=url)
        fleet.add_dispatcher(AMQP_URL=url)
        fleet.add_worker(AMQP_URL=url, WORKER_POOL_SIZE="4")

    fleet = await fleet_factory(configure)
    api = ApiClient(fleet.api_url, http)
    names = " ".join(cluster.connection_names(1))
    for process in ("api@", "worker-default@", "dispatcher@"):
        assert process in names, f"{process} is not connected to node 2: {names}"

    path = f"cluster-{uuid.uuid4().hex[:8]}"
    body = {"task_type": "sleep", "payload": {"seconds": 3}, "callback_url": receiver.url(path)}
    tasks = [await _submit(api, body) for _ in range(12)]
    await eventually(lambda: _running(api, tasks), timeout=30)

    cluster.kill(1)  # kill -9 the node every process is connected to, mid-task
    tasks += [await _submit(api, body) for _ in range(12)]

    for task_id in tasks:
        assert (await api.wait_for(task_id, timeout=120))["status"] == "completed", task_id
    await receiver.wait_for(path, count=len(tasks), timeout=60)
    await asyncio.sleep(2)  # a duplicate would arrive right behind the first callback
    terminal = Counter(hit.json["task_id"] for hit in receiver.for_path(path) if hit.status == 200)
    assert set(terminal) == set(tasks), "a task without its callback"
    assert max(terminal.values()) == 1, f"duplicated callbacks: {terminal.most_common(3)}"

    names = " ".join(cluster.connection_names(0) + cluster.connection_names(2))
    for process in ("api@", "worker-default@", "dispatcher@"):
        assert process in names, f"{process} did not reconnect to a live node: {names}"
    for process in fleet.processes:
        assert process.alive(), f"{process.name} exited:\n{process.log_tail()}"


async def _running(api: ApiClient, tasks: list[str]) -> None:
    statuses = [(await api.get(t))["status"] for t in tasks]
    assert "processing" in statuses, statuses
