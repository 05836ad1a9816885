"""A fleet running the document pipeline (api, one worker per stage,
dispatcher) over an upload root holding a copy of the corpus, and helpers to
drive it."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shared.fleet import PIPELINE_STAGES
from tests.support.api import ApiClient
from tests.support.environment import TestEnvironment, create_environment, destroy_environment
from tests.support.fleet import Fleet, log_dir


@dataclass
class PipelineFleet:
    fleet: Fleet
    uploads: Path
    environment: TestEnvironment


@asynccontextmanager
async def pipeline_fleet(tmp_path_factory: pytest.TempPathFactory, corpus: Path,
                         **worker_env: str) -> AsyncIterator[PipelineFleet]:
    env = await create_environment("p")
    uploads = tmp_path_factory.mktemp("uploads")
    for path in corpus.iterdir():
        if path.name != "MANIFEST.md":
            shutil.copy(path, uploads / path.name)
    secret = tmp_path_factory.mktemp("outside") / "secret.txt"
    secret.write_text("not for the knowledge base")
    (uploads / "escape.txt").symlink_to(secret)  # a symlink inside the root that leads out of it
    fleet = Fleet(env, log_dir(tmp_path_factory.mktemp("pipeline-fleet")))
    common = {"UPLOAD_ROOTS": str(uploads), "WORKER_POOL_SIZE": "4", **worker_env}
    fleet.add_api(**common)
    for stage in PIPELINE_STAGES:
        fleet.add_worker(stage, **common)
    fleet.add_dispatcher()
    try:
        await fleet.start(timeout=90)
        yield PipelineFleet(fleet, uploads, env)
    finally:
        fleet.stop()
        await destroy_environment(env)


def corpus_or_skip(corpus_dir: Path) -> Path:
    if not (corpus_dir / "MANIFEST.md").exists():
        pytest.skip(f"the shared corpus is not at {corpus_dir} (set CORPUS_DIR to the folder holding MANIFEST.md)")
    return corpus_dir


def document(kb_id: str, file_path: str, **payload: Any) -> dict[str, Any]:
    return {"task_type": "document_processing", "kb_id": kb_id, "payload": {"file_path": file_path, **payload}}


async def ingest(api: ApiClient, kb_id: str, name: str, timeout: float = 240, **payload: Any) -> dict[str, Any]:
    return await api.run(document(kb_id, name, **payload), timeout=timeout)


async def search(api: ApiClient, kb_id: str, query: str, **body: Any) -> dict[str, Any]:
    status, answer = await api.call("POST", f"/api/v1/kbs/{kb_id}/search", json={"query": query, **body})
    assert status == 200, answer
    return answer  # type: ignore[no-any-return]

