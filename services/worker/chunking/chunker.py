"""Blocks in, chunks out: streaming, with a hard size cap and overlap.

The document text is the blocks' texts joined by a blank line; every chunk is
an exact slice of it, so `char_start`/`char_end` locate it and nothing is
rewritten. Rules:

- `chunk_size` (characters) is a hard cap: no chunk is longer.
- A section break (heading, slide, sheet) starts a new chunk, except after a
  chunk holding only headings (a title directly followed by a subtitle).
- Blocks are packed whole while they fit; a block longer than the cap is cut
  at its strongest boundaries (`splitter`), so a code fence or a table that
  fits is never cut.
- A new chunk inside a section starts up to `chunk_overlap` characters back in
  the previous one, at the strongest boundary there (a sentence, else a word),
  never inside a code fence or table, and only as far as the cap allows.

Memory holds the current and previous chunk only, whatever the document size.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from services.worker.chunking.splitter import overlap_start, split_span
from services.worker.documents.blocks import Block

BLOCK_SEPARATOR = "\n\n"
_ATOMIC = {"code", "table"}


@dataclass(frozen=True)
class Chunk:
    index: int
    content: str
    char_start: int
    char_end: int
    pages: tuple[int, ...]
    heading_path: tuple[str, ...]
    meta: dict[str, Any]


@dataclass(frozen=True)
class _Piece:
    start: int
    end: int
    block: Block


class Chunker:
    def __init__(self, size: int, overlap: int) -> None:
        if not 0 <= overlap < size:
            raise ValueError(f"overlap ({overlap}) must be at least 0 and below size ({size})")
        self.size = size
        self.overlap = overlap
        self._buffer = ""  # document text from _buffer_start to _end
        self._buffer_start = 0
        self._end = 0
        self._blocks = 0
        self._index = 0
        self._pieces: list[_Piece] = []  # the chunk being built
        self._chunk_start = 0
        self._previous: tuple[int, int, list[_Piece]] | None = None  # last chunk of this section

    @property
    def characters(self) -> int:
        """Length of the document text seen so far."""
        return self._end

    def add(self, block: Block) -> list[Chunk]:
        out: list[Chunk] = []
        if block.section_break:
            if self._pieces and not all(p.block.kind == "heading" for p in self._pieces):
                out.extend(self._emit())
            if not self._pieces:
                self._previous = None  # no overlap across a section break
        separator = BLOCK_SEPARATOR if self._blocks else ""
        self._blocks += 1
        start = self._end + len(separator)
        self._buffer += separator + block.text
        self._end = start + len(block.text)
        for a, b in self._split(start, self._end):
            out.extend(self._pack(_Piece(a, b, block)))
        return out

    def finish(self) -> list[Chunk]:
        return list(self._emit()) if self._pieces else []

    # --- packing ----------------------------------------------------------------------

    def _split(self, start: int, end: int) -> list[tuple[int, int]]:
        if end - start <= self.size:
            return [(start, end)]
        # Leave room for the overlap at the start of the next chunk.
        limit = max(1, self.size - self.overlap)
        offset = self._buffer_start
        return [(a + offset, b + offset) for a, b in split_span(self._buffer, start - offset, end - offset, limit)]

    def _pack(self, piece: _Piece) -> Iterator[Chunk]:
        if not self._pieces:
            self._open(piece)
            return
        if piece.end - self._chunk_start <= self.size:
            self._pieces.append(piece)
            return
        if self._adds_nothing():
            # Only the overlap and whitespace so far: such a chunk would repeat
            # the previous one. Start afresh at the piece (the gap is blank).
            self._chunk_start, self._pieces = piece.start, [piece]
            return
        yield from self._emit()
        self._open(piece)

    def _adds_nothing(self) -> bool:
        """True when the chunk being built holds no text beyond the previous chunk."""
        if self._previous is None:
            return False
        _, prev_end, _ = self._previous
        return not self._text(max(prev_end, self._chunk_start), self._pieces[-1].end).strip()

    def _open(self, piece: _Piece) -> None:
        """Start a chunk with `piece`, reaching back into the previous chunk for the overlap."""
        self._chunk_start = piece.start
        self._pieces = [piece]
        if self._previous is None or self.overlap == 0:
            return
        prev_start, prev_end, prev_pieces = self._previous
        window = max(prev_end - self.overlap, piece.end - self.size, prev_start + 1)
        for p in prev_pieces:  # never start inside a fence or a table
            if p.block.kind in _ATOMIC and p.start < window < p.end:
                window = p.end
        position = overlap_start(self._buffer, window - self._buffer_start, prev_end - self._buffer_start)
        if position is None:
            return
        start = position + self._buffer_start
        if not self._text(start, prev_end).strip():
            return
        self._chunk_start = start
        self._pieces = [p for p in prev_pieces if p.end > start] + [piece]

    def _emit(self) -> Iterator[Chunk]:
        """The chunk being built (none if it holds only whitespace, e.g. the tail of a cut)."""
        start, end = self._chunk_start, self._pieces[-1].end
        raw = self._text(start, end)
        lead = len(raw) - len(raw.lstrip())
        content = raw.strip()
        if not content:
            self._pieces = []
            return
        start += lead
        end = start + len(content)
        pieces = [p for p in self._pieces if p.end > start and p.start < end]
        chunk = Chunk(
            index=self._index,
            content=content,
            char_start=start,
            char_end=end,
            pages=tuple(sorted({p.block.page for p in pieces if p.block.page is not None})),
            heading_path=pieces[-1].block.heading_path,
            meta=_meta(pieces),
        )
        self._index += 1
        self._previous = (start, end, self._pieces)
        self._pieces = []
        self._trim(start)
        yield chunk

    def _text(self, start: int, end: int) -> str:
        return self._buffer[start - self._buffer_start : end - self._buffer_start]

    def _trim(self, keep_from: int) -> None:
        drop = keep_from - self._buffer_start
        if drop > 0:
            self._buffer = self._buffer[drop:]
            self._buffer_start = keep_from


def chunk_blocks(blocks: Iterable[Block], size: int, overlap: int) -> Iterator[Chunk]:
    chunker = Chunker(size, overlap)
    for block in blocks:
        yield from chunker.add(block)
    yield from chunker.finish()


def _meta(pieces: list[_Piece]) -> dict[str, Any]:
    """The kinds of text in the chunk, and the first/last location its blocks
    name (row, sheet, JSON path, chapter file)."""
    meta: dict[str, Any] = {"kinds": sorted({p.block.kind for p in pieces})}
    first: dict[str, Any] = {}
    last: dict[str, Any] = {}
    for piece in pieces:
        for key, value in (piece.block.meta or {}).items():
            first.setdefault(key, value)
            last[key] = value
    for key, value in first.items():
        meta[key] = value
        if last[key] != value:
            meta[f"{key}_end"] = last[key]
    return meta
