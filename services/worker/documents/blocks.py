"""Blocks: the structured text a parser produces, and the spool file that
carries them from the parsing child process to the stage."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import orjson

from services.worker.documents.errors import DocumentTooLarge

# C0/C1 controls other than tab and newline, and lone surrogates, never reach the text.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_BLANK_LINES = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")


@dataclass(frozen=True, slots=True)
class Block:
    text: str
    kind: str = "paragraph"  # heading | paragraph | list | table | code | row | notes | value
    page: int | None = None  # page (PDF), slide (PPTX); None where the format has none
    heading_path: tuple[str, ...] = ()
    section_break: bool = False  # the chunker starts a new chunk here (headings, slides, sheets)
    meta: dict[str, Any] | None = None

    def to_json(self) -> bytes:
        return orjson.dumps({"k": self.kind, "t": self.text, "p": self.page, "h": self.heading_path,
                             "b": self.section_break, "m": self.meta})

    @classmethod
    def from_json(cls, raw: bytes) -> Block:
        d = orjson.loads(raw)
        return cls(text=d["t"], kind=d["k"], page=d["p"], heading_path=tuple(d["h"]), section_break=d["b"],
                   meta=d["m"])


def clean_text(text: str) -> str:
    """Normalise newlines, drop control characters, squeeze runs of blank lines, trim."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = _BLANK_LINES.sub("\n\n", text)
    return text.strip()


@dataclass
class DocumentInfo:
    """What a parser learns about the document besides its blocks."""

    title: str | None = None
    pages: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def warn(self, message: str) -> None:
        if len(self.warnings) < 20:
            self.warnings.append(message)


class HeadingTracker:
    """The heading path at the current point of a document."""

    def __init__(self, base: tuple[str, ...] = ()) -> None:
        self._base = base
        self._stack: list[tuple[int, str]] = []

    def enter(self, level: int, text: str) -> tuple[str, ...]:
        while self._stack and self._stack[-1][0] >= level:
            self._stack.pop()
        self._stack.append((level, " ".join(text.split())[:200]))
        return self.path

    @property
    def path(self) -> tuple[str, ...]:
        return self._base + tuple(text for _, text in self._stack)


class SpoolWriter:
    """JSON lines of blocks (and progress marks), flushed as they come so the
    stage can copy them into staging while parsing goes on."""

    def __init__(self, handle: IO[bytes], *, max_chars: int) -> None:
        self._handle = handle
        self._max_chars = max_chars
        self.characters = 0
        self.blocks = 0

    def write(self, block: Block) -> None:
        text = clean_text(block.text)
        if not text:
            return
        if text is not block.text:
            block = Block(text, block.kind, block.page, block.heading_path, block.section_break, block.meta)
        self.characters += len(text)
        if self.characters > self._max_chars:
            raise DocumentTooLarge(
                f"the document holds more than {self._max_chars:,} characters of text (MAX_DOCUMENT_CHARS)"
            )
        self.blocks += 1
        self._handle.write(b"B" + block.to_json() + b"\n")

    def progress(self, done: int, total: int) -> None:
        self._handle.write(b"P" + orjson.dumps([done, total]) + b"\n")
        self._handle.flush()


@dataclass(frozen=True)
class SpoolProgress:
    done: int
    total: int


def read_spool_lines(lines: Iterable[bytes]) -> Iterator[Block | SpoolProgress]:
    for line in lines:
        if line.startswith(b"B"):
            yield Block.from_json(line[1:])
        elif line.startswith(b"P"):
            done, total = orjson.loads(line[1:])
            yield SpoolProgress(done, total)
