"""PostgreSQL failover without loss: the fleet runs on a primary and its synchronous
standby (POSTGRES_HOST lists both); the primary is killed (kill -9, backends and all)
while tasks run and submissions keep coming, then the standby is promoted, as an
operator or an orchestrator would. The api answers 503 while there is no primary and
201 again after the promotion; every task it answered 201 for completes, with exactly
one terminal callback. Decision 0195."""

from __future__ import annotations

import asyncio
import functools
import socket
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import aiohttp
import asyncpg
import pytest
from sqlalchemy import text

from shared.db.engine import create_engine
from shared.db.local_server import connect_kwargs
from shared.db.pool import create_pool
from shared.settings import PostgresSettings
from tests.conftest import FleetFactory
from tests.support.api import TERMINAL, ApiClient
from tests.support.callback_receiver import CallbackReceiver
from tests.support.environment import TestEnvironment
from tests.support.eventually import eventually
from tests.support.fleet import Fleet
from tests.support.postgres_pair import PostgresPair, start_pair


@pytest.mark.fast
def test_postgres_host_lists_a_primary_and_its_standbys() -> None:
    pair = PostgresSettings(POSTGRES_HOST="db1:5433, db2", POSTGRES_PORT=5440, POSTGRES_PASSWORD="p%w")
    assert pair.addresses() == [("db1", 5433), ("db2", 5440)]
    assert pair.session_attrs() == "read-write", "several hosts: only the writable one will do"
    kwargs = connect_kwargs(pair)
    assert (kwargs["host"], kwargs["port"]) == (["db1", "db2"], [5433, 5440])
    assert kwargs["target_session_attrs"] == "read-write"
    assert pair.sqlalchemy_url().endswith(
        "@/taskmgr?host=db1%3A5433&host=db2%3A5440&target_session_attrs=read-write")
    assert "p%w" not in pair.describe() and "db1:5433,db2:5440" in pair.describe()

    one = PostgresSettings(POSTGRES_HOST="db", POSTGRES_PORT=5440)
    assert one.session_attrs() is None and "target_session_attrs" not in connect_kwargs(one)
    assert one.sqlalchemy_url() == "postgresql+asyncpg://postgres@db:5440/taskmgr"
    assert PostgresSettings(POSTGRES_HOST="db", POSTGRES_TARGET_SESSION_ATTRS="primary").session_attrs() == "primary"
    for wrong in ("db1,,db2", "db1:port", "db1,::1"):
        with pytest.raises(ValueError, match="POSTGRES_HOST"):
            PostgresSettings(POSTGRES_HOST=wrong)


async def test_a_server_that_never_answers_is_passed_over(environment: TestEnvironment) -> None:
    """A primary whose machine is gone drops packets rather than refusing them: the next
    server must still be tried (asyncpg's own list would spend its whole timeout on the first)."""
    local = environment.postgres
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(1)  # the kernel completes the handshake; nobody ever answers
        settings = PostgresSettings(
            POSTGRES_HOST=f"127.0.0.1:{hole.getsockname()[1]},127.0.0.1:{local.effective_port}",
            POSTGRES_DB=environment.database, POSTGRES_USER=local.user, POSTGRES_PASSWORD=local.password,
            POSTGRES_CONNECT_TIMEOUT=1)
        pool = await create_pool(settings, min_size=2, max_size=2)
        try:
            assert await pool.fetchval("SELECT 1") == 1
        finally:
            await pool.close()
        engine = create_engine(settings, pool_size=1)
        try:
            async with engine.connect() as connection:
                assert (await connection.execute(text("SELECT 1"))).scalar() == 1
        finally:
            await engine.dispose()


@pytest.fixture
def pair() -> Iterator[PostgresPair]:
    pair = start_pair()
    try:
        yield pair
    finally:
        pair.stop()


@dataclass
class Submitter:
    """Submits one task after another, never retrying, and keeps every answer."""

    api: ApiClient
    body: dict[str, object]
    accepted: list[str] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    running: bool = True
    failure: BaseException | None = None

    async def run(self) -> None:
        try:
            await self._submit()
        except BaseException as exc:
            self.failure = exc
            raise

    def check(self) -> None:
        if self.failure is not None:
            raise RuntimeError("the submitter stopped") from self.failure

    async def _submit(self) -> None:
        while self.running:
            status, answer = await self.api.call("POST", "/api/v1/tasks", json=self.body)
            assert status in (201, 503), (status, answer)
            self.statuses.append(status)
            if status == 201:
                self.accepted.append(str(answer["task_id"]))
            else:
                await asyncio.sleep(0.05)


