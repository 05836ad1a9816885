"""An isolated place for one benchmark run: its own RabbitMQ vhost and its
own PostgreSQL database (migrated), removed afterwards. The same recipe as
the test suite's, with a `tm_bench_` prefix so an operator can tell them apart."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass

from loguru import logger

from shared.db.local_server import LocalPostgres, drop_database, wait_until_accepting
from shared.db.migrate import upgrade
from shared.settings import AmqpSettings, PostgresSettings

RABBITMQCTL = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"


@dataclass(frozen=True)
class BenchEnvironment:
    name: str
    amqp_url: str
    postgres: PostgresSettings  # `db` is this run's database

    @property
    def vhost(self) -> str:
        return self.name

    def process_env(self, **overrides: str) -> dict[str, str]:
        """The environment of a fleet process: the product's defaults, our vhost and database."""
        return {
            **os.environ,
            "AMQP_URL": self.amqp_url,
            "POSTGRES_DB": self.postgres.db,
            "ENVIRONMENT": "development",  # loopback only; logging as in development
            "PYTHONUNBUFFERED": "1",
            # One tenant submitting 10,000 tasks in seconds is exactly what the
            # rate limits exist to refuse; the bench measures the fleet behind them.
            "RATE_LIMIT_PER_SECOND": "0",
            "KB_RATE_LIMIT_PER_SECOND": "0",
            **overrides,
        }

    def dsn(self, driver: str = "postgresql") -> str:
        """A libpq-style URL of this run's database (`postgresql+psycopg2` for Celery)."""
        pg = self.postgres
        password = f":{pg.password.get_secret_value()}" if pg.password else ""
        return f"{driver}://{pg.user}{password}@{pg.effective_host}:{pg.effective_port}/{pg.db}"


def _rabbitmqctl(*args: str) -> None:
    run = subprocess.run([RABBITMQCTL, *args], capture_output=True, text=True, timeout=60, check=False)
    if run.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed ({run.returncode}): "
                           f"{(run.stderr or run.stdout).strip()[:300]}")


async def create_environment() -> BenchEnvironment:
    name = f"tm_bench_{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(_rabbitmqctl, "add_vhost", name)
    await asyncio.to_thread(_rabbitmqctl, "set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    base = AmqpSettings().url.get_secret_value().rstrip("/")
    root = base[: base.rfind("/")] if base.count("/") > 2 else base
    postgres = PostgresSettings()
    if postgres.uses_local_server:
        await asyncio.to_thread(LocalPostgres(postgres).ensure_running)
    await wait_until_accepting(postgres)
    postgres = postgres.model_copy(update={"db": name})
    await asyncio.to_thread(upgrade, postgres)
    return BenchEnvironment(name=name, amqp_url=f"{root}/{name}", postgres=postgres)


async def destroy_environment(environment: BenchEnvironment) -> None:
    """Remove both; a part already gone is fine, and neither hides the other."""
    try:
        await asyncio.to_thread(_rabbitmqctl, "delete_vhost", environment.vhost)
    except RuntimeError as exc:
        if "does not exist" not in str(exc) and "no_such_vhost" not in str(exc):
            logger.warning("could not delete vhost {}: {}", environment.vhost, exc)
    try:
        await drop_database(environment.postgres, environment.postgres.db)
    except Exception as exc:  # noqa: BLE001 - reported, the results matter more
        logger.warning("could not drop database {}: {}", environment.postgres.db, exc)
