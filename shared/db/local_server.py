"""The project's own PostgreSQL 16 with pgvector, for machines where no
`POSTGRES_HOST` is configured.

The binaries come from the `pgserver` wheel; we drive its `initdb` and
`pg_ctl` directly so the server listens on a TCP port of our choosing and
keeps running between commands (like any local database). PostgreSQL refuses
to run as root, so as root the cluster belongs to an unprivileged OS user, and
runs from a copy of the binaries beside its data folder: the wheel's own copy
sits inside the clone's virtual environment, which that user may not be able
to enter (a clone in root's home folder, or in a 0700 temporary folder).
Decision 0052.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.metadata
import importlib.util
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import asyncpg

from shared.settings import PostgresSettings


class LocalPostgresError(RuntimeError):
    """One line: the step that failed, the path it concerned, and the cause."""

    def __init__(self, step: str, cause: str, *, path: Path | str | None = None, hint: str = "",
                 subject: str = "local PostgreSQL") -> None:
        where = f" ({path})" if path is not None else ""
        super().__init__(f"{subject}: {step} failed{where}: {cause}" + (f"; {hint}" if hint else ""))


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
        result = self._run([self.binary("pg_ctl"), "status", "-D", str(self.data_dir)], check=False)
        return result.returncode == 0

    # --- helpers ---------------------------------------------------------------------

    def _ensure_initialised(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        root = self._settings.local_data_dir
        owner = self._os_user()
        try:
            root.mkdir(parents=True, exist_ok=True)
            if owner is not None:
                os.chown(root, owner.pw_uid, owner.pw_gid)
            root.chmod(0o700)
        except OSError as exc:
            raise LocalPostgresError("creating the data folder", exc.strerror or str(exc), path=root) from None
        self._run(
            [
                self.binary("initdb"),
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
        self._run([self.binary("pg_ctl"), *args, "-D", str(self.data_dir)])

    def _run(self, argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        owner = self._os_user()
        kwargs: dict[str, object] = {}
        if owner is not None:
            kwargs = {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}
        step = f"{Path(argv[0]).name} {argv[1]}" if len(argv) > 1 else Path(argv[0]).name
        as_user = f" as the {owner.pw_name!r} OS user" if owner is not None else ""
        try:
            result: subprocess.CompletedProcess[str] = subprocess.run(
                argv, capture_output=True, text=True, cwd="/", check=False, **kwargs  # type: ignore[call-overload]
            )
        except OSError as exc:
            raise LocalPostgresError(
                f"running {step}{as_user}", exc.strerror or str(exc), path=argv[0],
                hint="that user must be able to enter every folder on the path",
            ) from None
        if check and result.returncode != 0:
            output = " ".join((result.stderr.strip() or result.stdout.strip()).split())
            raise LocalPostgresError(
                f"{step}{as_user}", f"exit {result.returncode}: {output}", path=self.data_dir,
                hint=f"server log: {self.log_file}",
            )
        return result

    def _os_user(self) -> pwd.struct_passwd | None:
        if os.geteuid() != 0:
            return None
        return pwd.getpwnam(self._settings.local_os_user)

    def binary(self, name: str) -> str:
        """The path of one of the server binaries (initdb, pg_ctl, pg_basebackup...), runnable by the server's OS user."""
        install = _package_install()
        if self._os_user() is not None:
            install = _reachable_copy(install, self._settings.local_data_dir.parent)
        path = install / "bin" / name
        if not path.exists():
            raise LocalPostgresError("finding the server binaries", "missing from the pgserver package", path=path)
        return str(path)


def _package_install() -> Path:
    """PostgreSQL's install tree inside the pgserver wheel."""
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise LocalPostgresError("finding the server binaries", "the pgserver package is not installed",
                                 hint="run `make install`")
    return Path(spec.submodule_search_locations[0]) / "pginstall"


def _reachable_copy(install: Path, parent: Path) -> Path:
    """A copy of `install` under `parent/pgserver/`, readable by every user.

    The binaries find their shared libraries through a relative RPATH into the
    wheel's `pgserver.libs`, and PostgreSQL finds its extensions (pgvector)
    relative to itself, so the copy keeps the wheel's layout and runs as is.
    One copy per package release and build, refreshed when either changes;
    made in a temporary folder and renamed into place, so a half-made copy is
    never used."""
    site = install.parents[1]  # .../site-packages, holding pgserver/ and pgserver.libs/
    version = importlib.metadata.version("pgserver")
    build = hashlib.sha256(f"{version}:{(install / 'bin' / 'postgres').stat().st_size}".encode())
    target = parent / "pgserver" / f"{version}-{build.hexdigest()[:12]}"
    copied = target / install.relative_to(site)
    if (copied / "bin" / "pg_ctl").exists():
        return copied
    try:
        for folder in (parent, parent / "pgserver"):
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(folder.stat().st_mode | 0o755)
        staging = Path(tempfile.mkdtemp(prefix=".copy-", dir=parent / "pgserver"))
        try:
            tree = staging / "tree"
            shutil.copytree(install, tree / install.relative_to(site), symlinks=True)
            libs = site / "pgserver.libs"
            if libs.is_dir():
                shutil.copytree(libs, tree / libs.name, symlinks=True)
            _open_to_all(tree)
            try:
                tree.rename(target)
            except OSError:
                if not (copied / "bin" / "pg_ctl").exists():  # not a concurrent copy that won the race
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except OSError as exc:
        raise LocalPostgresError("copying the server binaries where the server's OS user can reach them",
                                 exc.strerror or str(exc), path=target) from None
    return copied


def _open_to_all(tree: Path) -> None:
    """Readable by all; folders and executables enterable/runnable by all."""
    for path in [tree, *tree.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        runnable = stat.S_ISDIR(mode) or mode & stat.S_IXUSR
        path.chmod(mode | 0o444 | (0o111 if runnable else 0))


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
    raise LocalPostgresError("waiting for connections", str(last), subject=f"PostgreSQL at {settings.describe()}")


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
    """asyncpg.connect()'s arguments; with several hosts, asyncpg tries them in order and
    keeps the first whose session matches target_session_attrs (the primary)."""
    addresses = settings.addresses()
    kwargs: dict[str, object] = {
        "host": addresses[0][0] if len(addresses) == 1 else [host for host, _ in addresses],
        "port": addresses[0][1] if len(addresses) == 1 else [port for _, port in addresses],
        "user": settings.user,
        "password": settings.password.get_secret_value() if settings.password else None,
        "database": database or settings.db,
        "ssl": settings.sslmode,
    }
    if attrs := settings.session_attrs():
        kwargs["target_session_attrs"] = attrs
    return kwargs


def _identifier(name: str) -> str:
    if not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"unsafe database name {name!r}")
    return name

