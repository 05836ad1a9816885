"""The API contract: an OpenAPI 3.1 document generated from the handlers'
models, and schemathesis (v4, default checks) against the live api on
loopback with AUTH_REQUIRED=true."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from shared.security.api_keys import Scope
from tests.support.environment import create_environment, destroy_environment
from tests.support.fleet import Fleet, log_dir
from tests.support.keys import create_key

# Bounded so the suite stays fast: examples per operation and a time budget for the run.
MAX_EXAMPLES = os.environ.get("FUZZ_MAX_EXAMPLES", "15")
MAX_SECONDS = os.environ.get("FUZZ_MAX_SECONDS", "60")
SEED = os.environ.get("FUZZ_SEED", "7")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def live(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[Fleet, str]]:
    env = await create_environment("fuzz")
    key = await create_key(env, "fuzzer", [Scope.TASKS_READ, Scope.TASKS_WRITE, Scope.ADMIN])
    fleet = Fleet(env, log_dir(tmp_path_factory.mktemp("fuzz")))
    uploads = tmp_path_factory.mktemp("fuzz-uploads")
    settings = {"AUTH_REQUIRED": "true", "RATE_LIMIT_PER_SECOND": "0", "KB_RATE_LIMIT_PER_SECOND": "0",
                "UPLOAD_ROOTS": str(uploads), "CALLBACK_ALLOWED_HOSTS": "none"}
    # The api alone: fuzzed tasks stay queued and are never run, and no callback is ever sent.
    fleet.add_api(**settings)
    await fleet.start()
    yield fleet, key
    fleet.stop()
    await destroy_environment(env)


async def test_the_document_covers_every_route_with_security_and_errors(
    live: tuple[Fleet, str], http: aiohttp.ClientSession
) -> None:
    fleet, _ = live
    async with http.get(fleet.api_url + "/api/v1/openapi.json") as response:
        assert response.status == 200
        doc = await response.json()
    assert doc["openapi"] == "3.1.0"
    ops = {(m.upper(), p): op for p, methods in doc["paths"].items() for m, op in methods.items()}
    for method, path in [("POST", "/api/v1/tasks"), ("POST", "/api/v1/tasks/batch"), ("GET", "/api/v1/tasks"),
                         ("GET", "/api/v1/tasks/{task_id}"), ("DELETE", "/api/v1/tasks/{task_id}"),
                         ("POST", "/api/v1/uploads"), ("GET", "/api/v1/dlq"), ("GET", "/health/ready")]:
        assert (method, path) in ops, (method, path)
    submit = ops[("POST", "/api/v1/tasks")]
    assert submit["security"] == [{"apiKey": []}] and submit["x-required-scope"] == "tasks:write"
    assert {"201", "401", "403", "413", "422", "429", "503"} <= set(submit["responses"])
    assert ops[("GET", "/health/ready")]["security"] == []
    variants = submit["requestBody"]["content"]["application/json"]["schema"]["discriminator"]["mapping"]
    assert {"echo", "sleep", "file_digest"} <= set(variants)
    sleep = doc["components"]["schemas"]["SleepPayload"]
    assert sleep["properties"]["seconds"]["maximum"] == 3600 and sleep["additionalProperties"] is False
    # The reference page is Swagger UI on this document, from the api's own files (its rendering:
    # tests/test_api_reference_browser.py).
    async with http.get(fleet.api_url + "/api/v1/docs") as response:
        page = await response.text()
    assert response.status == 200 and "script-src 'self'" in response.headers["Content-Security-Policy"]
    assert '<script src="/api/v1/docs/swagger-ui-bundle.js">' in page and "://" not in page
    async with http.get(fleet.api_url + "/api/v1/docs/reference.js") as response:
        assert '"/api/v1/openapi.json"' in await response.text()


def test_schemathesis_finds_no_failure_with_its_default_checks(live: tuple[Fleet, str], tmp_path) -> None:  # type: ignore[no-untyped-def]
    fleet, key = live
    schemathesis = os.path.join(os.path.dirname(sys.executable), "schemathesis")
    argv = [
        schemathesis, "--config-file", str(Path(__file__).with_name("schemathesis.toml")),
        "run", f"{fleet.api_url}/api/v1/openapi.json",
        "--header", f"Authorization: Bearer {key}",
        "--max-examples", MAX_EXAMPLES, "--max-time", MAX_SECONDS,
        "--phases", "examples,coverage,fuzzing", "--seed", SEED,
        # One worker thread: CPython 3.11.7 races when two threads ast.parse at once
        # (hypothesis describes lambdas that way); decision 0051.
        "--workers", "1",
        "--request-timeout", "15", "--suppress-health-check", "all",
        "--report", "junit", "--report-dir", str(tmp_path),
    ]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=int(MAX_SECONDS) + 120,
                         env={**os.environ, "NO_COLOR": "1"}, check=False)
    if os.environ.get("FUZZ_OUTPUT"):
        with open(os.environ["FUZZ_OUTPUT"], "w") as out:
            out.write(run.stdout + run.stderr + fleet.logs())
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-3000:] + fleet.logs()
