"""A real three-node RabbitMQ cluster on loopback, for failover tests.

Modelled on tests/support/private_rabbitmq.py: the same Debian RabbitMQ 3.10
install, each node with its own node name, AMQP and distribution ports and data
directory; the three share one Erlang cookie (written into each node's own
HOME), and nodes 2 and 3 `rabbitmqctl join_cluster` node 1. The shared broker
on 5672 is never touched. `stop()` kills every node by its pid file; callers
run it in a `finally` so a failed test leaves no node behind.
"""

from __future__ import annotations

import secrets
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.environment import free_port
from tests.support.private_rabbitmq import PrivateRabbitMQ, available

__all__ = ["RabbitMQCluster", "available", "start_cluster"]


@dataclass
class RabbitMQCluster:
    nodes: list[PrivateRabbitMQ]
    stopped: set[str] = field(default_factory=set)

    def url(self, vhost: str, order: list[int] | None = None, user: str = "guest", password: str = "guest") -> str:
        """A multi-host AMQP_URL listing the nodes in `order` (indexes; default 0, 1, 2)."""
        hosts = ",".join(f"127.0.0.1:{self.nodes[i].amqp_port}" for i in (order or range(len(self.nodes))))
        return f"amqp://{user}:{password}@{hosts}/{vhost}"

    def node_url(self, index: int, vhost: str) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.nodes[index].amqp_port}/{vhost}"

    def live(self) -> list[PrivateRabbitMQ]:
        return [n for n in self.nodes if n.node not in self.stopped]

    def ctl(self, *args: str) -> str:
        """rabbitmqctl against a node that is still running."""
        return self.live()[0].ctl(*args)

    def kill(self, index: int) -> None:
        """kill -9: no clean shutdown, no handover."""
        self.nodes[index].stop()
        self.stopped.add(self.nodes[index].node)

    def restart(self, index: int) -> None:
        """Boot a killed node again on its data folder: it rejoins the cluster by itself."""
        node = self.nodes[index]
        (node.root / "rabbitmq.pid").unlink(missing_ok=True)  # `wait` must follow the new pid, not the dead one
        node.start()
        self.stopped.discard(node.node)

    def connection_names(self, index: int) -> list[str]:
        out = self.nodes[index].ctl("list_connections", "client_properties", "--no-table-headers", "--silent")
        return [line for line in out.splitlines() if line.strip()]

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
            self.stopped.add(node.node)


def _write_config(node: PrivateRabbitMQ, cookie: str) -> None:
    node.root.mkdir(parents=True, exist_ok=True)
    cookie_file = node.root / ".erlang.cookie"  # HOME is node.root: the CLI and the node read it
    cookie_file.write_text(cookie)
    cookie_file.chmod(0o400)
    (node.root / "enabled_plugins").write_text("[].\n")  # no plugins: a faster boot
    (node.root / "rabbitmq.conf").write_text(
        f"listeners.tcp.default = 127.0.0.1:{node.amqp_port}\n"
        "loopback_users.guest = true\n"
        # A test cluster on a shared, small machine: a slow node is not a partition.
        "cluster_partition_handling = ignore\n"
    )


def start_cluster(root: Path, size: int = 3) -> RabbitMQCluster:
    """Boot `size` nodes and cluster them; on any failure every node is stopped."""
    prefix = f"tm_cl_{uuid.uuid4().hex[:6]}"
    cookie = secrets.token_hex(20).upper()
    nodes = [PrivateRabbitMQ(root / f"node{i + 1}", f"{prefix}_{i + 1}@localhost", free_port(), 0, 0)
             for i in range(size)]
    cluster = RabbitMQCluster(nodes)
    try:
        for node in nodes:
            _write_config(node, cookie)
        with ThreadPoolExecutor(size) as pool:
            list(pool.map(lambda n: n.start(), nodes))
        for node in nodes[1:]:
            node.ctl("stop_app")
            node.ctl("reset")
            node.ctl("join_cluster", nodes[0].node)
            node.ctl("start_app")
        status = nodes[0].ctl("cluster_status", "--formatter", "json")
        missing = [n.node for n in nodes if status.count(n.node) < 2]  # listed as disc and running
        if missing:
            raise RuntimeError(f"nodes not running in the cluster: {missing}\n{status}")
    except BaseException:
        cluster.stop()
        raise
    return cluster
