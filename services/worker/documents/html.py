"""HTML: the main text of a page, not its menus.

trafilatura finds the main content (navigation, sidebars, language menus,
scripts and styles dropped) and hands it back as XML with its headings,
paragraphs, lists and tables; a page it finds no article in falls back to the
whole body with the boilerplate elements removed. `html_blocks` also serves
EPUB chapters, which are clean XHTML.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import IO, Any

from services.worker.documents.blocks import Block, DocumentInfo, HeadingTracker
from services.worker.documents.decoding import read_all_text

_HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
_DROP = ("script", "style", "noscript", "template", "svg", "nav", "header", "footer", "aside", "form",
         "button", "select", "iframe", "object", "canvas")
_PARAGRAPHS = {"p", "pre", "blockquote", "dd", "dt", "figcaption", "address", "caption", "summary"}
_SPACES = re.compile(r"[ \t\u00a0]+")


def parse_html(handle: IO[bytes], info: DocumentInfo) -> Iterator[Block]:
    import trafilatura
    from lxml import etree

    text, encoding = read_all_text(handle)
    info.metadata["encoding"] = encoding
    extracted = trafilatura.extract(
        text, output_format="xml", include_tables=True, include_comments=False, include_formatting=False,
        include_links=False, include_images=False, with_metadata=True, favor_recall=True,
    )
    if not extracted:
        info.warn("no main content found; using the whole page body")
        yield from html_blocks(text, info)
        return
    document = etree.fromstring(extracted.encode())
    page_title = (document.get("title") or "").strip()
    if page_title:
        info.metadata["page_title"] = page_title[:500]
    for key in ("url", "date", "sitename"):
        if document.get(key):
            info.metadata[key] = document.get(key)[:500]
    main = document.find("main")
    yield from _trafilatura_blocks(main if main is not None else document, info)
    if info.title is None and page_title:
        info.title = page_title


def _trafilatura_blocks(main: Any, info: DocumentInfo) -> Iterator[Block]:
    headings = HeadingTracker()
    for element in main:
        tag = element.tag
        if tag == "head":
            title = _inline(element)
            if not title:
                continue
            level = _HEADINGS.get(element.get("rend", "h2"), 2)
            if level == 1 and info.title is None:
                info.title = title[:500]
            yield Block(title, kind="heading", heading_path=headings.enter(level, title), section_break=True)
        elif tag == "list":
            items = [f"- {_inline(item)}" for item in element.iter("item") if _inline(item)]
            if items:
                yield Block("\n".join(items), kind="list", heading_path=headings.path)
        elif tag == "table":
            rows = _table_rows(element.iter("row"), "cell")
            if rows:
                yield Block("\n".join(rows), kind="table", heading_path=headings.path)
        elif tag == "code":
            yield Block("".join(element.itertext()), kind="code", heading_path=headings.path)
        else:  # p, quote, and anything else with text
            text = _inline(element)
            if text:
                yield Block(text, heading_path=headings.path)


def html_blocks(html: str | bytes, info: DocumentInfo, *, base_path: tuple[str, ...] = (),
                section_break: bool = False) -> Iterator[Block]:
    """Blocks of a whole HTML body: headings, paragraphs, lists, tables."""
    from lxml import html as lxml_html

    try:
        root = lxml_html.document_fromstring(html)
    except Exception:  # noqa: BLE001 - an empty or broken fragment has no text
        return
    for element in root.xpath("|".join(f"//{tag}" for tag in _DROP) + "|//*[@role='navigation']"):
        element.drop_tree()
    if info.title is None:
        title = root.findtext(".//title")
        if title and title.strip():
            info.title = " ".join(title.split())[:500]
    body = root.find("body")
    headings = HeadingTracker(base_path)
    first = [section_break]

    def emit(block: Block) -> Block:
        if first[0]:
            first[0] = False
            return Block(block.text, block.kind, block.page, block.heading_path, True, block.meta)
        return block

    for block in _walk(body if body is not None else root, headings):
        yield emit(block)


def _walk(element: Any, headings: HeadingTracker) -> Iterator[Block]:
    loose: list[str] = [element.text or ""]
    for child in element:
        if not isinstance(child.tag, str):  # comments, processing instructions
            loose.append(child.tail or "")
            continue
        tag = child.tag.lower()
        block: Block | None = None
        if tag in _HEADINGS:
            text = _inline(child)
            if text:
                block = Block(text, kind="heading", heading_path=headings.enter(_HEADINGS[tag], text),
                              section_break=True)
        elif tag == "table":
            rows = _table_rows(child.iter("tr"), "td", "th")
            block = Block("\n".join(rows), kind="table", heading_path=headings.path) if rows else None
        elif tag in ("ul", "ol"):
            items = [f"- {_inline(li)}" for li in child.iterchildren("li") if _inline(li)]
            block = Block("\n".join(items), kind="list", heading_path=headings.path) if items else None
        elif tag in _PARAGRAPHS or not _has_blocks(child):
            if tag in ("br",):
                loose.append("\n")
            elif tag in _PARAGRAPHS:
                text = _inline(child) if tag != "pre" else child.text_content().strip()
                block = Block(text, kind="code" if tag == "pre" else "paragraph",
                              heading_path=headings.path) if text else None
            else:
                loose.append(child.text_content())
        else:
            yield from _flush(loose, headings)
            yield from _walk(child, headings)
        if block is not None:
            yield from _flush(loose, headings)
            yield block
        loose.append(child.tail or "")
    yield from _flush(loose, headings)


def _flush(loose: list[str], headings: HeadingTracker) -> Iterator[Block]:
    text = _SPACES.sub(" ", "".join(loose)).strip()
    loose.clear()
    if text:
        yield Block(text, heading_path=headings.path)


def _has_blocks(element: Any) -> bool:
    block_tags = set(_HEADINGS) | _PARAGRAPHS | {"div", "section", "article", "main", "table", "ul", "ol", "li"}
    return any(isinstance(e.tag, str) and e.tag.lower() in block_tags for e in element.iterdescendants())


def _table_rows(rows: Any, *cell_tags: str) -> list[str]:
    out = []
    for row in rows:
        cells = [_inline(cell) for cell in row if isinstance(cell.tag, str) and cell.tag.lower() in cell_tags]
        if any(cells):
            out.append(" | ".join(cells))
    return out


def _inline(element: Any) -> str:
    parts = list(element.itertext())
    return _SPACES.sub(" ", " ".join("".join(parts).split("\n"))).strip()
