"""`taskmgr bootstrap` (the compose one-off; the full first start is in
tests/test_compose_start.py): an operator-chosen first key, and refusals that
name what is wrong instead of overwriting anything."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

from shared.db.engine import create_engine
from shared.security.api_key_store import ApiKeyStore
from shared.security.api_keys import Scope, generate_key
from tests.support.environment import TestEnvironment, create_environment, destroy_environment

TASKMGR = str(Path(sys.executable).parent / "taskmgr")


@pytest_asyncio.fixture(loop_scope="session")
async def fresh() -> AsyncIterator[TestEnvironment]:
    """A database with no API key at all (the shared test database has some)."""
    environment = await create_environment("boot")
    try:
        yield environment
    finally:
        await destroy_environment(environment)


def _bootstrap(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TASKMGR, "bootstrap", *args], env=env, capture_output=True, text=True, timeout=120,
                          check=False)


async def test_a_chosen_first_key_is_registered_once_and_a_generated_secret_is_kept(
    fresh: TestEnvironment, tmp_path: Path
) -> None:
    chosen = generate_key().token
    secret_file = tmp_path / "secrets" / "callback-secret"
    env = fresh.with_env(TASKMGR_API_KEY=chosen, CALLBACK_SECRET_FILE=str(secret_file))
    done = _bootstrap(env)
    assert done.returncode == 0, done.stderr
    assert chosen not in done.stdout + done.stderr
    secret = secret_file.read_text()
    assert secret.startswith("whsec_") and secret_file.stat().st_mode & 0o077 == 0

    engine = create_engine(fresh.postgres, pool_size=1)
    try:
        record = await ApiKeyStore(engine).verify(chosen)
        assert record is not None and {Scope.ADMIN, Scope.TASKS_WRITE} <= set(record.scopes)
    finally:
        await engine.dispose()

    again = _bootstrap(env)
    assert again.returncode == 0 and "an active key exists" in again.stdout, again.stderr
    assert secret_file.read_text() == secret, "never overwritten"


async def test_bad_input_is_refused_naming_the_setting(fresh: TestEnvironment, tmp_path: Path) -> None:
    done = _bootstrap(fresh.with_env(TASKMGR_API_KEY="not-a-key"))
    assert done.returncode == 1 and "TASKMGR_API_KEY is not a valid key" in done.stderr

    empty = tmp_path / "callback-secret"
    empty.write_text("")
    done = _bootstrap(fresh.with_env(CALLBACK_SECRET_FILE=str(empty)), "--api-key-file", str(tmp_path / "k"))
    assert done.returncode == 1 and "exists but is empty" in done.stderr
    assert empty.read_text() == ""

    done = _bootstrap(fresh.with_env(), "--api-key-file", str(tmp_path / "key"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "key").read_text().startswith("tmk_")
