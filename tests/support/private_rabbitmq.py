"""A RabbitMQ node of our own, booted from the deploy files.

The shared broker on 5672 runs without plugins and must never be restarted or
reconfigured, so tests that need the management API, the Prometheus plugin or
our `rabbitmq.conf` + `definitions.json` boot a second node from the same
Debian RabbitMQ install: own node name, own ports, own data directory under
the test's tmp dir, stopped (by its own node name, then its pid) afterwards.
Booting it is also the strongest check of the deploy files: RabbitMQ refuses
to start on an unknown `rabbitmq.conf` key or a definitions file it cannot import.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from tests.support.environment import free_port

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
DEPLOY_RABBITMQ = Path(__file__).resolve().parents[2] / "deploy" / "rabbitmq"


def available() -> bool:
    return (RABBITMQ_BIN / "rabbitmq-server").exists()


@dataclass
class PrivateRabbitMQ:
    root: Path
    node: str
    amqp_port: int
    management_port: int
    prometheus_port: int

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            # A HOME of its own: its own Erlang cookie, nothing shared with the system node.
            "HOME": str(self.root),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_CONFIG_FILE": str(self.root / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.root / "log"),
            "RABBITMQ_PID_FILE": str(self.root / "rabbitmq.pid"),
        }

    # definitions.json ships each role with its name as its development password.
    def amqp_url(self, user: str = "taskmgr-admin", password: str | None = None, vhost: str = "taskmgr") -> str:
        return f"amqp://{user}:{password or user}@127.0.0.1:{self.amqp_port}/{vhost}"

    def management_url(self, user: str = "taskmgr-admin", password: str = "taskmgr-admin") -> str:
        return f"http://{user}:{password}@127.0.0.1:{self.management_port}"

    def ctl(self, *args: str, timeout: float = 60) -> str:
        result = subprocess.run([str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.node, *args], env=self.env,
                                capture_output=True, text=True, timeout=timeout, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {result.stderr or result.stdout}")
        return result.stdout

    def start(self, timeout: float = 120) -> None:
        (self.root / "log").mkdir(parents=True, exist_ok=True)
        subprocess.run([str(RABBITMQ_BIN / "rabbitmq-server"), "-detached"], env=self.env, check=True,
                       capture_output=True, timeout=60)
        try:
            # `wait` follows the pid file: unlike await_startup it does not give up
            # while the node is still registering with epmd.
            self.ctl("wait", str(self.root / "rabbitmq.pid"), "--timeout", str(int(timeout)), timeout=timeout + 10)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            raise RuntimeError(f"private RabbitMQ did not boot: {exc}\n{self.log_tail()}") from exc

    def stop(self) -> None:
        """Kill it: its data is thrown away with the tmp dir, so a graceful stop
        (10-20 s on a busy machine) buys nothing."""
        pid_file = self.root / "rabbitmq.pid"
        try:
            pid = int(pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        for _ in range(100):  # until it is gone, so its ports are free again
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)

    def log_tail(self, lines: int = 40) -> str:
        logs = sorted((self.root / "log").glob("*.log"))
        return "\n".join("\n".join(p.read_text(errors="replace").splitlines()[-lines:]) for p in logs)


def boot_from_deploy_files(root: Path) -> PrivateRabbitMQ:
    """Boot a node with `deploy/rabbitmq/*`, changing only what must differ on
    a shared machine: the listeners (free ports on loopback) and file paths."""
    root.mkdir(parents=True, exist_ok=True)
    node = PrivateRabbitMQ(root, f"tm_test_{uuid.uuid4().hex[:8]}@localhost", free_port(), free_port(), free_port())
    shutil.copy(DEPLOY_RABBITMQ / "enabled_plugins", root / "enabled_plugins")
    shutil.copy(DEPLOY_RABBITMQ / "definitions.json", root / "definitions.json")
    conf = []
    for line in (DEPLOY_RABBITMQ / "rabbitmq.conf").read_text().splitlines():
        key = line.split("=", 1)[0].strip()
        if key.startswith(("listeners.tcp", "management.tcp", "prometheus.tcp")):
            continue
        if key == "load_definitions":
            line = f"load_definitions = {root / 'definitions.json'}"
        conf.append(line)
    conf += [
        f"listeners.tcp.default = 127.0.0.1:{node.amqp_port}",
        "management.tcp.ip = 127.0.0.1",
        f"management.tcp.port = {node.management_port}",
        "prometheus.tcp.ip = 127.0.0.1",
        f"prometheus.tcp.port = {node.prometheus_port}",
    ]
    (root / "rabbitmq.conf").write_text("\n".join(conf) + "\n")
    node.start()
    return node
