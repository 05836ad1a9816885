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
