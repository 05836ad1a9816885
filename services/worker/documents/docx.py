"""DOCX: paragraphs and tables in document order, headings as structure.

Headings come from the paragraph style (Title, Heading 1-9) or its outline
level. Tables become rows of `cell | cell`, nested tables included. Equations
(OMML) keep their text; images are skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO, Any

from services.worker.documents.blocks import Block, DocumentInfo, HeadingTracker
from services.worker.documents.errors import CorruptFile

_W = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
_M = "http://schemas.openxmlformats.org/officeDocument/2006/math"
_TEXT = {f"{{{_W}}}t", f"{{{_M}}}t"}
_BREAKS = {f"{{{_W}}}br", f"{{{_W}}}cr"}
_TAB = f"{{{_W}}}tab"
_P, _TBL, _TR, _TC, _SDT = (f"{{{_W}}}{t}" for t in ("p", "tbl", "tr", "tc", "sdt"))


def parse_docx(handle: IO[bytes], info: DocumentInfo) -> Iterator[Block]:
    import docx
    from docx.opc.exceptions import PackageNotFoundError

    try:
        document = docx.Document(handle)
    except (PackageNotFoundError, KeyError, ValueError) as exc:
        raise CorruptFile(f"the DOCX cannot be opened ({exc})") from None
    core = document.core_properties
    if core.title:
        info.title = core.title.strip()[:500]
    if core.author:
        info.metadata["author"] = core.author.strip()[:500]
    styles = _heading_levels(document)
    headings = HeadingTracker()
    yield from _body(document.element.body, styles, headings, info)


def _body(body: Any, styles: dict[str, int], headings: HeadingTracker, info: DocumentInfo) -> Iterator[Block]:
    for child in body.iterchildren():
        if child.tag == _P:
            text = paragraph_text(child)
            if not text.strip():
                continue
            level = _level(child, styles)
            if level is not None:
                if level == 0 and info.title is None:
                    info.title = text.strip()[:500]
                yield Block(text, kind="heading", heading_path=headings.enter(level, text), section_break=True)
            else:
                yield Block(text, kind="list" if _is_list(child) else "paragraph", heading_path=headings.path)
        elif child.tag == _TBL:
            rows = table_rows(child)
            if rows:
                yield Block("\n".join(rows), kind="table", heading_path=headings.path)
        elif child.tag == _SDT:  # content controls wrap ordinary paragraphs and tables
            content = child.find(f"{{{_W}}}sdtContent")
            if content is not None:
                yield from _body(content, styles, headings, info)


def paragraph_text(element: Any) -> str:
    parts = []
    for node in element.iter():
        if node.tag in _TEXT and node.text:
            parts.append(node.text)
        elif node.tag == _TAB:
            parts.append("\t")
        elif node.tag in _BREAKS:
            parts.append("\n")
    return "".join(parts)


def table_rows(table: Any) -> list[str]:
    """`cell | cell` per row; a nested table's rows stay inside their cell's text."""
    rows = []
    for row in table.iterchildren(_TR):
        cells = []
        for cell in row.iterchildren(_TC):
            lines = []
            for child in cell.iterchildren():
                if child.tag == _P:
                    lines.append(paragraph_text(child).strip())
                elif child.tag == _TBL:
                    lines.extend(table_rows(child))
            cells.append(" / ".join(line for line in lines if line))
        if any(cells):
            rows.append(" | ".join(cells))
    return rows


def _heading_levels(document: Any) -> dict[str, int]:
    """style id -> heading level (0 for Title), including styles based on a heading style."""
    levels: dict[str, int] = {}
    for style in document.styles:
        name = (style.name or "").lower()
        level = None
        if name == "title":
            level = 0
        elif name.startswith("heading ") and name[8:].isdigit():
            level = int(name[8:])
        if level is not None:
            levels[style.style_id] = level
    return levels


def _level(paragraph: Any, styles: dict[str, int]) -> int | None:
    ppr = paragraph.find(f"{{{_W}}}pPr")
    if ppr is None:
        return None
    style = ppr.find(f"{{{_W}}}pStyle")
    if style is not None and style.get(f"{{{_W}}}val") in styles:
        return styles[style.get(f"{{{_W}}}val")]
    outline = ppr.find(f"{{{_W}}}outlineLvl")
    if outline is not None:
        value = outline.get(f"{{{_W}}}val")
        if value is not None and value.isdigit() and int(value) < 9:
            return int(value) + 1
    return None


def _is_list(paragraph: Any) -> bool:
    ppr = paragraph.find(f"{{{_W}}}pPr")
    return ppr is not None and ppr.find(f"{{{_W}}}numPr") is not None
