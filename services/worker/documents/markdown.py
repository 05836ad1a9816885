"""Markdown (CommonMark + pipe tables, MyST fences too): heading-aware.

markdown-it-py finds the structure, so a `# comment` inside a code fence is
not a heading; each block keeps its source text (a fence stays a fence, a
table stays a table) and the chunker keeps such blocks whole when they fit.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO

from services.worker.documents.blocks import Block, DocumentInfo, HeadingTracker
from services.worker.documents.decoding import read_all_text

_KINDS = {"fence": "code", "code_block": "code", "table_open": "table", "bullet_list_open": "list",
          "ordered_list_open": "list", "html_block": "html", "blockquote_open": "quote"}


def parse_markdown(handle: IO[bytes], info: DocumentInfo) -> Iterator[Block]:
    text, encoding = read_all_text(handle)
    info.metadata["encoding"] = encoding
    yield from markdown_blocks(text, info)


def markdown_blocks(text: str, info: DocumentInfo, *, base_path: tuple[str, ...] = ()) -> Iterator[Block]:
    from markdown_it import MarkdownIt

    parser = MarkdownIt("commonmark").enable("table")
    lines = text.splitlines()
    tokens = parser.parse(text)
    headings = HeadingTracker(base_path)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token.level != 0 or token.map is None:
            i += 1
            continue
        start, end = token.map
        source = "\n".join(lines[start:end])
        if token.type == "heading_open":
            title = tokens[i + 1].content if i + 1 < len(tokens) else source
            level = int(token.tag[1:])
            path = headings.enter(level, title)
            if level == 1 and info.title is None:
                info.title = title.strip()[:500]
            yield Block(source, kind="heading", heading_path=path, section_break=True)
        elif token.type != "hr":
            yield Block(source, kind=_KINDS.get(token.type, "paragraph"), heading_path=headings.path)
        i = _skip_to_close(tokens, i)


def _skip_to_close(tokens: list, i: int) -> int:  # type: ignore[type-arg]
    """The index after the block token at `i` (and everything nested in it)."""
    token = tokens[i]
    if token.nesting != 1:
        return i + 1
    depth = 0
    while i < len(tokens):
        depth += tokens[i].nesting
        i += 1
        if depth == 0:
            return i
    return i
