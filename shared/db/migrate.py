"""Run Alembic migrations programmatically (`taskmgr migrate`)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config

from shared.db.local_server import ensure_database
from shared.settings import PostgresSettings

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(settings: PostgresSettings, database: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # ConfigParser interpolation: a literal % in a password must be doubled.
    config.set_main_option("sqlalchemy.url", settings.sqlalchemy_url(database).replace("%", "%%"))
    return config


def upgrade(settings: PostgresSettings, database: str | None = None, revision: str = "heads") -> None:
    """Create the database if missing, then migrate it to `revision`."""
    asyncio.run(ensure_database(settings, database))
    # env.py runs its own event loop, so this must be called outside one.
    command.upgrade(alembic_config(settings, database), revision)
