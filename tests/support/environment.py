"""An isolated place for one test run: its own RabbitMQ vhost and its own
PostgreSQL database (migrated), torn down afterwards."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from dataclasses import dataclass, field

from shared.db.local_server import LocalPostgres, drop_database, wait_until_accepting
from shared.db.migrate import upgrade
from shared.settings import AmqpSettings, PostgresSettings

RABBITMQCTL = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class TestEnvironment:
    __test__ = False

    name: str
    vhost: str
    database: str
    amqp_url: str
    postgres: PostgresSettings
    env: dict[str, str] = field(default_factory=dict)

    def with_env(self, **overrides: str) -> dict[str, str]:
        return {**self.env, **overrides}


def _rabbitmqctl(*args: str) -> None:
    subprocess.run([RABBITMQCTL, *args], check=True, capture_output=True, timeout=60)


def _base_amqp_url() -> str:
    return AmqpSettings().url.get_secret_value().rstrip("/")


async def create_environment(
    prefix: str = "t", *, amqp_url: str | None = None, postgres: PostgresSettings | None = None,
    extra_env: dict[str, str] | None = None,
) -> TestEnvironment:
    """A vhost on the shared broker (or `amqp_url`: a dedicated broker, used whole)
    and a migrated database on the local PostgreSQL (or `postgres`)."""
    name = f"tm_{prefix}_{uuid.uuid4().hex[:8]}"
    vhost = ""
    if amqp_url is None:
        vhost = name
        _rabbitmqctl("add_vhost", name)
        _rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        base = _base_amqp_url()
        # The base URL ends with the default vhost "/" (or none): replace it with ours.
        root = base[: base.rfind("/")] if base.count("/") > 2 else base
        amqp_url = f"{root}/{name}"

    postgres = postgres or PostgresSettings()
    if postgres.uses_local_server:
        LocalPostgres(postgres).ensure_running()
    await wait_until_accepting(postgres)
    postgres = postgres.model_copy(update={"db": name})
    import asyncio

    await asyncio.to_thread(upgrade, postgres)
    env = {
        **os.environ,
        "AMQP_URL": amqp_url,
        "POSTGRES_DB": name,
        "LOG_LEVEL": os.environ.get("TEST_LOG_LEVEL", "info"),
        "ENVIRONMENT": "development",
        "SHUTDOWN_GRACE_SECONDS": "10",
        "CALLBACK_BACKOFF_BASE": "0.2",
        "CALLBACK_BACKOFF_MAX": "2",
        "CALLBACK_TIMEOUT": "5",
        "WORKER_HEARTBEAT_INTERVAL": "1",
        "PYTHONUNBUFFERED": "1",
        "POSTGRES_LOCAL_PORT": str(postgres.local_port),
        "POSTGRES_LOCAL_DATA": str(postgres.local_data_dir),
        **(extra_env or {}),
    }
    return TestEnvironment(name=name, vhost=vhost, database=name, amqp_url=amqp_url, postgres=postgres, env=env)


async def destroy_environment(environment: TestEnvironment) -> None:
    try:
        if environment.vhost:
            _rabbitmqctl("delete_vhost", environment.vhost)
    finally:
        try:
            await drop_database(environment.postgres, environment.database)
        except OSError:
            pass  # a dedicated server may be gone already
