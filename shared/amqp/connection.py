"""One robust connection per process; aio-pika restores channels, queues and
consumers after a broker restart."""

from __future__ import annotations

import socket

import aio_pika
from aio_pika.abc import AbstractRobustConnection

from shared.settings import AmqpSettings


async def connect(settings: AmqpSettings, *, name: str) -> AbstractRobustConnection:
    """Connect with a name operators see in the management UI (`api@host:pid`)."""
    import os

    connection_name = f"{name}@{socket.gethostname()}:{os.getpid()}"
    connection = await aio_pika.connect_robust(
        settings.connection_url(),
        client_properties={"connection_name": connection_name},
        reconnect_interval=1.0,
    )
    return connection
