"""What a file is, from its bytes first and its name second.

The content decides; the extension only chooses among text formats (a CSV and
a TXT look alike) and is checked against the content: a file named `.xlsx`
whose bytes are an encrypted Office container, or a `.pdf` that is a PNG,
fails with both named, instead of a parser's traceback.
"""

from __future__ import annotations

import zipfile
from pathlib import PurePath
from typing import IO

from services.worker.documents.errors import (
    ContentMismatch,
    CorruptFile,
    EmptyDocument,
    UnsupportedFormat,
)

PDF, DOCX, PPTX, XLSX, EPUB = "pdf", "docx", "pptx", "xlsx", "epub"
TXT, MARKDOWN, HTML, CSV, JSON = "txt", "markdown", "html", "csv", "json"
DOC, IMAGE = "doc", "image"  # legacy Word through antiword; PNG/JPEG/TIFF through OCR
SUPPORTED = (PDF, DOCX, PPTX, XLSX, EPUB, TXT, MARKDOWN, HTML, CSV, JSON, DOC, IMAGE)

_EXTENSIONS = {
    ".pdf": PDF, ".docx": DOCX, ".pptx": PPTX, ".xlsx": XLSX, ".xlsm": XLSX, ".epub": EPUB,
    ".txt": TXT, ".text": TXT, ".log": TXT, ".md": MARKDOWN, ".markdown": MARKDOWN, ".mdx": MARKDOWN,
    ".html": HTML, ".htm": HTML, ".xhtml": HTML, ".csv": CSV, ".tsv": CSV, ".json": JSON,
    ".doc": DOC, ".dot": DOC, ".png": IMAGE, ".jpg": IMAGE, ".jpeg": IMAGE, ".tif": IMAGE, ".tiff": IMAGE,
}
_BINARY_FORMATS = {PDF, DOCX, PPTX, XLSX, EPUB, DOC, IMAGE}
_OCR_IMAGES = {"a PNG image", "a JPEG image", "a TIFF image"}
_OLE2 = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_IMAGES = {
    b"\x89PNG\r\n\x1a\n": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"GIF8": "a GIF image",
    b"II*\x00": "a TIFF image", b"MM\x00*": "a TIFF image", b"BM": "a BMP image",
}
_OTHER_BINARY = {
    b"\x1f\x8b": "a gzip archive", b"7z\xbc\xaf\x27\x1c": "a 7-Zip archive", b"Rar!": "a RAR archive",
    b"\x7fELF": "an executable", b"MZ": "a Windows executable", b"\x00\x00\x00 ftyp": "a video",
}
_DESCRIPTION = {
    PDF: "a PDF", DOCX: "a Word document (DOCX)", PPTX: "a PowerPoint presentation (PPTX)",
    XLSX: "an Excel workbook (XLSX)", EPUB: "an EPUB book", DOC: "a Word 97-2003 document (.doc)",
    IMAGE: "an image (PNG, JPEG or TIFF)", "zip": "a ZIP archive", "text": "text",
    TXT: "text file", MARKDOWN: "Markdown document", HTML: "HTML page", CSV: "CSV file", JSON: "JSON file",
}


def describe(kind: str) -> str:
    return _DESCRIPTION.get(kind, kind)


