"""What a failed database call raises when the database, not the request, is at fault.

Callers catch `DB_ERRORS` to retry (the dispatcher's writes and callback claims) or to
answer 503 (admission): a refused connection, a dropped one, a server-side error, or
no primary among POSTGRES_HOST's servers (a failover under way, decision 0195).
"""

from __future__ import annotations

import asyncpg
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

DB_ERRORS: tuple[type[Exception], ...] = (
    DBAPIError,
    InterfaceError,
    OperationalError,
    asyncpg.PostgresError,  # the paths on asyncpg directly (shared/db/pool.py)
    asyncpg.InterfaceError,
    # Several hosts and none accepts writes: between a primary's loss and a standby's promotion.
    asyncpg.exceptions.TargetServerAttributeNotMatched,
    OSError,
    ConnectionError,
)

# The driver's errors that say the server (or the way to it) is gone, not that the
# statement was wrong: a lost connection, a server shutting down or in recovery.
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.TargetServerAttributeNotMatched,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # admin/crash shutdown, cannot connect now
    asyncpg.exceptions.ReadOnlySQLTransactionError,  # a standby, or a demoted primary
)


def database_unavailable(exc: BaseException) -> bool:
    """True when `exc` says the database cannot be reached (a 503 to any request,
    e.g. during a failover), False for an error the statement itself caused (a bug: 500)."""
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated or isinstance(exc, InterfaceError | OperationalError):
            return True
        orig: BaseException | None = exc.orig
        exc = (orig.__cause__ or orig) if orig is not None else exc
    return isinstance(exc, _CONNECTION_ERRORS)
