"""The document pipeline end to end with real embeddings: the real api, one
worker per stage (the default embedding model on CPU), the dispatcher, RabbitMQ and
PostgreSQL, fed files of the shared corpus (CORPUS_DIR, default
../shared/corpus beside the clone). tests/pipeline/test_pipeline_corpus.py runs every
corpus file through a fleet embedding against a local OpenAI-compatible server.

One fleet serves the module; each test ingests into its own KB."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import aiohttp
import asyncpg
import pytest
import pytest_asyncio

from shared.fleet import PIPELINE_STAGES
from tests.support.api import ApiClient
from tests.support.pipeline import (
    PipelineFleet,
    corpus_or_skip,
    document,
    ingest,
    pipeline_fleet,
    search,
)


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def pipeline(tmp_path_factory: pytest.TempPathFactory, corpus_dir: Path) -> AsyncIterator[PipelineFleet]:
    async with pipeline_fleet(tmp_path_factory, corpus_or_skip(corpus_dir), EMBEDDING_BATCH_SIZE="32") as running:
        yield running


async def test_search_finds_a_known_passage_in_the_top_3(api: ApiClient) -> None:
    task = await ingest(api, "kb_search", "html-wikipedia-duck.html")
    assert task["status"] == "completed", task["error"]
    assert task["result"]["embedding"] == {"backend": "local", "model": "use-multilingual-v3", "dimension": 512,
                                           "cached": 0, "computed": task["result"]["chunk_count"],
                                           "truncated": task["result"]["embedding"]["truncated"]}
    for question, passage in (("Where does the word duck come from?", "comes from Old English"),
                              ("What do ducks eat?", "Ducks eat food sources such as")):
        answer = await search(api, "kb_search", question, top_k=3)
        assert answer["mode"] == "hybrid" and answer["embedding_model"] == "local:use-multilingual-v3"
        assert any(passage in hit["content"] for hit in answer["results"]), [h["content"][:60] for h in answer["results"]]
    hit = answer["results"][0]
    assert hit["heading_path"] and hit["vector_similarity"] > 0.3 and hit["chunk_id"] and hit["metadata"]["title"] == "Duck"
    vector_only = await search(api, "kb_search", "duck domestication", mode="vector", top_k=2)
    assert len(vector_only["results"]) == 2 and all(h["keyword_score"] is None for h in vector_only["results"])


async def test_reprocessing_unchanged_text_reuses_cached_vectors_and_replaces_chunks(api: ApiClient) -> None:
    first = await ingest(api, "kb_cache", "docx-zh-en-mixed.docx")
    again = await ingest(api, "kb_cache", "docx-zh-en-mixed.docx")
    assert first["status"] == again["status"] == "completed"
    count = again["result"]["chunk_count"]
    assert again["result"]["document_id"] == first["result"]["document_id"]
    assert again["result"]["embedding"]["cached"] == count and again["result"]["embedding"]["computed"] == 0
    assert again["result"]["replaced_chunks"] == first["result"]["chunk_count"] == count


async def test_two_runs_on_one_document_never_interleave(api: ApiClient) -> None:
    """Document tasks take the per-document concurrency key (decision 0160): the deletion
    waits, queued, until the processing run ended, though the store worker is idle."""
    processing = await api.submit(document("kb_keyed", "md-pypdf-extract-text.md", document_id="handbook"))
    deletion = await api.submit({"task_type": "document_deletion", "kb_id": "kb_keyed",
                                 "payload": {"document_id": "handbook"}})
    assert (await api.get(deletion["task_id"]))["status"] == "queued"
    first = await api.wait_for(processing["task_id"], timeout=120)
    second = await api.wait_for(deletion["task_id"], timeout=30)
    assert first["status"] == second["status"] == "completed", (first, second)
    assert second["concurrency_key"] == "document:kb_keyed:handbook" and second["max_concurrency"] == 1
    assert datetime.fromisoformat(second["started_at"]) >= datetime.fromisoformat(first["finished_at"])


async def test_progress_moves_forward_through_the_stages_with_an_estimate(api: ApiClient) -> None:
    created = await api.submit(document("kb_progress", "pdf-multipage-dpr-13p.pdf", chunk_size=2000,
                                        chunk_overlap=200))
    samples = []
    while True:
        task = await api.get(created["task_id"])
        samples.append(task)
        if task["status"] in ("completed", "failed", "cancelled"):
            break
        await asyncio.sleep(0.1)
    assert task["status"] == "completed" and task["progress"] == 100
    progress = [s["progress"] for s in samples]
    assert progress == sorted(progress), "progress never moves back"
    seen = [s["stage"] for s in samples if s["status"] == "processing"]
    assert [s for s in PIPELINE_STAGES if s in seen][:3] == [s for s in PIPELINE_STAGES if s in seen][:3] and "embed" in seen
    estimates = [s["estimated_completion"] for s in samples if s["status"] == "processing"]
    assert any(estimates), "an estimate from observed stage rates while it runs"
    assert task["result"]["pages"] == 13 and task["result"]["chunk_count"] > 20


_CHUNKS = """SELECT chunk_index, chunk_id, content, char_start, char_end, pages, heading_path, embedding::text
              FROM kb_chunks WHERE kb_id = $1 AND document_id = $2 ORDER BY chunk_index"""


async def test_a_pdf_embedded_in_page_shards_equals_its_unsharded_run(api: ApiClient, db: asyncpg.Connection) -> None:
    """4 pages (2 of them blank) in shards of one page: four preprocess messages, then four
    embed messages, any free slot takes each; the last shard of a stage moves the task on.
    The chunks (ids, texts, pages, vectors) are the unsharded run's."""
    name, kb = "pdf-with-blank-pages-4p.pdf", "kb_shards"
    sharded = await ingest(api, kb, name, document_id="paper", shard_pages=1)
    assert sharded["status"] == "completed", sharded["error"]
    assert sharded["result"]["embedding"]["shards"] == 4
    stored = await db.fetch(_CHUNKS, kb, "paper")
    assert len(stored) == sharded["result"]["chunk_count"] > 2

    whole = await ingest(api, kb, name, document_id="paper", shard_pages=0)
    assert whole["status"] == "completed" and "shards" not in whole["result"]["embedding"]
    assert whole["result"]["embedding"]["computed"] == 0  # the shards' vectors serve it from the cache
    assert [dict(r) for r in await db.fetch(_CHUNKS, kb, "paper")] == [dict(r) for r in stored]
    for key in ("pages", "characters", "chunk_count", "title"):
        assert sharded["result"][key] == whole["result"][key], key


