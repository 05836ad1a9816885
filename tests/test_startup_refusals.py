"""Production refuses insecure configuration at start, naming the setting
(the real `python -m services.api|dispatcher` processes)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.environment import (
    TestEnvironment,
    create_environment,
    destroy_environment,
    free_port,
)

PRODUCTION = {"ENVIRONMENT": "production", "BIND_HOST": "127.0.0.1",
              # Never contacted: the refusals happen before the broker is.
              "AMQP_URL": "amqp://taskmgr-api:not-the-guest@127.0.0.1:1/taskmgr"}


def _start(module: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module], env=env, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(("module", "overrides", "message"), [
    ("services.api", {"AUTH_REQUIRED": "false"}, "AUTH_REQUIRED=false is not allowed in production"),
    # "guest" itself is the password here, so the logs mask that word: match the rest.
    ("services.api", {"AMQP_URL": "amqp://guest:guest@127.0.0.1:1/"}, "give each role its own RabbitMQ user"),
    ("services.api", {"METRICS_TOKEN": "short"}, "METRICS_TOKEN must be at least 32"),
    ("services.dispatcher", {}, "CALLBACK_SECRET is not set"),
    ("services.dispatcher", {"CALLBACK_SECRET_FILE": "/nonexistent/callback-secret"}, "run `taskmgr bootstrap`"),
    ("services.dispatcher", {"CALLBACK_SECRET": "whsec_c2hvcnQ="}, "too weak"),
    ("services.dispatcher", {"CALLBACK_SECRET": "x" * 40, "CALLBACK_ALLOWED_HOSTS": "0.0.0.0/0"}, "every address"),
])
def test_production_refuses_to_start_insecure(
    environment: TestEnvironment, module: str, overrides: dict[str, str], message: str
) -> None:
    done = _start(module, environment.with_env(**{**PRODUCTION, "PORT": str(free_port()), **overrides}))
    assert done.returncode == 2, done.stderr[-2000:]
    assert message in done.stderr


def test_development_without_auth_refuses_to_listen_beyond_loopback(environment: TestEnvironment) -> None:
    done = _start("services.api", environment.with_env(BIND_HOST="0.0.0.0", PORT=str(free_port())))
    assert done.returncode == 2 and "loopback only" in done.stderr


async def test_production_refuses_to_start_without_an_api_key() -> None:
    env = await create_environment("nokey")  # a database with no key at all
    try:
        done = _start("services.api", env.with_env(**PRODUCTION, PORT=str(free_port())))
    finally:
        await destroy_environment(env)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "no active API key exists" in done.stderr and "taskmgr keys create" in done.stderr
