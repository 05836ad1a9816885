"""Fixtures that run the real fleet against the real RabbitMQ and PostgreSQL.

Each session gets its own vhost and database; tests that need a differently
configured fleet build one with `fleet_factory` (also isolated)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from tests.support import fast_tier
from tests.support.api import ApiClient
from tests.support.callback_receiver import CallbackReceiver
from tests.support.environment import TestEnvironment, create_environment, destroy_environment
from tests.support.fleet import Fleet, log_dir

CALLBACK_SECRET = "test-secret-not-for-production"


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("TM_FAST_PROBE"):
        # `TM_FAST_PROBE=1 pytest`: the whole run under the fast tier's isolation, fixtures
        # included; what still passes may carry the `fast` marker.
        config._fast_probe = fast_tier.isolation()  # type: ignore[attr-defined]
        config._fast_probe.__enter__()  # type: ignore[attr-defined]


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> Iterator[None]:
    """One line just above the closing counts saying how many tests were skipped and
    why, so a clone without ../shared/corpus (say) cannot pass for a complete run."""
    yield
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        return
    reasons: dict[str, int] = {}
    for report in skipped:
        reason = str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        reasons[reason] = reasons.get(reason, 0) + 1
    why = "; ".join(f"{count} × {reason}" for reason, count in sorted(reasons.items(), key=lambda kv: -kv[1]))
    terminalreporter.write_sep("=", f"{len(skipped)} skipped: {why}", yellow=True, bold=True)


@pytest.fixture(autouse=True)
def _fast_tier_isolation(request: pytest.FixtureRequest) -> Iterator[None]:
    """A `fast` test runs isolated in every run, so its marker stays true."""
    if request.node.get_closest_marker("fast") is None:
        yield
        return
    with fast_tier.isolation():
        yield


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def environment() -> AsyncIterator[TestEnvironment]:
    env = await create_environment("s")
    yield env
    await destroy_environment(env)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def fleet(environment: TestEnvironment, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Fleet]:
    """api + default worker + dispatcher, shared by tests that do not need their own."""
    fleet = Fleet(environment, log_dir(tmp_path_factory.mktemp("fleet")))
    fleet.add_api()
    fleet.add_worker(WORKER_POOL_SIZE="8", CALLBACK_SECRET=CALLBACK_SECRET)
    # A short sweep interval: tests/test_retention.py watches the sweep remove old rows.
    fleet.add_dispatcher(CALLBACK_SECRET=CALLBACK_SECRET, RETENTION_SWEEP_INTERVAL="0.5")
    await fleet.start()
    yield fleet
    fleet.stop()


FleetFactory = Callable[..., Awaitable[Fleet]]


@pytest_asyncio.fixture(loop_scope="session")
async def fleet_factory(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> AsyncIterator[FleetFactory]:
    """Build an isolated fleet (own vhost and database); `configure(fleet)` adds its processes."""
    made: list[tuple[Fleet, TestEnvironment]] = []

    async def make(configure: Callable[[Fleet], None], *, start: bool = True, **environment: object) -> Fleet:
        env = await create_environment("f", **environment)  # type: ignore[arg-type]
        fleet = Fleet(env, log_dir(tmp_path_factory.mktemp("fleet")))
        made.append((fleet, env))
        configure(fleet)
        if start:
            await fleet.start()
        return fleet

    yield make
    report = getattr(request.node, "rep_call", None)
    for fleet, env in made:
        if report is not None and report.failed:
            print(fleet.logs())
        fleet.stop()
        await destroy_environment(env)


@pytest.fixture(autouse=True)
def _show_logs_on_failure(request: pytest.FixtureRequest) -> object:
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for name in ("fleet",):
            if name in request.fixturenames:
                print(request.getfixturevalue(name).logs())


@pytest_asyncio.fixture(loop_scope="session")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest_asyncio.fixture(loop_scope="session")
async def api(fleet: Fleet, http: aiohttp.ClientSession) -> ApiClient:
    return ApiClient(fleet.api_url, http)


@pytest_asyncio.fixture(loop_scope="session")
async def receiver() -> AsyncIterator[CallbackReceiver]:
    server = CallbackReceiver()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    import os

    return Path(os.environ.get("CORPUS_DIR", Path(__file__).resolve().parents[2] / "shared" / "corpus"))