async def test_cancelling_mid_pipeline_stops_it_and_leaves_no_chunks(api: ApiClient, db: asyncpg.Connection) -> None:
    created = await api.submit(document("kb_cancel", "epub-winter-sports.epub", chunk_size=500, chunk_overlap=50))
    await api.wait_for(created["task_id"], {"processing"}, timeout=60)
    while (await api.get(created["task_id"]))["stage"] not in ("embed", "store", "index"):
        await asyncio.sleep(0.05)
    started = time.monotonic()
    status, _ = await api.call("DELETE", f"/api/v1/tasks/{created['task_id']}")
    assert status in (200, 202)
    final = await api.wait_for(created["task_id"], timeout=10)
    assert final["status"] == "cancelled" and time.monotonic() - started < 10
    await asyncio.sleep(2)
    assert await db.fetchval("SELECT count(*) FROM kb_chunks WHERE kb_id = 'kb_cancel'") == 0
    for _ in range(50):  # the store worker's janitor drops the intermediate data
        if not await db.fetchval("SELECT count(*) FROM pipeline_documents WHERE task_id = $1", created["task_id"]):
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("staging of the cancelled task was not dropped")


async def test_the_model_loads_once_per_embed_worker(pipeline: PipelineFleet,
                                                     http: aiohttp.ClientSession) -> None:
    worker = next(p for p in pipeline.fleet.processes if p.name == "worker-embed")
    async with http.get(worker.ready_url.replace("/health/ready", "/metrics")) as response:  # type: ignore[union-attr]
        text = await response.text()
    loads = [line for line in text.splitlines() if line.startswith("embedding_model_loads_total{")]
    assert loads == ['embedding_model_loads_total{backend="local",model="use-multilingual-v3"} 1.0']
    computed = [line for line in text.splitlines()
                if line.startswith("embedding_texts_total{") and 'source="computed"' in line]
    assert computed and float(computed[0].split()[-1]) > 50, "many documents, one model load"


