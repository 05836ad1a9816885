"""Connecting to the writable server among those POSTGRES_HOST lists, one server at a time.

asyncpg accepts the list itself, but its `timeout` covers the whole attempt: a primary whose
machine is gone (packets dropped, not refused) would use it all before the standby is even
tried, and every new connection would fail. Here each server gets POSTGRES_CONNECT_TIMEOUT of
its own, and the server that accepted last is tried first, so after a failover only the first
connection pays for the dead one. Decision 0195.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from shared.settings import PostgresSettings


class WritableServer:
    """`connect(**asyncpg_kwargs)`: a connection to the first server, from the last one that
    accepted, whose session matches target_session_attrs (read-write: the primary)."""

    def __init__(self, settings: PostgresSettings) -> None:
        self._addresses = settings.addresses()
        self._timeout = settings.connect_timeout
        self._first = 0

    async def connect(self, dsn: str | None = None, **kwargs: Any) -> asyncpg.Connection:
        """asyncpg.connect()'s signature, so asyncpg's pool can call it (`dsn` is always None here)."""
        assert dsn is None, "the servers come from settings, not a DSN"
        for key in ("host", "port", "timeout"):  # the list is ours to walk
            kwargs.pop(key, None)
        errors: list[Exception] = []
        count = len(self._addresses)
        for step in range(count):
            index = (self._first + step) % count
            host, port = self._addresses[index]
            try:
                connection: asyncpg.Connection = await asyncpg.connect(
                    host=host, port=port, timeout=self._timeout, **kwargs)
            except Exception as exc:  # noqa: BLE001 - any failure moves on to the next server, as libpq does
                errors.append(exc)
                continue
            self._first = index
            return connection
        # Say why a server could not be reached rather than that a standby was read-only.
        raise next((e for e in errors if not isinstance(e, asyncpg.exceptions.TargetServerAttributeNotMatched)),
                   errors[-1])
