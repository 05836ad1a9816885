"""Terminal views built on the SDK, used by `taskmgr submit --wait`,
`taskmgr ingest` and `taskmgr top` (needs the `cli` extra: rich).

Progress goes to stderr, results to stdout, so `... | jq` still works.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tmclient.aio import AsyncClient
from tmclient.aio import Progress as TaskProgress
from tmclient.errors import ApiError
from tmclient.models import Task

STATE_FILE = ".taskmgr-ingest.json"
UPLOADS_AT_ONCE = 4
WAITS_AT_ONCE = 32

err = Console(stderr=True)


async def submit_and_follow(tm: AsyncClient, body: dict[str, Any], *, idempotency_key: str | None) -> Task:
    """Submit one task and show a live bar of its progress until it ends."""
    created = await tm.submit(idempotency_key=idempotency_key, **body)
    with _bar() as bar:
        line = bar.add_task(f"{body['task_type']} {created.task_id[:8]} queued", total=100)

        def show(p: TaskProgress) -> None:
            bar.update(line, completed=100 if p.status == "completed" else p.progress,
                       description=f"{body['task_type']} {created.task_id[:8]} {p.status}"
                                   + (f" ({p.stage})" if p.stage and p.status == "processing" else ""))

        return await tm.wait(created.task_id, on_progress=show)


@dataclass
class Entry:
    """What `ingest` remembers of one file, so a second run resubmits nothing finished."""

    sha256: str
    size: int
    file_ref: str | None = None
    task_id: str | None = None
    status: str | None = None
    error: str | None = None


async def ingest(tm: AsyncClient, folder: Path, kb_id: str, *, task_type: str = "document_processing",
                 state_path: Path | None = None, retry_failed: bool = False) -> int:
    """Upload and submit every file under `folder` for `kb_id`; show one bar and
    end with a table. Finished files (in the state file, same content) are not
    sent again; an interrupted run resumes: a file whose task was submitted is
    only waited for, and one that was uploaded is submitted with the same
    upload and idempotency key, so a crash between submit and saving the state
    returns the task it already created."""
    state_path = state_path or folder / STATE_FILE
    state = _load(state_path)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p != state_path and p.name != STATE_FILE)
    entries: dict[str, Entry] = {}
    for path in files:
        rel = str(path.relative_to(folder))
        digest, size = _digest(path)
        known = state.get(rel)
        entries[rel] = known if known and known.sha256 == digest else Entry(digest, size)
    skipped = sum(1 for e in entries.values() if e.status == "completed")

    with _bar() as bar:
        line = bar.add_task(f"ingest {kb_id}", total=len(entries), completed=skipped)
        uploads, waits = asyncio.Semaphore(UPLOADS_AT_ONCE), asyncio.Semaphore(WAITS_AT_ONCE)
        lock = asyncio.Lock()

        async def save() -> None:
            async with lock:
                _save(state_path, entries)

        async def one(rel: str, entry: Entry) -> None:
            if entry.status == "completed":
                return
            try:
                if entry.status in ("failed", "cancelled") and entry.task_id:
                    if not retry_failed:
                        bar.advance(line)
                        return
                    await tm.retry(entry.task_id)
                    entry.status = "queued"
                    await save()
                elif entry.task_id is None:
                    async with uploads:
                        if entry.file_ref is None:
                            entry.file_ref = (await tm.upload(kb_id, folder / rel)).file_ref
                            await save()  # a rerun submits this same upload: the same request, the same task
                        created = await tm.submit(task_type, {"file_ref": entry.file_ref}, kb_id=kb_id,
                                                  idempotency_key=f"ingest:{kb_id}:{entry.sha256}")
                    entry.task_id, entry.status = created.task_id, created.status
                    await save()
                async with waits:
                    task = await tm.wait(entry.task_id)  # type: ignore[arg-type]
                entry.status = task.status
                entry.error = (task.error or {}).get("message") if task.status != "completed" else None
            except ApiError as exc:
                entry.status, entry.error = "error", f"{exc.status} {exc.code}: {exc.message}"
            await save()
            bar.advance(line)

        await asyncio.gather(*(one(rel, entry) for rel, entry in entries.items()))

    table = Table(title=f"ingest {folder} -> {kb_id}")
    for column in ("file", "status", "task", "note"):
        table.add_column(column)
    for rel, entry in entries.items():
        note = entry.error or ("done before" if entry.status == "completed" and rel in state
                               and state[rel].status == "completed" else "")
        table.add_row(rel, entry.status or "-", entry.task_id or "-", note)
    Console().print(table)
    done = sum(1 for e in entries.values() if e.status == "completed")
    Console().print(f"{done} of {len(entries)} completed ({skipped} done before); state in {state_path}")
    return 0 if done == len(entries) else 2


async def top(tm: AsyncClient, *, interval: float = 2.0, iterations: int | None = None) -> int:
    """A live view of workers, queues and rates (admin: GET /api/v1/stats/*)."""
    count = 0
    with Live(console=Console(), refresh_per_second=4) as live:
        while iterations is None or count < iterations:
            live.update(await _top_view(tm))
            count += 1
            if iterations is None or count < iterations:
                await asyncio.sleep(interval)
    return 0


async def _top_view(tm: AsyncClient) -> Table:
    workers = await tm.raw("GET", "/api/v1/stats/workers")
    queues = await tm.raw("GET", "/api/v1/stats/queues")
    view = Table.grid(padding=1)
    wt = Table(title="workers")
    for column in ("worker", "stage", "state", "active", "slots", "processed", "failed", "last heartbeat"):
        wt.add_column(column)
    for w in workers.get("workers", []):
        wt.add_row(str(w["worker_id"]), str(w["stage"]), str(w["state"]), str(w["active"]), str(w["pool_size"]),
                   str(w["processed"]), str(w["failed"]), f"{w['last_heartbeat_age_seconds']:.1f}s ago")
    qt = Table(title=f"queues ({queues.get('source', '')})")
    for column in ("queue", "ready", "unacked", "consumers", "publish/s", "deliver/s"):
        qt.add_column(column)
    rows = [*queues.get("stages", []), *queues.get("retry", []), queues.get("dead_letter") or {}]
    for q in rows:
        if q:
            qt.add_row(str(q["queue"]), *(_figure(q.get(k)) for k in
                                          ("ready", "unacked", "consumers", "publish_rate", "deliver_rate")))
    view.add_row(wt)
    view.add_row(qt)
    return view


def _figure(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def _bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err, transient=False)


def _digest(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest(), path.stat().st_size


def _load(path: Path) -> dict[str, Entry]:
    try:
        raw = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return {rel: Entry(**e) for rel, e in raw.get("files", {}).items() if isinstance(e, dict)}


def _save(path: Path, entries: dict[str, Entry]) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"files": {rel: asdict(e) for rel, e in entries.items()}}, indent=1))
    os.replace(temporary, path)  # a crash leaves the old state or the new, never half of one
