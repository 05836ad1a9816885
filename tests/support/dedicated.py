"""A RabbitMQ node and a PostgreSQL cluster of a test's own, for fault tests
that restart them: the machine's shared broker and database keep running for
everyone else."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from shared.db.local_server import LocalPostgres
from shared.settings import PostgresSettings
from tests.support.environment import RABBITMQCTL, free_port

RABBITMQ_SERVER = shutil.which("rabbitmq-server") or "/usr/sbin/rabbitmq-server"


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("starting a dedicated RabbitMQ node needs root (the broker runs as the rabbitmq user)")


class DedicatedRabbitMQ:
    """A second RabbitMQ node on free ports, with its own data directory."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:8]
        self.node = f"tmtest{tag}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix=f"tm-rabbit-{tag}-", dir="/tmp"))

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def start(self) -> None:
        require_root()
        (self.base / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\n")
        shutil.chown(self.base, "rabbitmq", "rabbitmq")
        shutil.chown(self.base / "rabbitmq.conf", "rabbitmq", "rabbitmq")
        env = {
            **os.environ,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq.conf"),
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_PID_FILE": str(self.base / "pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
        }
        subprocess.run([RABBITMQ_SERVER, "-detached"], env=env, check=True, capture_output=True, timeout=60)
        self._await_startup()

    def stop_app(self) -> None:
        self._ctl("stop_app")

    def start_app(self) -> None:
        self._ctl("start_app")
        self._await_startup()

    def _await_startup(self) -> None:
        # Until the node has registered with epmd, rabbitmqctl cannot reach it at all.
        deadline = time.monotonic() + 120
        while True:
            try:
                self._ctl("await_startup", "--timeout", "60")
                return
            except subprocess.CalledProcessError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)

    def stop(self) -> None:
        try:
            self._ctl("stop")
        except subprocess.SubprocessError:
            pass
        shutil.rmtree(self.base, ignore_errors=True)

    def _ctl(self, *args: str) -> None:
        subprocess.run([RABBITMQCTL, "-n", self.node, *args], check=True, capture_output=True, timeout=150)


class DedicatedPostgres:
    """A PostgreSQL 16 cluster (pgserver binaries) on a free port, in a temporary directory."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="tm-pg-", dir="/tmp"))
        self.base.chmod(0o755)
        self.settings = PostgresSettings(
            POSTGRES_LOCAL_PORT=free_port(), POSTGRES_LOCAL_DATA=self.base / "cluster", POSTGRES_HOST=None
        )
        self.server = LocalPostgres(self.settings)

    @property
    def env(self) -> dict[str, str]:
        return {"POSTGRES_LOCAL_PORT": str(self.settings.local_port), "POSTGRES_LOCAL_DATA": str(self.base / "cluster")}

    def start(self) -> None:
        self.server.ensure_running()

    def stop(self, mode: str = "fast") -> None:
        self.server.stop(mode)

    def destroy(self) -> None:
        try:
            self.server.stop("immediate")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)


def wait_until(predicate, timeout: float, interval: float = 0.1) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False
