"""The chaos soak (tests/chaos.py) on a three-node RabbitMQ cluster, with
replicas of every process: 2 api, 2 dispatchers, 3 workers (each replica lists
the nodes in its own order, as different pods would), while the nodes are
killed (kill -9) and restarted one at a time, the one that holds the queues
first, and workers are killed as in `make chaos`.

    python -m tests.chaos_cluster [--tasks 5000] [--workers 3] [--node-down 10] [--timeout 300]
    make chaos-cluster

The queues are classic queues: each lives on the node that declared it, and
while that node is down its queues are unavailable (consumers cancelled,
declarations refused); their persistent messages come back when it restarts.
So the soak shows tasks delayed (`slowest_task`), not lost. Quorum queues,
replicated on the three nodes, are the next step (issue 17).
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

from tests.chaos import ChaosConfig, parser, run_and_exit
from tests.support.rabbitmq_cluster import RabbitMQCluster, start_cluster


def queue_homes(list_queues_output: str, prefix: str = "tm.stage.") -> Counter[str]:
    """How many of the stage queues each node holds, from `rabbitmqctl list_queues
    name pid` (a classic queue's pid reads <rabbit@host.1.2.3>)."""
    homes: Counter[str] = Counter()
    for line in list_queues_output.splitlines():
        name, _, pid = line.partition("\t")
        node = re.match(r"<([^.<>\s]+@[^.<>\s]+)\.", pid.strip())
        if name.startswith(prefix) and node:
            homes[node.group(1)] += 1
    return homes


def fault_order(homes: Counter[str], nodes: list[str]) -> list[int]:
    """Node indexes to kill, one at a time: the one holding most stage queues first
    (the worst case for classic queues), then the others in order."""
    first = max(range(len(nodes)), key=lambda i: homes.get(nodes[i], 0))
    return [first] + [i for i in range(len(nodes)) if i != first]


class ClusterBroker:
    """A ChaosBroker: three clustered nodes (tests/support/rabbitmq_cluster.py),
    each fault a kill -9 of one node, `node_down_seconds` of outage, and a restart."""

    def __init__(self, node_down_seconds: float) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="tm-chaos-cluster-"))
        self.node_down_seconds = node_down_seconds
        self.cluster: RabbitMQCluster | None = None
        self.order: list[int] = []
        self.faults = 3
        self.log: list[str] = []

    def start(self) -> None:
        self.cluster = start_cluster(self.root)

    def url(self, process_index: int) -> str:
        assert self.cluster is not None
        size = len(self.cluster.nodes)
        # The default vhost "/", the whole cluster being the soak's own.
        return self.cluster.url("", order=[(process_index + k) % size for k in range(size)])

    def fault(self, number: int) -> float:
        assert self.cluster is not None
        if not self.order:
            homes = queue_homes(self.cluster.ctl("list_queues", "name", "pid", "--no-table-headers", "--silent"))
            self.order = fault_order(homes, [n.node for n in self.cluster.nodes])
            self.log.append(f"stage queues per node: {dict(homes)}")
        index = self.order[number % len(self.order)]
        started = time.monotonic()
        self.cluster.kill(index)
        time.sleep(self.node_down_seconds)
        self.cluster.restart(index)
        outage = time.monotonic() - started
        self.log.append(f"node {index + 1} down {outage:.0f}s")
        return outage

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    options = parser("python -m tests.chaos_cluster", __doc__, workers=3)
    options.add_argument("--node-down", type=float, default=10.0, help="seconds each killed node stays down")
    options.add_argument("--node-every", type=float, default=20.0, help="seconds between two node faults")
    args = options.parse_args(argv)
    broker = ClusterBroker(args.node_down)
    config = ChaosConfig(tasks=args.tasks, workers=args.workers, apis=2, dispatchers=2,
                         kill_every_seconds=args.kill_every, broker_fault_every_seconds=args.node_every,
                         timeout_seconds=args.timeout, seed=args.seed)
    run_and_exit(config, broker, notes=broker.log)


if __name__ == "__main__":
    main()
