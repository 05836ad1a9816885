"""Every corpus file converts as ../shared/corpus/MANIFEST.md says (the parsing
step itself, in-process; tests/pipeline/test_pipeline.py runs them through the fleet),
and malformed files fail with a reason a person understands."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from services.worker.documents.blocks import Block, read_spool_lines
from services.worker.documents.errors import (
    ContentMismatch,
    CorruptFile,
    EmptyDocument,
    NoTextLayer,
    PasswordRequired,
    UnsupportedFormat,
)
from services.worker.documents.extract import ExtractionJob, ExtractionSummary, extract_document
from tests.support.pipeline import corpus_or_skip

pytestmark = pytest.mark.fast  # no broker, database or child process (make test-fast)


@pytest.fixture
def corpus(corpus_dir: Path) -> Path:
    return corpus_or_skip(corpus_dir)


def extract(path: Path, tmp_path: Path, password: str | None = None,
            name: str | None = None) -> tuple[ExtractionSummary, list[Block]]:
    spool = tmp_path / "spool.jsonl"
    summary = extract_document(ExtractionJob(str(path), name or path.name, str(spool), 200 << 20, 20_000_000,
                                             password))
    with open(spool, "rb") as handle:
        blocks = [b for b in read_spool_lines(iter(handle.read().splitlines())) if isinstance(b, Block)]
    assert summary.blocks == len(blocks) and summary.characters == sum(len(b.text) for b in blocks)
    assert all(b.text.strip() and "\ufffd" not in b.text for b in blocks), "no empty blocks, no mojibake"
    return summary, blocks


def text_of(blocks: list[Block]) -> str:
    return "\n".join(b.text for b in blocks)


def test_text_pdfs_keep_page_numbers(corpus: Path, tmp_path: Path) -> None:
    summary, blocks = extract(corpus / "pdf-multipage-dpr-13p.pdf", tmp_path)
    assert summary.pages == 13 and summary.characters > 50_000
    assert {b.page for b in blocks} == set(range(1, 14)), "every page has text and every block a page"
    summary, blocks = extract(corpus / "pdf-long-cancer-guide-76p.pdf", tmp_path)
    pages = [b.page for b in blocks]
    assert summary.pages == 76 and set(pages) == set(range(1, 77)) and pages == sorted(pages), "in order"
    assert summary.characters > 100_000


def test_blank_pages_are_skipped_and_later_pages_keep_their_number(corpus: Path, tmp_path: Path) -> None:
    summary, blocks = extract(corpus / "pdf-with-blank-pages-4p.pdf", tmp_path)
    assert summary.pages == 4 and {b.page for b in blocks} == {1, 4}
    assert any("2-3" in w for w in summary.warnings)


def test_a_scanned_pdf_without_ocr_fails_as_needing_it(corpus: Path, tmp_path: Path) -> None:
    # With OCR (the default) it completes: tests/test_ocr_and_legacy_word.py.
    spool = tmp_path / "spool.jsonl"
    job = ExtractionJob(str(corpus / "pdf-scanned-image-only.pdf"), "scan.pdf", str(spool), 200 << 20, 10**7,
                        ocr_enabled=False)
    with pytest.raises(NoTextLayer, match="no text layer.*OCR is turned off"):
        extract_document(job)


def test_chinese_pdf_text_comes_out_intact(corpus: Path, tmp_path: Path) -> None:
    _, blocks = extract(corpus / "pdf-zh-tables.pdf", tmp_path)
    text = text_of(blocks)
    assert "盐城高新区投资集团" in text and "表7-1" in text and "中诚信国际信" in text
    assert {b.page for b in blocks} == {1}


def test_encrypted_pdfs_open_with_their_password_or_say_they_need_one(corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(PasswordRequired, match="needs a password"):
        extract(corpus / "pdf-encrypted-user-password.pdf", tmp_path)
    with pytest.raises(PasswordRequired, match="wrong"):
        extract(corpus / "pdf-encrypted-user-password.pdf", tmp_path, password="not-it")
    _, blocks = extract(corpus / "pdf-encrypted-user-password.pdf", tmp_path, password="password")
    assert text_of(blocks) == "File with password"
    summary, _ = extract(corpus / "pdf-encrypted-owner-only.pdf", tmp_path)
    assert summary.pages == 2 and 5000 < summary.characters < 6000, "owner-only encryption opens transparently"


def test_a_pdf_with_garbage_before_its_header_is_recovered(corpus: Path, tmp_path: Path) -> None:
    _, blocks = extract(corpus / "pdf-malformed-garbage-header.pdf", tmp_path)
    assert text_of(blocks) == "Hello World"


def test_docx_headings_become_the_heading_path_and_tables_survive(corpus: Path, tmp_path: Path) -> None:
    summary, blocks = extract(corpus / "docx-headings-table.docx", tmp_path)
    assert summary.title == "Swimming in the lake"
    assert ("Swimming in the lake", "Let’s swim!", "Let’s eat") in {b.heading_path for b in blocks}
    table = next(b for b in blocks if b.kind == "table")
    assert "Berries | Blueberry, Strawberry, Cranberry | 150" in table.text
    summary, blocks = extract(corpus / "docx-zh-en-mixed.docx", tmp_path)
    headings = [b.text for b in blocks if b.kind == "heading"]
    assert "2 这是第二章标题" in headings and "后面是正常的章节标题" in headings
    assert sum(1 for b in blocks if b.kind == "table") == 8


def test_html_keeps_the_article_and_drops_the_page_furniture(corpus: Path, tmp_path: Path) -> None:
    summary, blocks = extract(corpus / "html-wikipedia-duck.html", tmp_path)
    text = text_of(blocks)
    assert summary.title == "Duck"
    assert "Etymology" in [b.text for b in blocks if b.kind == "heading"]
    assert "common name for numerous species of waterfowl" in text
    for furniture in ("Jump to content", "Main menu", "Create account", "function(", "{display:"):
        assert furniture not in text


def test_markdown_headings_ignore_comments_inside_code_fences(corpus: Path, tmp_path: Path) -> None:
    _, blocks = extract(corpus / "md-pypdf-extract-text.md", tmp_path)
    assert sum(1 for b in blocks if b.kind == "heading") == 12
    fences = [b for b in blocks if b.kind == "code"]
    assert len(fences) == 8 and all(f.text.startswith("```") and f.text.rstrip().endswith("```") for f in fences)
    _, blocks = extract(corpus / "md-zh-mineru-output-files.md", tmp_path)
    assert sum(1 for b in blocks if b.kind == "heading") == 42
    assert any(b.heading_path[-1] == "可视化调试文件" for b in blocks if b.heading_path)
    assert any(b.kind == "table" and b.text.startswith("|") for b in blocks)


def test_text_encodings_are_detected_not_guessed(corpus: Path, tmp_path: Path) -> None:
    summary, blocks = extract(corpus / "txt-zh-gb18030.txt", tmp_path)
    assert summary.metadata["encoding"] == "gb18030"
    expected = (corpus / "txt-zh-gb18030.txt").read_bytes().decode("gb18030")
    assert text_of(blocks).startswith("Python（派森）语言是一种功能强大而完善的通用型计算机程序设计语言，")
    assert "".join(text_of(blocks).split()) == "".join(expected.split()), "decoded exactly, Hangul line included"
    for name in ("txt-multilingual-udhr.txt", "txt-zh-utf8-prompt-guide.txt"):
        summary, _ = extract(corpus / name, tmp_path)
        assert summary.metadata["encoding"] == "utf-8"


@pytest.mark.parametrize("encoding", ["gbk", "big5"])
def test_gbk_and_big5_text_decodes_without_mojibake(tmp_path: Path, encoding: str) -> None:
    text = ("知識庫的文件處理流程：上傳、預處理、分塊、向量化、存儲與索引。" if encoding == "big5"
            else "知识库的文档处理流程：上传、预处理、分块、向量化、存储与索引。") * 20
    path = tmp_path / f"{encoding}.txt"
    path.write_bytes(text.encode(encoding))
    summary, blocks = extract(path, tmp_path)
    assert text_of(blocks) == text and summary.metadata["encoding"] in ("gb18030", "big5hkscs")


def test_csv_rows_become_records_with_their_column_names(corpus: Path, tmp_path: Path) -> None:
    summary, blocks = extract(corpus / "csv-zh-github-issues.csv", tmp_path)
    assert summary.metadata["rows"] == 172 and len(blocks) == 172
    assert all(b.kind == "row" and b.meta and "row" in b.meta for b in blocks)
    assert "\ntitle: " in "\n" + blocks[0].text and "url: https://github.com/" in blocks[0].text


def test_every_sheet_of_a_workbook_is_read_as_values(corpus: Path, tmp_path: Path) -> None:
    summary, blocks = extract(corpus / "xlsx-multi-sheet-financials.xlsx", tmp_path)
    assert len(summary.metadata["sheets"]) == 5
    assert {b.meta["sheet"] for b in blocks if b.meta} == set(summary.metadata["sheets"])
    assert "Zone NA - Sales (a): 12553" in text_of(blocks)
    assert "=" not in text_of(blocks).replace("==", ""), "values, not formulas"


def test_pptx_slides_are_pages_with_tables_and_notes(corpus: Path, tmp_path: Path) -> None:
    summary, blocks = extract(corpus / "pptx-zh-en-table-chart.pptx", tmp_path)
    assert summary.pages == 6 and {b.page for b in blocks} == set(range(1, 7))
    text = text_of(blocks)
    assert "Notes: Some notes on the second slide." in text and "多级列表和中断有序列表" in text
    assert any(b.kind == "table" and b.page == 1 for b in blocks)


def test_json_is_parsed_with_key_paths_and_chapters(corpus: Path, tmp_path: Path) -> None:
    _, blocks = extract(corpus / "json-zh-lunyu.json", tmp_path)
    assert next(b.text for b in blocks if b.kind == "heading") == "学而篇"
    first = next(b for b in blocks if b.kind == "value")
    assert first.heading_path == ("学而篇",) and first.meta == {"json_path": "$[0].paragraphs[0]"}
    assert first.text.startswith("子曰：“学而时习之")


def test_epub_chapters_come_in_reading_order_with_title_and_author(corpus: Path, tmp_path: Path) -> None:
    summary, blocks = extract(corpus / "epub-winter-sports.epub", tmp_path)
    assert summary.title == "Winter Sports in Switzerland" and summary.metadata["author"] == "E. F. Benson"
    assert summary.characters > 100_000 and "<p" not in text_of(blocks)


def test_empty_and_password_protected_office_files_fail_with_their_reason(corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(EmptyDocument, match="empty"):
        extract(corpus / "bad-empty-zero-bytes.txt", tmp_path)
    with pytest.raises(ContentMismatch, match="password-protected"):
        extract(corpus / "bad-encrypted-not-zip.xlsx", tmp_path)


def test_content_decides_the_type_and_a_mismatched_name_is_refused(tmp_path: Path) -> None:
    png = tmp_path / "scan.pdf"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
    with pytest.raises(ContentMismatch, match="named .pdf but its content is a PNG image"):
        extract(png, tmp_path)
    text_as_pdf = tmp_path / "notes.pdf"
    text_as_pdf.write_text("just some notes")
    with pytest.raises(ContentMismatch, match="named .pdf but its content is plain text"):
        extract(text_as_pdf, tmp_path)
    binary = tmp_path / "data.txt"
    binary.write_bytes(b"\x00\x01\x02garbage\x00" * 50)
    with pytest.raises(UnsupportedFormat, match="binary"):
        extract(binary, tmp_path)
    unnamed = tmp_path / "README"
    unnamed.write_text("# Title\n\nA file without an extension is read as text.")
    summary, _ = extract(unnamed, tmp_path)
    assert summary.content_type == "txt"


def test_truncated_or_broken_files_fail_as_corrupt(tmp_path: Path) -> None:
    docx = tmp_path / "cut.docx"
    with zipfile.ZipFile(docx, "w") as archive:
        archive.writestr("word/document.xml", "<not-closed")
        archive.writestr("[Content_Types].xml", "<Types/>")
    with pytest.raises(CorruptFile):
        extract(docx, tmp_path)
    truncated = tmp_path / "half.docx"
    truncated.write_bytes(docx.read_bytes()[:60])
    with pytest.raises(CorruptFile, match="damaged"):
        extract(truncated, tmp_path)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"a": [1, 2')
    with pytest.raises(CorruptFile, match="not valid JSON"):
        extract(bad_json, tmp_path)
    whitespace = tmp_path / "blank.md"
    whitespace.write_text("   \n\n  \n")
    with pytest.raises(EmptyDocument, match="no text"):
        extract(whitespace, tmp_path)