async def test_taskmgr_search_prints_the_hits(pipeline: PipelineFleet,
                                              api: ApiClient) -> None:
    taskmgr = os.path.join(os.path.dirname(sys.executable), "taskmgr")
    result = await asyncio.to_thread(
        subprocess.run, [taskmgr, "search", "kb_search", "Where does the word duck come from?", "--top-k", "3"],
        env=pipeline.fleet.env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "3 result(s)" in result.stdout and "Etymology" in result.stdout


async def test_the_document_list_shows_ready_failed_and_queued_documents_and_pages(api: ApiClient) -> None:
    kb = "kb_list"
    ready = await ingest(api, kb, "txt-zh-gb18030.txt", document_id="ready-doc")
    failed = await ingest(api, kb, "no-such-file.txt")  # fails before preprocess names it
    assert ready["status"] == "completed" and failed["status"] == "failed"
    later = await api.submit({**document(kb, "md-pypdf-extract-text.md", document_id="later-doc"),
                              "delay_seconds": 3600})
    status, page = await api.call("GET", f"/api/v1/kbs/{kb}/documents")
    assert status == 200, page
    by_status = {item["status"]: item for item in page["items"]}
    assert set(by_status) == {"ready", "failed", "queued"} and page["next_cursor"] is None
    done = by_status["ready"]
    assert done["document_id"] == "ready-doc" and done["searchable"] and done["chunk_count"] == ready["result"]["chunk_count"]
    assert done["timings"]["stage_seconds"]["total"] > 0 and done["timings"]["finished_at"] and done["error"] is None
    assert done["source"] == "txt-zh-gb18030.txt" and done["file_bytes"] > 0 and done["task_id"] == ready["task_id"]
    bad = by_status["failed"]
    assert bad["document_id"] is None and bad["task_id"] == failed["task_id"] and not bad["searchable"]
    assert bad["error"]["code"] and bad["error"]["message"] and bad["source"] == "no-such-file.txt"
    assert by_status["queued"]["document_id"] == "later-doc" and by_status["queued"]["task_id"] == later["task_id"]
    status, only = await api.call("GET", f"/api/v1/kbs/{kb}/documents?status=failed,queued")
    assert {i["status"] for i in only["items"]} == {"failed", "queued"}
    seen, cursor = [], None
    while True:
        status, one = await api.call("GET", f"/api/v1/kbs/{kb}/documents?limit=1" + (f"&cursor={cursor}" if cursor else ""))
        assert status == 200 and len(one["items"]) == 1, one
        seen.append(one["items"][0]["task_id"])
        if not (cursor := one["next_cursor"]):
            break
    assert sorted(seen) == sorted(i["task_id"] for i in page["items"])
    status, wrong = await api.call("GET", f"/api/v1/kbs/{kb}/documents?status=done")
    assert status == 422 and wrong["error"]["details"][0]["field"] == "status"
    await api.call("DELETE", f"/api/v1/tasks/{later['task_id']}")


async def test_reembed_reruns_every_ready_document_once_while_it_runs(api: ApiClient) -> None:
    kb = "kb_reembed"
    first = await ingest(api, kb, "md-zh-mineru-output-files.md", document_id="a")
    assert first["status"] == "completed"
    # Two calls at once: the unique key lets one create the task and hands it to the other.
    answers = await asyncio.gather(*(api.call("POST", f"/api/v1/kbs/{kb}/reembed", json={}) for _ in range(2)))
    assert [status for status, _ in answers] == [202, 202], answers
    bodies = sorted((body for _, body in answers), key=lambda b: -b["submitted"])
    assert [(b["submitted"], b["running"], b["skipped"]) for b in bodies] == [(1, 0, []), (0, 1, [])]
    [task], [same] = bodies[0]["tasks"], bodies[1]["tasks"]
    assert task["document_id"] == "a" and task["created"] and same == {**task, "created": False}
    done = await api.wait_for(task["task_id"], timeout=120)
    assert done["status"] == "completed" and done["result"]["document_id"] == "a"
    assert done["result"]["chunk_count"] == first["result"]["chunk_count"]
    _, page = await api.call("GET", f"/api/v1/kbs/{kb}/documents")
    assert [(i["task_id"], i["status"]) for i in page["items"]] == [(task["task_id"], "ready")]
