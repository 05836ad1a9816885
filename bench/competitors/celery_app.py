"""Celery as its users run it for this comparison: RabbitMQ broker, its
PostgreSQL result backend (SQLAlchemy), acks_late, a prefork pool of 2
processes (the worker command sets the pool). Everything else is Celery's
default, including no publisher confirms. Configured from the environment
because the `celery worker` command imports this module itself.
"""

from __future__ import annotations

import os

from celery import Celery

app = Celery(
    "bench",
    broker=os.environ["BENCH_BROKER_URL"],
    backend="db+" + os.environ["BENCH_DATABASE_URL"].replace("postgresql://", "postgresql+psycopg2://", 1),
)
app.conf.update(
    task_acks_late=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="bench.noop")
def noop() -> None:
    return None
