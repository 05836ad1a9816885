"""Every file of the shared corpus through the real fleet (api, a worker per
stage, dispatcher, RabbitMQ, PostgreSQL) ends as ../shared/corpus/MANIFEST.md
says; plus the refusals, passwords and deletions around it.

The embed worker here uses the `openai` backend against a local server
honouring the OpenAI embeddings API (tests/support/fake_embeddings.py), so the
sweep measures parsing, chunking and storage rather than CPU-bound model
time; tests/pipeline/test_pipeline.py runs the real model."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

from shared.fleet import PIPELINE_STAGES
from tests.support.api import ApiClient
from tests.support.fake_embeddings import FakeEmbeddingServer, Scripted
from tests.support.pipeline import (
    PipelineFleet,
    corpus_or_skip,
    document,
    ingest,
    pipeline_fleet,
    search,
)

# What MANIFEST.md says each corpus file must end as: completed, or failed with this error type.
EXPECTED_FAILURES = {
    "bad-empty-zero-bytes.txt": ("empty_document", "empty"),
    "bad-encrypted-not-zip.xlsx": ("content_mismatch", "password-protected"),
    "pdf-encrypted-user-password.pdf": ("password_required", "needs a password"),
}
if shutil.which("tesseract") is None:  # the scan then fails in one line naming the package (tesseract-ocr)
    EXPECTED_FAILURES["pdf-scanned-image-only.pdf"] = ("missing_tool", "apt-get install tesseract-ocr")
SCANS_AND_LEGACY = Path(__file__).parents[1] / "data" / "scans_and_legacy"


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def embeddings() -> AsyncIterator[FakeEmbeddingServer]:
    server = FakeEmbeddingServer(dimension=64)
    await server.start()
    yield server
    await server.stop()


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def pipeline(tmp_path_factory: pytest.TempPathFactory, corpus_dir: Path,
                   embeddings: FakeEmbeddingServer) -> AsyncIterator[PipelineFleet]:
    async with pipeline_fleet(
        tmp_path_factory, corpus_or_skip(corpus_dir), EMBEDDING_BACKEND="openai",
        EMBEDDING_BASE_URL=embeddings.base_url, EMBEDDING_MODEL=embeddings.model, EMBEDDING_API_KEY="sk-fleet",
        EMBEDDING_CONCURRENCY="4",
    ) as running:
        yield running


async def test_every_corpus_file_ends_as_the_manifest_says(api: ApiClient, corpus_dir: Path, db: asyncpg.Connection,
                                                           embeddings: FakeEmbeddingServer) -> None:
    names = sorted(p.name for p in corpus_dir.iterdir() if p.name != "MANIFEST.md")
    created = {name: (await api.submit(document("kb_corpus", name)))["task_id"] for name in names}
    finals = {name: await api.wait_for(task_id, timeout=240) for name, task_id in created.items()}
    for name, task in finals.items():
        if name in EXPECTED_FAILURES:
            kind, words = EXPECTED_FAILURES[name]
            assert task["status"] == "failed", (name, task)
            assert task["error"]["type"] == kind and words in task["error"]["message"], (name, task["error"])
            assert task["error"]["stage"] == "preprocess" and not task["error"]["retryable"]
            continue
        assert task["status"] == "completed", (name, task["error"])
        result = task["result"]
        assert result["chunk_count"] > 0 and result["stored"] and result["characters"] > 0, name
        assert result["embedding"]["model"] == "fake-embed-1" and result["embedding"]["dimension"] == 64
        assert set(result["durations"]) == {*PIPELINE_STAGES, "total"}
        stored = await db.fetchval("SELECT count(*) FROM kb_chunks WHERE kb_id = 'kb_corpus' AND document_id = $1",
                                   result["document_id"])
        assert stored == result["chunk_count"], name
    assert set(embeddings.authorizations) == {"Bearer sk-fleet"}
    failed_ids = [created[name] for name in EXPECTED_FAILURES]
    assert await db.fetchval("SELECT count(*) FROM kb_chunks WHERE task_id = ANY($1::uuid[])", failed_ids) == 0

    dpr = finals["pdf-multipage-dpr-13p.pdf"]["result"]
    assert dpr["pages"] == 13 and dpr["content_type"] == "pdf"
    pages = await db.fetch("SELECT pages FROM kb_chunks WHERE kb_id = 'kb_corpus' AND document_id = $1",
                           dpr["document_id"])
    assert all(r["pages"] for r in pages), "no chunk of a PDF lacks its page number"
    assert set().union(*(set(r["pages"]) for r in pages)) == set(range(1, 14))
    blank = finals["pdf-with-blank-pages-4p.pdf"]["result"]
    assert any("2-3" in w for w in blank["warnings"])
    docx = finals["docx-headings-table.docx"]["result"]
    paths = await db.fetch("SELECT heading_path FROM kb_chunks WHERE kb_id = 'kb_corpus' AND document_id = $1",
                           docx["document_id"])
    assert ["Swimming in the lake", "Let’s swim!", "Let’s eat"] in [list(r["heading_path"]) for r in paths]
    slides = await db.fetch("SELECT pages FROM kb_chunks WHERE kb_id = 'kb_corpus' AND document_id = $1",
                            finals["pptx-zh-en-table-chart.pptx"]["result"]["document_id"])
    assert set().union(*(set(r["pages"]) for r in slides)) == set(range(1, 7)), "slide numbers are the pages"
    assert finals["txt-zh-gb18030.txt"]["result"]["characters"] > 400

    hybrid = await search(api, "kb_corpus", "学而时习之", top_k=3)
    assert hybrid["mode"] == "hybrid" and hybrid["embedding_model"] == "openai:fake-embed-1", hybrid["warnings"]
    lunyu = await search(api, "kb_corpus", "学而时习之", mode="keyword", top_k=3)
    assert lunyu["results"][0]["document_id"] == finals["json-zh-lunyu.json"]["result"]["document_id"]
    assert lunyu["results"][0]["heading_path"] == ["学而篇"]
    assert "学而时习之" in lunyu["results"][0]["content"]


async def test_an_encrypted_pdf_opens_with_its_password_which_is_never_shown(
        api: ApiClient, db: asyncpg.Connection, pipeline: PipelineFleet) -> None:
    task = await ingest(api, "kb_pw", "pdf-encrypted-user-password.pdf", password="password")
    assert task["status"] == "completed" and task["result"]["chunk_count"] == 1
    wrong = await ingest(api, "kb_pw", "pdf-encrypted-user-password.pdf", password="hunter2-wrong")
    assert wrong["status"] == "failed" and "wrong" in wrong["error"]["message"]
    stored = await db.fetchval("SELECT payload FROM tasks WHERE id = $1", wrong["task_id"])
    assert json.loads(stored)["password"] == "**********", "the task row never holds the password"
    status, listed = await api.call("GET", "/api/v1/tasks?kb_id=kb_pw")
    assert status == 200 and "hunter2" not in json.dumps([wrong, listed])
    logs = pipeline.fleet.logs()
    assert "hunter2-wrong" not in logs


async def test_files_outside_the_upload_roots_are_refused(api: ApiClient) -> None:
    # What the path itself says is refused at submit (the api need not see the files)...
    status, body = await api.call("POST", "/api/v1/tasks", json=document("kb_refused", "/etc/hostname"))
    assert status == 422, body
    [detail] = body["error"]["details"]
    assert detail["field"] == "payload.file_path" and "outside the allowed upload roots" in detail["message"]
    # ...what only the filesystem tells (a symlink escaping the root, a missing file) when the worker reads.
    for path, reason in (("escape.txt", "outside the allowed upload roots"),
                         ("no-such-file.pdf", "does not exist")):
        task = await ingest(api, "kb_refused", path)
        assert task["status"] == "failed" and reason in task["error"]["message"], task["error"]
        assert task["error"]["retryable"] is False and task["attempts"] == 1
    status, body = await api.call("POST", "/api/v1/tasks", json=document("kb", "../etc/passwd"))
    assert status == 422 and body["error"]["details"][0]["field"] == "payload.file_path"


async def test_bad_requests_are_refused_at_submit_with_the_field_named(api: ApiClient) -> None:
    cases = [
        (document("kb", "a.pdf", chunk_size=500, chunk_overlap=500), "payload.chunk_overlap"),
        (document("kb", "a.pdf", chunk_size=10), "payload.chunk_size"),
        ({**document("kb", "a.pdf"), "kb_id": None}, "kb_id"),
        (document("kb", "a.pdf", file_ref="upl_" + "0" * 32), "payload"),
        (document("kb", "a.pdf", colour="red"), "payload.colour"),
    ]
    for body, field in cases:
        status, answer = await api.call("POST", "/api/v1/tasks", json=body)
        assert status == 422 and field in [d["field"] for d in answer["error"]["details"]], answer
    for body, field in (({"query": ""}, "query"), ({"query": "x", "top_k": 10_000}, "top_k"),
                        ({"query": "x", "mode": "fuzzy"}, "mode")):
        status, answer = await api.call("POST", "/api/v1/kbs/kb/search", json=body)
        assert status == 422 and answer["error"]["details"][0]["field"] == field


async def test_deleting_a_document_runs_as_a_task_and_empties_it_from_search(api: ApiClient) -> None:
    done = await ingest(api, "kb_delete", "docx-headings-table.docx")
    document_id = done["result"]["document_id"]
    before = await search(api, "kb_delete", "duck swimming lake", mode="keyword")
    assert before["results"]
    status, listing = await api.call("GET", "/api/v1/kbs/kb_delete/documents")
    assert status == 200 and [d["document_id"] for d in listing["items"]] == [document_id]
    status, created = await api.call("DELETE", f"/api/v1/kbs/kb_delete/documents/{document_id}")
    assert status == 202 and created["status"] == "queued"
    task = await api.wait_for(created["task_id"], timeout=30)
    assert task["task_type"] == "document_deletion" and task["status"] == "completed"
    assert task["result"]["deleted_chunks"] == done["result"]["chunk_count"]
    after = await search(api, "kb_delete", "duck swimming lake", mode="keyword")
    assert after["results"] == [] and after["warnings"]
    status, _ = await api.call("DELETE", f"/api/v1/kbs/kb_delete/documents/{document_id}")
    assert status == 404


async def test_a_100k_row_csv_goes_through_row_by_row(api: ApiClient, pipeline: PipelineFleet,
                                                       db: asyncpg.Connection) -> None:
    rows = (f"{i},用户{i},City {i % 97},\"note, with a comma {i}\"\n" for i in range(100_000))
    (pipeline.uploads / "big.csv").write_text("id,name,city,note\n" + "".join(rows), encoding="utf-8")
    task = await ingest(api, "kb_big", "big.csv", chunk_size=8000, chunk_overlap=0, timeout=240)
    assert task["status"] == "completed", task["error"]
    result = task["result"]
    assert result["chunk_count"] > 100 and result["characters"] > 4_000_000
    last = await db.fetchrow("SELECT content, metadata FROM kb_chunks WHERE kb_id = 'kb_big' "
                             "ORDER BY chunk_index DESC LIMIT 1")
    assert last["content"].endswith('note: note, with a comma 99999') and json.loads(last["metadata"])["row_end"] == 100_001


@pytest.mark.skipif(shutil.which("tesseract") is None or shutil.which("antiword") is None,
                    reason="needs tesseract-ocr and antiword (apt-get install tesseract-ocr antiword)")
async def test_scans_images_and_word_97_become_searchable(api: ApiClient, db: asyncpg.Connection,
                                                          pipeline: PipelineFleet) -> None:
    for path in SCANS_AND_LEGACY.iterdir():
        shutil.copy(path, pipeline.uploads / path.name)
    scan = await ingest(api, "kb_scans", "pdf-scanned-image-only.pdf", document_id="scan")
    photo = await ingest(api, "kb_scans", "photo-eas-test.jpg", document_id="photo", ocr_languages="eng")
    word = await ingest(api, "kb_scans", "word97-hipster.doc", document_id="word97")
    for task in (scan, photo, word):
        assert task["status"] == "completed", task["error"]
    assert scan["result"]["pages"] == 1 and word["result"]["content_type"] == "doc"
    assert photo["result"]["content_type"] == "image"
    rows = await db.fetch("SELECT document_id, metadata FROM kb_chunks WHERE kb_id = 'kb_scans'")
    metadata = {r["document_id"]: json.loads(r["metadata"]) for r in rows}
    for ocrd in ("scan", "photo"):
        assert metadata[ocrd]["ocr"] is True and 0 < metadata[ocrd]["ocr_confidence"] <= 100, metadata[ocrd]
    assert "ocr" not in metadata["word97"]
    for query, document_id in (("consectetur adipiscing", "scan"), ("emergency alert system", "photo"),
                               ("hipsum", "word97")):
        answer = await search(api, "kb_scans", query, mode="keyword", top_k=3)
        assert answer["results"] and answer["results"][0]["document_id"] == document_id, (query, answer)


async def test_a_kb_embedded_with_another_model_refuses_vector_search_clearly(
        api: ApiClient, db: asyncpg.Connection) -> None:
    task = await ingest(api, "kb_models", "txt-zh-gb18030.txt")
    assert task["status"] == "completed", task["error"]
    # As if the kb had been embedded before the workers switched models.
    for table in ("kb_documents", "kb_chunks"):
        await db.execute(f"UPDATE {table} SET embedding_model = 'local:all-MiniLM-L6-v2' WHERE kb_id = 'kb_models'")
    status, body = await api.call("POST", "/api/v1/kbs/kb_models/search", json={"query": "派森", "mode": "vector"})
    assert status == 409, body
    message = body["error"]["message"]
    assert "local:all-MiniLM-L6-v2" in message and "openai:fake-embed-1" in message and "re-process" in message
    hybrid = await search(api, "kb_models", "派森")
    assert hybrid["mode"] == "keyword" and hybrid["embedding_model"] is None
    assert hybrid["results"] and "keyword results only" in hybrid["warnings"][0]


async def test_a_documents_chunks_page_in_order_with_pages_sections_and_ocr(
        api: ApiClient, pipeline: PipelineFleet) -> None:
    task = await ingest(api, "kb_chunks_view", "pdf-multipage-dpr-13p.pdf", document_id="dpr")
    assert task["status"] == "completed", task["error"]
    seen: list[dict[str, object]] = []
    cursor = None
    while True:
        query = "?limit=7" + (f"&cursor={cursor}" if cursor else "")
        status, page = await api.call("GET", f"/api/v1/kbs/kb_chunks_view/documents/dpr/chunks{query}")
        assert status == 200, page
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [c["chunk_index"] for c in seen] == list(range(task["result"]["chunk_count"])), "every chunk, in order"
    assert all(c["pages"] and c["ocr"] is False and c["content"] for c in seen)
    assert seen[0]["pages"] == [1] and 13 in seen[-1]["pages"]  # type: ignore[operator]
    if shutil.which("tesseract"):
        scan = await ingest(api, "kb_chunks_view", "pdf-scanned-image-only.pdf", document_id="scan",
                            ocr_languages="eng")
        status, page = await api.call("GET", "/api/v1/kbs/kb_chunks_view/documents/scan/chunks")
        assert status == 200 and scan["status"] == "completed" and page["items"][0]["ocr"] is True
        assert "ocr_confidence" in page["items"][0]["metadata"]
    for bad, field in (("?limit=0", "limit"), ("?cursor=abc", "cursor"), ("?cursor=-1", "cursor")):
        status, body = await api.call("GET", f"/api/v1/kbs/kb_chunks_view/documents/dpr/chunks{bad}")
        assert status == 422 and body["error"]["details"][0]["field"] == field, body
    status, _ = await api.call("GET", "/api/v1/kbs/kb_chunks_view/documents/nope/chunks")
    assert status == 404
    # The CLI pages the same way.
    taskmgr = os.path.join(os.path.dirname(sys.executable), "taskmgr")
    done = await asyncio.to_thread(
        subprocess.run, [taskmgr, "chunks", "kb_chunks_view", "dpr", "--limit", "2"],
        env=pipeline.fleet.env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert [c["chunk_index"] for c in printed["items"]] == [0, 1] and printed["next_cursor"] == "1"


async def test_reprocessing_a_document_with_new_parameters(api: ApiClient, db: asyncpg.Connection,
                                                            pipeline: PipelineFleet) -> None:
    first = await ingest(api, "kb_reprocess", "md-pypdf-extract-text.md", document_id="guide", title="Guide")
    assert first["status"] == "completed", first["error"]
    path = "/api/v1/kbs/kb_reprocess/documents/guide/reprocess"
    status, created = await api.call("POST", path, json={"payload": {"chunk_size": 3000, "chunk_overlap": 100}})
    assert status == 202, created
    again = await api.wait_for(created["task_id"], timeout=120)
    assert again["status"] == "completed", again["error"]
    assert again["result"]["document_id"] == "guide"
    assert again["result"]["replaced_chunks"] == first["result"]["chunk_count"]
    assert again["result"]["chunk_count"] < first["result"]["chunk_count"], "bigger chunks, fewer of them"
    stored = await db.fetchval("SELECT payload FROM tasks WHERE id = $1", created["task_id"])
    payload = json.loads(stored)
    assert payload["file_path"] == "md-pypdf-extract-text.md" and payload["title"] == "Guide", "the rest is kept"
    assert payload["chunk_size"] == 3000
    for body, field in (({"payload": {"file_path": "other.md"}}, "payload.file_path"),
                        ({"payload": {"chunk_size": 5}}, "payload.chunk_size"), ({"extra": 1}, "extra")):
        status, answer = await api.call("POST", path, json=body)
        assert status == 422 and answer["error"]["details"][0]["field"] == field, answer
    status, _ = await api.call("POST", "/api/v1/kbs/kb_reprocess/documents/nope/reprocess", json={})
    assert status == 404
    taskmgr = os.path.join(os.path.dirname(sys.executable), "taskmgr")
    done = await asyncio.to_thread(
        subprocess.run,
        [taskmgr, "reprocess", "kb_reprocess", "guide", "--payload", '{"chunk_size": 1000, "chunk_overlap": 200}',
         "--wait"],
        env=pipeline.fleet.env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["result"]["chunk_count"] == first["result"]["chunk_count"]


async def test_a_failing_shard_fails_the_document_naming_its_pages_and_a_retry_shards_again(
        api: ApiClient, embeddings: FakeEmbeddingServer, db: asyncpg.Connection) -> None:
    # chunk_size 600: texts no other test here embeds, so no vector comes from the cache.
    body = document("kb_shard_fail", "pdf-with-blank-pages-4p.pdf", shard_pages=1, chunk_size=600,
                    chunk_overlap=100)
    embeddings.script.append(Scripted(400, {"error": {"message": "input rejected by the endpoint"}}))
    failed = await api.run(body, timeout=120)
    assert failed["status"] == "failed" and failed["error"]["stage"] == "embed", (failed["error"], failed["attempts"])
    message = failed["error"]["message"]
    assert re.match(r"pages (\d)-\1 \(shard [14] of 4\): ", message) and "input rejected" in message, message
    assert await db.fetchval("SELECT count(*) FROM kb_chunks WHERE kb_id = 'kb_shard_fail'") == 0

    status, _ = await api.call("POST", f"/api/v1/tasks/{failed['task_id']}/retry")
    assert status in (200, 202)
    again = await api.wait_for(failed["task_id"], timeout=120)
    assert again["status"] == "completed" and again["run"] == 2, again["error"]
    assert again["result"]["embedding"]["shards"] == 4
    assert await db.fetchval("SELECT count(*) FROM kb_chunks WHERE kb_id = 'kb_shard_fail'") == \
        again["result"]["chunk_count"]
