"""The parsing step as one function run in a child process of the CPU pool.

`extract_document(job)` opens the file safely (no symlink at open, size
limit), detects its format from its content, parses it and streams blocks
to `job.spool_path`; it returns a summary. Everything it raises is a
`DocumentError` with a reason for the document's owner: a parser's own
exception never escapes as a traceback.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from services.worker.documents import sniff
from services.worker.documents.blocks import Block, DocumentInfo, SpoolWriter
from services.worker.documents.errors import (
    CorruptFile,
    DocumentError,
    EmptyDocument,
    NoTextLayer,
    UnsupportedFormat,
)
from shared.file_access import open_checked


@dataclass(frozen=True)
class ExtractionJob:
    path: str  # resolved and checked against UPLOAD_ROOTS by the stage
    name: str  # the name whose extension is checked against the content
    spool_path: str
    max_bytes: int
    max_chars: int
    password: str | None = field(default=None, repr=False)
    ocr_enabled: bool = True
    ocr_languages: str = "chi_sim+chi_tra+eng"
    tesseract_cmd: str = "tesseract"
    antiword_cmd: str = "antiword"
    # A shard of a long PDF (docs/decisions/0170): only these pages, numbered as in the whole file.
    first_page: int | None = None
    last_page: int | None = None


@dataclass(frozen=True)
class ExtractionSummary:
    content_type: str
    file_bytes: int
    sha256: str
    characters: int
    blocks: int
    title: str | None
    pages: int | None
    metadata: dict[str, Any]
    warnings: list[str]


def extract_document(job: ExtractionJob) -> ExtractionSummary:
    with open_checked(Path(job.path), max_bytes=job.max_bytes) as handle:
        size, digest = _size_and_digest(handle)
        if size == 0:
            raise EmptyDocument("the file is empty (0 bytes)")
        content_type = sniff.detect_format(handle, job.name)
        info = DocumentInfo()
        with open(job.spool_path, "wb") as spool:
            out = SpoolWriter(spool, max_chars=job.max_chars)
            try:
                for item in _parser(content_type, handle, info, job, size):
                    if isinstance(item, Block):
                        out.write(item)
                    else:
                        out.progress(*item)
            except DocumentError:
                raise
            except MemoryError:
                raise DocumentError("the document needs more memory to parse than this worker has") from None
            except Exception as exc:  # noqa: BLE001 - a parser bug or a damaged file: say which file part failed
                raise CorruptFile(
                    f"the {sniff.describe(content_type)} could not be parsed: {type(exc).__name__}: {str(exc)[:300]}"
                ) from None
            spool.flush()
    if out.characters == 0 and job.first_page is None:  # a shard of blank pages is fine; the whole is checked
        raise _no_text(content_type, info, job)
    return ExtractionSummary(
        content_type=content_type, file_bytes=size, sha256=digest, characters=out.characters, blocks=out.blocks,
        title=info.title, pages=info.pages, metadata=info.metadata, warnings=info.warnings,
    )


def _parser(content_type: str, handle: IO[bytes], info: DocumentInfo, job: ExtractionJob,
            size: int) -> Iterable[Block | tuple[int, int]]:
    from services.worker.documents import (
        delimited,
        docx,
        epub,
        html,
        jsondoc,
        legacy_doc,
        markdown,
        ocr,
        pdf,
        pptx,
        spreadsheet,
        text,
    )

    work_dir = str(Path(job.spool_path).parent)  # the stage's private spool directory
    options = ocr.OcrOptions(job.tesseract_cmd, job.ocr_languages, work_dir) if job.ocr_enabled else None

    parsers: dict[str, Callable[[], Iterable[Block | tuple[int, int]]]] = {
        sniff.PDF: lambda: pdf.parse_pdf(handle, info, job.password, options, pages=(job.first_page, job.last_page)),
        sniff.DOCX: lambda: docx.parse_docx(handle, info),
        sniff.PPTX: lambda: pptx.parse_pptx(handle, info),
        sniff.XLSX: lambda: spreadsheet.parse_xlsx(handle, info, size),
        sniff.EPUB: lambda: epub.parse_epub(handle, info),
        sniff.TXT: lambda: text.parse_text(handle, info),
        sniff.MARKDOWN: lambda: markdown.parse_markdown(handle, info),
        sniff.HTML: lambda: html.parse_html(handle, info),
        sniff.CSV: lambda: delimited.parse_csv(handle, info, job.name),
        sniff.JSON: lambda: jsondoc.parse_json(handle, info),
        sniff.DOC: lambda: legacy_doc.parse_doc(handle, info, command=job.antiword_cmd, work_dir=work_dir),
        sniff.IMAGE: lambda: ocr.parse_image(handle, info, _required(options)),
    }
    return parsers[content_type]()


def count_pdf_pages(job: ExtractionJob) -> int | None:
    """The page count of a PDF (for sharding); None for any other file, or one that does not
    open (the parse then says why, as for any document)."""
    from pypdf import PdfReader

    with open_checked(Path(job.path), max_bytes=job.max_bytes) as handle:
        try:
            if sniff.detect_format(handle, job.name) != sniff.PDF:
                return None
            handle.seek(0)
            reader = PdfReader(handle, strict=False)
            if reader.is_encrypted and not reader.decrypt(job.password or ""):
                return None
            return len(reader.pages)
        except Exception:  # noqa: BLE001 - not ours to report: the unsharded parse names the problem
            return None


def no_text(pages: int | None, job: ExtractionJob) -> DocumentError:
    """The error of a PDF whose shards found no text at all (what the unsharded parse raises)."""
    return _no_text(sniff.PDF, DocumentInfo(pages=pages), job)


def _required(options: Any) -> Any:
    if options is None:
        raise UnsupportedFormat("the file is an image, and OCR is turned off on this worker (OCR_ENABLED=false)")
    return options


def _no_text(content_type: str, info: DocumentInfo, job: ExtractionJob) -> DocumentError:
    if content_type == sniff.PDF:
        pages = f"{info.pages} page(s)" if info.pages else "pages"
        if job.ocr_enabled:
            return NoTextLayer(f"the PDF has {pages} but no text layer, and OCR ({job.ocr_languages}) "
                               "found no text in its images")
        return NoTextLayer(
            f"the PDF has {pages} but no text layer (a scanned or image-only document); OCR is turned off "
            "on this worker (OCR_ENABLED=false)"
        )
    if content_type == sniff.IMAGE:
        return EmptyDocument(f"OCR ({job.ocr_languages}) found no text in the image")
    return EmptyDocument(f"the {sniff.describe(content_type)} contains no text")


def _size_and_digest(handle: IO[bytes]) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    while piece := handle.read(1 << 20):
        digest.update(piece)
        size += len(piece)
    handle.seek(0)
    return size, digest.hexdigest()
