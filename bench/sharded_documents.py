"""Time to searchable of a long PDF, sharded against unsharded (docs/decisions/0170).

A 304-page PDF (the corpus's 76-page booklet four times, written with pypdf, so
the file is the same on every run) goes through a fleet of its own with
`--embed-workers` embed workers, once with `shard_pages: 0` and once with the
shard size given, alternating, each with a cold embedding cache (the fleet runs
with EMBEDDING_CACHE=false). Embeddings come from a local OpenAI-compatible
endpoint that answers every request after a fixed latency (I/O-bound, like a
remote model), or from the local model with `--local`.

    .venv/bin/python -m bench.sharded_documents [--embed-workers 4] [--latency 0.2] [--shard-pages 50]
                                                [--rounds 2] [--local]

Time to searchable: the task's `created_at` to `finished_at` (the index stage
ends after the store transaction committed the chunks).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import shutil
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench.environment import create_environment, destroy_environment
from bench.fleet import Fleet
from bench.pipeline import default_corpus_dir
from shared.fleet import PIPELINE_STAGES
from tests.support.environment import free_port

SOURCE = "pdf-long-cancer-guide-76p.pdf"
COPIES = 4
DIMENSION = 64


def long_pdf(corpus: Path, target: Path) -> int:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter()
    for _ in range(COPIES):
        writer.append(PdfReader(corpus / SOURCE))
    with open(target, "wb") as out:
        writer.write(out)
    return len(PdfReader(target).pages)


def _vector(text: str) -> list[float]:
    raw = hashlib.sha256(text.encode()).digest() * 2
    values = [(b - 127.5) / 127.5 for b in raw[:DIMENSION]]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


async def fake_endpoint(latency: float) -> tuple[web.AppRunner, str]:
    async def embeddings(request: web.Request) -> web.Response:
        body = await request.json()
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        await asyncio.sleep(latency)
        return web.json_response({"object": "list", "model": body["model"], "data": [
            {"object": "embedding", "index": i, "embedding": _vector(t)} for i, t in enumerate(inputs)]})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/embeddings", embeddings)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}/v1"


async def time_to_searchable(api_url: str, name: str, shard_pages: int, round_no: int) -> dict[str, Any]:
    body = {"task_type": "document_processing", "kb_id": "bench-shards",
            "payload": {"file_path": name, "document_id": f"long-{shard_pages}-{round_no}",
                        "shard_pages": shard_pages}}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{api_url}/api/v1/tasks", json=body) as response:
            task_id = (await response.json())["task_id"]
        while True:
            async with http.get(f"{api_url}/api/v1/tasks/{task_id}") as response:
                task = await response.json()
            if task["status"] in ("completed", "failed", "cancelled"):
                break
            await asyncio.sleep(0.2)
    if task["status"] != "completed":
        raise RuntimeError(f"the document ended {task['status']}: {task['error']}")
    seconds = (datetime.fromisoformat(task["finished_at"]) - datetime.fromisoformat(task["created_at"]))
    result = task["result"]
    return {"shard_pages": shard_pages, "seconds": round(seconds.total_seconds(), 2),
            "chunks": result["chunk_count"], "shards": result["embedding"].get("shards", 1),
            "stage_seconds": result["durations"]}


async def measure(*, embed_workers: int = 4, latency: float = 0.2, shard_pages: int = 50, rounds: int = 2,
                  local: bool = False, report: bool = False) -> dict[str, Any]:
    """Time to searchable, unsharded and sharded, alternating, the best of `rounds` each."""
    corpus = default_corpus_dir()
    uploads = Path(tempfile.mkdtemp(prefix="bench-shards-"))
    name = f"long-{COPIES * 76}p.pdf"
    pages = long_pdf(corpus, uploads / name)
    env = await create_environment()
    runner = None
    fleet = Fleet(env, Path(tempfile.mkdtemp(prefix="bench-shards-logs-")))
    common = {"UPLOAD_ROOTS": str(uploads), "EMBEDDING_CACHE": "false", "WORKER_POOL_SIZE": "4"}
    if not local:
        runner, base_url = await fake_endpoint(latency)
        common |= {"EMBEDDING_BACKEND": "openai", "EMBEDDING_BASE_URL": base_url, "EMBEDDING_MODEL": "fake",
                   "EMBEDDING_API_KEY": "sk-bench", "EMBEDDING_DIMENSIONS": str(DIMENSION)}
    try:
        processes = [fleet.api(**common), fleet.dispatcher(**common)]
        for stage in PIPELINE_STAGES:
            for i in range(embed_workers if stage == "embed" else 1):
                process = fleet.worker(stage, **common)
                if stage == "embed":  # several of one stage: the table needs a name each
                    fleet.processes[f"worker-embed-{i}"] = fleet.processes.pop("worker-embed")
                    process.name = f"worker-embed-{i}"
                    process.log_path = process.log_path.with_name(f"worker-embed-{i}.log")
                processes.append(process)
        for process in processes:
            await process.start(timeout=180)
        runs = []
        for round_no in range(rounds):
            for pages_per_shard in (0, shard_pages):
                runs.append(await time_to_searchable(fleet.api_url, name, pages_per_shard, round_no))
                if report:
                    print(json.dumps(runs[-1]), flush=True)
        whole = [r["seconds"] for r in runs if r["shard_pages"] == 0]
        sharded = [r["seconds"] for r in runs if r["shard_pages"]]
        return {"pages": pages, "embed_workers": embed_workers, "slots_per_worker": 4, "shard_pages": shard_pages,
                "backend": "local" if local else f"fake openai, {latency}s per request",
                "unsharded_s": min(whole), "sharded_s": min(sharded),
                "speedup": round(min(whole) / min(sharded), 2)}
    finally:
        fleet.stop()
        if runner is not None:
            await runner.cleanup()
        await destroy_environment(env)
        shutil.rmtree(uploads, ignore_errors=True)


async def main(args: argparse.Namespace) -> None:
    print(json.dumps(await measure(embed_workers=args.embed_workers, latency=args.latency,
                                   shard_pages=args.shard_pages, rounds=args.rounds, local=args.local, report=True)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embed-workers", type=int, default=4)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--shard-pages", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--local", action="store_true")
    asyncio.run(main(parser.parse_args()))
