"""The fast tier (`make test-fast`, `pytest -m fast`): tests that need no broker,
no database and no child process.

A test earns the `fast` marker by running under `isolation()`, in every run, not
only in the fast one: while it runs, starting a process or connecting to a
service port fails at once with a line that names what the test tried. So the
marker cannot silently go stale when a fast test starts to need the fleet.
In-process loopback servers (a callback receiver, a fake embeddings endpoint
on a free port) stay allowed: they are neither a service nor a child.
"""

from __future__ import annotations

import asyncio
import multiprocessing.util
import os
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

# RabbitMQ (AMQP, management), PostgreSQL (system and the project's own), Redis, MariaDB, NATS.
SERVICE_PORTS = frozenset({5671, 5672, 15672, 15692, 5432, 54329, 6379, 3306, 4222})


class NotFast(AssertionError):
    """A test marked `fast` reached for something the fast tier does not have."""


def _refuse(what: str) -> Any:
    def refused(*args: object, **kwargs: object) -> Any:
        raise NotFast(f"a test marked fast {what}; drop its `fast` marker (see tests/support/fast_tier.py)")

    return refused


@contextmanager
def isolation() -> Iterator[None]:
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def _port(address: object) -> int | None:
        return address[1] if isinstance(address, tuple) and len(address) >= 2 else None  # type: ignore[no-any-return]

    def connect(self: socket.socket, address: Any) -> Any:
        if _port(address) in SERVICE_PORTS:
            raise NotFast(f"a test marked fast connected to {address}; drop its `fast` marker")
        return real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> Any:
        if _port(address) in SERVICE_PORTS:
            raise NotFast(f"a test marked fast connected to {address}; drop its `fast` marker")
        return real_connect_ex(self, address)

    async def sock_connect(loop: asyncio.AbstractEventLoop, sock: socket.socket, address: Any) -> None:
        if _port(address) in SERVICE_PORTS:
            raise NotFast(f"a test marked fast connected to {address}; drop its `fast` marker")
        await real_sock_connect(loop, sock, address)

    real_sock_connect = asyncio.BaseEventLoop.sock_connect
    with (
        mock.patch.object(socket.socket, "connect", connect),
        mock.patch.object(socket.socket, "connect_ex", connect_ex),
        mock.patch.object(asyncio.BaseEventLoop, "sock_connect", sock_connect),
        mock.patch.object(subprocess.Popen, "__init__", _refuse("started a child process")),
        mock.patch.object(os, "fork", _refuse("forked")),
        mock.patch.object(os, "posix_spawn", _refuse("spawned a child process")),
        mock.patch.object(multiprocessing.util, "spawnv_passfds", _refuse("spawned a child process")),
    ):
        yield
