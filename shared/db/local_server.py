"""The project's own PostgreSQL 16 with pgvector, for machines where no
`POSTGRES_HOST` is configured.

The binaries come from the `pgserver` wheel; we drive its `initdb` and
`pg_ctl` directly so the server listens on a TCP port of our choosing and
keeps running between commands (like any local database). PostgreSQL refuses
to run as root, so as root the cluster belongs to an unprivileged OS user.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import pwd
import subprocess
import time
from pathlib import Path

import asyncpg

from shared.settings import PostgresSettings


class LocalPostgresError(RuntimeError):
    pass


class LocalPostgres:
    def __init__(self, settings: PostgresSettings) -> None:
        self._settings = settings
        self.data_dir = settings.local_data_dir / "data"
        self.log_file = settings.local_data_dir / "postgres.log"
        self.port = settings.local_port

    # --- lifecycle ----------------------------------------------------------------

    def ensure_running(self) -> bool:
        """Initialise and start the cluster if needed. Answers True when this call started it."""
        if self.is_running():
            return False
        self._ensure_initialised()
        self._pg_ctl(
            "start",
            "-w",
            "-t",
            "30",
            "-l",
            str(self.log_file),
            "-o",
            " ".join(
                [
                    f"-p {self.port}",
                    "-c listen_addresses=127.0.0.1",
                    f"-k {self._settings.local_data_dir}",
                    "-c max_connections=300",
                    "-c shared_buffers=256MB",
                ]
            ),
        )
        return True

    def stop(self, mode: str = "fast") -> None:
        if self.is_running():
            self._pg_ctl("stop", "-w", "-m", mode)

    def restart(self) -> None:
        self.stop()
        self.ensure_running()

    def is_running(self) -> bool:
        if not (self.data_dir / "PG_VERSION").exists():
            return False
        result = self._run([self._bin("pg_ctl"), "status", "-D", str(self.data_dir)], check=False)
        return result.returncode == 0

    # --- helpers ---------------------------------------------------------------------

    def _ensure_initialised(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        root = self._settings.local_data_dir
        root.mkdir(parents=True, exist_ok=True)
        owner = self._os_user()
        if owner is not None:
            os.chown(root, owner.pw_uid, owner.pw_gid)
        root.chmod(0o700)
        self._run(
            [
                self._bin("initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
            ]
        )

    def _pg_ctl(self, *args: str) -> None:
        self._run([self._bin("pg_ctl"), *args, "-D", str(self.data_dir)])

    def _run(self, argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        owner = self._os_user()
        kwargs: dict[str, object] = {}
        if owner is not None:
            kwargs = {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}
        result: subprocess.CompletedProcess[str] = subprocess.run(
            argv, capture_output=True, text=True, cwd="/", check=False, **kwargs  # type: ignore[call-overload]
        )
        if check and result.returncode != 0:
            raise LocalPostgresError(
                f"{Path(argv[0]).name} failed ({result.returncode}): {result.stderr.strip() or result.stdout.strip()}"
                f"\nlog: {self.log_file}"
            )
        return result

    def _os_user(self) -> pwd.struct_passwd | None:
        if os.geteuid() != 0:
            return None
        return pwd.getpwnam(self._settings.local_os_user)

    @staticmethod
    def _bin(name: str) -> str:
        spec = importlib.util.find_spec("pgserver")
        if spec is None or not spec.submodule_search_locations:
            raise LocalPostgresError("the pgserver package is not installed (pip install pgserver)")
        path = Path(spec.submodule_search_locations[0]) / "pginstall" / "bin" / name
        if not path.exists():
            raise LocalPostgresError(f"{path} is missing from the pgserver package")
        return str(path)


async def wait_until_accepting(settings: PostgresSettings, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            conn = await asyncpg.connect(**connect_kwargs(settings, "postgres"), timeout=2)
            await conn.close()
            return
        except (OSError, asyncpg.PostgresError) as exc:
            last = exc
            await asyncio.sleep(0.2)
    raise LocalPostgresError(f"PostgreSQL at {settings.describe()} is not accepting connections: {last}")


async def ensure_database(settings: PostgresSettings, database: str | None = None) -> bool:
    """Create the database if missing. Answers True when it was created."""
    name = database or settings.db
    conn = await asyncpg.connect(**connect_kwargs(settings, "postgres"), timeout=5)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if exists:
            return False
        try:
            await conn.execute(f'CREATE DATABASE "{_identifier(name)}"')
        except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
            return False  # another replica created it meanwhile
        return True
    finally:
        await conn.close()


async def drop_database(settings: PostgresSettings, database: str) -> None:
    conn = await asyncpg.connect(**connect_kwargs(settings, "postgres"), timeout=5)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{_identifier(database)}" WITH (FORCE)')
    finally:
        await conn.close()


def connect_kwargs(settings: PostgresSettings, database: str | None = None) -> dict[str, object]:
    return {
        "host": settings.effective_host,
        "port": settings.effective_port,
        "user": settings.user,
        "password": settings.password.get_secret_value() if settings.password else None,
        "database": database or settings.db,
        "ssl": settings.sslmode,
    }


def _identifier(name: str) -> str:
    if not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"unsafe database name {name!r}")
    return name

