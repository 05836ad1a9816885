"""Plain text: paragraphs separated by blank lines, streamed (a huge file is
never held whole), in the encoding `decoding` detected."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import IO

from services.worker.documents.blocks import Block, DocumentInfo
from services.worker.documents.decoding import iter_lines, open_text

MAX_PARAGRAPH_CHARS = 1 << 16  # a longer "paragraph" (no blank lines) is passed on in pieces
_CJK = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef\U00020000-\U0002fa1f]")


def is_cjk(char: str) -> bool:
    return bool(_CJK.match(char))


def parse_text(handle: IO[bytes], info: DocumentInfo) -> Iterator[Block]:
    stream, encoding = open_text(handle)
    info.metadata["encoding"] = encoding
    lines: list[str] = []
    size = 0
    for line in iter_lines(stream, encoding):
        if not line.strip():
            if lines:
                yield Block("".join(lines))
            lines, size = [], 0
            continue
        lines.append(line)
        size += len(line)
        if size >= MAX_PARAGRAPH_CHARS:
            yield Block("".join(lines))
            lines, size = [], 0
    if lines:
        yield Block("".join(lines))
