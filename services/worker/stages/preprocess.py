"""`preprocess`: validate the file and convert it to structured text.

The file must resolve inside UPLOAD_ROOTS (or be an upload, `file_ref`) and
fit MAX_FILE_BYTES; its type is detected from its content. Parsing runs in a
killable child process (a timed-out or cancelled parse stops burning CPU) and
streams blocks through a spool file, which this stage copies into the run's
staging while the parse goes on, reporting progress by page/slide/sheet.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import shutil
import tempfile
from dataclasses import asdict, replace
from pathlib import Path, PurePath
from typing import Any, BinaryIO, Self

from loguru import logger

from services.worker.attempt import AttemptContext
from services.worker.documents.blocks import Block, SpoolProgress, read_spool_lines
from services.worker.documents.errors import DocumentError
from services.worker.documents.extract import (
    ExtractionJob,
    ExtractionSummary,
    count_pdf_pages,
    extract_document,
    no_text,
)
from services.worker.pipeline import shards, staging
from services.worker.pipeline.stage import PipelineStage
from services.worker.stages.base import StageHandler, StageOutput
from shared.errors import Retryable
from shared.file_access import FileAccessError, resolve_within_roots
from shared.messages import TaskMessage
from shared.settings import Settings
from shared.task_types import TaskTypeRegistry
from shared.task_types.document_processing import DocumentProcessingPayload
from shared.uploads import UploadStore

COPY_BATCH = 500
POLL_SECONDS = 0.2


def build(settings: Settings, registry: TaskTypeRegistry) -> StageHandler:
    return PreprocessStage(settings)


class PreprocessStage(PipelineStage):
    name = "preprocess"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._uploads = UploadStore(settings.files.upload_store_root)
        self._spool_dir: Path | None = None

    async def start(self) -> None:
        await super().start()
        self._spool_dir = Path(tempfile.mkdtemp(prefix="taskmgr-spool-"))

    async def close(self) -> None:
        if self._spool_dir is not None:
            shutil.rmtree(self._spool_dir, ignore_errors=True)
        await super().close()

    async def run(self, task: TaskMessage, ctx: AttemptContext) -> StageOutput:
        payload = self.payload(task)
        path, name, source = self._locate(payload)
        document_id = payload.document_id or default_document_id(path, payload.file_ref)
        await self.plan(ctx, PurePath(name).suffix.lstrip(".").lower() or "*", path.stat().st_size, None)
        assert self._spool_dir is not None and task.kb_id is not None
        shard = task.context.get("shard")
        # Shards of one task may parse side by side in this worker: a spool file each.
        part = "" if shard is None else f"-{shard['index']}"
        spool = self._spool_dir / f"{task.task_id}-{task.run}{part}.jsonl"
        job = ExtractionJob(
            path=str(path), name=name, spool_path=str(spool), max_bytes=self.settings.files.max_file_bytes,
            max_chars=self.settings.pipeline.max_document_chars,
            password=payload.password.get_secret_value() if payload.password else None,
            ocr_enabled=self.settings.pipeline.ocr_enabled,
            ocr_languages=payload.ocr_languages or self.settings.pipeline.ocr_languages,
            tesseract_cmd=self.settings.pipeline.tesseract_cmd, antiword_cmd=self.settings.pipeline.antiword_cmd,
        )
        if shard is None:
            async with self.pool.acquire() as conn:
                await staging.open_run(conn, task.task_id, task.run, kb_id=task.kb_id, document_id=document_id,
                                       source=source)
            ranges = shards.page_ranges(await ctx.run_cpu(count_pdf_pages, job), self._shard_pages(payload))
            if ranges:  # a long PDF: every free preprocess worker parses a page range (decision 0170)
                return StageOutput(fan_out=shards.shard_contexts(ranges))
            first_seq, end_seq = 0, 2**31 - 1
        else:
            job = replace(job, first_page=int(shard["first_page"]), last_page=int(shard["last_page"]))
            first_seq, end_seq = shards.block_seqs(shard)
            await staging.drop_blocks(self.pool, task.task_id, task.run, first_seq, end_seq)  # an earlier attempt's
        try:
            summary = await self._extract(job, task, ctx, first_seq, end_seq, finish=shard is None)
        except BaseException:
            # A retry or a resubmission starts the parse over: drop what this attempt staged.
            if shard is None:
                await asyncio.shield(staging.drop_run(self.pool, task.task_id, task.run))
            else:
                await asyncio.shield(staging.drop_blocks(self.pool, task.task_id, task.run, first_seq, end_seq))
            raise
        finally:
            spool.unlink(missing_ok=True)
        if shard is not None:
            finished = await shards.mark_done(self.pool, task.task_id, task.run, self.name, shard, asdict(summary))
            if len(finished) < shard["count"]:
                await ctx.progress(95 * len(finished) / shard["count"])  # progress counts finished shards
                return StageOutput(hold=True)
            summary = self._whole(job, [finished[str(i)] for i in range(shard["count"])])
            async with self.pool.acquire() as conn:
                await staging.finish_extraction(conn, task.task_id, task.run, summary)
        for warning in summary.warnings:
            logger.info("document warning: {}", warning)
        return StageOutput(context={
            "document_id": document_id, "content_type": summary.content_type, "file_bytes": summary.file_bytes,
            "characters": summary.characters, "pages": summary.pages, "blocks": summary.blocks,
            "title": payload.title or summary.title, "source": source, "warnings": summary.warnings,
        })

    def _locate(self, payload: DocumentProcessingPayload) -> tuple[Path, str, str]:
        """The checked real path, the name whose extension is compared with the
        content, and the source shown to users."""
        roots = self.settings.files.upload_roots
        if payload.file_ref is not None:
            stored = self._uploads.path_for(payload.file_ref)
            meta = _upload_meta(self._uploads, payload.file_ref)
            name = str(meta.get("filename") or "")  # as the upload endpoint recorded it
            return resolve_within_roots(str(stored), roots), PurePath(name).name, name or payload.file_ref
        assert payload.file_path is not None
        real = resolve_within_roots(payload.file_path, roots, store=self._uploads.root)
        root = next(r for r in roots if real.is_relative_to(r))
        return real, real.name, str(real.relative_to(root))

    def _shard_pages(self, payload: DocumentProcessingPayload) -> int:
        return payload.shard_pages if payload.shard_pages is not None else self.settings.pipeline.shard_pages

    def _whole(self, job: ExtractionJob, parts: list[dict[str, Any]]) -> ExtractionSummary:
        """The document's summary from its shards' (in page order), as one parse would give it."""
        first = parts[0]
        characters = sum(int(p["characters"]) for p in parts)
        if characters == 0:
            raise no_text(first["pages"], job)
        if characters > job.max_chars:
            raise DocumentError(f"the document holds more than {job.max_chars:,} characters of text "
                                "(MAX_DOCUMENT_CHARS)")
        metadata: dict[str, Any] = {}
        for part in parts:
            for key, value in part["metadata"].items():
                if key == "ocr_pages" and key in metadata:
                    value = f"{metadata[key]}, {value}"
                metadata[key] = value
        return ExtractionSummary(
            content_type=first["content_type"], file_bytes=first["file_bytes"], sha256=first["sha256"],
            characters=characters, blocks=sum(int(p["blocks"]) for p in parts), title=first["title"],
            pages=first["pages"], metadata=metadata, warnings=[w for p in parts for w in p["warnings"]][:20])

    async def _extract(self, job: ExtractionJob, task: TaskMessage, ctx: AttemptContext, first_seq: int,
                       end_seq: int, *, finish: bool) -> ExtractionSummary:
        parse = asyncio.ensure_future(ctx.run_cpu(extract_document, job))
        seq = first_seq
        pending: list[Block] = []
        try:
            with _SpoolTail(Path(job.spool_path)) as tail:
                while True:
                    finished = parse.done()
                    for item in read_spool_lines(tail.new_lines()):
                        if isinstance(item, SpoolProgress):
                            if item.total:
                                await ctx.progress(95 * item.done / item.total)
                            continue
                        pending.append(item)
                        if len(pending) >= COPY_BATCH:
                            seq = await self._copy(task, seq, pending)
                    if finished:
                        break
                    await asyncio.wait({parse}, timeout=POLL_SECONDS)
            summary = _result(parse)
            seq = await self._copy(task, seq, pending)
            if seq > end_seq:
                raise DocumentError(f"a shard of this PDF holds more than {end_seq - first_seq:,} blocks")
            if finish:
                async with self.pool.acquire() as conn:
                    await staging.finish_extraction(conn, task.task_id, task.run, summary)
            return summary
        finally:
            if not parse.done():
                parse.cancel()  # kills the parsing child
                with contextlib.suppress(BaseException):
                    await parse

    async def _copy(self, task: TaskMessage, seq: int, blocks: list[Block]) -> int:
        if blocks:
            async with self.pool.acquire() as conn:
                await staging.copy_blocks(conn, task.task_id, task.run, seq, blocks)
            seq += len(blocks)
            blocks.clear()
        return seq


def _result(parse: asyncio.Future[ExtractionSummary]) -> ExtractionSummary:
    try:
        return parse.result()
    except Exception as exc:
        from pebble import ProcessExpired

        if isinstance(exc, ProcessExpired):
            raise Retryable(f"the parser process died (exit code {exc.exitcode}); it may have run out of memory") \
                from None
        raise


def default_document_id(path: Path, file_ref: str | None) -> str:
    """Stable per file: re-processing the same file replaces its chunks."""
    if file_ref is not None:
        return file_ref
    return "doc_" + hashlib.sha256(str(path).encode()).hexdigest()[:24]


def _upload_meta(store: UploadStore, file_ref: str) -> dict[str, object]:
    try:
        return store.meta(file_ref)
    except (FileAccessError, ValueError):
        return {}


class _SpoolTail:
    """Reads the complete lines appended to a file since the last read."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._handle: BinaryIO | None = None
        self._partial = b""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.close()

    def new_lines(self) -> list[bytes]:
        if self._handle is None:
            try:
                self._handle = open(self._path, "rb")  # noqa: SIM115 - closed in __exit__
            except FileNotFoundError:
                return []
        data = self._partial + self._handle.read()
        lines = data.split(b"\n")
        self._partial = lines.pop()
        return lines