async def test_a_promoted_standby_carries_on_without_losing_an_accepted_task(
    pair: PostgresPair, fleet_factory: FleetFactory, http: aiohttp.ClientSession,
    receiver: CallbackReceiver,
) -> None:
    await pair.wait_synchronous()
    await _commit_waits_for_the_standby(pair)
    hosts = {"POSTGRES_HOST": pair.host_list(), "POSTGRES_USER": "postgres"}

    def configure(fleet: Fleet) -> None:
        fleet.add_api()
        fleet.add_worker(WORKER_POOL_SIZE="8")
        fleet.add_dispatcher()

    fleet = await fleet_factory(configure, postgres=pair.settings(), extra_env=hosts)
    api = ApiClient(fleet.api_url, http)
    path = f"failover-{uuid.uuid4().hex[:8]}"
    submitter = Submitter(api, {"task_type": "test", "payload": {"message": "failover"},
                                "callback_url": receiver.url(path)})
    submitting = asyncio.create_task(submitter.run())
    try:
        await eventually(lambda: _accepted(submitter, 5), timeout=20)
        running = [(await api.submit({"task_type": "sleep", "payload": {"seconds": 2},
                                       "callback_url": receiver.url(path)}))["task_id"] for _ in range(8)]
        await eventually(lambda: _processing(api, running), timeout=20)
        pair.kill(0)  # the primary's machine is gone, mid-task and mid-submission
        await eventually(lambda: _answered(submitter, 503), timeout=20)
        # No primary until the sleeping tasks' ends reach the dispatcher, whose writes then fail.
        await eventually(lambda: _logged(fleet, "dispatcher", "database write failed"), timeout=20)
        refused_before_promotion = submitter.statuses.count(503)
        accepted_before_promotion = len(submitter.accepted)
        pair.promote(1)  # the operator's (or Patroni's) step
        await eventually(lambda: _accepted(submitter, accepted_before_promotion + 10), timeout=30)
    finally:
        submitter.running = False
        await asyncio.gather(submitting, return_exceptions=True)

    tasks = running + submitter.accepted
    for task_id in tasks:
        await eventually(functools.partial(_completed, api, task_id), timeout=60)
    await receiver.wait_for(path, count=len(tasks), timeout=60)
    await asyncio.sleep(1)  # a duplicate would arrive right behind the first callback
    terminal = Counter(hit.json["task_id"] for hit in receiver.for_path(path) if hit.status == 200)
    assert set(tasks) <= set(terminal), f"accepted tasks without their callback: {set(tasks) - set(terminal)}"
    assert max(terminal.values()) == 1, f"duplicated callbacks: {terminal.most_common(3)}"
    await _logged(fleet, "dispatcher", "database writes recovered")
    for process in fleet.processes:
        assert process.alive(), f"{process.name} exited:\n{process.log_tail()}"
    print(f"failover: {len(tasks)} accepted tasks completed, {submitter.statuses.count(503)} answers 503 "
          f"({refused_before_promotion} before the promotion)")


async def _commit_waits_for_the_standby(pair: PostgresPair) -> None:
    """What "no loss" rests on: a COMMIT on the primary returns only once the standby has it."""
    primary = await asyncpg.connect(host="127.0.0.1", port=pair.ports[0], user="postgres", database="postgres")
    standby = await asyncpg.connect(host="127.0.0.1", port=pair.ports[1], user="postgres", database="postgres")
    try:
        await primary.execute("CREATE TABLE synchronous_probe (n int)")
        with pair.replication_paused():
            commit = asyncio.create_task(primary.execute("INSERT INTO synchronous_probe VALUES (1)"))
            done, _ = await asyncio.wait([commit], timeout=1)
            assert not done, "the primary committed what its standby had not received: replication is not synchronous"
        await commit

        async def replayed() -> None:  # flushed on the standby, visible once replayed
            assert await standby.fetchval("SELECT count(*) FROM synchronous_probe") == 1

        await eventually(replayed, timeout=20)
    finally:
        await primary.close()
        await standby.close()


async def _processing(api: ApiClient, tasks: list[str]) -> None:
    statuses = [(await api.get(t))["status"] for t in tasks]
    assert "processing" in statuses, statuses


async def _completed(api: ApiClient, task_id: str) -> None:
    # A read may meet one 503 too: the first use of a connection to the dead primary.
    status, task = await api.call("GET", f"/api/v1/tasks/{task_id}")
    assert status in (200, 503), (status, task)
    assert status == 200 and task["status"] in TERMINAL, (status, task)
    if task["status"] != "completed":
        pytest.fail(f"task {task_id} {task['status']}: {task.get('error')}")


async def _logged(fleet: Fleet, process: str, line: str) -> None:
    assert line in fleet.process(process).log_path.read_text(errors="replace"), f"{process} has not logged {line!r}"


async def _accepted(submitter: Submitter, count: int) -> None:
    submitter.check()
    assert len(submitter.accepted) >= count, (len(submitter.accepted), Counter(submitter.statuses))


async def _answered(submitter: Submitter, status: int) -> None:
    submitter.check()
    assert status in submitter.statuses, Counter(submitter.statuses)
