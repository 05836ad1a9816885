"""What a failed database call raises when the database, not the request, is at fault.

Callers catch `DB_ERRORS` to retry (the dispatcher's writes and callback claims) or to
answer 503 (admission): a refused connection, a dropped one, or a server-side error.
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
    OSError,
    ConnectionError,
)
