"""Document pipeline throughput on the corpus, end to end, beside the
embedding-only throughput of the same model on the same chunks.

    python -m bench.pipeline --corpus ../shared/corpus            # against the fleet at API_URL
    python -m bench.pipeline --json                               # machine-readable

The fleet must be running (`taskmgr up`) with the corpus readable under its
first UPLOAD_ROOT: the files are copied into `<root>/bench-pipeline/`. Every
corpus file is submitted at once; the wall time runs from the first task's
creation to the last one's end, as the task rows record them. Documents the
manifest says must fail are counted apart. Then the chunks the fleet stored
are embedded again here, with the fleet's embedding settings (same backend,
model and batch size) and nothing else running: that is the embedding-only
rate. To measure cold, the cache entries of the bench KB's chunks from an
earlier run are deleted first (the result says how many vectors still came
from the cache).

`measure_pipeline(...)` is the function behind the CLI; `measure(ctx)` is the
section of `make bench` (it starts a pipeline fleet of its own).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from shared.db.local_server import connect_kwargs
from shared.fleet import PIPELINE_STAGES
from shared.settings import EmbeddingSettings, PostgresSettings, Settings

BENCH_KB = "bench-pipeline"
TERMINAL = {"completed", "failed", "cancelled"}


@dataclass(frozen=True)
class PipelineMeasurement:
    documents: int  # completed
    failed: int  # ended failed (the corpus holds files that must fail)
    chunks: int
    characters: int
    seconds: float
    documents_per_second: float
    chunks_per_second: float
    embedding_only_seconds: float
    embedding_only_chunks_per_second: float
    ratio: float  # end-to-end chunks/s over embedding-only chunks/s
    vectors_from_cache: int
    backend: str
    model: str
    batch_size: int
    chunk_size: int
    chunk_overlap: int
    stage_seconds: dict[str, float]  # summed over documents


async def measure_pipeline(
    *, api_url: str, corpus_dir: Path, upload_root: Path, postgres: PostgresSettings,
    embedding: EmbeddingSettings, chunk_size: int = 1000, chunk_overlap: int = 200, timeout: float = 3600,
    only: tuple[str, ...] | None = None,
) -> PipelineMeasurement:
    files = _stage_corpus(corpus_dir, upload_root / "bench-pipeline", only)
    conn = await asyncpg.connect(**connect_kwargs(postgres))
    try:
        await _forget_previous_run(conn)
        async with aiohttp.ClientSession(base_url=api_url.rstrip("/") + "/") as http:
            tasks = await _run_corpus(http, files, chunk_size, chunk_overlap, timeout)
        completed = [t for t in tasks if t["status"] == "completed"]
        texts = [r["content"] for r in await conn.fetch(
            "SELECT content FROM kb_chunks WHERE kb_id = $1 ORDER BY document_id, chunk_index", BENCH_KB)]
    finally:
        await conn.close()
    start = min(_time(t["created_at"]) for t in tasks)
    end = max(_time(t["finished_at"]) for t in tasks)
    seconds = end - start
    chunks = sum(t["result"]["chunk_count"] for t in completed)
    embed_seconds = await embedding_only_seconds(embedding, texts)
    stage_seconds: dict[str, float] = {}
    for task in completed:
        for stage, value in task["result"]["durations"].items():
            stage_seconds[stage] = round(stage_seconds.get(stage, 0.0) + value, 3)
    first = completed[0]["result"]["embedding"] if completed else {"backend": "?", "model": "?"}
    return PipelineMeasurement(
        documents=len(completed), failed=len(tasks) - len(completed), chunks=chunks,
        characters=sum(t["result"]["characters"] for t in completed), seconds=round(seconds, 3),
        documents_per_second=round(len(completed) / seconds, 3), chunks_per_second=round(chunks / seconds, 2),
        embedding_only_seconds=round(embed_seconds, 3),
        embedding_only_chunks_per_second=round(len(texts) / embed_seconds, 2),
        ratio=round((chunks / seconds) / (len(texts) / embed_seconds), 3),
        vectors_from_cache=sum(t["result"]["embedding"]["cached"] for t in completed),
        backend=first["backend"], model=first["model"], batch_size=embedding.batch_size,
        chunk_size=chunk_size, chunk_overlap=chunk_overlap, stage_seconds=stage_seconds,
    )


async def embedding_only_seconds(settings: EmbeddingSettings, texts: list[str]) -> float:
    """Embed `texts` in batches of EMBEDDING_BATCH_SIZE, one batch at a time, as the embed stage's model does."""
    from services.worker.embedding import create_embedder

    embedder = create_embedder(settings)
    await embedder.start()
    try:
        await embedder.embed(texts[: settings.batch_size])  # warm-up: first-call allocations
        started = time.perf_counter()
        for i in range(0, len(texts), settings.batch_size):
            await embedder.embed(texts[i : i + settings.batch_size])
        return time.perf_counter() - started
    finally:
        await embedder.close()