def detect_format(handle: IO[bytes], name: str) -> str:
    """One of SUPPORTED, or a DocumentError saying what the file is instead."""
    head = handle.read(4096)
    handle.seek(0)
    if not head:
        raise EmptyDocument("the file is empty (0 bytes)")
    extension = PurePath(name).suffix.lower()
    claimed = _EXTENSIONS.get(extension)
    content = _content_kind(handle, head)

    if content == "text":
        if claimed in _BINARY_FORMATS:
            raise ContentMismatch(f"the file is named {extension} but its content is plain text, not {describe(claimed)}")
        return claimed or _text_kind_from_content(head)
    if content in _OCR_IMAGES:
        if claimed is not None and claimed != IMAGE:
            raise ContentMismatch(f"the file is named {extension} but its content is {content}")
        return IMAGE
    if content in _BINARY_FORMATS:
        if claimed is not None and claimed != content:
            raise ContentMismatch(f"the file is named {extension} but its content is {describe(content)}")
        return content
    # Not something we can read: say what it is, and what its name claimed.
    named = f" (named {extension})" if extension else ""
    if content == "damaged ole2":
        what = describe(claimed) if claimed in _BINARY_FORMATS else "an Office document"
        raise CorruptFile(f"the file{named} looks like {what} but its OLE2 container is damaged or truncated")
    if content == "encrypted ole2" and claimed == DOC:
        raise ContentMismatch(
            f"the file{named} is a password-protected (encrypted) Office document; "
            "remove the password and upload it again"
        )
    if content in ("ole2", "encrypted ole2"):
        if claimed in (DOCX, XLSX, PPTX):
            raise ContentMismatch(
                f"the file{named} is a password-protected (encrypted) Office document, which cannot be read "
                f"as {describe(claimed)}; remove the password and upload it again"
            )
        raise UnsupportedFormat(
            f"the file{named} is a legacy binary Excel or PowerPoint document (.xls/.ppt) or an encrypted one; "
            "save it as .xlsx/.pptx without a password"
        )
    if content == "damaged zip":
        what = describe(claimed) if claimed in _BINARY_FORMATS else "a ZIP-based document"
        raise CorruptFile(f"the file{named} looks like {what} but its ZIP container is damaged or truncated")
    if content == "zip":
        raise UnsupportedFormat(f"the file{named} is a ZIP archive that is not a DOCX, PPTX, XLSX or EPUB")
    if content.endswith("image"):
        raise UnsupportedFormat(f"the file{named} is {content}; OCR reads PNG, JPEG and TIFF images only")
    raise UnsupportedFormat(f"the file{named} is {content}, which is not a supported document format")


def _content_kind(handle: IO[bytes], head: bytes) -> str:
    # Some real PDFs carry junk before the header; readers accept it within the first KiB.
    if b"%PDF-" in head[:1024]:
        return PDF
    if head.startswith(b"PK\x03\x04"):
        return _zip_kind(handle)
    if head.startswith(_OLE2):
        return _ole_kind(handle)
    for magic, what in (*_IMAGES.items(), *_OTHER_BINARY.items()):
        if head.startswith(magic):
            return what
    if head[:12].startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "a WebP image"
    if _looks_binary(head):
        return "binary data"
    return "text"


def _zip_kind(handle: IO[bytes]) -> str:
    try:
        with zipfile.ZipFile(handle) as archive:
            names = set(archive.namelist())
            if "mimetype" in names and archive.read("mimetype").strip() == b"application/epub+zip":
                return EPUB
    except (zipfile.BadZipFile, OSError, KeyError):
        return "damaged zip"
    finally:
        handle.seek(0)
    if "word/document.xml" in names:
        return DOCX
    if "ppt/presentation.xml" in names:
        return PPTX
    if "xl/workbook.xml" in names:
        return XLSX
    return "zip"


def _ole_kind(handle: IO[bytes]) -> str:
    """A Word 97-2003 document holds a `WordDocument` stream; an encrypted
    OOXML file (the CFB wrapper Office puts around a password-protected .docx/.xlsx)
    an `EncryptedPackage` one."""
    import olefile

    try:
        ole = olefile.OleFileIO(handle)
    except (OSError, ValueError, IndexError, TypeError):  # olefile's own error is an OSError
        return "damaged ole2"
    finally:
        handle.seek(0)
    try:
        if ole.exists("EncryptedPackage"):
            return "encrypted ole2"
        if ole.exists("WordDocument"):
            return DOC
        return "ole2"
    finally:
        ole.close()
        handle.seek(0)


def _looks_binary(head: bytes) -> bool:
    """NUL bytes outside UTF-16/32 text mean binary data."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff", b"\xef\xbb\xbf")):
        return False
    return b"\x00" in head


def _text_kind_from_content(head: bytes) -> str:
    start = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if start.startswith((b"<!doctype html", b"<html")):
        return HTML
    if start.startswith((b"{", b"[")):
        return JSON
    return TXT
