"""A PostgreSQL primary and a streaming-replication standby on loopback, for failover tests.

The same PostgreSQL 16 binaries the project runs (the pgserver wheel, through the copy
shared/db/local_server.py makes for the server's OS user), but their own data folders and
ports under a temporary folder of their own, removed afterwards: the shared server on
54329 and its data are never touched. Replication is synchronous (`synchronous_commit=on`
with the standby named in `synchronous_standby_names`), so a COMMIT returns only once the
standby has the transaction: what the api answered 201 for survives the primary's loss.
Only the primary is told about the synchronous standby, so the standby, once promoted,
commits alone instead of waiting for a standby it does not have.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from shared.db.local_server import LocalPostgres
from shared.settings import PostgresSettings
from tests.support.environment import free_port

STANDBY_NAME = "standby1"
# Small and quick: fsync is off because the test kills processes, not machines
# (the page cache survives), and a standby counts a transaction once it has written it.
SERVER_OPTIONS = ["-c listen_addresses=127.0.0.1", "-c shared_buffers=32MB", "-c max_connections=100",
                  "-c fsync=off"]


@dataclass
class PostgresPair:
    root: Path
    ports: tuple[int, int] = field(default_factory=lambda: (free_port(), free_port()))
    names: tuple[str, str] = ("primary", "standby")

    def settings(self) -> PostgresSettings:
        return PostgresSettings(POSTGRES_HOST=self.host_list(), POSTGRES_USER="postgres")

    def host_list(self) -> str:
        """POSTGRES_HOST for the pair: the primary first, the standby second."""
        return ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def data_dir(self, index: int) -> Path:
        return self.root / self.names[index]

    def log_path(self, index: int) -> Path:
        return self.root / f"{self.names[index]}.log"

    # --- lifecycle ------------------------------------------------------------------

    def start_primary(self) -> None:
        _run([_binary("initdb"), "-D", str(self.data_dir(0)), "-U", "postgres", "--auth=trust",
              "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync"])
        self._start(0, f"-c synchronous_standby_names={STANDBY_NAME}", "-c synchronous_commit=on")

    def start_standby(self) -> None:
        # -R writes standby.signal and primary_conninfo; the name in that conninfo is what
        # synchronous_standby_names matches.
        _run([_binary("pg_basebackup"), "-D", str(self.data_dir(1)), "-R", "-X", "stream", "-c", "fast",
              "-d", f"host=127.0.0.1 port={self.ports[0]} user=postgres application_name={STANDBY_NAME}"])
        self._start(1)

    def _start(self, index: int, *options: str) -> None:
        argv = " ".join([f"-p {self.ports[index]}", f"-k {self.root}", *SERVER_OPTIONS, *options])
        _run([_binary("pg_ctl"), "start", "-w", "-t", "30", "-D", str(self.data_dir(index)),
              "-l", str(self.log_path(index)), "-o", argv])

    async def wait_synchronous(self, timeout: float = 30) -> None:
        """Until the primary counts the standby as its synchronous one."""
        deadline = time.monotonic() + timeout
        conn = await asyncpg.connect(host="127.0.0.1", port=self.ports[0], user="postgres", database="postgres")
        try:
            while True:
                state = await conn.fetchval(
                    "SELECT sync_state FROM pg_stat_replication WHERE application_name = $1", STANDBY_NAME)
                if state == "sync":
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the standby is not synchronous ({state}):\n{self.log_tail(1)}")
                await asyncio.sleep(0.1)
        finally:
            await conn.close()

    def kill(self, index: int) -> None:
        """kill -9 the server and its backends, as if its machine had gone."""
        postmaster = self._postmaster_pid(index)
        if postmaster is None:
            return
        for pid in [postmaster, *_children(postmaster)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    @contextlib.contextmanager
    def replication_paused(self) -> Iterator[None]:
        """The standby's WAL receiver stopped (SIGSTOP) inside the block, resumed after it."""
        standby = self._postmaster_pid(1)
        assert standby is not None, "the standby is not running"
        receivers = [pid for pid in _children(standby) if b"walreceiver" in _cmdline(pid)]
        assert receivers, "the standby has no WAL receiver"
        os.kill(receivers[0], signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(receivers[0], signal.SIGCONT)

    def promote(self, index: int) -> None:
        _run([_binary("pg_ctl"), "promote", "-w", "-t", "30", "-D", str(self.data_dir(index))])

    def stop(self) -> None:
        """Stop whatever still runs and remove the folder."""
        for index in (0, 1):
            postmaster = self._postmaster_pid(index)
            if postmaster is not None and _alive(postmaster):
                _run([_binary("pg_ctl"), "stop", "-m", "immediate", "-w", "-D", str(self.data_dir(index))],
                     check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, index: int, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path(index).read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def _postmaster_pid(self, index: int) -> int | None:
        try:
            return int((self.data_dir(index) / "postmaster.pid").read_text().split()[0])
        except (FileNotFoundError, IndexError, ValueError):
            return None


def start_pair() -> PostgresPair:
    """A primary with its synchronous standby, both running; stop() removes them."""
    # Not pytest's tmp_path: that is root's 0700 folder, which the server's OS user cannot enter.
    root = Path(tempfile.mkdtemp(prefix="tm-pg-pair-"))
    owner = _os_user()
    if owner is not None:
        os.chown(root, owner.pw_uid, owner.pw_gid)
    pair = PostgresPair(root)
    try:
        pair.start_primary()
        pair.start_standby()
    except BaseException:
        pair.stop()
        raise
    return pair


def _binary(name: str) -> str:
    # The default settings' binaries: as root, the copy beside the shared server's data,
    # which is only read here.
    return LocalPostgres(PostgresSettings()).binary(name)


def _os_user() -> pwd.struct_passwd | None:
    return pwd.getpwnam(PostgresSettings().local_os_user) if os.geteuid() == 0 else None


def _run(argv: list[str], *, check: bool = True) -> None:
    owner = _os_user()
    kwargs: dict[str, object] = {}
    if owner is not None:
        kwargs = {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}
    result = subprocess.run(argv, capture_output=True, text=True, cwd="/", check=False, timeout=60,
                            **kwargs)  # type: ignore[call-overload]
    if check and result.returncode != 0:
        raise RuntimeError(f"{Path(argv[0]).name} {argv[1]} failed ({result.returncode}): "
                           f"{result.stderr.strip() or result.stdout.strip()}")


def _children(parent: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so read after its closing parenthesis.
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
            pids.append(int(entry.name))
    return pids


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _alive(pid: int) -> bool:
    """Running, not a zombie (a killed postmaster stays one when nobody reaps it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
