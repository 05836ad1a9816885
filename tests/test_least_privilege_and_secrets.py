"""The fleet under the least-privilege RabbitMQ users of
deploy/rabbitmq/definitions.json (no topology declares, each role
its own password), signed callbacks with two secrets at once, and then every
log of the run searched for every configured secret."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import secrets
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aio_pika
import aiohttp
import orjson
import pytest
import pytest_asyncio
from aiormq.exceptions import AMQPError

from shared.security.api_keys import Scope
from shared.task_types import default_registry
from shared.topology import (
    SUBMIT_EXCHANGE,
    SUBMIT_QUEUE,
    TASKS_EXCHANGE,
    Topology,
    declare_topology,
)
from shared.webhooks import verify
from tests.support.api import ApiClient
from tests.support.callback_receiver import CallbackReceiver
from tests.support.environment import (
    RABBITMQCTL,
    TestEnvironment,
    create_environment,
    destroy_environment,
)
from tests.support.fleet import Fleet, log_dir
from tests.support.keys import bearer, create_key

DEFINITIONS = Path(__file__).resolve().parents[1] / "deploy" / "rabbitmq" / "definitions.json"
ROLES = ("taskmgr-api", "taskmgr-worker", "taskmgr-dispatcher", "kb-service")


def _password_hash(password: str) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt + sha256(salt + password))."""
    salt = os.urandom(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def _rabbitmqctl(*args: str, stdin: str | None = None, attempts: int = 3) -> None:
    for attempt in range(attempts):
        done = subprocess.run([RABBITMQCTL, *args], input=stdin, capture_output=True, text=True, timeout=60,
                              check=False)
        if done.returncode == 0:
            return
        if attempt + 1 == attempts:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {done.returncode} {done.stdout} {done.stderr}")
        import time

        time.sleep(1)


@dataclass
class Users:
    names: dict[str, str]  # role -> user name (unique per run)
    passwords: dict[str, str]

    def url(self, env: TestEnvironment, role: str, password: str | None = None) -> str:
        parts = urlsplit(env.amqp_url)
        return (f"amqp://{self.names[role]}:{password or self.passwords[role]}@{parts.hostname}:"
                f"{parts.port or 5672}/{env.vhost}")


def _import_users(env: TestEnvironment) -> Users:
    shipped = json.loads(DEFINITIONS.read_text())
    suffix = uuid.uuid4().hex[:8]
    names = {role: f"{role}-{suffix}" for role in ROLES}
    passwords = {role: secrets.token_urlsafe(24) for role in ROLES}
    definitions = {
        "users": [{"name": names[r], "password_hash": _password_hash(passwords[r]),
                   "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": []} for r in ROLES],
        "permissions": [{**p, "user": names[p["user"]], "vhost": env.vhost}
                        for p in shipped["permissions"] if p["user"] in names],
        "topic_permissions": [{**p, "user": names[p["user"]], "vhost": env.vhost}
                              for p in shipped["topic_permissions"] if p["user"] in names],
    }
    # rabbitmqctl runs as the rabbitmq OS user: the file must be readable by it (test-only hashes).
    fd, path = tempfile.mkstemp(prefix="taskmgr-definitions-", suffix=".json", dir="/tmp")
    try:
        os.write(fd, json.dumps(definitions).encode())
        os.close(fd)
        os.chmod(path, 0o644)
        _rabbitmqctl("import_definitions", path)  # asynchronous: see _wait_until_users_exist
    finally:
        os.unlink(path)
    return Users(names, passwords)


async def _wait_until_users_exist(env: TestEnvironment, users: Users) -> None:
    for _ in range(100):
        try:
            for role in ROLES:
                connection = await aio_pika.connect(users.url(env, role), timeout=5)
                await connection.close()
            return
        except (TimeoutError, AMQPError, ConnectionError, OSError):
            await asyncio.sleep(0.2)
    raise TimeoutError("the imported RabbitMQ users never became usable")


@dataclass
class Run:
    env: TestEnvironment
    fleet: Fleet
    users: Users
    secrets: dict[str, str]
    keys: dict[str, str]


CALLBACK_OLD = "whsec_" + base64.b64encode(os.urandom(32)).decode()
CALLBACK_NEW = "whsec_" + base64.b64encode(os.urandom(32)).decode()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def run(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Run]:
    env = await create_environment("lp")
    users = _import_users(env)
    try:
        await _wait_until_users_exist(env, users)
        # The admin role (here: guest) declares the topology once; the processes only verify it.
        connection = await aio_pika.connect(env.amqp_url)
        async with connection:
            await declare_topology(await connection.channel(), Topology(default_registry(demo=True).stages()))
        keys = {"writer": await create_key(env, "writer", [Scope.TASKS_READ, Scope.TASKS_WRITE]),
                "admin": await create_key(env, "operator", [Scope.ADMIN])}
        values = {
            "metrics_token": secrets.token_urlsafe(32),
            "postgres_password": "pg-" + secrets.token_urlsafe(16),
            "callback_old": CALLBACK_OLD, "callback_new": CALLBACK_NEW,
        }
        common = {
            "AMQP_DECLARE_TOPOLOGY": "false", "LOG_LEVEL": "debug", "AUTH_REQUIRED": "true",
            "METRICS_TOKEN": values["metrics_token"], "POSTGRES_PASSWORD": values["postgres_password"],
            "CALLBACK_SECRET": f"{CALLBACK_OLD} {CALLBACK_NEW}", "API_KEY_CACHE_SECONDS": "0",
        }
        fleet = Fleet(env, log_dir(tmp_path_factory.mktemp("least-privilege")))
        fleet.add_api(AMQP_URL=users.url(env, "taskmgr-api"), **common)
        fleet.add_worker(AMQP_URL=users.url(env, "taskmgr-worker"), **common)
        fleet.add_dispatcher(AMQP_URL=users.url(env, "taskmgr-dispatcher"), **common)
        await fleet.start()
        yield Run(env, fleet, users, values, keys)
        fleet.stop()
    finally:
        for name in users.names.values():
            _rabbitmqctl("delete_user", name)
        await destroy_environment(env)


def _api(run: Run, http: aiohttp.ClientSession, key: str) -> ApiClient:
    client = ApiClient(run.fleet.api_url, http)
    original = client.call

    async def call(method: str, path: str, **kwargs):  # type: ignore[no-untyped-def]
        kwargs["headers"] = {**bearer(run.keys[key]), **kwargs.get("headers", {})}
        return await original(method, path, **kwargs)

    client.call = call  # type: ignore[method-assign]
    return client


async def test_the_fleet_runs_under_least_privilege_users(
    run: Run, http: aiohttp.ClientSession, receiver: CallbackReceiver
) -> None:
    api, admin = _api(run, http, "writer"), _api(run, http, "admin")
    path = f"lp-{uuid.uuid4().hex[:6]}"
    done = await api.run({"task_type": "test", "kb_id": "kb_lp", "payload": {"message": "least"},
                          "callback_url": receiver.url(path)})
    assert done["status"] == "completed"
    [hit] = await receiver.wait_for(path)
    verify([CALLBACK_OLD], hit.headers, hit.body)  # rotation: the old secret still verifies ...
    verify([CALLBACK_NEW], hit.headers, hit.body)  # ... and so does the new one
    assert len(hit.headers["webhook-signature"].split()) == 2

    sleeping = await api.submit({"task_type": "sleep", "payload": {"seconds": 30}})
    await api.wait_for(sleeping["task_id"], {"processing"})
    status, _ = await api.call("DELETE", f"/api/v1/tasks/{sleeping['task_id']}")
    assert status in (200, 202)
    assert (await api.wait_for(sleeping["task_id"]))["status"] == "cancelled"

    failed = await api.run({"task_type": "fail", "retry_limit": 0, "payload": {"fail_times": 1}})
    assert failed["status"] == "failed"
    status, dlq = await admin.call("GET", "/api/v1/dlq")
    assert status == 200 and failed["task_id"] in {i["task_id"] for i in dlq["items"]}
    status, purged = await admin.call("POST", "/api/v1/dlq/purge", json={"task_ids": [failed["task_id"]]})
    assert status == 200 and purged["purged"] == 1


async def _ignore(message: aio_pika.abc.AbstractIncomingMessage) -> None:
    return None


async def test_an_external_publisher_may_write_to_tm_submit_and_nothing_else(run: Run, http: aiohttp.ClientSession) -> None:
    url = run.users.url(run.env, "kb-service")
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        replies = await channel.declare_queue(exclusive=True)  # a server-named reply queue
        exchange = await channel.get_exchange(SUBMIT_EXCHANGE, ensure=False)
        await exchange.publish(aio_pika.Message(
            orjson.dumps({"task_type": "test", "kb_id": "kb_lp", "payload": {"message": "amqp"}}),
            reply_to=replies.name, correlation_id="c1", message_id=f"m-{uuid.uuid4()}"), routing_key="")
        async with replies.iterator(timeout=15) as messages:
            async for message in messages:
                reply = orjson.loads(message.body)
                break
        assert reply["ok"] is True, reply
        api = _api(run, http, "writer")
        assert (await api.wait_for(reply["task_id"]))["status"] == "completed"

    for attempt in ("publish to tm.tasks", "consume tm.submit", "publish via the default exchange"):
        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            with pytest.raises((AMQPError, aio_pika.exceptions.ChannelClosed, asyncio.TimeoutError)):
                if attempt == "publish to tm.tasks":
                    tasks = await channel.get_exchange(TASKS_EXCHANGE, ensure=False)
                    await tasks.publish(aio_pika.Message(b"{}"), routing_key="default", timeout=5)
                elif attempt == "consume tm.submit":
                    queue = await channel.get_queue(SUBMIT_QUEUE, ensure=False)
                    await queue.consume(_ignore, timeout=5)
                else:
                    await channel.default_exchange.publish(aio_pika.Message(b"{}"), routing_key=SUBMIT_QUEUE,
                                                           timeout=5)
                await asyncio.sleep(1)
                await channel.declare_queue(exclusive=True)  # surfaces an asynchronous channel error


async def test_no_configured_secret_appears_in_any_log(run: Run, http: aiohttp.ClientSession) -> None:
    api = _api(run, http, "writer")
    wrong = "tmk_" + "0" * 16 + "_" + secrets.token_urlsafe(32)
    async with http.get(run.fleet.api_url + "/api/v1/tasks", headers=bearer(wrong)) as response:
        assert response.status == 401
    async with http.get(run.fleet.api_url + "/metrics", headers=bearer(run.secrets["metrics_token"])) as response:
        assert response.status == 200
    status, _ = await api.call("POST", "/api/v1/tasks", json={"task_type": "echo",
                                                              "callback_url": "http://169.254.169.254/x"})
    assert status == 422
    # A process that cannot log in to RabbitMQ: its error must not print the password it tried.
    bad_password = "bad-" + secrets.token_urlsafe(16)
    failing = run.fleet.add_worker(name="worker-bad-login",
                                   AMQP_URL=run.users.url(run.env, "taskmgr-worker", password=bad_password))
    with pytest.raises(RuntimeError, match="exited early"):
        await run.fleet.start(failing, timeout=30)

    values = {
        **run.secrets, **{f"amqp password of {r}": p for r, p in run.users.passwords.items()},
        "a wrong AMQP password": bad_password, "a wrong API key": wrong,
        "callback secret key material (old)": CALLBACK_OLD.removeprefix("whsec_"),
        "callback secret key material (new)": CALLBACK_NEW.removeprefix("whsec_"),
        **{f"api key {name}": token for name, token in run.keys.items()},
        **{f"secret part of api key {name}": token.split("_", 2)[2] for name, token in run.keys.items()},
    }
    run.fleet.stop()  # flush everything, including shutdown logs
    logs = {p.name: p.log_path.read_text(errors="replace") for p in run.fleet.processes}
    # The logs did record what the secrets were involved in (else the search proves nothing).
    assert "401 on GET /api/v1/tasks" in logs["api"]
    assert "ProbableAuthenticationError" in logs["worker-bad-login"] or "ACCESS_REFUSED" in logs["worker-bad-login"]
    for label, value in values.items():
        for name, text in logs.items():
            assert value not in text, f"{label} appears in the log of {name}"
