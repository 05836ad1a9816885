"""EPUB: the chapters in spine (reading) order, HTML stripped, headings kept;
title and author from the package metadata."""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO

from services.worker.documents.blocks import Block, DocumentInfo
from services.worker.documents.errors import CorruptFile
from services.worker.documents.html import html_blocks


def parse_epub(handle: IO[bytes], info: DocumentInfo) -> Iterator[Block | tuple[int, int]]:
    import warnings
    import zipfile

    import ebooklib
    from ebooklib import epub

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            book = epub.read_epub(handle, options={"ignore_ncx": True})
        except (epub.EpubException, zipfile.BadZipFile, KeyError, ValueError) as exc:
            raise CorruptFile(f"the EPUB cannot be opened ({exc})") from None
    for field, key in (("title", "title"), ("creator", "author"), ("language", "language")):
        values = book.get_metadata("DC", field)
        if values and values[0][0]:
            info.metadata[key] = str(values[0][0]).strip()[:500]
    info.title = info.metadata.get("title")
    spine = [book.get_item_with_id(idref) for idref, _ in book.spine]
    documents = [item for item in spine if item is not None and item.get_type() == ebooklib.ITEM_DOCUMENT]
    for number, item in enumerate(documents, start=1):
        for block in html_blocks(item.get_content(), DocumentInfo(), section_break=True):
            yield Block(block.text, block.kind, None, block.heading_path, block.section_break,
                        {"chapter_file": item.get_name()})
        yield (number, len(documents))
