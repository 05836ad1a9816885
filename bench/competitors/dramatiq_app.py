"""Dramatiq as its users run it: RabbitMQ broker with its defaults (no
publisher confirms), the worker command's default 8 threads per process,
2 processes. Dramatiq keeps no results, so the no-op actor appends one byte
to a file: the harness counts completions by the file's size (one write
system call per task, a few microseconds)."""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker

broker = RabbitmqBroker(url=os.environ["BENCH_BROKER_URL"])
dramatiq.set_broker(broker)
COUNTER = os.environ["BENCH_LOG_DIR"] + "/dramatiq.completed"
_fd: int | None = None


@dramatiq.actor(queue_name="bench_noop", max_retries=0)
def noop() -> None:
    global _fd
    if _fd is None:
        _fd = os.open(COUNTER, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(_fd, b".")