# The smoke test's pipeline run: two small text files, enough to prove the section works.
QUICK_FILES = ("txt-zh-gb18030.txt", "md-pypdf-extract-text.md")
RATIO_TARGET = 0.85


def default_corpus_dir() -> Path:
    import os

    return Path(os.environ.get("CORPUS_DIR") or Path(__file__).resolve().parents[2] / "shared" / "corpus")


async def measure(ctx: Any) -> Any:
    """The harness section (see bench/sections.py): a fleet with one worker per
    pipeline stage, the corpus through it, then embedding-only on the same chunks."""
    from bench.report import Row, Section, verdict

    section = Section("5. Pipeline: document_processing on the corpus, beside embedding only")
    corpus = default_corpus_dir()
    if not (corpus / "MANIFEST.md").exists():
        section.rows.append(Row("pipeline", f"skipped: no corpus at {corpus} (set CORPUS_DIR)"))
        return section
    upload_root = ctx.log_dir / "pipeline-uploads"
    upload_root.mkdir(parents=True, exist_ok=True)
    env = {"UPLOAD_ROOTS": str(upload_root)}
    processes = [ctx.fleet.api(**env), ctx.fleet.dispatcher(**env),
                 *(ctx.fleet.worker(stage, **env) for stage in PIPELINE_STAGES)]
    try:
        for process in processes:
            await process.start(timeout=120)  # the embed worker loads its model first
        result = await measure_pipeline(
            api_url=ctx.fleet.api_url, corpus_dir=corpus, upload_root=upload_root, postgres=ctx.environment.postgres,
            embedding=EmbeddingSettings(), timeout=ctx.budget(600), only=QUICK_FILES if ctx.sizes.quick else None,
        )
        embed_rss = next(p for p in processes if p.name.endswith("embed")).rss()
    finally:
        for process in processes:
            process.stop()
    section.rows += [
        Row(f"end to end: {result.documents} documents ({result.failed} failed as the manifest says), "
            f"{result.chunks:,} chunks", f"{result.documents_per_second:.3f} documents/s, "
            f"{result.chunks_per_second:.2f} chunks/s"),
        Row(f"embedding only: {result.backend} {result.model}, batch {result.batch_size}, the same chunks",
            f"{result.embedding_only_chunks_per_second:.2f} chunks/s",
            compared_with="end-to-end chunks/s", ratio=f"{result.ratio:.0%}",
            target=f"≥ {RATIO_TARGET:.0%}", verdict=verdict(result.ratio >= RATIO_TARGET)),
        Row("embed worker RSS after the run (model loaded)", f"{embed_rss / 2**20:.0f} MB"),
    ]
    section.notes.append(f"stage time summed over documents (s): {result.stage_seconds}; "
                         f"vectors from the cache: {result.vectors_from_cache}")
    return section


