"""The project's own PostgreSQL starts wherever the clone sits (issue 20).

As root, the server runs as the `postgres` OS user, which may not be able to
enter the clone (root's home folder and every `mktemp -d` folder are 0700). The
server therefore runs from a copy of the wheel's binaries beside its data
folder; these tests put the wheel itself in a 0700 folder and start a real
server, and check that a failure names the step, the path and the cause."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.db import local_server
from shared.db.local_server import LocalPostgres, LocalPostgresError
from shared.settings import PostgresSettings
from tests.support.environment import free_port

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="only root runs the server as another OS user")


@pytest.fixture
def private_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pgserver package and its libraries, copied into a folder only root can enter."""
    locked = tmp_path_factory.mktemp("locked")
    locked.chmod(0o700)
    site = local_server._package_install().parents[1]
    shutil.copytree(site / "pgserver", locked / "site" / "pgserver", symlinks=True)
    shutil.copytree(site / "pgserver.libs", locked / "site" / "pgserver.libs", symlinks=True)
    return locked / "site" / "pgserver" / "pginstall"


@pytest.fixture
def server_home() -> Iterator[Path]:
    """Where the data folder goes: reachable by the postgres user, as /var/lib/taskmgr is
    (pytest's own temporary root is 0700, so not under it)."""
    home = Path(tempfile.mkdtemp(prefix="tm-pg-home-", dir="/tmp"))
    home.chmod(0o755)
    yield home
    shutil.rmtree(home, ignore_errors=True)


def _settings(data: Path) -> PostgresSettings:
    return PostgresSettings(POSTGRES_HOST=None, POSTGRES_LOCAL_PORT=free_port(), POSTGRES_LOCAL_DATA=data)


def test_the_server_starts_although_the_wheel_sits_in_a_0700_folder(
    private_wheel: Path, server_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_server, "_package_install", lambda: private_wheel)
    # The wheel's own binaries really are out of the postgres user's reach.
    probe = subprocess.run(["runuser", "-u", "postgres", "--", str(private_wheel / "bin" / "pg_ctl"), "--version"],
                           check=False, capture_output=True, text=True)
    assert probe.returncode != 0 and "Permission denied" in probe.stderr
    server = LocalPostgres(_settings(server_home / "cluster"))
    try:
        assert server.ensure_running() is True
        assert server.is_running()
        ps = ["ps", "-ww", "-o", "user=,args=", "-C", "postgres"]
        running = subprocess.run(ps, check=False, capture_output=True, text=True).stdout
        mine = [line for line in running.splitlines() if str(server.data_dir) in line]
        assert mine and mine[0].startswith("postgres ") and str(server_home / "pgserver") in mine[0]
        # A second start finds the copy in place and the server running.
        assert server.ensure_running() is False
    finally:
        server.stop("immediate")


def test_a_data_folder_the_server_user_cannot_reach_fails_in_one_line_naming_step_path_and_cause(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    locked = tmp_path_factory.mktemp("locked-data")
    locked.chmod(0o700)
    server = LocalPostgres(_settings(locked / "state" / "cluster"))
    with pytest.raises(LocalPostgresError) as raised:
        server.ensure_running()
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("local PostgreSQL: ") and "as the 'postgres' OS user" in message
    assert str(locked) in message and ("Permission denied" in message or "permission" in message.lower())


def test_migrate_reports_the_database_step_and_never_the_api(tmp_path_factory: pytest.TempPathFactory) -> None:
    locked = tmp_path_factory.mktemp("locked-cli")
    locked.chmod(0o700)
    env = {**os.environ, "POSTGRES_LOCAL_DATA": str(locked / "state" / "cluster"),
           "POSTGRES_LOCAL_PORT": str(free_port())}
    env.pop("POSTGRES_HOST", None)
    result = subprocess.run([sys.executable, "-m", "services.cli.main", "migrate"], env=env,
                            check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("taskmgr")]
    assert len(lines) == 1, result.stderr
    assert "local PostgreSQL" in lines[0] and "api" not in lines[0], lines[0]
