"""PDF: the text layer, page by page (pypdf), with page numbers kept.

Owner-only encryption (an empty user password) is opened transparently; a
PDF that needs a user password opens with `payload.password`. Lines are
reflowed into paragraphs (pypdf gives one line per visual line) so that the
chunker can cut at sentences; words hyphenated across lines are rejoined.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterator
from typing import IO

from services.worker.documents.blocks import Block, DocumentInfo
from services.worker.documents.errors import CorruptFile, PasswordRequired
from services.worker.documents.ocr import OcrOptions, ocr_pdf_page
from services.worker.documents.text import is_cjk

_LIGATURES = str.maketrans({"\ufb00": "ff", "\ufb01": "fi", "\ufb02": "fl", "\ufb03": "ffi", "\ufb04": "ffl",
                            "\ufb05": "st", "\ufb06": "st"})
_SENTENCE_END = tuple(".!?。！？；:：")
_LIST_ITEM = re.compile(r"^(?:[•◦▪‣·\-–—*]|\(?\d{1,3}[.)]|\(?[a-zA-Z][.)])\s")


def parse_pdf(handle: IO[bytes], info: DocumentInfo, password: str | None,
              ocr: OcrOptions | None = None,
              pages: tuple[int | None, int | None] = (None, None)) -> Iterator[Block | tuple[int, int]]:
    """Blocks per page; yields `(page, pages)` after each page for progress.
    A page without a text layer goes through OCR when `ocr` is given."""
    from pypdf import PdfReader
    from pypdf.errors import DependencyError, PdfReadError, PdfStreamError

    try:
        reader = PdfReader(handle, strict=False)
        if reader.is_encrypted and not reader.decrypt(password or ""):
            if password:
                raise PasswordRequired("the password given for this encrypted PDF is wrong")
            raise PasswordRequired("the PDF is encrypted and needs a password to open; send it as payload.password")
        all_pages = reader.pages
        info.pages = len(all_pages)
    except (PdfReadError, PdfStreamError, ValueError, KeyError, TypeError) as exc:
        raise CorruptFile(f"the PDF is damaged and cannot be read ({_short(exc)})") from None
    except DependencyError as exc:
        raise CorruptFile(f"the PDF uses an encryption this installation cannot open ({_short(exc)})") from None
    _read_metadata(reader, info)

    empty_pages, ocr_pages = [], []
    first, last = pages[0] or 1, min(pages[1] or len(all_pages), len(all_pages))  # a shard reads its range only
    for number in range(first, last + 1):
        page = all_pages[number - 1]
        try:
            text = page.extract_text() or ""
        except Exception as exc:  # noqa: BLE001 - one broken page must not lose the others
            info.warn(f"page {number} could not be read ({_short(exc)})")
            text = ""
        paragraphs = reflow(text.translate(_LIGATURES))
        for paragraph in paragraphs:
            yield Block(paragraph, page=number)
        if not paragraphs and ocr is not None:
            scanned = ocr_pdf_page(page, number, ocr)  # only pages without a text layer
            if scanned:
                ocr_pages.append(number)
            yield from scanned
            paragraphs = [b.text for b in scanned]
        if not paragraphs:
            empty_pages.append(number)
        yield (number, len(all_pages))
    if ocr_pages:
        info.metadata["ocr_pages"] = _ranges(ocr_pages)
        info.metadata["ocr_languages"] = ocr.languages if ocr else None
    if empty_pages and len(empty_pages) < len(all_pages):
        info.warn(f"{len(empty_pages)} page(s) without text: {_ranges(empty_pages)}")


def reflow(text: str) -> list[str]:
    """Join the visual lines of a page into paragraphs."""
    lines = [line.strip() for line in text.splitlines()]
    widths = [len(line) for line in lines if line]
    if not widths:
        return []
    typical = statistics.median_high(widths)
    paragraphs: list[str] = []
    current = ""
    previous_len = 0
    for line in lines:
        if not line:
            if current:
                paragraphs.append(current)
            current = ""
            continue
        if not current:
            current, previous_len = line, len(line)
            continue
        ends_paragraph = current.endswith(_SENTENCE_END) and previous_len < 0.8 * typical
        if ends_paragraph or _LIST_ITEM.match(line):
            paragraphs.append(current)
            current = line
        elif current.endswith("-") and len(current) > 1 and current[-2].isalpha() and line[:1].islower():
            current = current[:-1] + line  # a word hyphenated across lines
        elif is_cjk(current[-1]) or is_cjk(line[0]):
            current += line
        else:
            current += " " + line
        previous_len = len(line)
    if current:
        paragraphs.append(current)
    return paragraphs


def _read_metadata(reader: object, info: DocumentInfo) -> None:
    try:
        meta = reader.metadata  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - metadata is optional
        return
    if not meta:
        return
    for key, name in (("/Title", "title"), ("/Author", "author"), ("/Subject", "subject")):
        value = meta.get(key)
        if isinstance(value, str) and value.strip():
            info.metadata[name] = value.strip()[:500]
    info.title = info.metadata.get("title")


def _ranges(numbers: list[int]) -> str:
    parts, start = [], numbers[0]
    for prev, cur in zip(numbers, numbers[1:] + [None], strict=True):
        if cur is None or cur != prev + 1:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
            start = cur  # type: ignore[assignment]
    return ", ".join(parts)


def _short(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__)[:200]
