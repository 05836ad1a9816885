"""One robust connection per process; aio-pika restores channels, queues and
consumers after a broker restart. With several nodes in AMQP_URL (a cluster),
the first node that answers is used, and each reconnect attempt moves to the
next node, so a dead node is left for a live one."""

from __future__ import annotations

import os
import socket
from typing import Any

from aio_pika import RobustConnection
from aio_pika.abc import AbstractRobustConnection
from aio_pika.exceptions import AMQPConnectionError
from loguru import logger
from yarl import URL

from shared.settings import AmqpSettings


class ClusterConnection(RobustConnection):
    """A RobustConnection that reconnects to the next node of a cluster.

    aio-pika starts every (re)connection attempt by clearing `transport` and then
    connects to `self.url`: that is where the next node is chosen."""

    def __init__(self, url: URL, *args: Any, nodes: tuple[URL, ...] = (), **kwargs: Any) -> None:
        self._nodes = nodes or (URL(url),)
        self._node = self._nodes.index(URL(url)) if URL(url) in self._nodes else 0
        self._attempts = 0
        super().__init__(url, *args, **kwargs)

    @property
    def transport(self) -> Any:
        return self.__dict__.get("_transport")

    @transport.setter
    def transport(self, value: Any) -> None:
        attempt = value is None and "_transport" in self.__dict__  # not __init__'s assignment
        if attempt and not (self._close_in_progress or self.is_closed) and len(self._nodes) > 1:
            self._attempts += 1
            if self._attempts > 1:  # not the first attempt: the current node failed or was lost
                self._node = (self._node + 1) % len(self._nodes)
                self.url = self._nodes[self._node]
                logger.info("RabbitMQ: connecting to node {} of {}", self._node + 1, len(self._nodes))
        self.__dict__["_transport"] = value


async def connect(settings: AmqpSettings, *, name: str) -> AbstractRobustConnection:
    """Connect with a name operators see in the management UI (`api@host:pid`),
    to the first node of AMQP_URL that answers."""
    connection_name = f"{name}@{socket.gethostname()}:{os.getpid()}"
    nodes = tuple(URL(url) for url in settings.node_urls())
    failure: Exception | None = None
    for node in nodes:
        connection = ClusterConnection(node, client_properties={"connection_name": connection_name},
                                       reconnect_interval=1.0, nodes=nodes)
        try:
            await connection.connect()
            return connection
        except (AMQPConnectionError, ConnectionError, OSError) as exc:
            failure = exc
            await connection.close()
            if len(nodes) > 1:
                logger.warning("RabbitMQ node {} of {} unreachable ({}); trying the next",
                               nodes.index(node) + 1, len(nodes), type(exc).__name__)
    assert failure is not None
    raise failure
