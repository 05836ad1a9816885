"""docker-compose.yml starts, as a new user would start it (`docker compose up`
with no .env): every taskmgr service's own command with its own environment,
one-offs first (migrate, topology, bootstrap), then every long-running process
until its /health/ready answers 200, then a task through the whole stack with
the API key the bootstrap generated.

No Docker engine here, so the services run on the host (tests/support/compose.py);
what a container has of its own is mapped: the `rabbitmq` service is a node
booted from deploy/rabbitmq/* (its users and passwords are the ones compose
uses), `postgres` is a fresh database on the local PostgreSQL, named volumes are
folders, and each process gets its own ports on loopback.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from shared.db.local_server import LocalPostgres, drop_database, wait_until_accepting
from shared.settings import PostgresSettings
from tests.support import compose
from tests.support.api import ApiClient
from tests.support.environment import free_port
from tests.support.fleet import Process, wait_ready
from tests.support.keys import bearer
from tests.support.private_rabbitmq import PrivateRabbitMQ, available, boot_from_deploy_files

pytestmark = pytest.mark.skipif(not available(), reason="RabbitMQ server binaries not installed")

VENV_BIN = Path(sys.executable).parent


@dataclass
class Host:
    """What the compose services' containers would have had: the other services' addresses and volumes."""

    root: Path
    rabbitmq: PrivateRabbitMQ
    postgres: PostgresSettings
    database: str
    processes: list[Process] = field(default_factory=list)

    def environment(self, service: compose.Service) -> tuple[dict[str, str], int]:
        env = dict(service.environment)
        for key, value in env.items():
            value = value.replace("@rabbitmq:5672/", f"@127.0.0.1:{self.rabbitmq.amqp_port}/")
            value = value.replace("@rabbitmq:15672", f"@127.0.0.1:{self.rabbitmq.management_port}")
            for volume, target in service.volume_targets().items():
                value = value.replace(target, str(self.root / "volumes" / volume))
            env[key] = value
        assert env["POSTGRES_HOST"] == "postgres", "the compose postgres service"
        port = free_port()  # a container's own network namespace: PORT (api) and METRICS_PORT
        env.update(
            POSTGRES_HOST=self.postgres.effective_host, POSTGRES_PORT=str(self.postgres.effective_port),
            POSTGRES_DB=self.database, POSTGRES_USER=self.postgres.user,
            BIND_HOST="127.0.0.1", PORT=str(port), METRICS_PORT=str(port),
        )
        # Nothing from the developer's shell: only the image's PATH and a HOME.
        env.update(PATH=f"{VENV_BIN}:/usr/bin:/bin", HOME=str(self.root / "home"), PYTHONUNBUFFERED="1",
                   PYTHONPATH=str(compose.ROOT))
        return env, port

    def argv(self, service: compose.Service) -> list[str]:
        argv = list(service.command)
        for volume, target in service.volume_targets().items():
            argv = [a.replace(target, str(self.root / "volumes" / volume)) for a in argv]
        return [str(VENV_BIN / argv[0]) if argv[0] in ("python", "taskmgr") else argv[0], *argv[1:]]

    def run_one_off(self, service: compose.Service) -> str:
        env, _ = self.environment(service)
        done = subprocess.run(self.argv(service), env=env, cwd=self.root / "home", capture_output=True,
                              text=True, timeout=300, check=False)
        assert done.returncode == 0, f"{service.name} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def start(self, service: compose.Service) -> Process:
        env, port = self.environment(service)
        process = Process(service.name, self.argv(service), env, self.root / "logs" / f"{service.name}.log",
                          f"http://127.0.0.1:{port}/health/ready")
        self.processes.append(process)
        process.start()
        return process

    def stop(self) -> None:
        for process in self.processes:
            process.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.log_tail()}" for p in self.processes)


@pytest.fixture(scope="module")
def rabbitmq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRabbitMQ]:
    node = boot_from_deploy_files(tmp_path_factory.mktemp("compose-rabbitmq"))
    try:
        yield node
    finally:
        node.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def host(rabbitmq: PrivateRabbitMQ, tmp_path: Path) -> AsyncIterator[Host]:
    postgres = PostgresSettings()
    if postgres.uses_local_server:
        LocalPostgres(postgres).ensure_running()
    await wait_until_accepting(postgres)
    for folder in ("home", "logs", "volumes"):
        (tmp_path / folder).mkdir()
    host = Host(tmp_path, rabbitmq, postgres, f"tm_compose_{uuid.uuid4().hex[:8]}")
    try:
        yield host
    finally:
        host.stop()
        await drop_database(postgres, host.database)


async def test_every_compose_service_starts_with_its_own_environment_and_runs_a_task(host: Host) -> None:
    services = compose.load()  # no variables set: every ${VAR:-default} takes its default
    long_running = []
    outputs = {}
    for service in compose.start_order(services):
        if service.one_off:
            outputs[service.name] = await asyncio.to_thread(host.run_one_off, service)
        else:
            long_running.append(host.start(service))
    assert {"migrate", "topology", "bootstrap"} <= set(outputs), "the one-offs every process waits for"
    try:
        await asyncio.gather(*(wait_ready(p, timeout=240) for p in long_running))
    except (TimeoutError, RuntimeError):
        print(host.logs())
        raise
    assert {p.name for p in long_running} == set(services) - set(outputs)

    secrets = host.root / "volumes" / "secrets"
    key = (secrets / "api-key").read_text().strip()
    assert (secrets / "callback-secret").read_text().startswith("whsec_")
    assert oct((secrets / "api-key").stat().st_mode & 0o777) == "0o600"
    assert key not in outputs["bootstrap"], "the key is written to a file, never printed"

    [api_process] = [p for p in long_running if p.name == "api"]
    assert api_process.ready_url is not None
    base = api_process.ready_url.removesuffix("/health/ready")
    async with aiohttp.ClientSession(headers=bearer(key)) as session:
        api = ApiClient(base, session)
        status, _ = await api.call("GET", "/api/v1/tasks", headers={"Authorization": "Bearer tmk_wrong"})
        assert status == 401, "production requires a key"
        # Production: no demonstration types (decision 0080); `gather` is a real type that runs on `default`.
        task = await api.submit({"task_type": "gather", "payload": {"label": "hello"}})
        done = await api.wait_for(task["task_id"], timeout=120)
        assert done["status"] == "completed", (done, host.logs())
        # The api's own RabbitMQ user reads the management API (tag `management`).
        status, stats = await api.call("GET", "/api/v1/stats/queues")
    assert status == 200 and stats["source"] == "management", stats

    # Running the bootstrap again (every `docker compose up`) keeps what exists.
    again = await asyncio.to_thread(host.run_one_off, services["bootstrap"])
    assert "kept" in again and "an active key exists" in again, again
    assert (secrets / "api-key").read_text().strip() == key
