"""Fixtures of the modules that run a pipeline fleet; each module defines its
own `pipeline` fixture (real model or the OpenAI-compatible fake)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest
import pytest_asyncio

from shared.db.local_server import connect_kwargs
from tests.support.api import ApiClient
from tests.support.pipeline import PipelineFleet


@pytest_asyncio.fixture(loop_scope="session")
async def api(pipeline: PipelineFleet, http: aiohttp.ClientSession) -> ApiClient:
    return ApiClient(pipeline.fleet.api_url, http)


@pytest_asyncio.fixture(loop_scope="session")
async def db(pipeline: PipelineFleet) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(**connect_kwargs(pipeline.environment.postgres))
    yield conn
    await conn.close()


@pytest.fixture(autouse=True)
def fleet_logs_on_failure(request: pytest.FixtureRequest) -> Any:
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed and "pipeline" in request.fixturenames:
        print(request.getfixturevalue("pipeline").fleet.logs())
