"""Streaming an upload into the upload store: never whole in memory, capped at
MAX_FILE_BYTES, hashed (SHA-256) as it arrives, its type sniffed from its
first bytes. Written under `.incoming/` and moved into place only after its
row committed, so a crash leaves no half-visible upload (the sweeper removes
stale `.incoming/` entries)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import puremagic
from aiohttp import BodyPartReader, web

from shared.errors import PayloadTooLarge

SNIFF_BYTES = 8192
INCOMING = ".incoming"
_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\]")


@dataclass(frozen=True)
class StoredFile:
    file_ref: str
    directory: Path  # under .incoming until committed
    filename: str | None
    size: int
    sha256: str
    content_type: str


async def receive(part: BodyPartReader, store_root: Path, file_ref: str, *, max_bytes: int,
                  too_large: str | None = None, stall_seconds: float | None = None) -> StoredFile:
    """Stream one multipart part to `<store>/.incoming/<ref>/content`; past
    `max_bytes`, 413 with `too_large` (default: the MAX_FILE_BYTES message)."""
    directory = store_root / INCOMING / file_ref
    await asyncio.to_thread(directory.mkdir, parents=True, mode=0o700)
    sha, size, head = hashlib.sha256(), 0, b""
    # O_EXCL|O_NOFOLLOW: a fresh regular file, never through a planted symlink.
    fd = os.open(directory / "content", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := await _next_chunk(part, stall_seconds):
                size += len(chunk)
                if size > max_bytes:
                    raise PayloadTooLarge(too_large or f"the file exceeds the limit of {max_bytes} bytes "
                                                       "(MAX_FILE_BYTES)")
                sha.update(chunk)
                if len(head) < SNIFF_BYTES:
                    head += chunk[: SNIFF_BYTES - len(head)]
                await asyncio.to_thread(out.write, chunk)
    except BaseException:
        await discard(directory)
        raise
    return StoredFile(file_ref, directory, clean_filename(part.filename), size, sha.hexdigest(), sniff(head))


async def _next_chunk(part: BodyPartReader, stall_seconds: float | None) -> bytes:
    """A chunk, or 408 when the client sends nothing for `stall_seconds` (a slow body holds a handler)."""
    try:
        async with asyncio.timeout(stall_seconds):
            return await part.read_chunk(256 * 1024)
    except TimeoutError:
        raise web.HTTPRequestTimeout(
            text=f"the upload stalled for {stall_seconds:g}s (API_BODY_TIMEOUT)") from None


def write_meta(stored: StoredFile, kb_id: str, created_at: datetime) -> None:
    meta: dict[str, Any] = {
        "file_ref": stored.file_ref, "kb_id": kb_id, "filename": stored.filename, "size": stored.size,
        "sha256": stored.sha256, "content_type": stored.content_type, "created_at": created_at.isoformat(),
    }
    (stored.directory / "meta.json").write_text(json.dumps(meta, ensure_ascii=False))


def publish(stored: StoredFile, store_root: Path) -> Path:
    """Move the upload from .incoming into the store (an atomic rename)."""
    final = store_root / stored.file_ref
    os.replace(stored.directory, final)
    return final


async def discard(directory: Path) -> None:
    await asyncio.to_thread(shutil.rmtree, directory, True)


def sniff(head: bytes) -> str:
    """The content type the bytes say, not what the client claimed."""
    if not head:
        return "application/x-empty"
    try:
        return puremagic.from_string(head, mime=True) or _text_or_binary(head)
    except (puremagic.PureError, ValueError):
        return _text_or_binary(head)


def _text_or_binary(head: bytes) -> str:
    if b"\x00" in head:
        return "application/octet-stream"
    for encoding in ("utf-8", "gb18030"):
        try:
            head.decode(encoding)
        except UnicodeDecodeError as exc:
            if exc.start >= len(head) - 4:  # a character cut by the sniff window
                return "text/plain"
            continue
        return "text/plain"
    return "application/octet-stream"


def clean_filename(name: str | None) -> str | None:
    """The client's file name as metadata only (never a path): no directories,
    no control characters, at most 255 characters."""
    if not name:
        return None
    # Clients may percent-encode (RFC 7578); decode first so "%2F" cannot smuggle a separator.
    name = unicodedata.normalize("NFC", unquote(name)).replace("\\", "/").rsplit("/", 1)[-1]
    name = _UNSAFE.sub("_", name).strip(" .")
    return name[:255] or None