def _stage_corpus(corpus_dir: Path, target: Path, only: tuple[str, ...] | None = None) -> list[str]:
    if not (corpus_dir / "MANIFEST.md").exists():
        raise SystemExit(f"no corpus at {corpus_dir} (expected MANIFEST.md there)")
    target.mkdir(parents=True, exist_ok=True)
    names = []
    for path in sorted(corpus_dir.iterdir()):
        if only is not None and path.name not in only:
            continue
        if path.is_file() and path.name != "MANIFEST.md":
            shutil.copy(path, target / path.name)
            names.append(str(target / path.name))
    return names


async def _forget_previous_run(conn: asyncpg.Connection) -> None:
    """Cold cache: drop the vectors a previous bench run cached for this KB's chunks, and the KB itself."""
    await conn.execute(
        """DELETE FROM embedding_cache e USING kb_chunks c
           WHERE c.kb_id = $1 AND e.model = c.embedding_model
             AND e.text_sha256 = sha256(convert_to(c.content, 'UTF8'))""", BENCH_KB)
    await conn.execute("DELETE FROM kb_chunks WHERE kb_id = $1", BENCH_KB)
    await conn.execute("DELETE FROM kb_documents WHERE kb_id = $1", BENCH_KB)


async def _run_corpus(http: aiohttp.ClientSession, files: list[str], chunk_size: int, chunk_overlap: int,
                      timeout: float) -> list[dict[str, Any]]:
    ids = []
    for path in files:
        body = {"task_type": "document_processing", "kb_id": BENCH_KB, "retry_limit": 0,
                "payload": {"file_path": path, "chunk_size": chunk_size, "chunk_overlap": chunk_overlap}}
        async with http.post("api/v1/tasks", json=body) as response:
            created = await response.json()
            if response.status != 201:
                raise SystemExit(f"submitting {path} failed: {response.status} {created}")
            ids.append(created["task_id"])
    deadline = time.monotonic() + timeout
    finals: dict[str, dict[str, Any]] = {}
    while len(finals) < len(ids):
        if time.monotonic() > deadline:
            raise SystemExit(f"{len(ids) - len(finals)} task(s) still running after {timeout:g}s")
        for task_id in ids:
            if task_id not in finals:
                async with http.get(f"api/v1/tasks/{task_id}") as response:
                    task = await response.json()
                    if response.status != 200:  # e.g. a 503 while a dependency restarts: ask again
                        print(f"reading task {task_id}: HTTP {response.status} {task}", file=sys.stderr)
                        continue
                if task["status"] in TERMINAL:
                    finals[task_id] = task
        await asyncio.sleep(0.2)
    return [finals[task_id] for task_id in ids]


def _time(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()  # Python 3.11 reads the trailing Z


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=Path("../shared/corpus"))
    parser.add_argument("--api-url", help="default: API_URL")
    parser.add_argument("--chunk-size", type=int, default=1000)
    parser.add_argument("--chunk-overlap", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    result = asyncio.run(measure_pipeline(
        api_url=args.api_url or settings.service.api_url, corpus_dir=args.corpus,
        upload_root=settings.files.upload_roots[0], postgres=settings.postgres, embedding=settings.embedding,
        chunk_size=args.chunk_size, chunk_overlap=args.chunk_overlap,
    ))
    if args.json:
        json.dump(asdict(result), sys.stdout, indent=2)
        print()
        return
    print(f"pipeline, end to end: {result.documents} documents ({result.failed} failed as the manifest expects), "
          f"{result.chunks} chunks, {result.characters:,} characters in {result.seconds:.1f}s")
    print(f"  {result.documents_per_second:.2f} documents/s, {result.chunks_per_second:.1f} chunks/s")
    print(f"embedding only ({result.backend} {result.model}, batch {result.batch_size}): "
          f"{result.embedding_only_chunks_per_second:.1f} chunks/s")
    print(f"end-to-end / embedding-only: {result.ratio:.0%}   (vectors from cache: {result.vectors_from_cache})")
    print(f"stage time summed over documents: {result.stage_seconds}")


if __name__ == "__main__":
    main()
